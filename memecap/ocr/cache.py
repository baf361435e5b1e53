"""On-disk cache of OCR readings, one small JSON file per image.

Like the feature cache (memecap/features.py): the key covers everything that can change a
reading (the engine's signature: its version, languages and settings) and the image file's
bytes, so a changed image or another engine setting simply misses. The engine's raw words with
their confidences are stored, not the cleaned text: `model.ocr.min_confidence` and the cleaning
apply when a reading is loaded, so changing them re-reads nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

from memecap.ocr.engines import Word


class OcrCache:
    """Readings of one engine signature, under `root/<hash of the signature>/`."""

    def __init__(self, root: str | os.PathLike, engine_signature: str):
        key = hashlib.sha256(engine_signature.encode()).hexdigest()[:24]
        self.dir = Path(os.path.expanduser(str(root))) / key
        self.dir.mkdir(parents=True, exist_ok=True)
        label = self.dir / "engine.txt"  # for a person looking at the folder; never read back
        if not label.exists():
            _write_atomic(label, engine_signature + "\n")
        self.hits = 0
        self.misses = 0

    def _path(self, image_digest: str) -> Path:
        return self.dir / image_digest[:2] / f"{image_digest}.json"

    def get(self, image_digest: str) -> Optional[list[Word]]:
        path = self._path(image_digest)
        if not path.exists():
            self.misses += 1
            return None
        self.hits += 1
        return [Word(text, float(conf), int(line)) for text, conf, line in
                json.loads(path.read_text(encoding="utf-8"))["words"]]

    def put(self, image_digest: str, words: list[Word]) -> None:
        path = self._path(image_digest)
        path.parent.mkdir(exist_ok=True)
        _write_atomic(path, json.dumps({"words": [list(w) for w in words]}, ensure_ascii=False))


def _write_atomic(path: Path, text: str) -> None:
    # Written beside the target then renamed, so a crash or a second process never leaves a torn file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
