"""Every score memecap reports, declared once: its name(s), the function that computes it, whether
higher is better, and the scorings (`eval.scoring`) that offer it. Evaluation, the validation pass,
the best-checkpoint choice and the config checks all ask this table; every name in it is usable as
`train.best_metric`.

Adding a metric is one file and one line: a file in memecap/metrics/ with a function that takes a
`memecap.evaluation.ScoredCaptions` (the predictions, their references and their word tokens as the
scoring sees them) and returns `{name: value}`, and a `Metric` line in `METRICS` naming it. For
`memecap compare` to compare it meme by meme, an `examples` function too (memecap/metrics/examples.py).

Functions are named by "module:function" and imported on first use: checking a config reads this
file, and must not import NLTK, torch or `evaluate`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional

# The word scorings and what each is; `memecap.evaluation` says how they differ.
SCORINGS = {"memecap": "memecap's scorer", "seed": "the original project's scorer"}


@dataclass(frozen=True)
class Metric:
    labels: dict  # score name -> its written name (config errors; publish/model_card.py has the same table)
    function: Optional[str]  # "module:function": ScoredCaptions -> {name: value}; None: the validation pass computes it
    higher_is_better: bool = True
    scorings: tuple = tuple(SCORINGS)
    # "module:function": (candidate tokens, reference tokens, scoring) -> each candidate's {name: value} as the
    # prediction for every example, in about one corpus pass; None: the best constant caption is not chosen by it.
    constant: Optional[str] = None
    # "module:function": ScoredCaptions -> {name: paired.ExampleStats}, the per-example statistics a paired
    # comparison of two captioners resamples (`memecap compare`); None: not compared.
    examples: Optional[str] = None

    def compute(self, captions) -> dict[str, float]:
        return _load(self.function)(captions)

    def example_stats(self, captions) -> dict:
        return _load(self.examples)(captions)

    def constant_scores(self, candidates: list, references: list, scoring: str) -> list[dict]:
        return _load(self.constant)(candidates, references, scoring)


METRICS = (
    Metric({"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4"},
           "memecap.metrics.bleu_score:bleu_scores", constant="memecap.metrics.bleu_score:constant_bleu",
           examples="memecap.metrics.examples:bleu"),
    Metric({"meteor": "METEOR"}, "memecap.metrics.meteor_score:meteor_scores",
           constant="memecap.metrics.meteor_score:constant_meteor", examples="memecap.metrics.examples:meteor"),
    # The original project had neither, so its scoring reports neither.
    Metric({"cider": "CIDEr-D"}, "memecap.metrics.cider_score:cider_scores", scorings=("memecap",),
           examples="memecap.metrics.examples:cider"),
    Metric({"rougeL": "ROUGE-L"}, "memecap.metrics.rougel_score:rouge_scores", scorings=("memecap",),
           examples="memecap.metrics.examples:rouge"),
    Metric({"quote": "quote CER"}, "memecap.metrics.quote_score:quote_scores", higher_is_better=False,
           examples="memecap.metrics.examples:quote"),
    Metric({"val_loss": "val loss"}, None, higher_is_better=False),  # token-weighted loss on the validation set
)
_BY_NAME = {name: metric for metric in METRICS for name in metric.labels}


def metric_names(scoring: Optional[str] = None) -> tuple[str, ...]:
    """Every score name, in report order, or those `scoring` offers."""
    return tuple(name for name, m in _BY_NAME.items() if scoring is None or scoring in m.scorings)


def metric(name: str) -> Metric:
    if name not in _BY_NAME:
        raise ValueError(f"unknown metric {name!r}: known are {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def label(name: str) -> str:
    return metric(name).labels[name]


def higher_is_better(name: str) -> bool:
    return metric(name).higher_is_better


def not_offered(name: str, scoring: str) -> Optional[str]:
    """Why `scoring` cannot give the score `name`, for a config error; None when it can."""
    offering = metric(name).scorings
    if scoring in offering:
        return None
    lacking = " or ".join(label(n) for n in metric_names() if n not in metric_names(scoring))
    return f"eval.scoring={scoring} ({SCORINGS[scoring]}) has no {lacking}; use eval.scoring={offering[0]}"


def computed(scoring: str) -> tuple[Metric, ...]:
    """The metrics a caption evaluation under `scoring` computes (all but the validation loss)."""
    return tuple(m for m in METRICS if m.function is not None and scoring in m.scorings)


def compared(scoring: str) -> tuple[Metric, ...]:
    """The metrics a paired comparison under `scoring` resamples."""
    return tuple(m for m in computed(scoring) if m.examples is not None)


def constant_names() -> tuple[str, ...]:
    """The scores the best constant caption can be chosen by."""
    return tuple(name for name, m in _BY_NAME.items() if m.constant is not None)


def _load(dotted: str) -> Callable:
    module, _, function = dotted.partition(":")
    return getattr(importlib.import_module(module), function)
