"""Is a change between two captioners of the same memes more than chance? A paired bootstrap over memes.

CIDEr-D on a few hundred memes is heavy-tailed: a caption that quotes a long meme text exactly, at
about its reference's length, scores 4 to 8 where most captions score below 1, so a handful of
memes carry much of a split's score (on the real-weights OCR ClipCap's 100 val memes the 8 best
held 42% of its CIDEr-D) and one of them won or lost moves the mean by several percent. Two means
say nothing about that; resampling the memes, each meme's before and after kept together, does:
the interval holds the mean per-meme gain of most resamples. An interval that contains 0 means the
memes at hand cannot tell the two apart.

Per-example scores in, plain numbers out: no imports of other memecap files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class PairedGain:
    before: float  # mean per-example score before
    after: float  # mean per-example score after (each example's mean over the runs given)
    low: float  # the interval of the mean gain (after - before) at `level`
    high: float
    level: float
    top: int  # how many of before's best examples `top_share` counts
    top_share: float  # the share of before's total that its `top` best examples hold

    @property
    def gain(self) -> float:
        return self.after - self.before

    def describe(self, name: str, examples: int) -> str:
        relative = f" ({self.gain / self.before:+.1%})" if self.before else ""
        return (f"{name} {self.before:.3f} -> {self.after:.3f}: {self.gain:+.3f}{relative}, "
                f"{self.level:.0%} interval {self.low:+.3f} .. {self.high:+.3f} over {examples} memes")


def paired_gain(before: Sequence[float], after_runs: Sequence[Sequence[float]], resamples: int = 10_000,
                level: float = 0.95, seed: int = 0, top: int = 10) -> PairedGain:
    """The mean per-example gain of `after_runs` (one list of per-example scores per run, e.g. per seed;
    an example's after is its mean over the runs) over `before`, with a percentile bootstrap interval
    that resamples the examples `resamples` times (seeded: the same inputs give the same interval)."""
    base = np.asarray(before, dtype=np.float64)
    if base.ndim != 1 or base.size == 0:
        raise ValueError("before: a non-empty list of per-example scores")
    if not after_runs:
        raise ValueError("after_runs: at least one run's per-example scores")
    for i, run in enumerate(after_runs):
        if len(run) != base.size:
            raise ValueError(f"after_runs[{i}] has {len(run)} scores but before has {base.size}: "
                             "both must score the same examples in the same order")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    after = np.asarray(after_runs, dtype=np.float64).mean(axis=0)
    gains = after - base
    picks = np.random.default_rng(seed).integers(0, base.size, size=(resamples, base.size))
    means = gains[picks].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    total = base.sum()
    best = np.sort(base)[::-1][:top].sum()
    return PairedGain(before=float(base.mean()), after=float(after.mean()), low=float(low), high=float(high),
                      level=level, top=min(top, base.size), top_share=float(best / total) if total else 0.0)
