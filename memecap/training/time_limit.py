"""Stopping a run in time to resume it: a wall-clock limit (`train.time_limit`) or SIGUSR1.

A batch scheduler ends a job at its time limit, and a run killed there loses every step since its
last checkpoint. With `train.time_limit=3h50m` the loop instead stops at the last optimizer step
after which less than twice its longest step interval (the evaluations and checkpoints made at a
step's end included) would be left, checkpoints there, and exits with code 0 without writing
`summary.json`; the same command with `train.resume=auto` continues exactly where it stopped.
SIGUSR1 asks for the same stop at the next optimizer step (Slurm: `#SBATCH --signal=USR1@300`).

In a multi-process run every process must stop at the same step, or the others wait forever for
its gradients: a stop asked on any process is shared through Accelerate's trigger (one small
all-reduce per optimizer step).
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Optional

from memecap.config_checks import duration_seconds

clock = time.monotonic  # what a time limit is measured on (a test steps it)


class StopForResume:
    """Decides, at each optimizer step's end, whether the run stops there to be resumed later.

    Used as a context manager around the training: it installs the SIGUSR1 handler (in the main
    thread) and restores the previous one on the way out."""

    def __init__(self, time_limit: Optional[str], started: Optional[float] = None):
        self.limit = duration_seconds("train.time_limit", time_limit) if time_limit is not None else None
        self.started = clock() if started is None else started
        self.last_boundary = self.started
        self.longest_interval = 0.0
        self.signalled = False
        self.stopped = False
        self.reason = ""
        self._previous = None

    def __enter__(self) -> "StopForResume":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR1, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None

    def _on_signal(self, signum, frame) -> None:
        self.signalled = True  # acted on at the next step's end, where a checkpoint is consistent

    def restart_interval(self) -> None:
        """Whatever ran before the first step of a stage (building it, a first evaluation) is not a step."""
        self.last_boundary = clock()

    def wants_stop(self) -> bool:
        """This process's own view, at a step's end: SIGUSR1 came, or another step and a checkpoint
        might not fit in the time left."""
        now = clock()
        self.longest_interval = max(self.longest_interval, now - self.last_boundary)
        self.last_boundary = now
        if self.signalled:
            self.reason = "SIGUSR1"
            return True
        if self.limit is None:
            return False
        left = self.limit - (now - self.started)
        if left < 2 * self.longest_interval:
            self.reason = (f"train.time_limit: {format_seconds(left)} of {format_seconds(self.limit)} left, "
                           f"and a step took up to {format_seconds(self.longest_interval)}")
            return True
        return False

    def should_stop(self, accelerator) -> bool:
        """Whether every process stops at this step's end (the same answer on all of them)."""
        if self.wants_stop():
            accelerator.set_trigger()
        self.stopped = accelerator.check_trigger()
        if self.stopped and not self.reason:
            self.reason = "another process was asked to stop"
        return self.stopped


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
