"""METEOR of tokenised Russian captions: the arithmetic behind the `meteor.py` metric module.

NLTK's `meteor_score` with the Russian Snowball stemmer for the stem stage and no synonym
stage: English WordNet is a download and has no Russian lemmas. Several references: the best
one counts (NLTK's rule). The result is the mean of the sentence scores.

No `evaluate` import (see bleu_score.py) and no imports of other memecap files.
"""

import functools

from nltk.stem import SnowballStemmer
from nltk.translate.meteor_score import meteor_score


class CachedStemmer:
    """A stemmer that remembers: Snowball's Russian stem costs ~0.1 ms and METEOR stems every word of every pair."""

    def __init__(self, stemmer):
        self.stem = functools.lru_cache(maxsize=1 << 17)(stemmer.stem)


RUSSIAN_STEMMER = CachedStemmer(SnowballStemmer("russian"))


class NoWordNet:
    """A stand-in for NLTK's WordNet reader that knows no synonyms."""

    def synsets(self, word):
        return []


NO_WORDNET = NoWordNet()


def mean_meteor(hypotheses, references, stemmer=RUSSIAN_STEMMER, alpha=0.9, beta=3.0, gamma=0.5) -> float:
    """Mean sentence METEOR of tokenised hypotheses against lists of tokenised references."""
    scores = [
        meteor_score(refs, hyp, stemmer=stemmer, wordnet=NO_WORDNET, alpha=alpha, beta=beta, gamma=gamma)
        for hyp, refs in zip(hypotheses, references)
    ]
    return sum(scores) / len(scores)
