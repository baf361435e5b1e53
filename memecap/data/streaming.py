"""Train rows read lazily from big .jsonl tables and WebDataset-style .tar shards, split by process, resumable.

Nothing here holds a split in memory: rows are read one at a time, so millions of images cost the memory of one.
Each process reads only its share: whole shards when there are at least as many shards as processes (cheap:
a process never opens the others' files), else every world_size-th row. The position (shard index + rows read
in it) is what a checkpoint stores so a resumed run reads exactly the rows it had not yet read.
"""

from __future__ import annotations

import io
import json
import random
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from memecap.data.tables import _json_row
from memecap.data.validation import DataError, Problem

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CAPTION_SUFFIXES = (".txt", ".json")
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass(frozen=True)
class StreamRow:
    """One sample: `image` is the file's bytes (tar shards) or a path (tables); `source:line` name it."""

    source: str
    line: int
    uid: str
    captions: tuple[str, ...]
    image: bytes | Path


@dataclass(frozen=True)
class StreamPosition:
    """Where one process stands: `shard` indexes its own shard list, `offset` counts rows read in that shard.

    In row-split mode (fewer shards than processes) `shard` stays 0 and `offset` counts this process's rows.
    A Hugging Face dataset's stream keeps its own resumable `state` (its `state_dict()`) besides the count.
    """

    shard: int = 0
    offset: int = 0
    state: dict | None = None

    def to_dict(self) -> dict:
        return {"shard": self.shard, "offset": self.offset, **({"state": self.state} if self.state else {})}

    @classmethod
    def from_dict(cls, state: dict) -> StreamPosition:
        return cls(int(state["shard"]), int(state["offset"]), state.get("state"))


def shard_paths(spec: str) -> list[Path]:
    """`train-{000000..000099}.tar` (zero padding kept), a folder of .tar/.jsonl files, or one file."""
    match = _BRACES.search(spec)
    if match:
        first, last = match.group(1), match.group(2)
        width = len(first)
        names = [spec[:match.start()] + str(i).zfill(width) + spec[match.end():]
                 for i in range(int(first), int(last) + 1)]
        paths = [Path(n) for n in names]
    else:
        root = Path(spec)
        paths = sorted(p for p in root.iterdir() if p.suffix in (".tar", ".jsonl")) if root.is_dir() else [root]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"data.train {spec!r}: {len(missing)} file(s) missing, first {missing[0]}")
    if not paths:
        raise FileNotFoundError(f"data.train {spec!r}: no .tar or .jsonl files found")
    return paths


def count_rows(paths: list[Path]) -> int:
    """Rows in all files (see `rows_per_file`)."""
    return sum(rows_per_file(paths))


def rows_per_file(paths: list[Path]) -> list[int]:
    """Rows of each file, cheaply: non-blank lines of a .jsonl; a `<shard>.count` sidecar, else samples, of a .tar."""
    counts = []
    for path in paths:
        if path.suffix == ".jsonl":
            with path.open("rb") as f:
                counts.append(sum(1 for raw in f if raw.strip()))
        else:
            sidecar = path.with_name(path.name + ".count")
            counts.append(int(sidecar.read_text().strip()) if sidecar.is_file() else sum(1 for _ in _tar_samples(path)))
    return counts


def rows_per_process(counts: list[int], world_size: int) -> list[int]:
    """Rows each process reads of files holding `counts` rows, split as `RowStream` splits them."""
    if len(counts) >= world_size:
        return [sum(counts[rank::world_size]) for rank in range(world_size)]
    total = sum(counts)
    return [(total - rank + world_size - 1) // world_size for rank in range(world_size)]


class RowStream:
    """The rows of `paths` that belong to process `rank` of `world_size`, from `position` on.

    Iterating advances `position`; bad rows are skipped and counted in `skipped` (on_bad_row="skip")
    or raise DataError naming file and row ("error"). Skipped rows still count as read, so resume stays exact.
    `order_seed` shuffles the order files are read in (each process's own files, or all of them when rows
    are split), the same way for the same seed, so a position still points at the same rows.
    `image_dir` is where a table's images live when not next to it (as `data.image_dir`).
    """

    def __init__(self, paths: list[Path], *, rank: int = 0, world_size: int = 1,
                 position: StreamPosition | None = None, on_bad_row: str = "error", order_seed: int | None = None,
                 image_dir: str | None = None, on_skip: Callable[[Problem], None] | None = None,
                 check_images: bool = True):
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"data.on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        self.by_shard = len(paths) >= world_size
        self.paths = list(paths[rank::world_size] if self.by_shard else paths)
        if order_seed is not None:
            random.Random(order_seed).shuffle(self.paths)
        self.image_dir = image_dir
        self.on_skip = on_skip  # told of each row skipped as bad (to name it in the run's log)
        # A tar sample's image header read here; off where the reader decodes the image anyway (training
        # meets an unreadable one there, named the same way) or wants only the captions.
        self.check_images = check_images
        self.rank, self.world_size = rank, world_size
        self.position = position or StreamPosition()
        self.on_bad_row = on_bad_row
        self.skipped = 0

    def __iter__(self) -> Iterator[StreamRow]:
        return kept_rows(self._shard_rows() if self.by_shard else self._strided_rows(), self)

    def _shard_rows(self):
        for index in range(self.position.shard, len(self.paths)):
            skip = self.position.offset if index == self.position.shard else 0
            for number, row in enumerate(_file_rows(self.paths[index], self.image_dir, self.check_images), start=1):
                if number <= skip:
                    continue
                self.position = StreamPosition(index, number)
                yield row
            self.position = StreamPosition(index + 1, 0)

    def _strided_rows(self):
        mine = 0
        global_index = 0
        for path in self.paths:
            for row in _file_rows(path, self.image_dir, self.check_images):
                global_index += 1
                if (global_index - 1) % self.world_size != self.rank:
                    continue
                mine += 1
                if mine <= self.position.offset:
                    continue
                self.position = StreamPosition(0, mine)
                yield row


def kept_rows(rows: Iterable[StreamRow | Problem], stream) -> Iterator[StreamRow]:
    """The good rows; a bad one raises DataError (`stream.on_bad_row` "error") or is counted in
    `stream.skipped` and told to `stream.on_skip`."""
    for row in rows:
        if isinstance(row, Problem):
            if stream.on_bad_row == "error":
                raise DataError([row])
            stream.skipped += 1
            if stream.on_skip is not None:
                stream.on_skip(row)
            continue
        yield row


def _file_rows(path: Path, image_dir: str | None = None, check_images: bool = True) -> Iterator[StreamRow | Problem]:
    return _jsonl_rows(path, image_dir) if path.suffix == ".jsonl" else _tar_rows(path, check_images)


def _jsonl_rows(path: Path, image_dir: str | None = None) -> Iterator[StreamRow | Problem]:
    source = str(path)
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield Problem(source, number, None, "bad encoding", f"bad UTF-8 at offset {e.start + 1} in the line")
                continue
            raw_row = _json_row(line, source, number, path, image_dir)
            if raw_row.error:
                yield Problem(source, number, raw_row.uid, *raw_row.error)
            elif not raw_row.captions or not all(raw_row.captions):
                yield Problem(source, number, raw_row.uid, "empty caption", "a caption is empty")
            else:
                yield StreamRow(source, number, raw_row.uid, raw_row.captions, raw_row.image_path)


def _tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Consecutive members sharing a key (the name up to its first dot), as WebDataset writes them."""
    key, files = None, {}
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, _, name = member.name.rpartition("/")
            stem, dot, suffix = name.partition(".")
            member_key = f"{folder}/{stem}" if folder else stem
            if member_key != key and key is not None:
                yield key, files
                files = {}
            key = member_key
            files["." + suffix.lower() if dot else ""] = tar.extractfile(member).read()
    if key is not None:
        yield key, files


def _tar_rows(path: Path, check_images: bool = True) -> Iterator[StreamRow | Problem]:
    source = str(path)
    for number, (key, files) in enumerate(_tar_samples(path), start=1):
        uid = key.rpartition("/")[2]
        image = next((files[s] for s in IMAGE_SUFFIXES if s in files), None)
        if image is None:
            yield Problem(source, number, uid, "missing image", f"sample {key!r} has no {'/'.join(IMAGE_SUFFIXES)}")
            continue
        captions = _tar_captions(files)
        if isinstance(captions, str):
            yield Problem(source, number, uid, "bad row", f"sample {key!r}: {captions}")
            continue
        if check_images and not _opens_as_image(image):
            yield Problem(source, number, uid, "bad image", f"sample {key!r}: the image cannot be read")
            continue
        yield StreamRow(source, number, uid, captions, image)


def _tar_captions(files: dict[str, bytes]) -> tuple[str, ...] | str:
    """The captions, or why there are none: a .txt holds one caption a line; a .json text/caption/captions."""
    try:
        if ".txt" in files:
            captions = [c.strip() for c in files[".txt"].decode("utf-8").splitlines()]
        elif ".json" in files:
            obj = json.loads(files[".json"].decode("utf-8"))
            captions = obj.get("captions") or [obj.get("text", obj.get("caption"))] if isinstance(obj, dict) else None
            if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
                return "the .json needs a 'text' or 'caption' string or a 'captions' list"
            captions = [c.strip() for c in captions]
        else:
            return f"no caption file ({'/'.join(CAPTION_SUFFIXES)})"
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"unreadable caption: {e}"
    captions = [c for c in captions if c]
    return tuple(captions) if captions else "the caption is empty"


def _opens_as_image(data: bytes) -> bool:
    """Reads only the header, so a truncated or non-image file is caught without decoding pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.size  # noqa: B018
        return True
    except (UnidentifiedImageError, OSError):
        return False
