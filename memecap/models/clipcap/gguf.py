"""A ClipCap decoder from a local GGUF file (`model.decoder.gguf_file`): transformers reads the
file's config, tokenizer and weights (dequantized to float) through `from_pretrained(folder,
gguf_file=...)`, which needs the `gguf` package."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from memecap.models.packaged import PackageMissing
from memecap.quiet import no_gguf_conversion_bar

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
