"""Model families behind one protocol, looked up by name.

Every model the loop trains offers: `forward(batch) -> {"loss", "num_tokens"}` (= `loss`),
`generate(batch, generation) -> list[list[str]]`, `trainable_parameters()`, `collate(items)`,
`image_inputs(paths, ...)`, `encode_caption(text, max_tokens)`, `save_pretrained(dir)` and the
family's `from_pretrained(dir)`. The loop never asks which family it has.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml

from memecap.config import ModelConfig
from memecap.models.clipcap import CONFIG_FILE, ClipCap, build_clipcap, materialize_tiny_bases


def _build_clipcap(cfg: ModelConfig, *, work_dir: Path, train_texts: Sequence[str]):
    return build_clipcap(materialize_tiny_bases(cfg, work_dir, train_texts))


def _build_rudolph(cfg: ModelConfig, *, work_dir: Path, train_texts: Sequence[str]):
    # Imported here: the rudolph/rudalle packages load only when a RuDOLPH is asked for.
    from memecap.models.rudolph import build_rudolph, materialize_tiny_rudolph

    return build_rudolph(materialize_tiny_rudolph(cfg, work_dir, train_texts))


def _load_rudolph(folder: Path, with_encoder: bool = True):
    from memecap.models.rudolph import RuDolph

    return RuDolph.from_pretrained(folder, with_encoder=with_encoder)


MODELS = {"clipcap": _build_clipcap, "rudolph": _build_rudolph}
LOADERS = {"clipcap": ClipCap.from_pretrained, "rudolph": _load_rudolph}


def build_model(cfg: ModelConfig, *, work_dir: Path, train_texts: Sequence[str] = ()):
    if cfg.family not in MODELS:
        raise ValueError(f"model.family={cfg.family!r}: known families are {', '.join(MODELS)}")
    return MODELS[cfg.family](cfg, work_dir=work_dir, train_texts=train_texts)


def load_model(folder: Path, with_encoder: bool = True):
    """A model exported by `save_pretrained`, whatever its family."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no exported memecap model ({CONFIG_FILE} missing)")
    family = yaml.safe_load(path.read_text(encoding="utf-8")).get("family", "clipcap")
    return LOADERS[family](folder, with_encoder=with_encoder)
