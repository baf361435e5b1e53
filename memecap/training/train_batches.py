"""Where the loop's training batches come from: a table read whole (a prepared DataLoader), or a
streamed split (`data.streaming`) read batch by batch. Either gives an epoch's batches from a point
inside it, and says where it stands, so a checkpoint resumes exactly.

A streamed split: each process reads its share (memecap/data/streaming.py) in a file order shuffled
per epoch, takes `train.batch_size` rows per batch and one of each row's captions (drawn per epoch),
reads their images as the model reads them (features from the cache, pixels, codes) and collates.
Every process takes the same number of batches per epoch (the least any process can fill, in whole
accumulations): collective operations stay in step. A checkpoint keeps each process's position; the
resumed run reads from there. The reading happens in the training process, between steps: nothing is
read ahead, so the position after a batch is exactly what that batch consumed.
"""
from __future__ import annotations

import zlib
from itertools import islice
from typing import Callable, Iterable, Iterator, Optional

from accelerate.utils import gather_object, send_to_device

from memecap.data.captions import CaptionTooLong
from memecap.data.streamed_split import ImageSpool, StreamedSplit, stream_examples
from memecap.data.streaming import StreamPosition, StreamRow
from memecap.data.tables import Example
from memecap.data.validation import DataError, Problem
from memecap.training.image_reads import readable_inputs


class TableBatches:
    """A split held in memory: its prepared DataLoader, an epoch resumed by skipping what was consumed."""

    def __init__(self, accelerator, loader):
        self.accelerator, self.loader = accelerator, loader

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, consumed: int, positions: Optional[list]) -> Iterable:
        self.loader.set_epoch(epoch)
        return self.accelerator.skip_first_batches(self.loader, consumed) if consumed else self.loader

    def positions(self) -> Optional[list]:
        return None  # the batch count says where an epoch stands

    def close(self) -> None:
        pass


class StreamBatches:
    """A streamed split's batches for this process (see the module docstring)."""

    def __init__(self, split: StreamedSplit, *, accelerator, read: Callable[[list], object],
                 encode_caption: Callable[[str], list[int]], collate: Callable[[list], dict], batch_size: int,
                 grad_accum: int, seed: int, log: Callable[[str], None]):
        self.split, self.accelerator, self.read = split, accelerator, read
        self.encode_caption, self.collate, self.batch_size, self.seed, self.log = (
            encode_caption, collate, batch_size, seed, log)
        rows = split.rows_per_process(accelerator.num_processes)
        self.batches_per_epoch = (min(rows) // batch_size) // grad_accum * grad_accum
        if self.batches_per_epoch == 0:
            raise ValueError(f"{split.key}: {split.rows} rows give the least-fed of {accelerator.num_processes} "
                             f"process(es) {min(rows)} rows: fewer than one accumulation of batches "
                             f"({grad_accum} x train.batch_size={batch_size})")
        self.position = StreamPosition()
        self.spool = ImageSpool()

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch(self, epoch: int, consumed: int, positions: Optional[list]) -> Iterator[dict]:
        """The epoch's batches from batch `consumed` on (read from this process's saved position)."""
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        start = None
        if consumed:
            if not positions or len(positions) != world:
                raise ValueError(f"{self.split.key}: the checkpoint holds no stream position for {world} "
                                 "process(es): it was not written by a streamed run of this setup")
            start = StreamPosition.from_dict(positions[rank])
        stream = self.split.stream(rank=rank, world_size=world, position=start, order_seed=self.seed + epoch,
                                    log=self.log)
        rows = iter(stream)
        for _ in range(consumed, self.batches_per_epoch):
            chunk = list(islice(rows, self.batch_size))
            if len(chunk) < self.batch_size:
                # Rows skipped as bad (or a declared count above the real one) leave this process short:
                # it reads its share again from the start, so every process still takes the same batches.
                stream = self.split.stream(rank=rank, world_size=world, position=None, order_seed=self.seed + epoch,
                                            log=self.log)
                rows = iter(stream)
                chunk += list(islice(rows, self.batch_size - len(chunk)))
                if len(chunk) < self.batch_size:
                    raise ValueError(f"{self.split.key}: process {rank} of {world} has fewer usable rows than "
                                     f"train.batch_size={self.batch_size}")
            batch = self.make_batch(chunk, epoch)
            self.position = stream.position  # what this batch consumed: a checkpoint after it resumes here
            yield send_to_device(batch, self.accelerator.device)
        self.position = StreamPosition()

    def make_batch(self, rows: list[StreamRow], epoch: int) -> dict:
        """The rows' images as the model reads them, one caption of each (drawn per epoch), collated."""
        paths = self.spool.paths(rows)
        try:
            kept, inputs = readable_inputs(stream_examples(rows, paths), self.read, on_bad_row=self.split.on_bad_row,
                                           split="train", log=self.log)
            items = [{"image": inputs[i], "input_ids": self._caption_ids(ex, epoch)} for i, ex in enumerate(kept)]
            return self.collate(items)
        finally:
            self.spool.release(paths)

    def _caption_ids(self, ex: Example, epoch: int) -> list[int]:
        pick = zlib.crc32(f"{self.seed}|{epoch}|{ex.source}|{ex.line}".encode()) % len(ex.captions)
        try:
            return self.encode_caption(ex.captions[pick])
        except CaptionTooLong as err:
            raise DataError([Problem(ex.source, ex.line, ex.uid, "caption too long", str(err))],
                            hint="data.long_captions=truncate cuts such captions") from None

    def positions(self) -> list:
        """Every process's position (a collective call: every process saves a checkpoint)."""
        mine = [self.position.to_dict()]
        return gather_object(mine) if self.accelerator.num_processes > 1 else mine

    def close(self) -> None:
        self.spool.close()
