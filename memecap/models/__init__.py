"""Model families behind one protocol (`memecap.models.protocol.Captioner`), looked up by name:
a family is a builder in `MODELS` and a loader in `LOADERS`. The loop never asks which family it has.

`BASELINES` are families with nothing to train (`trainable_parameters()` is empty): they are
scored with `memecap eval <recipe> --data TABLE`, never trained.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from memecap.config import ModelConfig
from memecap.models.clipcap.model import ClipCap, build_clipcap, materialize_tiny_bases
from memecap.models.export import read_export_config
from memecap.models.ocr_template import OcrTemplate, build_ocr_template
from memecap.models.lstm.model import LstmCaptioner, build_lstm, materialize_tiny_encoder, run_vocab
from memecap.models.vlm import build_vlm, load_vlm
from memecap.quiet import quiet_weights


def _build_clipcap(cfg: ModelConfig, *, work_dir: Path, train_texts: Sequence[str]):
    return build_clipcap(materialize_tiny_bases(cfg, work_dir, train_texts))


def _build_rudolph(cfg: ModelConfig, *, work_dir: Path, train_texts: Sequence[str]):
    # Imported here: the rudolph/rudalle packages load only when a RuDOLPH is asked for.
    from memecap.models.rudolph.model import build_rudolph, materialize_tiny_rudolph

    return build_rudolph(materialize_tiny_rudolph(cfg, work_dir, train_texts))


def _load_rudolph(folder: Path, with_encoder: bool = True):
    from memecap.models.rudolph.model import RuDolph

    return RuDolph.from_pretrained(folder, with_encoder=with_encoder)


def _build_lstm(cfg: ModelConfig, *, work_dir: Path, train_texts: Sequence[str]):
    return build_lstm(materialize_tiny_encoder(cfg, work_dir), run_vocab(cfg, work_dir, train_texts))


MODELS = {"clipcap": _build_clipcap, "rudolph": _build_rudolph, "lstm": _build_lstm, "ocr_template": build_ocr_template,
          "vlm": build_vlm}
LOADERS = {"clipcap": ClipCap.from_pretrained, "rudolph": _load_rudolph, "lstm": LstmCaptioner.from_pretrained,
           "ocr_template": OcrTemplate.from_pretrained, "vlm": load_vlm}
BASELINES = {"ocr_template"}


@quiet_weights()
def build_model(cfg: ModelConfig, *, work_dir: Path, train_texts: Sequence[str] = ()):
    if cfg.family not in MODELS:
        raise ValueError(f"model.family={cfg.family!r}: known families are {', '.join(MODELS)}")
    return MODELS[cfg.family](cfg, work_dir=work_dir, train_texts=train_texts)


@quiet_weights()
def load_model(folder: Path, with_encoder: bool = True):
    """A model exported by `save_pretrained`, whatever its family."""
    family = read_export_config(folder).get("family", "clipcap")
    if family not in LOADERS:
        raise ValueError(f"{folder}: model family {family!r} is not known to this memecap version")
    return LOADERS[family](folder, with_encoder=with_encoder)
