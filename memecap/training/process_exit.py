"""Ending a process of a multi-process launch (`accelerate launch`, torchrun, DeepSpeed).

Gloo's worker threads release a finished collective's tensors on their own schedule. When that
happens while the interpreter is finalizing, the thread cannot take the GIL, Python unwinds it
with `pthread_exit` from inside a C++ destructor, and the whole process aborts ("terminate
called without an active exception", SIGABRT) after a run that succeeded; the launcher then
kills the other ranks and reports a failure. A core dump of such an abort shows
`~AsyncAllgatherWork` in `ProcessGroupGloo::runLoop` waiting for the GIL during `Py_FinalizeEx`.
`destroy_process_group` does not join those threads, so a launched process skips finalization
once everything it writes is closed.
"""
from __future__ import annotations

import logging
import os
import sys


def launched_with_peers() -> bool:
    """Whether this process is one of several started by a distributed launcher."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def end_launched_process(code: int) -> int:
    """Return `code`; in a process of a multi-process launch, exit with it right away instead."""
    if not launched_with_peers():
        return code
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
