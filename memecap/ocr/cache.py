"""On-disk cache of OCR readings, one small JSON file per image.

Like the feature cache (memecap/features.py): the key covers everything that can change a
reading (the engine's signature: its version, languages and settings) and the image file's
bytes, so a changed image or another engine setting simply misses. The engine's raw words with
their confidences are stored, not the cleaned text: `model.ocr.min_confidence` and the cleaning
apply when a reading is loaded, so changing them re-reads nothing. Each entry carries the SHA-256
of its words: a damaged or edited file is a miss, read again and said once (memecap/cache_entries.py).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Optional

from memecap.cache_entries import NO_CHECKSUM, DamagedEntry, DamageTally, payload_sha256
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
        self.damaged = DamageTally(self.dir)

    def _path(self, image_digest: str) -> Path:
        return self.dir / image_digest[:2] / f"{image_digest}.json"

    def get(self, image_digest: str) -> Optional[list[Word]]:
        """The stored words, or None (a miss) where there are none or they cannot be trusted."""
        path = self._path(image_digest)
        try:
            words = _read_entry(path) if path.exists() else None
        except DamagedEntry as err:
            self.damaged.add(image_digest, err)
            words = None
        if words is None:
            self.misses += 1
            return None
        self.hits += 1
        return words

    def put(self, image_digest: str, words: list[Word]) -> None:
        path = self._path(image_digest)
        path.parent.mkdir(exist_ok=True)
        stored = [list(w) for w in words]
        _write_atomic(path, json.dumps({"words": stored, "sha256": _words_sha256(stored)}, ensure_ascii=False))


def _words_sha256(stored: list) -> str:
    return payload_sha256(json.dumps(stored, ensure_ascii=False).encode("utf-8"))


def _read_entry(path: Path) -> list[Word]:
    """An entry's words; DamagedEntry where it is unreadable, edited, malformed or unchecked."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        stored = entry["words"]
        checksum = entry.get("sha256")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DamagedEntry(f"unreadable: {type(err).__name__}: {err}") from None
    if checksum is None:
        raise DamagedEntry(NO_CHECKSUM)
    if checksum != _words_sha256(stored):
        raise DamagedEntry("checksum mismatch")
    try:
        words = [Word(text, float(conf), int(line)) for text, conf, line in stored]
    except (TypeError, ValueError) as err:  # a checksum recomputed over a malformed edit
        raise DamagedEntry(f"malformed words: {err}") from None
    if not all(isinstance(w.text, str) and math.isfinite(w.confidence) for w in words):
        raise DamagedEntry("malformed words")
    return words


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
