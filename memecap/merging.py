"""`memecap export RUN_OR_EXPORT --merge --out DIR`: the LoRA adapter merged into its base.

The base is loaded again in 16 (or 32) bits for the merge, whatever the run trained on: a 4-bit
base (QLoRA) is never dequantized and merged into, which loses what the 4-bit rounding lost
(the weights become the rounded ones plus an adapter trained for them). Each family's `merge`
(memecap/models/<family>/) writes a memecap export whose trained part is whole (`mode: full`), so
memecap loads it like any other; the vlm family's `model/` folder is also a plain transformers
model folder (processor, chat template and generation config included) that transformers, vLLM,
SGLang or TGI load with no memecap installed.

Then the captions of a fixed sample are compared, before and after (greedy decoding): equal, or
the differences shown. A merge into a 16-bit base from a 32-bit or 4-bit run may change a few.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

MERGE_DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class MergeReport:
    source: Path  # the export merged
    out: Path
    sample: int  # images captioned before and after
    differing: list = field(default_factory=list)  # (image, caption before, caption after)
    source_bytes: int = 0  # the export's own files (its base is downloaded beside it)
    merged_bytes: int = 0
    load_seconds: tuple = (0.0, 0.0)  # loading the export (base + adapter), loading the merged one

    def format(self) -> str:
        equal = self.sample - len(self.differing)
        lines = [f"merged {self.source} -> {self.out}",
                 f"  size: {_mib(self.source_bytes)} export (+ its base) -> {_mib(self.merged_bytes)} merged, whole",
                 f"  load: {self.load_seconds[0]:.1f} s (base + adapter) -> {self.load_seconds[1]:.1f} s merged",
                 f"  greedy captions of {self.sample} sample images: {equal} equal, {len(self.differing)} differ"]
        for image, before, after in self.differing[:5]:
            lines += [f"    {image}:", f"      before: {before}", f"      after:  {after}"]
        return "\n".join(lines)


def merge_export(source: Path, out: Path, *, dtype: str = "auto", images: Optional[Sequence[Path]] = None,
                 sample: int = 8, device: Optional[str] = None) -> MergeReport:
    """Merge the export at `source` (a run, export or checkpoint folder) into `out`, a new folder."""
    from memecap.inference.exported import resolve_export
    from memecap.models import FAMILIES, family_module
    from memecap.models.export import read_export_config
    from memecap.quiet import no_cpu_accelerator_notice, quiet_weights

    no_cpu_accelerator_notice()  # saving imports DeepSpeed through Accelerate where it is installed
    if dtype not in MERGE_DTYPES:
        raise ValueError(f"--dtype {dtype}: one of {', '.join(MERGE_DTYPES)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out}: exists and is not empty; name a new folder (nothing is overwritten)")
    folder = resolve_export(Path(source))
    family = read_export_config(folder).get("family")
    module = family_module(family) if family in FAMILIES else None
    if module is None or not hasattr(module, "merge"):
        raise ValueError(f"{folder}: a {family} model has no adapter to merge")
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")  # renamed into place once whole
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with quiet_weights():
            module.merge(folder, partial, dtype=dtype)
        os.replace(partial, out)  # an empty `out` is replaced whole
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    report = compare_captions(folder, out, images=images, sample=sample, device=device)
    report.source_bytes, report.merged_bytes = _folder_bytes(folder), _folder_bytes(out)
    return report


def compare_captions(before: Path, after: Path, *, images: Optional[Sequence[Path]], sample: int,
                     device: Optional[str]) -> MergeReport:
    """Greedy captions of the same images by both models (loaded one at a time)."""
    import torch

    from memecap.config import GenerationConfig
    from memecap.data.synthetic import sample_images
    from memecap.inference.exported import caption_paths, default_device, exported_generation
    from memecap.models import load_model

    where = torch.device(device) if device else default_device()
    sources = list(images)[:sample] if images else sample_images(sample, seed=0)
    names = [str(p) for p in images][:sample] if images else [f"sample image {i}" for i in range(len(sources))]
    base = exported_generation(before) or GenerationConfig()
    greedy = GenerationConfig(strategy="greedy", max_new_tokens=base.max_new_tokens, quote=base.quote)
    captions, seconds = [], []
    for folder in (before, after):
        start = time.perf_counter()
        model = load_model(folder, with_encoder=True)
        seconds.append(time.perf_counter() - start)
        captions.append([caps[0] for caps in caption_paths(model, sources, greedy, device=where, progress=False)])
        del model
    differing = [(name, b, a) for name, b, a in zip(names, *captions) if b != a]
    return MergeReport(Path(before), Path(after), len(sources), differing, load_seconds=tuple(seconds))


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and not p.is_symlink())


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
