"""Corpus BLEU-1..4 of tokenised captions: the arithmetic behind the `bleu.py` metric module.

The arithmetic matches `nltk.translate.bleu_score.corpus_bleu` with uniform weights: clipped
n-gram counts summed over the corpus, per-sentence denominators of at least 1, brevity penalty
against the reference closest in length (the shorter on ties). Where an order has no match
NLTK returns a vanishingly small positive number (around 1e-80); we return 0.0.
`smooth=True` is NLTK's method2 (add one to the counts of orders >= 2; Lin and Och, 2004).

No `evaluate` import here: memecap scores the best constant caption before training's first step,
and importing `evaluate` costs most of a second. Nor imports of other memecap files:
`evaluate.load` copies this file beside bleu.py and imports it there.
"""

import math
from collections import Counter


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
    matches, totals = [0] * max_order, [0] * max_order
    hyp_length = ref_length = 0
    for hyp, refs in zip(hypotheses, references):
        clip = max_reference_counts(refs, max_order)
        for n, counts in enumerate(ngram_counts(hyp, max_order)):
            matches[n] += sum(min(c, clip[n][g]) for g, c in counts.items())
            totals[n] += max(1, len(hyp) - n)  # NLTK floors every sentence's denominator at 1
        hyp_length += len(hyp)
        ref_length += closest_length([len(r) for r in refs], len(hyp))
    return bleu_from_stats(matches, totals, hyp_length, ref_length, smooth)
