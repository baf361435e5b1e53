"""A ClipCap decoder from a local GGUF file (`model.decoder.gguf_file`), converted once into a
plain transformers folder that every later load reads.

transformers reads a GGUF file (config, tokenizer, weights dequantized to float; it needs the
`gguf` package) anew on every `from_pretrained(folder, gguf_file=...)`: for Gemma 3 270M that is
over a minute per process start, its 262k-token vocabulary parsed in Python, then each tensor
dequantized. So the first load writes what transformers made of the file to

    <memecap cache>/gguf/<file stem>-<sha256 of the file, 16 hex>-transformers<version>/
        config.json, generation_config.json, model.safetensors (float32), tokenizer files

and loads from there. The file's digest is in the name, so a changed file gets a new folder; so is
transformers' version, since the conversion is its code. The folder is filled beside its place and
renamed into it whole (`written_once`): a run stopped halfway leaves nothing a later run reads.
`memecap plan` reads a finished folder's config.json but never converts.

The user's config keeps naming their folder and file: exports record those, never the cache.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from functools import partial
from pathlib import Path
from typing import Optional

from memecap.data.fingerprint import file_digest
from memecap.models.packaged import PackageMissing, is_whole, memecap_cache, written_once
from memecap.quiet import no_cpu_accelerator_notice, no_gguf_conversion_bar, quiet_weights

logger = logging.getLogger(__name__)

GGUF_PIP = "gguf==0.19.0"  # pinned in pyproject.toml
# The one GGUF file memecap knows how to get (recipe clipcap_effnet_gemma_ocr): its missing file says how.
FETCHED = {"gemma-3-270m-q4_k_m.gguf": "python scripts/fetch_gemma3_270m.py"}


def gguf_kwargs(name: str, gguf_file: Optional[str]) -> dict:
    """`from_pretrained` keyword arguments for the decoder named `name` (a folder) with `gguf_file`
    inside it: none without a GGUF file; otherwise the file, checked to exist, and the package."""
    if not gguf_file:
        return {}
    path = Path(name) / gguf_file
    if not path.is_file():
        fetch = (f"; to get it, run {FETCHED[gguf_file]} (it prints both overrides)"
                 if gguf_file in FETCHED else "")
        raise FileNotFoundError(f"model.decoder.gguf_file: {path} is not a file; name the folder that holds it "
                                "in model.decoder.name and the file's name inside it in "
                                f"model.decoder.gguf_file{fetch}")
    if importlib.util.find_spec("gguf") is None:
        raise PackageMissing(f"model.decoder.gguf_file: reading {path} needs the gguf package; "
                             f"install it with: pip install {GGUF_PIP}")
    no_gguf_conversion_bar()
    return {"gguf_file": gguf_file}


def conversion_folder(name: str, gguf_file: str) -> Path:
    """Where the conversion of the file's present bytes by the installed transformers is kept."""
    path = Path(name) / gguf_file
    version = importlib.metadata.version("transformers")
    return memecap_cache() / "gguf" / f"{path.stem}-{file_digest(path)[:16]}-transformers{version}"


def converted_folder(name: str, gguf_file: str) -> Optional[Path]:
    """The file's finished conversion, or None if no load has made it yet."""
    gguf_kwargs(name, gguf_file)
    folder = conversion_folder(name, gguf_file)
    return folder if is_whole(folder) else None


def gguf_decoder_folder(name: str, gguf_file: str) -> Path:
    """The transformers folder of the GGUF file `gguf_file` inside `name`, converted on first use."""
    gguf_kwargs(name, gguf_file)
    target = conversion_folder(name, gguf_file)
    if is_whole(target):
        return target
    logger.info("converting %s into a transformers folder once (later loads read it): %s",
                Path(name) / gguf_file, target)
    return written_once(target, partial(write_conversion, name, gguf_file))


@quiet_weights()
def write_conversion(name: str, gguf_file: str, out_dir: Path) -> None:
    """What transformers reads from the file, saved: float32 weights are the values it dequantizes
    to, so loading them in any dtype casts them as loading the GGUF file would."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    source = {"gguf_file": gguf_file, "trust_remote_code": False}
    AutoTokenizer.from_pretrained(name, **source).save_pretrained(out_dir)
    # dequantize=True: no GGUF blocks left packed (transformers keeps some architectures' packed when
    # the `kernels` package is installed), and a plain model after, whose saved config names no
    # GGUF file for the next load to look for.
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True), **source)
    no_cpu_accelerator_notice()
    model.save_pretrained(out_dir)
