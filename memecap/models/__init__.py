"""Model families, looked up by `model.family`: one line each in `FAMILIES`.

A family is a module (a package under memecap/models/, or one file) that offers
    build(cfg: ModelConfig, *, work_dir: Path, train_texts: Sequence[str])
        -> a `protocol.TrainableModel` (a baseline: a `protocol.CaptioningModel`)
    load(folder: Path, with_encoder: bool = True) -> the model an export folder holds
    plan_memory(cfg: Config, **settings) -> memory_plan.Plan     (optional: what `memecap plan` estimates)
and names the sections of `model` it reads (memecap/config refuses the others). Nothing here
imports a family before it is used, so checking a config loads neither torch nor a family's code.
The loop, inference, plan and publishing never ask which family they have.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Sequence

from memecap.quiet import quiet_weights

if TYPE_CHECKING:  # the protocols import torch; checking a config must not
    from memecap.models.protocol import CaptioningModel


@dataclass(frozen=True)
class Family:
    module: str  # the module offering build, load and (optionally) plan
    sections: tuple  # the sections of `model` the family reads, besides `family`
    baseline: bool = False  # nothing to train: scored with `memecap eval <recipe> --data TABLE`, never trained
    run_files: tuple = ()  # what it writes at the top of a run folder (train.overwrite deletes them)


FAMILIES = {
    "clipcap": Family("memecap.models.clipcap", ("encoder", "mapper", "decoder", "ocr", "tiny")),
    "rudolph": Family("memecap.models.rudolph", ("rudolph", "ocr", "tiny")),
    "lstm": Family("memecap.models.lstm", ("encoder", "lstm", "tiny"), run_files=("lstm_vocab.json",)),
    "ocr_template": Family("memecap.models.ocr_template", ("ocr",), baseline=True),
    "vlm": Family("memecap.models.vlm", ("vlm", "ocr")),
}
BASELINES = {name for name, family in FAMILIES.items() if family.baseline}
TINY = "tiny-random"  # a base name that makes a family build a tiny random model of the real class (tests, demo)


def family_module(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise ValueError(f"model.family={name!r}: known families are {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name].module)


@quiet_weights()
def build_model(cfg, *, work_dir: Path, train_texts: Sequence[str] = ()) -> "CaptioningModel":
    """A fresh model of `cfg.family` (`cfg`: the run's ModelConfig; memecap/config imports this
    module for FAMILIES, so it is not imported back here)."""
    from memecap.models.kbit import keep_loaded_kbit_state

    model = family_module(cfg.family).build(cfg, work_dir=work_dir, train_texts=train_texts)
    keep_loaded_kbit_state(model)  # a checkpoint of a run on a 4-bit base loads back into it (resume, caption)
    return model


@quiet_weights()
def load_model(folder: Path, with_encoder: bool = True) -> "CaptioningModel":
    """A model exported by `save_pretrained`, whatever its family."""
    from memecap.models.export import read_export_config

    family = read_export_config(folder).get("family", "clipcap")
    if family not in FAMILIES:
        raise ValueError(f"{folder}: model family {family!r} is not known to this memecap version")
    return family_module(family).load(folder, with_encoder=with_encoder)
