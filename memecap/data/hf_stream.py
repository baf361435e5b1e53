"""A Hugging Face dataset read as a stream: `data.streaming=true` with `data.train=hf:<id>[@split]`
(a Hub id, a local dataset folder, or `imagefolder:<dir>`).

`datasets` streams it (`streaming=True`: nothing downloaded or converted ahead), each process takes
its part (`split_dataset_by_node`: whole shards where they divide evenly, else every N-th example),
and the stream's own `state_dict()` is the position a checkpoint keeps, so a resumed run reads on
exactly where it stopped. Images stay undecoded: a local file is read where it is, bytes are
spooled like a tar sample's. Its length comes from the dataset's card, or `data.train_rows`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator, Optional

from memecap.data.streamed_split import HEAD_ROWS, skip_teller, stream_examples
from memecap.data.streaming import StreamPosition, StreamRow, kept_rows
from memecap.data.tables import TEXT_COLUMNS, UID_COLUMNS, Example
from memecap.data.validation import DataError, Problem

IMAGE_COLUMN = "image"


@dataclass(frozen=True)
class HfStreamedSplit:
    key: str
    ident: str  # what `load_dataset` is given (or `imagefolder:<dir>`)
    split: str
    rows: int
    on_bad_row: str
    cache_dir: Optional[str]  # the local datasets cache (None: the user's HF cache)

    @property
    def source(self) -> str:
        return f"hf:{self.ident}@{self.split}"

    def rows_per_process(self, world_size: int) -> list[int]:
        """An even share each (a process whose part is shorter reads it again; see training/train_batches.py)."""
        return [self.rows // world_size] * world_size

    def stream(self, *, rank: int, world_size: int, position: Optional[StreamPosition] = None,
               order_seed: Optional[int] = None, log: Optional[Callable[[str], None]] = None) -> "HfRowStream":
        from datasets.distributed import split_dataset_by_node

        dataset = self._dataset()
        if order_seed is not None and dataset.n_shards > 1:
            dataset = dataset.shuffle(seed=order_seed, buffer_size=1)  # the shards' order only: resume stays exact
        if world_size > 1:
            dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
        source = self.source + (f" (process {rank} of {world_size})" if world_size > 1 else "")
        return HfRowStream(dataset, source, position, self.on_bad_row, skip_teller(log))

    def head(self, rows: int = HEAD_ROWS) -> list[Example]:
        return stream_examples(list(islice(HfRowStream(self._dataset(), self.source, None, "skip", None), rows)))

    def fingerprint(self) -> dict:
        """What names the data: the dataset, split and length, and a local folder's file names and sizes."""
        digest = hashlib.sha256(f"{self.ident}|{self.split}|{self.rows}".encode())
        folder = Path(self.ident.removeprefix("imagefolder:"))
        if folder.is_dir():
            for root, dirs, files in sorted(os.walk(folder)):
                dirs.sort()
                for name in sorted(files):
                    digest.update(f"{Path(root, name).relative_to(folder)}\t{Path(root, name).stat().st_size}\n"
                                  .encode())
        files = digest.hexdigest()
        return {"rows": self.rows, "images": self.rows, "captions_sha256": files, "images_sha256": files}

    def _dataset(self):
        import datasets

        if self.ident.startswith("imagefolder:"):
            dataset = datasets.load_dataset("imagefolder", data_dir=self.ident[len("imagefolder:"):],
                                            split=self.split, streaming=True, cache_dir=self.cache_dir)
        else:
            dataset = datasets.load_dataset(self.ident, split=self.split, streaming=True, cache_dir=self.cache_dir)
        names = dataset.column_names or []
        if IMAGE_COLUMN not in names or not any(c in names for c in TEXT_COLUMNS):
            raise DataError([Problem(self.source, 1, None, "bad header",
                                     f"columns {names}: need an {IMAGE_COLUMN!r} column and a text column "
                                     f"({' / '.join(TEXT_COLUMNS)})")])
        # Undecoded: a local file keeps its path, a remote image its bytes; no PIL object is made here.
        return dataset.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))


class HfRowStream:
    """One process's rows of a streamed dataset, from `position` on (its `state` restores the stream)."""

    def __init__(self, dataset, source: str, position: Optional[StreamPosition], on_bad_row: str,
                 on_skip: Optional[Callable[[Problem], None]]):
        self.dataset, self.source, self.on_bad_row, self.on_skip = dataset, source, on_bad_row, on_skip
        self.read = 0
        if position is not None and position.offset:
            if not position.state:
                raise ValueError(f"{source}: the stored position holds no stream state to resume from")
            dataset.load_state_dict(position.state)
            self.read = position.offset
        self.skipped = 0

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(0, self.read, self.dataset.state_dict())

    def __iter__(self) -> Iterator[StreamRow]:
        names = self.dataset.column_names or []
        text_column = next(c for c in TEXT_COLUMNS if c in names)
        uid_column = next((c for c in UID_COLUMNS if c in names), None)
        return kept_rows(self._rows(text_column, uid_column), self)

    def _rows(self, text_column: str, uid_column: Optional[str]) -> Iterator["StreamRow | Problem"]:
        for record in self.dataset:
            self.read += 1
            yield self._row(record, text_column, uid_column)

    def _row(self, record: dict, text_column: str, uid_column: Optional[str]) -> "StreamRow | Problem":
        image = record.get(IMAGE_COLUMN) or {}
        local = image.get("path")
        uid = str(record[uid_column]) if uid_column else (Path(local).stem if local else str(self.read))
        text = record.get(text_column)
        captions = tuple(c.strip() for c in text if isinstance(c, str)) if isinstance(text, list) else (
            ((text or "").strip(),) if isinstance(text, str) or text is None else ())
        if not captions or not all(captions):
            return Problem(self.source, self.read, uid, "empty caption", f"no caption in column {text_column!r}")
        if image.get("bytes"):
            return StreamRow(self.source, self.read, uid, captions, image["bytes"])
        if local and Path(local).is_file():
            return StreamRow(self.source, self.read, uid, captions, Path(local))
        return Problem(self.source, self.read, uid, "missing image", f"no image in column {IMAGE_COLUMN!r}")


def open_hf_split(spec: str, *, key: str, on_bad_row: str, declared_rows: Optional[int],
                  cache_dir: Optional[Path], log: Callable[[str], None]) -> HfStreamedSplit:
    """The streamed split `hf:<id>[@split]`, its length from the dataset's card or `declared_rows`."""
    from memecap.data.tables import _parse_hf

    ident, split = _parse_hf(spec[len("hf:"):])
    probe = HfStreamedSplit(key, ident, split, 0, on_bad_row, str(cache_dir / "hf_datasets") if cache_dir else None)
    dataset = probe._dataset()
    splits = dataset.info.splits or {}
    known = splits[split].num_examples if split in splits and splits[split].num_examples else None
    rows = declared_rows if declared_rows is not None else known
    if rows is None:
        raise ValueError(f"{key}: {probe.source} does not say how many rows it holds: declare them with "
                         f"data.train_rows (the schedule and the processes' shares need a length)")
    log(f"{key}: streamed from {probe.source}, {rows} rows ({'declared' if declared_rows else 'from its card'})")
    return HfStreamedSplit(key, ident, split, rows, on_bad_row, probe.cache_dir)
