"""What a run's data is, cheaply: each image's bytes digest, a fingerprint of each split's rows
and images (a checkpoint records it, and a resume on other data is refused), and the image
check's results per table, so a start does not decode every image again.

An image is known by (path, size, modification time in ns): an unchanged file is hashed and
decoded once, an edited one (its time changes) is hashed and checked again.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

# Bump when the image check looks at something new: results of an older check are not reused.
CHECK_VERSION = 1
CHECKS_FOLDER = "image_checks"

StatKey = tuple[str, int, int]


def stat_key(path: Path) -> StatKey:
    st = os.stat(path)
    return str(path), st.st_size, st.st_mtime_ns


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ImageWork:
    """How many image files this process has hashed and decoded: tests and benchmarks read it to
    show that a start with everything cached reads no image bytes."""

    def __init__(self):
        self._lock = threading.Lock()
        self.hashed = self.decoded = 0

    def count(self, *, hashed: int = 0, decoded: int = 0) -> None:
        with self._lock:  # the check hashes and decodes in threads
            self.hashed += hashed
            self.decoded += decoded


IMAGE_WORK = ImageWork()

# This process's digests: the image check fills it, the fingerprint and the caches read it, so bytes
# are read once. One entry per path (an edited file replaces its entry), packed as (size, mtime_ns)
# and the raw digest in one bytes object, keyed by the path string the Path already holds: about
# 120 bytes an image instead of ~280 for a tuple key and a hex string.
_digests: dict[str, bytes] = {}
_PACKED = struct.Struct("<qq")


def forget_digests() -> None:
    """Know no digest, as a fresh process (tests and benchmarks start over with it)."""
    _digests.clear()


def forget_digest(path: "Path | str") -> None:
    """Know no digest for `path` any more (a file that is about to go: a streamed sample's spooled image)."""
    _digests.pop(str(path), None)


def remember_digest(key: StatKey, digest: str) -> None:
    """A digest known without reading the file (an earlier start's record of it)."""
    _digests[key[0]] = _PACKED.pack(key[1], key[2]) + bytes.fromhex(digest)


def known_digest(key: StatKey) -> Optional[str]:
    """The digest of the file as `key` describes it, if this process knows it."""
    packed = _digests.get(key[0])
    if packed is None or _PACKED.unpack_from(packed) != key[1:]:
        return None
    return packed[_PACKED.size:].hex()


def image_digest(path: "Path | str", key: Optional[StatKey] = None) -> str:
    """SHA-256 of the image file's bytes (the key the feature and OCR caches use too)."""
    key = key or stat_key(path)
    digest = known_digest(key)
    if digest is None:
        digest = file_digest(path)
        IMAGE_WORK.count(hashed=1)
        remember_digest(key, digest)
    return digest


@dataclass(frozen=True)
class CheckResult:
    digest: str
    problem: Optional[tuple[str, str]]  # (kind, detail) as the check reported it
    reduced_from: Optional[tuple[int, int]]  # original size of an image read reduced


class ImageChecks:
    """The decoding check's result for each image of one table, kept in
    `<cache.dir>/image_checks/`; `root=None` keeps nothing. A file that is unreadable or whose
    checksum does not match its contents is ignored (every image is checked again) and said once."""

    def __init__(self, root: Optional[Path], source: str, log: Optional[Callable[[str], None]] = None):
        name = hashlib.sha256(f"{CHECK_VERSION}|{source}".encode()).hexdigest()[:24]
        self.path = Path(root).expanduser() / f"{name}.json" if root is not None else None
        self.known = self._read(log)
        self.now: dict[str, bytes | list] = {}  # an entry as read, or packed (`put`)

    def _read(self, log) -> dict[str, list]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
            images = stored["images"]
            if stored["version"] != CHECK_VERSION or stored["sha256"] != _entries_digest(images):
                raise ValueError("checksum mismatch")
            return images
        except (OSError, ValueError, KeyError, TypeError) as err:
            if log is not None:
                log(f"{self.path}: damaged image-check cache ({type(err).__name__}: {err}); checking every image again")
            return {}

    def get(self, key: StatKey) -> Optional[CheckResult]:
        entry = self.known.get(key[0])
        if entry is None or tuple(entry[:2]) != key[1:]:
            return None
        self.now[key[0]] = entry
        remember_digest(key, entry[2])
        return CheckResult(entry[2], tuple(entry[3]) if entry[3] else None, tuple(entry[4]) if entry[4] else None)

    def put(self, key: StatKey, result: CheckResult) -> None:
        if result.problem is None and result.reduced_from is None:  # most images: packed, 48 bytes, not ~300
            self.now[key[0]] = _PACKED.pack(key[1], key[2]) + bytes.fromhex(result.digest)
        else:
            self.now[key[0]] = [key[1], key[2], result.digest, result.problem, result.reduced_from]

    def save(self, also: Iterable[Path] = ()) -> None:
        """Keep this table's images only (so the file never grows past the table), written atomically:
        those looked up now, and the earlier entries of `also` (the table's images not checked now)."""
        if self.path is None:
            return
        for path in also:
            name = str(path)
            if name not in self.now and name in self.known:
                self.now[name] = self.known[name]
        if self.now == self.known:
            return
        write_atomically(self.path, self._pieces())

    def _pieces(self) -> Iterator[str]:
        # Streamed, so neither the file's text nor the checksum's needs the whole table in memory at once;
        # the checksum comes last, over the same text `_entries_digest` reads back.
        yield f'{{"version": {CHECK_VERSION}, "images": '
        h = hashlib.sha256()
        for piece in _entries_text(self.now):
            h.update(piece.encode())
            yield piece
        yield f', "sha256": "{h.hexdigest()}"}}'


def write_atomically(path: Path, pieces: Iterable[str | bytes]) -> None:
    """Write `pieces` (text as UTF-8) to a temporary file beside `path` and rename it over `path`: a
    reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for piece in pieces:
                f.write(piece.encode() if isinstance(piece, str) else piece)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _entries_text(images: dict, per_piece: int = 4096):
    """`json.dumps(images, sort_keys=True, ensure_ascii=False)` in pieces of `per_piece` entries."""
    keys = sorted(images)
    yield "{"
    for start in range(0, len(keys), per_piece):
        yield (", " if start else "") + ", ".join(
            f"{json.dumps(k, ensure_ascii=False)}: {json.dumps(_entry(images[k]), ensure_ascii=False)}"
            for k in keys[start:start + per_piece])
    yield "}"


def _entry(value: "bytes | list") -> list:
    """An image's entry as stored: [size, mtime_ns, digest, problem, reduced_from]."""
    if isinstance(value, bytes):
        return [*_PACKED.unpack_from(value), value[_PACKED.size:].hex(), None, None]
    return value


def _entries_digest(images: dict) -> str:
    h = hashlib.sha256()
    for piece in _entries_text(images):
        h.update(piece.encode())
    return h.hexdigest()


def split_fingerprint(examples: Sequence) -> dict:
    """Row and image counts and digests of the captions (uid and text, in order) and of the image
    bytes (uid and digest, in order); an image moved to another path with the same bytes is the same data."""
    captions, images = hashlib.sha256(), hashlib.sha256()
    for ex in examples:
        captions.update(json.dumps([ex.uid, list(ex.captions)], ensure_ascii=False).encode() + b"\n")
        images.update(f"{ex.uid}\t{image_digest(Path(ex.image_path))}\n".encode())
    return {"rows": sum(len(ex.captions) for ex in examples), "images": len(examples),
            "captions_sha256": captions.hexdigest(), "images_sha256": images.hexdigest()}


def split_changes(saved: dict, now: dict) -> list[str]:
    """What differs between two split fingerprints, in words."""
    if saved["rows"] != now["rows"] or saved["images"] != now["images"]:
        return [f"{saved['rows']} -> {now['rows']} rows, {saved['images']} -> {now['images']} images"]
    return [what for what, key in (("captions differ", "captions_sha256"), ("image bytes differ", "images_sha256"))
            if saved[key] != now[key]]
