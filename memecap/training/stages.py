"""The stages of a run: one per `stages:` entry, or a single one made of data/train/optim.

    stages:
      - {name: general, train: [flickr30k_ru/train.jsonl, vizwiz_ru/train.jsonl], val: flickr30k_ru/val.jsonl,
         epochs: 30}
      - {name: memes, train: [memes/train.tsv], val: memes/val.tsv, epochs: 20, lr: 3.0e-4, freeze: [embed]}

Each stage has its own data, length, learning rate (with a fresh schedule) and frozen parameters;
the model carries over, so a stage starts from the weights the previous one ended with.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from torch import nn

from memecap.config import Config, OptimConfig
from memecap.data.fingerprint import CHECKS_FOLDER, split_changes, split_fingerprint
from memecap.data.sources import load_table, load_train_val, streamed_train
from memecap.data.hf_stream import HfStreamedSplit
from memecap.data.streamed_split import StreamedSplit
from memecap.data.tables import Example
from memecap.models.param_patterns import select_parameters


@dataclass
class Stage:
    index: int
    name: str
    train: list  # tables; empty for a run without stages (its data config says everything)
    val: str
    epochs: int
    max_steps: Optional[int]
    optim: OptimConfig
    freeze: list
    objective: str = "ce"  # ce | scst (training/objectives.py)

    @property
    def label(self) -> str:
        return f"stage {self.index + 1} ({self.name})" if self.name else f"stage {self.index + 1}"


def plan_stages(cfg: Config) -> list[Stage]:
    if not cfg.stages:
        return [Stage(0, "", [], cfg.data.val, cfg.train.epochs, cfg.train.max_steps, cfg.optim, [],
                      cfg.train.objective)]
    return [Stage(i, s.name, list(s.train), s.val, s.epochs if s.epochs is not None else cfg.train.epochs,
                  s.max_steps, dataclasses.replace(cfg.optim, lr=s.lr) if s.lr is not None else cfg.optim,
                  list(s.freeze), s.objective or cfg.train.objective)
            for i, s in enumerate(cfg.stages)]


def load_stage_examples(cfg: Config, stage: Stage, *, work_dir: Path, log: Callable[[str], None]
                        ) -> tuple[list[Example], list[Example]]:
    """The stage's train examples (its tables concatenated) and val examples, every row validated."""
    check_cache = Path(cfg.cache.dir).expanduser() / CHECKS_FOLDER if cfg.cache.enabled else None
    if not stage.train:
        return load_train_val(cfg.data, work_dir=work_dir, log=log, check_cache=check_cache)
    d = cfg.data
    splits = []
    for name, tables, cap in (("train", stage.train, d.max_train_rows), ("val", [stage.val], d.max_val_rows)):
        if name == "train" and d.streaming:
            splits.append(streamed_train(d, tables, key=f"stages[{stage.index}].train", check_cache=check_cache,
                                         log=log))
            continue
        splits.append([example for table in tables
                       for example in load_table(table, d, max_rows=cap, work_dir=work_dir, log=log,
                                                 check_cache=check_cache, key=f"stages[{stage.index}].{name}: {table}",
                                                 shown=f"{stage.label} {name}: {table}")])
    return splits[0], splits[1]


def is_streamed(split) -> bool:
    """A train split read batch by batch (`data.streaming`), not held as examples."""
    return isinstance(split, (StreamedSplit, HfStreamedSplit))


def train_captions(train) -> list[str]:
    """A train split's captions: all of them, or a streamed split's first rows' (it is never held whole)."""
    return [c for ex in (train.head() if is_streamed(train) else train) for c in ex.captions]


class LazyCaptions(Sequence):
    """The captions of train splits, read when first asked for: only a model built from the data (a
    tiny tokenizer, the LSTM's vocabulary) asks, and a streamed split's head costs a read of its first rows."""

    def __init__(self, splits: Sequence):
        self._splits, self._captions = splits, None

    def _all(self) -> list[str]:
        if self._captions is None:
            self._captions = [c for split in self._splits for c in train_captions(split)]
        return self._captions

    def __len__(self) -> int:
        return len(self._all())

    def __getitem__(self, i):
        return self._all()[i]


def data_fingerprint(data: list) -> list[dict]:
    """Per stage, what its train and val splits hold (data/fingerprint.py); a checkpoint records it."""
    return [{"train": train.fingerprint() if is_streamed(train) else split_fingerprint(train),
             "val": split_fingerprint(val)} for train, val in data]


def data_changes(stages: list[Stage], saved: list[dict], now: list[dict]) -> list[str]:
    """Each split whose data differs from a checkpoint's record, named by its config key, with what changed."""
    changes = []
    for stage, old, new in zip(stages, saved, now):
        for split in ("train", "val"):
            key = f"stages[{stage.index}].{split}" if stage.train else f"data.{split}"
            changes += [f"{key}: {what}" for what in split_changes(old[split], new[split])]
    return changes


def apply_freeze(model: nn.Module, trainable: set[str], stage: Stage) -> None:
    """Train what the model trains by itself (`trainable`: names of its trainable parameters) minus
    the stage's `freeze` patterns (memecap/models/param_patterns.py: a pattern matching nothing is an error)."""
    frozen = select_parameters(model, stage.freeze, key=f"stages[{stage.index}].freeze", what="the model")
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable and name not in frozen)
