"""OCR conditioning shared by the model families: each image's inputs travel with the token ids
its OCR text becomes (ClipCap's prompt, RuDOLPH's left text)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from memecap.config import OcrConfig


class PromptedImages:
    """Per image: what the model reads of it (features, lazy pixels or VQGAN codes) and the token
    ids of its OCR text. Items are dicts, so the text travels with its image through any dataset."""

    def __init__(self, images, prompt_ids: list[list[int]], texts: list[str]):
        self.images, self.prompt_ids, self.texts = images, prompt_ids, texts

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "prompt_ids": self.prompt_ids[i], "ocr_text": self.texts[i]}


def read_ocr_texts(paths: Sequence, cfg: OcrConfig, *, cache_dir: Optional[str], progress: bool,
                   desc: str) -> list[str]:
    """The cleaned OCR text of each image (a path or a PIL image), cached under `cache_dir/ocr`."""
    from memecap.ocr import read_texts  # Tesseract is needed only once OCR is used

    return read_texts(paths, cfg, cache_dir=Path(cache_dir) / "ocr" if cache_dir else None,
                      progress=progress, desc=f"{desc}: OCR")


def with_ocr_prompts(images, paths: Sequence, cfg: OcrConfig, encode: Callable[[str], list[int]], *,
                     cache_dir: Optional[str], progress: bool, desc: str):
    """`images` as they are without OCR conditioning; with it, each with `encode(its OCR text)`."""
    if not cfg.enabled:
        return images
    texts = read_ocr_texts(paths, cfg, cache_dir=cache_dir, progress=progress, desc=desc)
    return PromptedImages(images, [encode(t) for t in texts], texts)


def require_ocr_text(batch: dict) -> list[str]:
    """The OCR texts of a batch, for generation.quote=copy (a model without OCR has none to copy)."""
    if "ocr_text" not in batch:
        raise ValueError("generation.quote=copy copies the meme's OCR text: it needs a model trained with "
                         "model.ocr.enabled=true")
    return batch["ocr_text"]
