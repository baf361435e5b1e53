"""One writer per output file or run folder: an advisory lock (flock) on the file or folder
itself, held for the whole command. The kernel drops it when the process ends however it ends
(a crash, SIGKILL), so a dead run never leaves a stale lock to clear by hand, and a second
command on the same file or folder is refused at once instead of writing beside the first.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: no flock; two commands on one file there are not stopped
    fcntl = None

logger = logging.getLogger(__name__)


class FileBusy(ValueError):
    """Another process holds the output file."""


def _try_lock(fd: int, path: Path, busy: Callable[[], str]) -> None:
    """Take the exclusive lock on `fd` or raise FileBusy; a file system without locks is said once."""
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FileBusy(busy()) from None
    except OSError as err:  # a file system without locks (some network mounts): go on, unguarded
        logger.warning("%s: cannot lock it (%s); a second command writing it would not be stopped",
                       path, err.strerror or err)


@contextmanager
def sole_writer(path: Path, flag: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) until the block ends; `FileBusy`,
    naming the file and `flag`, when another process holds it. A file created here and still
    empty at the end (the command failed before writing) is removed again."""
    path = Path(path)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        _try_lock(fd, path, lambda: f"{path}: another memecap process is writing it; wait for that one to finish "
                                    f"(a rerun then continues where it stopped), or pass another {flag}")
        try:
            yield
        finally:
            if created and os.fstat(fd).st_size == 0:
                _remove(path)  # still ours: the lock is held until the close below
    finally:
        os.close(fd)


@contextmanager
def locked_folder(folder: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on the folder itself until the block ends (no lock file is left in
    it); `FileBusy(busy)` when another process holds it."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        _try_lock(fd, Path(folder), lambda: busy)
        yield
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # an empty file left behind is harmless
