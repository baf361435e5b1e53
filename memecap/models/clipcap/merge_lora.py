"""ClipCap: the decoder's LoRA adapter merged into the decoder, exported whole (mode full)."""
from __future__ import annotations

from pathlib import Path

from memecap.config import model_config_from_export
from memecap.models.dtypes import merge_dtype
from memecap.models.export import note_merge, read_export_config
from memecap.models.lora import merged_into_base


def merge_clipcap(folder: Path, out_dir: Path, *, dtype: str) -> None:
    from memecap.inference.exported import exported_generation
    from memecap.models.clipcap.model import ClipCap

    cfg = model_config_from_export(read_export_config(folder)["model"])
    d = cfg.decoder
    if d.mode != "lora":
        raise ValueError(f"{folder}: its decoder is {d.mode}, not a LoRA adapter: nothing to merge")
    base = f"{d.name}" + (f" ({d.revision})" if d.revision else "")
    was = f"{d.quantization} quantized" if d.quantization != "none" else d.dtype
    # A 4-bit base is loaded again in 16/32 bits, never dequantized.
    d.quantization, d.dtype = "none", merge_dtype(dtype)
    model = ClipCap.from_pretrained(folder, with_encoder=False, cfg=cfg)
    model.decoder = merged_into_base(model.decoder)
    # A whole decoder is exported as a trained one is; it loads in float32 (memecap's rule for
    # trained weights) unless the export is read by plain transformers.
    d.mode, d.dtype = "full", "auto"
    model.save_pretrained(out_dir, generation=exported_generation(folder))
    note_merge(out_dir, f"LoRA adapter merged into the decoder `{base}` (loaded in {merge_dtype(dtype)}; "
                        f"trained on it {was})",
               {"export": str(Path(folder).resolve()), "base": d.name, "revision": d.revision,
                "dtype": merge_dtype(dtype)})
