"""Running the real loop under `accelerate launch` from tests, and saying why a launch failed.

A failed multi-process run prints thousands of lines (both ranks' configs, the launcher's own
traceback); CI shows only part of them. The failure message therefore starts with the lines
that name the cause, then gives the tails.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from signal import SIGSTOP
from typing import Iterator, Optional

REPO = Path(__file__).resolve().parents[1]
CAUSE = re.compile(r"terminate called|Fatal Python error|Error:|Exception:|exitcode\s*:|Signal \d+|Timed out|Killed")


def accelerate_launch(config_file: str, entry: list[str], env: dict, processes: Optional[int] = None,
                      timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file accelerate_configs/<config_file> [--num_processes N] ENTRY...`"""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "accelerate_configs" / config_file)]
    if processes is not None:
        cmd += ["--num_processes", str(processes)]
    return subprocess.run(cmd + entry, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def launch_failure(proc: subprocess.CompletedProcess) -> str:
    causes = [line for line in (proc.stdout + "\n" + proc.stderr).splitlines() if CAUSE.search(line)]
    return ("\n".join(["exit code %s; the lines naming the cause:" % proc.returncode, *causes[:40],
                       "--- stdout (tail) ---", proc.stdout[-2000:], "--- stderr (tail) ---", proc.stderr[-4000:]]))


def quiet_env() -> dict:
    """The environment a test's memecap process runs in: this checkout, one thread, no Hub."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@contextmanager
def stopped_holding_lock(cmd: list[str], path: Path, timeout: float = 180) -> Iterator[subprocess.Popen]:
    """Start `cmd`, wait until it holds its flock on `path`, and freeze it there (SIGSTOP) while the
    block runs; it is then killed (SIGKILL), dying with the lock held, which the kernel drops."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=quiet_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while (not (path.exists() and holds_flock(proc.pid, path)) and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.02)
        assert path.exists() and holds_flock(proc.pid, path), f"{cmd[:4]} never locked {path}: {proc.poll()=}"
        proc.send_signal(SIGSTOP)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=60)


def holds_flock(pid: int, path: Path) -> bool:
    """Whether process `pid` holds a flock on `path` (the kernel's own list of locks)."""
    inode = f":{path.stat().st_ino} " if path.exists() else None
    text = Path("/proc/locks").read_text()
    return bool(inode) and any(line.split()[1:5] == ["FLOCK", "ADVISORY", "WRITE", str(pid)] and inode in line + " "
                               for line in text.splitlines())
