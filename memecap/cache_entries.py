"""Trusting what the feature and OCR caches read back.

Each entry carries a SHA-256 of its payload. An entry that is empty, truncated, unparsable,
edited by hand (its checksum no longer matches), holds non-finite numbers, or was written by a
memecap that stored no checksum is not used: it is a miss, recomputed and overwritten, and the
pass says so in one line instead of failing or training on it.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from memecap.outputs.file_names import shown

logger = logging.getLogger(__name__)

NO_CHECKSUM = "no checksum"  # the reason of an entry written before entries carried one


class DamagedEntry(ValueError):
    """A cache entry that must not be used; the message says why."""


def payload_sha256(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))  # lengths first: ("ab", "c") and ("a", "bc") differ
        h.update(part)
    return h.hexdigest()


class DamageTally:
    """The damaged entries one pass met (digest -> reason), said once at the end of the pass."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.entries: dict[str, str] = {}

    def add(self, key: str, err: Exception) -> None:
        self.entries[key] = str(err)

    def note(self) -> str:
        older = sum(reason == NO_CHECKSUM for reason in self.entries.values())
        return (f"{len(self.entries)} damaged cache entries in {shown(str(self.folder))} were recomputed"
                + (f" ({older} written by an older memecap without a checksum)" if older else ""))

    def report(self) -> None:
        if self.entries:
            logger.warning(self.note())
