"""A train split read as a stream (`data.streaming=true`): what a run knows of it before reading any image.

Its files (.jsonl tables, WebDataset-style .tar shards), the rows in each (counted once and kept in the
cache: counting a tar shard reads it whole), its fingerprint (what a checkpoint records so a resume on
other data is refused), and the captions of its first rows (what a tokenizer built from the data, or the
constant-caption floor, reads). The rows themselves are read later, batch by batch (memecap/data/streaming.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Optional, Sequence

from memecap.data.fingerprint import forget_digest, remember_digest, stat_key
from memecap.data.streaming import (RowStream, StreamPosition, StreamRow, rows_per_file, rows_per_process,
                                    shard_paths)
from memecap.data.tables import Example

STREAMABLE = (".jsonl", ".tar")
HEAD_ROWS = 20_000  # rows whose captions stand for the split where all of them cannot be held
_EDGE_BYTES = 1 << 20  # a file's fingerprint hashes its first and last MiB (and its size): cheap at terabytes


@dataclass(frozen=True)
class StreamedSplit:
    key: str  # the config key that names it, for messages
    paths: tuple[Path, ...]
    counts: Optional[tuple[int, ...]]  # rows per file; None when `data.train_rows` declares the total instead
    declared_rows: Optional[int]
    image_dir: Optional[str]
    on_bad_row: str

    @property
    def rows(self) -> int:
        return self.declared_rows if self.counts is None else sum(self.counts)

    def rows_per_process(self, world_size: int) -> list[int]:
        """What each process reads; with a declared total, an even share (a process that meets fewer
        rows than that says so when it runs out)."""
        if self.counts is None:
            return [self.declared_rows // world_size] * world_size
        return rows_per_process(list(self.counts), world_size)

    def stream(self, *, rank: int, world_size: int, position: Optional[StreamPosition] = None,
               order_seed: Optional[int] = None, log: Optional[Callable[[str], None]] = None) -> RowStream:
        """This process's rows; each one skipped as bad (data.on_bad_row=skip) is said through `log`."""
        said = skip_teller(log)
        # Images are not checked here: the reader decodes each (or finds what its bytes gave in the cache).
        return RowStream(list(self.paths), rank=rank, world_size=world_size, position=position,
                         on_bad_row=self.on_bad_row, order_seed=order_seed, image_dir=self.image_dir, on_skip=said,
                         check_images=False)

    def head(self, rows: int = HEAD_ROWS) -> list[Example]:
        """The first `rows` good rows, in file order (their images are not read; a tar sample's is None)."""
        return stream_examples(list(islice(RowStream(list(self.paths), on_bad_row="skip", image_dir=self.image_dir,
                                                     check_images=False), rows)))

    def fingerprint(self) -> dict:
        """In the shape of data/fingerprint.split_fingerprint: rows, and digests of the files' names,
        sizes and edges (an image inside a shard that changed size or bytes at its edges shows)."""
        digest = hashlib.sha256()
        for path in self.paths:
            digest.update(f"{path.name}\t{path.stat().st_size}\t{_edges_sha256(path)}\n".encode())
        files = digest.hexdigest()
        return {"rows": self.rows, "images": self.rows, "captions_sha256": files, "images_sha256": files}


def open_streamed_split(specs: Sequence[str], *, key: str, image_dir: Optional[str], on_bad_row: str,
                        declared_rows: Optional[int], counts_dir: Optional[Path],
                        log: Callable[[str], None]) -> StreamedSplit:
    """The split of `specs` (each a file, a folder of them or `name-{000..099}.tar`), its rows counted
    (or kept from an earlier count of the same files) unless `declared_rows` says how many there are."""
    paths: list[Path] = []
    for spec in specs:
        try:
            found = shard_paths(str(spec))
        except FileNotFoundError as err:
            raise ValueError(f"{key}: {err}") from None
        for path in found:
            if path.suffix not in STREAMABLE:
                raise ValueError(f"{key}: data.streaming=true reads .jsonl tables and .tar shards, not {path}: "
                                 f"convert it to .jsonl (one JSON object a line) or set data.streaming=false")
        paths += found
    counts = None if declared_rows is not None else tuple(RowCounts(counts_dir).of(paths))
    split = StreamedSplit(key, tuple(paths), counts, declared_rows, image_dir, on_bad_row)
    if split.rows == 0:
        raise ValueError(f"{key}: no rows in {len(paths)} file(s)")
    how = "declared by data.train_rows" if counts is None else "counted"
    log(f"{key}: streamed from {len(paths)} file(s), {split.rows} rows ({how})")
    return split


class ImageSpool:
    """Files for the images a tar shard holds as bytes, while they are read: named by their digest, so
    the caches (keyed by content) find them; a table row's image is read where it is. In memory where
    the system has a RAM folder (a batch's images at most): a disk's small-file writes can cost more
    than reading the image (measured 1.7 ms against 0.1 ms per image, docs/benchmarks.md)."""

    def __init__(self):
        ram = "/dev/shm"
        self.folder = Path(tempfile.mkdtemp(prefix="memecap-stream-",
                                            dir=ram if os.path.isdir(ram) and os.access(ram, os.W_OK) else None))

    def paths(self, rows: Sequence[StreamRow]) -> list[Path]:
        return [row.image if isinstance(row.image, Path) else self._write(row.image) for row in rows]

    def _write(self, data: bytes) -> Path:
        digest = hashlib.sha256(data).hexdigest()
        path = self.folder / digest
        path.write_bytes(data)
        remember_digest(stat_key(path), digest)  # the caches' key, known without reading the file again
        return path

    def release(self, paths: Sequence[Path]) -> None:
        for path in paths:
            if path.parent == self.folder:
                forget_digest(path)  # so the digests known stay a batch's, not the stream's
                path.unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def stream_examples(rows: Sequence[StreamRow], paths: Optional[Sequence[Path]] = None) -> list[Example]:
    """The rows as examples, their images at `paths` (spooled where a shard holds bytes); without
    `paths`, a table row's image path and None for a tar sample's (captions only)."""
    if paths is None:
        paths = [r.image if isinstance(r.image, Path) else None for r in rows]
    return [Example(r.uid, path, r.captions, r.source, r.line) for r, path in zip(rows, paths)]


def skip_teller(log: Optional[Callable[[str], None]]) -> Optional[Callable]:
    """What a stream calls with each row it skips as bad: said through `log`, named."""
    return (lambda problem: log(f"{problem} (skipped)")) if log is not None else None


class RowCounts:
    """Rows per file, kept in `<cache.dir>/stream_counts.json` under the file's path, size and time."""

    def __init__(self, folder: Optional[Path]):
        self.path = Path(folder).expanduser() / "stream_counts.json" if folder is not None else None
        try:
            self.known = json.loads(self.path.read_text(encoding="utf-8")) if self.path and self.path.exists() else {}
        except (OSError, ValueError):
            self.known = {}  # unreadable: counted again, and written anew

    def of(self, paths: list[Path]) -> list[int]:
        keys = [_stat_key(p) for p in paths]
        todo = [p for p, k in zip(paths, keys) if not isinstance(self.known.get(k), int)]
        if todo:
            self.known.update(zip((_stat_key(p) for p in todo), rows_per_file(todo)))
            self._write()
        return [self.known[k] for k in keys]

    def _write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".stream_counts.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.known, f)
        os.replace(tmp, self.path)  # concurrent processes: the last complete file wins, none is torn


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _edges_sha256(path: Path) -> str:
    size = path.stat().st_size
    with path.open("rb") as f:
        first = f.read(_EDGE_BYTES)
        f.seek(max(size - _EDGE_BYTES, 0))
        last = f.read(_EDGE_BYTES)
    return hashlib.sha256(first + last).hexdigest()
