"""The train and validation examples a config names: tables, HF datasets or the synthetic demo set."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from memecap.config import DataConfig
from memecap.data.synthetic import make_synthetic_dataset
from memecap.data.tables import Example, load_split

SYNTHETIC = "synthetic"


def synthetic_tables(cfg: DataConfig, work_dir: Path) -> dict[str, Path]:
    """Generate the demo set once per settings (a finished set is marked, so a crash regenerates)."""
    s = cfg.synthetic
    root = Path(work_dir) / "data" / f"synthetic-{s.n_train}-{s.n_val}-{s.image_size}-{s.seed}"
    done = root / ".complete"
    if not done.exists():
        make_synthetic_dataset(root, n_train=s.n_train, n_val=s.n_val, image_size=s.image_size, seed=s.seed)
        done.touch()
    return {"train": root / "train.tsv", "val": root / "val.tsv"}


def load_train_val(cfg: DataConfig, *, work_dir: Path, log: Callable[[str], None] = print,
                   check_cache: Path | None = None) -> tuple[list[Example], list[Example]]:
    train, val = cfg.train, cfg.val
    if train == SYNTHETIC:
        tables = synthetic_tables(cfg, work_dir)
        train, val = tables["train"], tables["val"]
    if not train:
        raise ValueError("data.train is empty: name a table (.tsv/.csv/.jsonl), hf:..., or 'synthetic'")
    cache = Path(work_dir) / "data"
    splits = []
    for name, path, cap in (("train", train, cfg.max_train_rows), ("val", val, cfg.max_val_rows)):
        examples, report = load_split(path, image_dir=cfg.image_dir, on_bad_row=cfg.on_bad_row, max_rows=cap,
                                      cache_dir=cache, log=log, check_cache=check_cache)
        if not examples:
            raise ValueError(f"data.{name}={path}: no usable rows")
        log(f"data.{name}: {path}: {len(examples)} images, {sum(len(e.captions) for e in examples)} captions")
        splits.append(examples)
    return splits[0], splits[1]
