"""How a memecap process ends: on Ctrl-C or SIGTERM, and in a multi-process launch.

Ctrl-C and SIGTERM (`kill`, `timeout`, a scheduler cancelling a job) stop a command the same way:
the exception unwinds the command (its worker processes are ended, files being written are left
as partial files that are never mistaken for complete ones), and the user reads one line, not a
traceback; the exit code is 128 + the signal's number, as a shell reports a process killed by it.

Ending a process of a multi-process launch (`accelerate launch`, torchrun, DeepSpeed):

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
import signal
import sys
import threading
from typing import Callable


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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt: `except Exception`
    handlers let it through, `finally` blocks and context managers run."""


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def run_stoppable(command: Callable[[], int]) -> int:
    """`command()`'s exit code; stopped by Ctrl-C or SIGTERM, one line on stderr and 130 or 143."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
    try:
        return command()
    except KeyboardInterrupt as err:
        name, number = ("SIGTERM", signal.SIGTERM) if isinstance(err, Terminated) else ("Ctrl-C", signal.SIGINT)
        print(f"memecap: stopped by {name}", file=sys.stderr)
        return 128 + number
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
