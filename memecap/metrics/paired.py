"""Is a change between two captioners of the same memes more than chance? A paired bootstrap over memes.

CIDEr-D on a few hundred memes is heavy-tailed: a caption that quotes a long meme text exactly, at
about its reference's length, scores 4 to 8 where most captions score below 1, so a handful of
memes carry much of a split's score (on the real-weights OCR ClipCap's 100 val memes the 8 best
held 42% of its CIDEr-D) and one of them won or lost moves the mean by several percent. Two means
say nothing about that; resampling the memes, each meme's before and after kept together, does:
the interval holds the gain of most resamples. An interval that contains 0 means the memes at hand
cannot tell the two apart.

Every score resamples through its per-example statistics (`ExampleStats`): a mean of per-example
scores (METEOR, CIDEr-D, ROUGE-L, the quote CER, which leaves out memes without text) keeps each
example's score and whether it counts; corpus BLEU keeps each caption's clipped matches, n-gram
totals and lengths, whose sums over a resample give that resample's corpus BLEU, not a mean of
sentence BLEUs. Corpus-wide constants (CIDEr-D's document frequencies) stay those of the whole
split. Plain numbers in and out: no imports of other memecap files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# Resampled statistics are summed in blocks of about this many numbers, so ten thousand resamples of
# a few thousand memes never hold one array of all of them.
_BLOCK_NUMBERS = 4_000_000


@dataclass(frozen=True)
class ExampleStats:
    """One score's statistics per example, summable over any set of examples: `values[i]` is example
    i's row, and the score of a set is `score_of_sums` of the rows' sum."""
    values: np.ndarray  # (examples, columns)
    kind: str  # "mean": columns (score, counts); "bleuN": sentence_stats rows of BLEU up to order >= N

    @property
    def examples(self) -> int:
        return self.values.shape[0]

    def per_example(self) -> list[Optional[float]]:
        """Each example's own score (means only; None where the example does not count)."""
        if self.kind != "mean":
            raise ValueError(f"{self.kind} is a corpus score: an example has no score of its own")
        return [float(v) if counted else None for v, counted in self.values]


def mean_stats(scores: Sequence[Optional[float]]) -> ExampleStats:
    """A score that is the mean of per-example scores; None marks an example left out of the mean
    (and the score is 0.0 for a set where none counts, as `quote` is)."""
    values = np.array([(0.0, 0.0) if s is None else (float(s), 1.0) for s in scores], dtype=np.float64)
    return ExampleStats(values.reshape(-1, 2), "mean")


def bleu_stats(rows: Sequence[Sequence[int]], order: int) -> ExampleStats:
    """Corpus BLEU-`order` from each caption's `bleu_score.sentence_stats` (matches and totals per
    order up to any max_order >= `order`, then hypothesis and closest reference length)."""
    values = np.asarray(rows, dtype=np.float64)
    if values.ndim != 2 or (values.shape[1] - 2) % 2 or (values.shape[1] - 2) // 2 < order:
        raise ValueError(f"BLEU-{order} needs rows of 2 x max_order + 2 counts with max_order >= {order}")
    return ExampleStats(values, f"bleu{order}")


def score_of_sums(kind: str, sums: np.ndarray) -> np.ndarray:
    """The scores of sets of examples from their summed statistics, one set per row of `sums`."""
    if kind == "mean":
        counted = sums[:, 1]
        return np.divide(sums[:, 0], counted, out=np.zeros(len(sums)), where=counted > 0)
    order, max_order = int(kind.removeprefix("bleu")), (sums.shape[1] - 2) // 2
    matches, totals = sums[:, :order], sums[:, max_order:max_order + order]
    hyp, ref = sums[:, -2], sums[:, -1]
    # As bleu_score.bleu_from_stats: no brevity penalty for a longer translation, 0 for an empty one,
    # and 0 where any order up to `order` matches nothing (NLTK's ~1e-80).
    with np.errstate(divide="ignore", invalid="ignore"):
        penalty = np.where(hyp > ref, 1.0, np.exp(1.0 - ref / np.where(hyp > 0, hyp, 1.0)))
        log_precision = np.log(np.where(matches > 0, matches / totals, 1.0)).mean(axis=1)
    penalty = np.where(hyp == 0, 0.0, penalty)
    return np.where((matches > 0).all(axis=1), penalty * np.exp(log_precision), 0.0)


@dataclass(frozen=True)
class PairedGain:
    before: float  # the score before
    after: float  # the score after (the mean over the runs given)
    low: float  # the interval of the gain (after - before) at `level`
    high: float
    level: float
    top: int  # how many of before's best examples `top_share` counts (0: a corpus score)
    top_share: float  # the share of before's total that its `top` best examples hold

    @property
    def gain(self) -> float:
        return self.after - self.before

    @property
    def relative(self) -> Optional[float]:
        return self.gain / self.before if self.before else None

    def describe(self, name: str, examples: int) -> str:
        relative = f" ({self.relative:+.1%})" if self.relative is not None else ""
        return (f"{name} {self.before:.3f} -> {self.after:.3f}: {self.gain:+.3f}{relative}, "
                f"{self.level:.0%} interval {self.low:+.3f} .. {self.high:+.3f} over {examples} memes")


def paired_stats_gain(before: ExampleStats, after_runs: Sequence[ExampleStats], resamples: int = 10_000,
                      level: float = 0.95, seed: int = 0, top: int = 10) -> PairedGain:
    """The gain of `after_runs` (one per run, e.g. per seed; after is the mean of the runs' scores)
    over `before`, with a percentile bootstrap interval: the examples are resampled `resamples`
    times, the same resample for before and every run (seeded: the same inputs give the same
    interval, and every score resampled with one seed sees the same resamples)."""
    n = before.examples
    if n == 0:
        raise ValueError("before: no examples")
    if not after_runs:
        raise ValueError("after_runs: at least one run's per-example scores")
    for i, run in enumerate(after_runs):
        if run.examples != n:
            raise ValueError(f"after_runs[{i}] has {run.examples} scores but before has {n}: "
                             "both must score the same examples in the same order")
        if run.kind != before.kind:
            raise ValueError(f"after_runs[{i}] is a {run.kind} score but before is a {before.kind} score")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")

    def score(stats: ExampleStats, sums: Optional[np.ndarray] = None) -> np.ndarray:
        return score_of_sums(stats.kind, stats.values.sum(axis=0, keepdims=True) if sums is None else sums)

    gains = []
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_NUMBERS // (n * before.values.shape[1]))
    for start in range(0, resamples, block):
        picks = rng.integers(0, n, size=(min(block, resamples - start), n))
        after = np.mean([score(run, run.values[picks].sum(axis=1)) for run in after_runs], axis=0)
        gains.append(after - score(before, before.values[picks].sum(axis=1)))
    tail = (1 - level) / 2
    low, high = np.quantile(np.concatenate(gains), [tail, 1 - tail])
    shown_top, share = 0, 0.0
    if before.kind == "mean":
        counted = before.values[before.values[:, 1] > 0, 0]
        shown_top = min(top, counted.size)
        share = float(np.sort(counted)[::-1][:top].sum() / counted.sum()) if counted.sum() else 0.0
    return PairedGain(before=float(score(before)[0]), after=float(np.mean([score(r)[0] for r in after_runs])),
                      low=float(low), high=float(high), level=level, top=shown_top, top_share=share)


def paired_gain(before: Sequence[float], after_runs: Sequence[Sequence[float]], resamples: int = 10_000,
                level: float = 0.95, seed: int = 0, top: int = 10) -> PairedGain:
    """`paired_stats_gain` of a mean of per-example scores, given as plain lists (one per run)."""
    if np.ndim(before) != 1 or len(before) == 0:
        raise ValueError("before: a non-empty list of per-example scores")
    return paired_stats_gain(mean_stats(before), [mean_stats(run) for run in after_runs], resamples=resamples,
                             level=level, seed=seed, top=top)
