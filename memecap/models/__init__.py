"""Model families, looked up by `model.family`: one line each in `FAMILIES`.

A family is a module (a package under memecap/models/, or one file) that offers
    build(cfg: ModelConfig, *, work_dir: Path, train_texts: Sequence[str])
        -> a `protocol.TrainableModel` (a baseline: a `protocol.CaptioningModel`)
    load(folder: Path, with_encoder: bool = True) -> the model an export folder holds
    plan_memory(cfg: Config, **settings) -> memory_plan.Plan     (optional: what `memecap plan` estimates)
    RUN_FILES_FROM_EXPORT: {run-folder file: export file}  (optional) what a run started from an export
                                          takes from it to build its model (the LSTM's vocabulary)
and, where it has settings of its own, a settings module (light: no torch) that offers
    SECTIONS: {section name: dataclass}   its own sections of `model` (memecap/config builds ModelConfig from them)
    check_model(model) -> None            (optional) cross-field rules over its whole `model` section
    MOVED_KEYS: {old key: new key}        (optional) keys under `model` that moved into its own section
    FOREIGN_SECTION_HINTS: {section: text}  (optional) what to do instead of a section it does not read
    WITHOUT_BEAM_SEARCH: text             (optional) how it decodes instead, when `beam_search=False`
Nothing here imports a family before it is used, so checking a config loads neither torch nor a
family's code (only its settings module). The loop, inference, plan and publishing never ask which
family they have, and memecap/config asks the registry, never a family's name.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from memecap.quiet import quiet_weights

if TYPE_CHECKING:  # the protocols import torch; checking a config must not
    from memecap.models.protocol import CaptioningModel


@dataclass(frozen=True)
class Family:
    module: str  # the module offering build, load and (optionally) plan_memory
    sections: tuple  # the sections of `model` it reads besides `family`, in the order errors list them
    # The module offering its own sections and checks (see above); "" when it reads only shared ones.
    # Named, not imported: a family's package may import this module (vlm reads TINY).
    settings: str = ""
    baseline: bool = False  # nothing to train: scored with `memecap eval <its name> --data TABLE`, never trained
    beam_search: bool = True  # decodes with generation.strategy=beam
    run_files: tuple = ()  # what it writes at the top of a run folder (train.overwrite deletes them)

    def _settings(self, name: str, default):
        return getattr(importlib.import_module(self.settings), name, default) if self.settings else default

    @property
    def own_sections(self) -> dict:
        """Its own sections of `model`: name -> settings dataclass."""
        return dict(self._settings("SECTIONS", {}))

    @property
    def reads_ocr(self) -> bool:
        return "ocr" in self.sections

    @property
    def check_model(self) -> Optional[Callable]:
        return self._settings("check_model", None)

    @property
    def moved_keys(self) -> dict:
        return dict(self._settings("MOVED_KEYS", {}))

    @property
    def foreign_section_hints(self) -> dict:
        return dict(self._settings("FOREIGN_SECTION_HINTS", {}))

    @property
    def without_beam_search(self) -> str:
        return self._settings("WITHOUT_BEAM_SEARCH", "")


# model.family when a recipe, a saved config or an export names none (the first memecap had only ClipCap).
DEFAULT_FAMILY = "clipcap"
FAMILIES = {
    "clipcap": Family("memecap.models.clipcap", ("encoder", "mapper", "decoder", "ocr", "tiny"),
                      settings="memecap.models.clipcap.settings"),
    "rudolph": Family("memecap.models.rudolph", ("rudolph", "ocr", "tiny"), settings="memecap.models.rudolph.settings",
                      beam_search=False),
    "lstm": Family("memecap.models.lstm", ("encoder", "lstm", "tiny"), settings="memecap.models.lstm.settings",
                   run_files=("lstm_vocab.json",)),
    "ocr_template": Family("memecap.models.ocr_template", ("ocr",), baseline=True),
    "vlm": Family("memecap.models.vlm", ("vlm", "ocr"), settings="memecap.models.vlm.settings"),
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
    from memecap.models.run_bases import on_recorded_bases

    cfg = on_recorded_bases(cfg, work_dir)  # a run started from an export is built on that export's bases
    model = family_module(cfg.family).build(cfg, work_dir=work_dir, train_texts=train_texts)
    keep_loaded_kbit_state(model)  # a checkpoint of a run on a 4-bit base loads back into it (resume, caption)
    return model


@quiet_weights()
def load_model(folder: Path, with_encoder: bool = True) -> "CaptioningModel":
    """A model exported by `save_pretrained`, whatever its family."""
    from memecap.models.export import read_export_config

    family = read_export_config(folder).get("family", DEFAULT_FAMILY)
    if family not in FAMILIES:
        raise ValueError(f"{folder}: model family {family!r} is not known to this memecap version")
    return family_module(family).load(folder, with_encoder=with_encoder)
