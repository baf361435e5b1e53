"""Dynamic batching: requests that arrive while the model is busy (or within `max_wait_s` of
each other) are captioned in one batch, so N concurrent clients cost far less than N batches.

The model runs in one worker thread; the event loop only queues work and awaits its future.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from PIL import Image

from memecap.config import GenerationConfig


class QueueFull(RuntimeError):
    """More requests wait than the server takes: the client should retry later (503)."""


class ShuttingDown(RuntimeError):
    """The server is stopping: requests already queued finish, new ones are refused (503)."""


@dataclass(frozen=True)
class Captioned:
    captions: list  # `num_return_sequences` captions, best first
    ocr_text: Optional[str]  # the meme's text as the model read it (None: the model reads no text)
    batch_size: int = 1  # how many images were captioned together with this one


# images, settings -> one Captioned per image (batch_size left for the batcher to fill)
RunBatch = Callable[[list, GenerationConfig], list]


@dataclass
class _Job:
    image: Image.Image
    generation: GenerationConfig
    future: Future = field(default_factory=Future)


_STOP = object()


class Batcher:
    def __init__(self, run: RunBatch, *, max_batch: int, max_wait_s: float, max_queue: int,
                 on_batch: Callable[[int, float], None] = lambda size, seconds: None):
        self._run = run
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._jobs: queue.Queue = queue.Queue(maxsize=max_queue)
        self._on_batch = on_batch
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._work, name="memecap-batcher", daemon=True)

    def start(self) -> "Batcher":
        self._thread.start()
        return self

    def waiting(self) -> int:
        return self._jobs.qsize()

    def submit(self, image: Image.Image, generation: GenerationConfig) -> Future:
        """A future of the image's `Captioned`; QueueFull or ShuttingDown instead of waiting."""
        if self._closing.is_set():
            raise ShuttingDown("the server is shutting down")
        job = _Job(image, generation)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._jobs.maxsize} requests are already waiting") from None
        return job.future

    def close(self, timeout: Optional[float] = None) -> None:
        """Refuse new requests, finish the queued ones, stop the worker."""
        self._closing.set()
        if self._thread.is_alive():
            self._jobs.put(_STOP)  # blocks only while the queue is full, which the worker is emptying
            self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            jobs, stop = self._next_batch()
            for group in _same_settings(jobs):
                self._caption(group)
            if stop:
                return

    def _next_batch(self) -> tuple[list, bool]:
        first = self._jobs.get()
        if first is _STOP:
            return [], True
        jobs, deadline = [first], time.monotonic() + self._max_wait_s
        while len(jobs) < self._max_batch:
            try:
                # Whatever queued while the last batch ran is taken at once; then wait out the deadline.
                job = self._jobs.get_nowait() if self._jobs.qsize() else self._jobs.get(
                    timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _caption(self, jobs: list) -> None:
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        start = time.perf_counter()
        try:
            results = self._run([job.image for job in jobs], jobs[0].generation)
        except Exception as err:  # noqa: BLE001 - handed to the waiting requests, never lost
            if len(jobs) == 1:
                jobs[0].future.set_exception(err)
                return
            # One bad image must not fail the others batched with it: each is tried alone.
            for job in jobs:
                self._caption_alone(job)
            return
        self._on_batch(len(jobs), time.perf_counter() - start)
        for job, result in zip(jobs, results):
            job.future.set_result(Captioned(result.captions, result.ocr_text, batch_size=len(jobs)))

    def _caption_alone(self, job: _Job) -> None:
        start = time.perf_counter()
        try:
            (result,) = self._run([job.image], job.generation)
        except Exception as err:  # noqa: BLE001 - the request gets the error as its answer
            job.future.set_exception(err)
            return
        self._on_batch(1, time.perf_counter() - start)
        job.future.set_result(Captioned(result.captions, result.ocr_text, batch_size=1))


def _same_settings(jobs: list) -> list[list]:
    """Jobs grouped by decoding settings, in arrival order: one `generate` call takes one setting."""
    groups: dict = {}
    for job in jobs:
        groups.setdefault(tuple(sorted(asdict(job.generation).items())), []).append(job)
    return list(groups.values())
