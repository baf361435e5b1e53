"""The train and validation examples a config names: tables, HF datasets or the synthetic demo set.
Every table a run trains or validates on, with or without stages, is read here (`load_table`)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from memecap.config import DataConfig
from memecap.data.hf_stream import HfStreamedSplit, open_hf_split
from memecap.data.streamed_split import StreamedSplit, open_streamed_split
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
                   check_cache: Path | None = None) -> tuple["list[Example] | StreamedSplit", list[Example]]:
    """The train and val examples of `data.train` and `data.val` (or the synthetic set); the train
    split as a `StreamedSplit` with `data.streaming`."""
    train, val = cfg.train, cfg.val
    if train == SYNTHETIC:
        tables = synthetic_tables(cfg, work_dir)
        train, val = tables["train"], tables["val"]
    if not train:
        raise ValueError("data.train is empty: name a table (.tsv/.csv/.jsonl), hf:..., or 'synthetic'")
    if cfg.streaming:
        train_split = streamed_train(cfg, [train], key="data.train", check_cache=check_cache, log=log)
    else:
        train_split = load_table(train, cfg, max_rows=cfg.max_train_rows, work_dir=work_dir, log=log,
                                 check_cache=check_cache, key=f"data.train={train}", shown=f"data.train: {train}")
    return train_split, load_table(val, cfg, max_rows=cfg.max_val_rows, work_dir=work_dir, log=log,
                                   check_cache=check_cache, key=f"data.val={val}", shown=f"data.val: {val}")

def streamed_train(cfg: DataConfig, specs: list, *, key: str, check_cache: Path | None,
                   log: Callable[[str], None]) -> "StreamedSplit | HfStreamedSplit":
    """A train split read lazily (`data.streaming`): its files found and its rows counted (or a Hugging
    Face dataset opened as a stream), nothing more."""
    cache_root = check_cache.parent if check_cache is not None else None
    if any(str(spec).startswith("hf:") for spec in specs):
        if len(specs) != 1 or cfg.image_dir is not None:
            raise ValueError(f"{key}: a streamed hf: dataset is read alone, its images come with it "
                             "(no other tables beside it, no data.image_dir)")
        return open_hf_split(str(specs[0]), key=key, on_bad_row=cfg.on_bad_row, declared_rows=cfg.train_rows,
                             cache_dir=cache_root, log=log)
    return open_streamed_split(specs, key=key, image_dir=cfg.image_dir, on_bad_row=cfg.on_bad_row,
                               declared_rows=cfg.train_rows,
                               counts_dir=cache_root, log=log)


def load_table(table, cfg: DataConfig, *, max_rows: int | None, work_dir: Path, log: Callable[[str], None],
               check_cache: Path | None, key: str, shown: str) -> list[Example]:
    """One table's examples, every row validated (`data.on_bad_row`); a table with no usable row is
    refused under its config `key`, the others counted in the log under `shown`."""
    examples, _ = load_split(table, image_dir=cfg.image_dir, on_bad_row=cfg.on_bad_row, max_rows=max_rows,
                             cache_dir=Path(work_dir) / "data", log=log, check_cache=check_cache,
                             check=cfg.check, check_sample=cfg.check_sample)
    if not examples:
        raise ValueError(f"{key}: no usable rows")
    log(f"{shown}: {len(examples)} images, {sum(len(e.captions) for e in examples)} captions")
    return examples
