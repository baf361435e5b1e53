"""Reading the text of many images: cached, in a pool of processes, with a progress bar."""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image
from tqdm.auto import tqdm

from memecap.config import OcrConfig
from memecap.data.fingerprint import image_digest
from memecap.ocr.cache import OcrCache
from memecap.ocr.cleaning import clean_text
from memecap.ocr.engines import ENGINES, TesseractEngine, Word, build_engine, limit_engine_threads

_ENGINES: dict = {}  # per process: an engine is built once, not once per image
_POOL_ALLOWED = True


def read_in_this_process() -> None:
    """From now on, read every image in this process, never in a pool of forked workers (a
    long-lived process with threads of its own, such as the server, calls it)."""
    global _POOL_ALLOWED
    _POOL_ALLOWED = False


def _read_one(engine_name: str, languages: tuple, source) -> list[Word]:
    """Words of one image: a file path, or a PIL image handed in through the Python API."""
    from memecap.data.images import read_image

    key = (engine_name, languages)
    if key not in _ENGINES:
        _ENGINES[key] = build_engine(engine_name, list(languages))
    image = read_image(source)  # an ImageReadError names the file already, and a caller may skip that image
    try:
        return list(_ENGINES[key].read(image))
    except Exception as err:  # noqa: BLE001 - name the image; the pool would otherwise hide which one
        name = source if isinstance(source, str) else "an in-memory image"
        raise RuntimeError(f"OCR failed on {name}: {type(err).__name__}: {err}") from err


def _pool_context():
    """fork on Linux, as torch's DataLoader workers: a worker starts in milliseconds instead of
    importing torch again (seconds each), and it runs no torch code, so the parent's torch
    threads cannot hang it. Elsewhere (macOS, Windows) fork is unsafe or absent: spawn."""
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def read_words(paths: Sequence, cfg: OcrConfig, *, cache_dir: Optional[str | os.PathLike] = None,
               progress: bool = True, desc: str = "reading text") -> tuple[list[list[Word]], Optional[OcrCache]]:
    """The engine's words for each image (from the cache where present) and the cache used."""
    engine = build_engine(cfg.engine, list(cfg.languages))
    engine.check()  # a missing binary or language fails here, in words, before any work
    cache = OcrCache(cache_dir, engine.signature()) if cache_dir else None
    # in-memory images (the Python API) have no file to key the cache with: they are read every time
    digests = [image_digest(Path(p)) if cache and not isinstance(p, Image.Image) else None for p in paths]
    out: list[Optional[list[Word]]] = [cache.get(d) if d else None for d in digests]
    todo = [i for i, words in enumerate(out) if words is None]
    workers = min(cfg.workers or _cpu_count(), len(todo)) if _POOL_ALLOWED else 1
    bar = tqdm(total=len(todo), desc=desc, disable=not progress or not todo, unit="img")

    def done(i: int, words: list[Word]) -> None:
        out[i] = words
        if digests[i]:
            cache.put(digests[i], words)
        bar.update(1)

    languages = tuple(cfg.languages)

    def source(i: int):
        return paths[i] if isinstance(paths[i], Image.Image) else str(paths[i])

    try:
        if workers <= 1:
            for i in todo:
                done(i, _read_one(cfg.engine, languages, source(i)))
        else:
            pool = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_start_worker,
                                       initargs=(os.getpid(),))
            try:
                futures = {pool.submit(_read_one, cfg.engine, languages, source(i)): i for i in todo}
                for future in _as_completed_or_stalled(futures):
                    done(futures[future], future.result())
            except BaseException:
                _end_workers(pool)
                raise
            stalled = [i for future, i in futures.items() if not future.done()]
            if stalled:
                _end_workers(pool)
                print(f"memecap: the OCR workers read nothing for {STALL_SECONDS:.0f} s; reading the "
                      f"{len(stalled)} image(s) left in this process", file=sys.stderr, flush=True)
                for i in stalled:
                    done(i, _read_one(cfg.engine, languages, source(i)))
            else:
                pool.shutdown()
    finally:
        bar.close()
    if cache is not None:
        cache.damaged.report()
    return out, cache


# An image takes seconds (a huge one under a minute). A pool that finishes none for this long is
# stuck: a forked worker can wait forever on a lock or thread pool another thread of this process
# held at the fork (once seen: a CI test of three images hung for ten minutes).
STALL_SECONDS = 180.0


def _as_completed_or_stalled(futures):
    """The futures as they finish; stops early, leaving some unfinished, when none finishes for
    STALL_SECONDS."""
    pending = set(futures)
    while pending:
        finished, pending = wait(pending, timeout=STALL_SECONDS, return_when=FIRST_COMPLETED)
        if not finished:
            return
        yield from finished


def _start_worker(parent: int) -> None:
    """A worker lives only as long as the command: the parent ends it on Ctrl-C, SIGTERM or an
    error, and the kernel (or a watch thread) ends it when the parent dies without a word (SIGKILL,
    a crash, out of memory), instead of leaving a fork of the parent's memory behind."""
    limit_engine_threads()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler, inherited by fork
    if not _die_with_parent():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # it died before the worker could ask to follow it
        os._exit(1)


def _die_with_parent() -> bool:
    """Linux: have the kernel send SIGKILL when the parent exits (prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """Stop now: queued images are dropped and running ones abandoned (shutdown alone would wait
    for every queued image)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()


def read_texts(paths: Sequence, cfg: OcrConfig, *, cache_dir: Optional[str | os.PathLike] = None,
               progress: bool = True, desc: str = "reading text") -> list[str]:
    """The cleaned text written on each image ("" where none was read)."""
    words, _ = read_words(paths, cfg, cache_dir=cache_dir, progress=progress, desc=desc)
    threshold = min_confidence(cfg)
    return [clean_text(w, threshold, cfg.cleaning) for w in words]


def min_confidence(cfg: OcrConfig) -> float:
    """`model.ocr.min_confidence`, or where null the engine's own: a line-by-line reading keeps its
    low-confidence words (most are right), a whole-page reading should not."""
    if cfg.min_confidence is not None:
        return cfg.min_confidence
    cls = ENGINES.get(cfg.engine)
    return float(getattr(cls, "MIN_CONFIDENCE", TesseractEngine.MIN_CONFIDENCE))
