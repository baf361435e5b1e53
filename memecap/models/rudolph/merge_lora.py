"""RuDOLPH: the LoRA adapter merged into the transformer, exported as every weight (mode full)."""
from __future__ import annotations

from pathlib import Path

import torch

from memecap.config import model_config_from_export
from memecap.models.dtypes import merge_dtype
from memecap.models.export import note_merge, read_export_config
from memecap.models.lora import merged_into_base


def merge_rudolph(folder: Path, out_dir: Path, *, dtype: str) -> None:
    from memecap.inference.exported import exported_generation
    from memecap.models.rudolph.model import RuDolph

    cfg = model_config_from_export(read_export_config(folder)["model"])
    r = cfg.rudolph
    if r.mode != "lora":
        raise ValueError(f"{folder}: RuDOLPH was trained with mode={r.mode}, not a LoRA adapter: nothing to merge")
    base = f"{r.name}" + (f" ({r.revision})" if r.revision else "")
    was = r.base_dtype
    r.base_dtype = merge_dtype(dtype)
    model = RuDolph.from_pretrained(folder, cfg=cfg)
    model.rudolph = merged_into_base(model.rudolph.to(getattr(torch, r.base_dtype)))
    r.mode, r.base_dtype = "full", "float32"  # a whole RuDOLPH is exported (and loaded) as a trained one is
    model.save_pretrained(out_dir, generation=exported_generation(folder))
    note_merge(out_dir, f"LoRA adapter merged into `{base}` (in {merge_dtype(dtype)}; trained on a {was} base)",
               {"export": str(Path(folder).resolve()), "base": r.name, "revision": r.revision,
                "dtype": merge_dtype(dtype)})
