"""A ClipCap decoder from a local GGUF file (`model.decoder.gguf_file`): transformers reads the
file's config, tokenizer and weights (dequantized to float) through `from_pretrained(folder,
gguf_file=...)`, which needs the `gguf` package."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from memecap.models.packaged import PackageMissing

GGUF_PIP = "gguf==0.19.0"  # pinned in pyproject.toml


def gguf_kwargs(name: str, gguf_file: Optional[str]) -> dict:
    """`from_pretrained` keyword arguments for the decoder named `name` (a folder) with `gguf_file`
    inside it: none without a GGUF file; otherwise the file, checked to exist, and the package."""
    if not gguf_file:
        return {}
    path = Path(name) / gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"model.decoder.gguf_file: {path} is not a file; name the folder that holds it "
                                "in model.decoder.name and the file's name inside it in model.decoder.gguf_file")
    if importlib.util.find_spec("gguf") is None:
        raise PackageMissing(f"model.decoder.gguf_file: reading {path} needs the gguf package; "
                             f"install it with: pip install {GGUF_PIP}")
    return {"gguf_file": gguf_file}
