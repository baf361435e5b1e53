"""Corpus BLEU-1..4 of tokenised captions: the arithmetic behind the `bleu.py` metric module.

The arithmetic matches `nltk.translate.bleu_score.corpus_bleu` with uniform weights: clipped
n-gram counts summed over the corpus, per-sentence denominators of at least 1, brevity penalty
against the reference closest in length (the shorter on ties). Where an order has no match
NLTK returns a vanishingly small positive number (around 1e-80); we return 0.0.
`smooth=True` is NLTK's method2 (add one to the counts of orders >= 2; Lin and Och, 2004).

Why not NLTK's `corpus_bleu` itself (measured on the 546 validation memes, a training caption as
each prediction, one and three references): the same numbers to 3e-17, but its tiny positive
number where we return 0, no precisions, brevity penalty or lengths (the `bleu.py` module reports
them), no sufficient statistics to choose the best constant caption from (`constant_bleu`), and
0.12 s against this file's 0.11 s (0.26 s against 0.23 s with three references). The seed scoring
does call it: the original project's numbers, tiny values included.

No `evaluate` import here: memecap scores the best constant caption before training's first step,
and importing `evaluate` costs most of a second. Nor imports of other memecap files:
`evaluate.load` copies this file beside bleu.py and imports it there.
"""

import math
import warnings
from collections import Counter, defaultdict

from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu


def ngram_counts(tokens: list[str], max_order: int) -> list[Counter]:
    """Counts of the 1..max_order-grams of `tokens`, one Counter per order."""
    return [Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)) for n in range(1, max_order + 1)]


def max_reference_counts(references: list[list[str]], max_order: int) -> list[Counter]:
    """Per order, the most times each n-gram occurs in any one reference: the clipping limit."""
    clip = [Counter() for _ in range(max_order)]
    for ref in references:
        for n, counts in enumerate(ngram_counts(ref, max_order)):
            clip[n] |= counts  # Counter | Counter keeps the max of each count
    return clip


def closest_length(ref_lengths: list[int], hyp_length: int) -> int:
    """The reference length nearest the hypothesis length; the shorter one on ties."""
    return min(ref_lengths, key=lambda r: (abs(r - hyp_length), r))


def bleu_from_stats(
    matches: list[int], totals: list[int], hyp_length: int, ref_length: int, smooth: bool = False
) -> dict:
    """BLEU-1..N from corpus sums of clipped matches and n-gram totals per order."""
    max_order = len(matches)
    if hyp_length > ref_length:
        bp = 1.0
    elif hyp_length == 0:
        bp = 0.0
    else:
        bp = math.exp(1 - ref_length / hyp_length)
    precisions = [m / t for m, t in zip(matches, totals)]
    smoothed = [p if n == 0 or not smooth else (matches[n] + 1) / (totals[n] + 1) for n, p in enumerate(precisions)]
    scores = {}
    for order in range(1, max_order + 1):
        used = smoothed[:order]
        if matches[0] == 0 or min(used) == 0:
            scores[f"bleu{order}"] = 0.0
        else:
            scores[f"bleu{order}"] = bp * math.exp(math.fsum(math.log(p) for p in used) / order)
    scores.update(precisions=precisions, brevity_penalty=bp, translation_length=hyp_length, reference_length=ref_length)
    return scores


def corpus_bleu(
    hypotheses: list[list[str]], references: list[list[list[str]]], max_order: int = 4, smooth: bool = False
) -> dict:
    """Corpus BLEU of tokenised hypotheses against lists of tokenised references."""
    sums = [0] * (2 * max_order + 2)
    for hyp, refs in zip(hypotheses, references):
        sums = [a + b for a, b in zip(sums, sentence_stats(hyp, refs, max_order))]
    return bleu_from_stats(sums[:max_order], sums[max_order:-2], sums[-2], sums[-1], smooth)


def sentence_stats(hypothesis: list[str], references: list[list[str]], max_order: int = 4) -> list[int]:
    """One caption's share of corpus BLEU: its clipped matches per order, its n-gram totals per
    order, its length and its closest reference's length. Corpus BLEU of any set of captions is
    `bleu_from_stats` of these summed over the set (the paired bootstrap resamples them)."""
    clip = max_reference_counts(references, max_order)
    counts = ngram_counts(hypothesis, max_order)
    matches = [sum(min(c, clip[n][g]) for g, c in counts[n].items()) for n in range(max_order)]
    totals = [max(1, len(hypothesis) - n) for n in range(max_order)]  # NLTK floors every sentence's at 1
    return matches + totals + [len(hypothesis), closest_length([len(r) for r in references], len(hypothesis))]


def bleu_scores(captions) -> dict[str, float]:
    """BLEU-1..4 of a `memecap.evaluation.ScoredCaptions`, for the metric registry."""
    if captions.scoring == "seed":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NLTK warns once per order without a match
            bleus = nltk_corpus_bleu(captions.reference_tokens, captions.hypotheses,
                                     weights=[(1.0,), (1 / 2,) * 2, (1 / 3,) * 3, (1 / 4,) * 4])
        return {f"bleu{n}": float(b) for n, b in enumerate(bleus, start=1)}
    bleu = corpus_bleu(captions.hypotheses, captions.reference_tokens, max_order=4)
    return {f"bleu{n}": float(bleu[f"bleu{n}"]) for n in range(1, 5)}


def constant_bleu(candidates: list[list[str]], references: list[list[list[str]]], scoring: str) -> list[dict]:
    """Corpus BLEU-1..4 of each tokenised candidate used as the prediction for every example.

    Every example's clipped matches of one n-gram depend only on how often the candidate has it, so
    the references are counted once into, per n-gram, a histogram of its clipping limits over the
    examples; a candidate then costs a few lookups per n-gram of its own, not per example.
    Both scorings choose by this arithmetic (`scoring` changes nothing): the tokens are already theirs.
    """
    limits = [defaultdict(Counter) for _ in range(4)]
    for clip in (max_reference_counts(r, 4) for r in references):
        for n in range(4):
            for gram, limit in clip[n].items():
                limits[n][gram][limit] += 1
    ref_lengths = [[len(x) for x in r] for r in references]
    closest: dict[int, int] = {}  # hypothesis length -> summed closest reference length
    scores = []
    for hyp in candidates:
        counts = ngram_counts(hyp, 4)
        matches = [sum(min(c, limit) * k for gram, c in counts[n].items()
                       for limit, k in limits[n].get(gram, {}).items()) for n in range(4)]
        totals = [max(1, len(hyp) - n) * len(references) for n in range(4)]
        if len(hyp) not in closest:
            closest[len(hyp)] = sum(closest_length(lengths, len(hyp)) for lengths in ref_lengths)
        scores.append(bleu_from_stats(matches, totals, len(hyp) * len(references), closest[len(hyp)]))
    return scores
