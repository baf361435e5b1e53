"""Running the real loop under `accelerate launch` from tests, and saying why a launch failed.

A failed multi-process run prints thousands of lines (both ranks' configs, the launcher's own
traceback); CI shows only part of them. The failure message therefore starts with the lines
that name the cause, then gives the tails.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

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


def holds_flock(pid: int, path: Path) -> bool:
    """Whether process `pid` holds a flock on `path` (the kernel's own list of locks)."""
    inode = f":{path.stat().st_ino} " if path.exists() else None
    text = Path("/proc/locks").read_text()
    return bool(inode) and any(line.split()[1:5] == ["FLOCK", "ADVISORY", "WRITE", str(pid)] and inode in line + " "
                               for line in text.splitlines())
