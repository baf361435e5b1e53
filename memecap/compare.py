"""`memecap compare`: is one captioner better than another on the same memes, or is it chance?

Two predictions files of the same table (`memecap eval --out`, or a run's predictions) are paired
meme by meme, and every score the scoring offers is compared with a paired bootstrap over the memes
(`memecap.metrics.paired`): the gain, its interval, and whether the interval leaves out no change.
Several "after" files are runs of one setup (seeds): after is their mean, each resample scoring
every run on the same memes. On a split of a hundred memes CIDEr-D moves by several percent with
one meme won or lost; this says how far apart two runs must be before the memes can tell.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from memecap.evaluation import ScoredCaptions
from memecap.metrics import registry
from memecap.metrics.paired import ExampleStats, PairedGain, paired_stats_gain


@dataclass(frozen=True)
class Predictions:
    path: Path
    uids: list[str]
    captions: list[str]
    references: list[list[str]]


@dataclass(frozen=True)
class MetricComparison:
    name: str
    gain: PairedGain

    @property
    def verdict(self) -> str:
        """better / worse when the interval leaves out no change, else within chance."""
        if self.gain.low <= 0 <= self.gain.high:
            return "within chance"
        up = self.gain.low > 0
        return "better" if up == registry.higher_is_better(self.name) else "worse"


@dataclass(frozen=True)
class MemeChange:
    uid: str
    before: float
    after: float  # the mean over the after runs
    before_caption: str
    after_caption: str  # the first after run's


@dataclass(frozen=True)
class Comparison:
    before: Path
    after: list[Path]
    memes: int
    scoring: str
    resamples: int
    level: float
    metrics: list[MetricComparison]
    by: str  # the per-meme score `changes` hold
    changes: list[MemeChange]  # each meme's `by` score before and after, in before's order (unscored memes left out)
    show: int  # how many of the most improved and the most worsened memes are shown

    @property
    def improved(self) -> list[MemeChange]:
        """The `show` memes whose `by` score improved most, most first (unchanged ones are neither)."""
        ranked = sorted(self.changes, key=self.improvement, reverse=True)
        return [c for c in ranked[:self.show] if self.improvement(c) > 0]

    @property
    def worsened(self) -> list[MemeChange]:
        ranked = sorted(self.changes, key=self.improvement)
        return [c for c in ranked[:self.show] if self.improvement(c) < 0]

    def improvement(self, change: MemeChange) -> float:
        """The change of a meme's `by` score, positive where it got better (lower, for the quote CER)."""
        return (change.after - change.before) * (1 if registry.higher_is_better(self.by) else -1)

    def to_json(self) -> dict:
        return {"before": str(self.before), "after": [str(p) for p in self.after], "memes": self.memes,
                "scoring": self.scoring, "resamples": self.resamples, "level": self.level,
                "metrics": {m.name: {"before": m.gain.before, "after": m.gain.after, "gain": m.gain.gain,
                                     "low": m.gain.low, "high": m.gain.high, "verdict": m.verdict}
                            for m in self.metrics},
                "by": self.by, "improved": [vars(c) for c in self.improved],
                "worsened": [vars(c) for c in self.worsened]}


def read_scored_predictions(path: Path) -> Predictions:
    """A predictions file's rows, each with a uid, a prediction and its references; anything else is
    an error naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text, so not a predictions file") from None
    uids, captions, references, lines = [], [], [], {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not a JSON line ({err.msg})") from None
        if not isinstance(row, dict) or "uid" not in row or not isinstance(row.get("prediction"), str):
            raise ValueError(f"{where}: not a predictions line (it needs a uid and a prediction string)")
        refs = row.get("references")
        if not (isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs)):
            raise ValueError(f"{where}: no references to score against (a predictions file of `memecap eval` "
                             "has them; `memecap caption` output has none)")
        uid = str(row["uid"])
        if uid in lines:
            raise ValueError(f"{where}: meme {uid} again (first at line {lines[uid]})")
        lines[uid] = number
        uids.append(uid)
        captions.append(row["prediction"])
        references.append(refs)
    if not uids:
        raise ValueError(f"{path}: no predictions in it")
    return Predictions(path, uids, captions, references)


def aligned(before: Predictions, after: Predictions) -> Predictions:
    """`after` in `before`'s meme order; the files must hold the same memes with the same references."""
    index = {uid: i for i, uid in enumerate(after.uids)}
    missing = [uid for uid in before.uids if uid not in index]
    extra = [uid for uid in after.uids if uid not in set(before.uids)]
    for lacking, holder, uids in ((after.path, before.path, missing), (before.path, after.path, extra)):
        if uids:
            raise ValueError(f"{lacking} lacks {len(uids)} of the memes in {holder} (first: {uids[0]}): "
                             "compare predictions of the same table")
    order = [index[uid] for uid in before.uids]
    for uid, i, refs in zip(before.uids, order, before.references):
        if after.references[i] != refs:
            raise ValueError(f"meme {uid}: its references differ between {before.path} and {after.path}: "
                             "these files scored different tables")
    return Predictions(after.path, before.uids, [after.captions[i] for i in order], before.references)


def example_stats(predictions: Predictions, scoring: str) -> dict[str, ExampleStats]:
    captions = ScoredCaptions(predictions.captions, predictions.references, scoring)
    return {name: stats for metric in registry.compared(scoring)
            for name, stats in metric.example_stats(captions).items()}


def compare_predictions(before_path: Path, after_paths: Sequence[Path], scoring: str = "memecap",
                        resamples: int = 10_000, level: float = 0.95, seed: int = 0, by: Optional[str] = None,
                        show: int = 5) -> Comparison:
    """Every score of `scoring`, before against after, with a paired bootstrap over the memes; the
    `show` memes whose `by` score (default: CIDEr-D, or METEOR where the scoring has no CIDEr-D) rose
    most and the `show` it fell most."""
    if not after_paths:
        raise ValueError("at least one predictions file to compare against the first")
    if scoring not in registry.SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(registry.SCORINGS)}, got {scoring!r}")
    before = read_scored_predictions(before_path)
    afters = [aligned(before, read_scored_predictions(path)) for path in after_paths]
    before_stats = example_stats(before, scoring)
    after_stats = [example_stats(after, scoring) for after in afters]
    by = by or ("cider" if "cider" in before_stats else "meteor")
    if by not in before_stats or before_stats[by].kind != "mean":
        choices = [name for name, stats in before_stats.items() if stats.kind == "mean"]
        raise ValueError(f"--by {by}: not a per-meme score of the {scoring} scoring; choose from {', '.join(choices)}")
    metrics = [MetricComparison(name, paired_stats_gain(stats, [run[name] for run in after_stats], resamples=resamples,
                                                        level=level, seed=seed))
               for name, stats in before_stats.items()]
    changes = meme_changes(before, afters, before_stats[by], [run[by] for run in after_stats])
    return Comparison(before_path, list(after_paths), len(before.uids), scoring, resamples, level, metrics, by,
                      changes, show)


def meme_changes(before: Predictions, afters: list[Predictions], before_stats: ExampleStats,
                 after_stats: list[ExampleStats]) -> list[MemeChange]:
    changes = []
    runs = [stats.per_example() for stats in after_stats]
    for i, score in enumerate(before_stats.per_example()):
        after = [run[i] for run in runs]
        if score is None or None in after:
            continue  # not scored on this meme (a quote CER where no reference quotes)
        changes.append(MemeChange(before.uids[i], score, sum(after) / len(after), before.captions[i],
                                  afters[0].captions[i]))
    return changes


def format_comparison(comparison: Comparison, width: int = 100) -> str:
    """The comparison as the console shows it."""
    after = ", ".join(str(p) for p in comparison.after)
    runs = f" (mean of {len(comparison.after)} runs)" if len(comparison.after) > 1 else ""
    lines = [f"before: {comparison.before}", f"after:  {after}{runs}",
             f"{comparison.memes} memes paired, {comparison.scoring} scoring; {comparison.level:.0%} intervals of "
             f"the gain from {comparison.resamples:,} resamples of the memes", ""]
    header = ("score", "before", "after", "gain", "relative", f"{comparison.level:.0%} interval", "")
    table = [header]
    for m in comparison.metrics:
        g = m.gain
        relative = f"{g.relative:+.1%}" if g.relative is not None else ""
        table.append((registry.label(m.name), f"{g.before:.4f}", f"{g.after:.4f}", f"{g.gain:+.4f}", relative,
                      f"{g.low:+.4f} .. {g.high:+.4f}", m.verdict))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    for m in comparison.metrics:
        if m.name == comparison.by and m.gain.top and registry.higher_is_better(m.name):
            lines += ["", f"the {m.gain.top} best memes before hold {m.gain.top_share:.0%} "
                          f"of its {registry.label(m.name)}"]
    name, shown = registry.label(comparison.by), comparison.after[0].name
    for how, changes in (("improved", comparison.improved), ("worsened", comparison.worsened)):
        if changes:
            lines += ["", f"the memes whose {name} {how} most (captions after: {shown}):"]
        for change in changes:
            lines.append(f"  {change.uid}  {change.before:.3f} -> {change.after:.3f}")
            lines.append("    before: " + _clip(change.before_caption, width - 12))
            lines.append("    after:  " + _clip(change.after_caption, width - 12))
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."
