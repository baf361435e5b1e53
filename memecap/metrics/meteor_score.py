"""METEOR of tokenised Russian captions: the arithmetic behind the `meteor.py` metric module.

NLTK's `meteor_score` with the Russian Snowball stemmer for the stem stage and no synonym
stage: English WordNet is a download and has no Russian lemmas. Several references: the best
one counts (NLTK's rule). The result is the mean of the sentence scores. The seed scoring stems
with NLTK's default, Porter, as the original project did.

No `evaluate` import (see bleu_score.py) and no imports of other memecap files.
"""

import functools

from nltk.stem import PorterStemmer, SnowballStemmer
from nltk.translate.meteor_score import meteor_score


class CachedStemmer:
    """A stemmer that remembers: Snowball's Russian stem costs ~0.1 ms and METEOR stems every word of every pair."""

    def __init__(self, stemmer):
        self.stem = functools.lru_cache(maxsize=1 << 17)(stemmer.stem)


RUSSIAN_STEMMER = CachedStemmer(SnowballStemmer("russian"))
PORTER_STEMMER = CachedStemmer(PorterStemmer())  # NLTK's default METEOR stemmer, which the seed project used


def stemmer_for(scoring: str) -> CachedStemmer:
    return PORTER_STEMMER if scoring == "seed" else RUSSIAN_STEMMER


class NoWordNet:
    """A stand-in for NLTK's WordNet reader that knows no synonyms."""

    def synsets(self, word):
        return []


NO_WORDNET = NoWordNet()


def sentence_meteors(hypotheses, references, stemmer=RUSSIAN_STEMMER, alpha=0.9, beta=3.0, gamma=0.5) -> list[float]:
    """Sentence METEOR of each tokenised hypothesis against its list of tokenised references."""
    return [meteor_score(refs, hyp, stemmer=stemmer, wordnet=NO_WORDNET, alpha=alpha, beta=beta, gamma=gamma)
            for hyp, refs in zip(hypotheses, references)]


def mean_meteor(hypotheses, references, stemmer=RUSSIAN_STEMMER, alpha=0.9, beta=3.0, gamma=0.5) -> float:
    """Mean sentence METEOR of tokenised hypotheses against lists of tokenised references."""
    scores = sentence_meteors(hypotheses, references, stemmer, alpha, beta, gamma)
    return sum(scores) / len(scores)


def meteor_scores(captions) -> dict[str, float]:
    """Mean METEOR of a `memecap.evaluation.ScoredCaptions`, for the metric registry."""
    stemmer = stemmer_for(captions.scoring)
    return {"meteor": float(mean_meteor(captions.hypotheses, captions.reference_tokens, stemmer=stemmer))}


def constant_meteor(candidates: list[list[str]], references: list[list[list[str]]], scoring: str) -> list[dict]:
    """Mean METEOR of each tokenised candidate used as the prediction for every example."""
    stemmer = stemmer_for(scoring)
    return [{"meteor": mean_meteor([hyp] * len(references), references, stemmer=stemmer)} for hyp in candidates]
