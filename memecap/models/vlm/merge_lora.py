"""A vision-language model: the LoRA adapters merged into it, exported whole (mode full). The
export's `model/` folder is then a plain transformers model folder on its own: its processing
files (tokenizer, image processor, chat template) are written beside the weights, so
`AutoModelForImageTextToText.from_pretrained(DIR / "model")`, vLLM, SGLang and TGI load it with
no memecap installed."""
from __future__ import annotations

import shutil
from pathlib import Path

from memecap.config import model_config_from_export
from memecap.models.dtypes import merge_dtype
from memecap.models.export import note_merge, read_export_config
from memecap.models.lora import merged_into_base


def merge_vlm(folder: Path, out_dir: Path, *, dtype: str) -> None:
    from memecap.inference.exported import exported_generation
    from memecap.models.vlm.model import MODEL_DIR, PROCESSOR_DIR, Vlm

    cfg = model_config_from_export(read_export_config(folder)["model"])
    v = cfg.vlm
    if v.mode != "lora" and v.vision != "lora":
        raise ValueError(f"{folder}: the model was trained whole (mode={v.mode}, vision={v.vision}): nothing to merge")
    base = f"{v.name}" + (f" ({v.revision})" if v.revision else "")
    was = f"{v.quantization} quantized" if v.quantization != "none" else v.dtype
    # A 4-bit base is loaded again in 16/32 bits, never dequantized.
    v.quantization, v.dtype = "none", merge_dtype(dtype)
    vlm = Vlm.from_pretrained(folder, cfg=cfg)
    vlm.model = merged_into_base(vlm.model)
    # Whole weights are exported (and read back by memecap) as trained ones are.
    v.mode, v.vision, v.dtype = "full", "frozen", "auto"
    vlm.save_pretrained(out_dir, generation=exported_generation(folder))
    standalone = Path(out_dir) / MODEL_DIR
    for item in (Path(out_dir) / PROCESSOR_DIR).iterdir():
        if item.is_file() and not (standalone / item.name).exists():
            shutil.copy2(item, standalone / item.name)
    note_merge(out_dir, f"LoRA adapter merged into `{base}` (in {merge_dtype(dtype)}; trained on it {was}); "
                        f"`{MODEL_DIR}/` is a plain transformers model folder",
               {"export": str(Path(folder).resolve()), "base": v.name, "revision": v.revision,
                "dtype": merge_dtype(dtype)})
