"""Stopping a command: Ctrl-C and SIGTERM end it with one line (exit 130 / 143), and its OCR
worker processes end with it, even when the parent is killed outright. Real processes, real
signals, the real CLI over real images read by Tesseract."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.ocr_images import IMAGES, draw

REPO = Path(__file__).resolve().parents[1]
ROWS = 40  # enough reading for two workers to be busy for seconds when the signal comes

pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None or not sys.platform.startswith("linux"),
                                reason="needs Tesseract and Linux process semantics")


@pytest.fixture(scope="module")
def many_text_images(tmp_path_factory) -> Path:
    """A table of ROWS distinct images (so none is a cache hit for another)."""
    root = tmp_path_factory.mktemp("stopping")
    (root / "images").mkdir()
    rows = []
    for i in range(ROWS):
        _, lines, style = IMAGES[i % len(IMAGES)]
        draw(root / "images" / f"{i}.jpg", [*lines[:-1], f"{lines[-1]} {i}"], style)
        rows.append((str(i), f'подпись: "{i}"'))
    with open(root / "val.tsv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter="\t", quotechar="&", lineterminator="\n").writerows([("uid", "text"), *rows])
    return root


def heeds_ctrl_c() -> None:
    """A shell without job control starts its background jobs with Ctrl-C ignored, and Python then
    never turns it into KeyboardInterrupt: the command under test gets it as a terminal gives it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_eval(root: Path, tag: str) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """`memecap eval ocr_template` with two OCR workers, once both are reading. Its output goes to
    files: a pipe would stay open as long as any orphaned worker holds it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(root / f"{tag}.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "memecap", "eval", "ocr_template", "model.ocr.workers=2",
                                 f"cache.dir={root / tag}", "--data", str(root / "val.tsv"), "--out",
                                 str(root / f"{tag}.jsonl")], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=err, text=True, preexec_fn=heeds_ctrl_c)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [c for c in psutil.Process(proc.pid).children() if "python" in c.name().lower()]
        if len(workers) == 2:
            time.sleep(1.0)  # both are reading an image
            return proc, workers
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no two OCR workers appeared: {(root / f'{tag}.err').read_text()[-2000:]}")


def gone(process: psutil.Process, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True  # dead, waiting for whoever adopted it to reap it
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig, code, line", [(signal.SIGTERM, 143, "memecap: stopped by SIGTERM"),
                                             (signal.SIGINT, 130, "memecap: stopped by Ctrl-C")])
def test_a_signal_stops_the_command_and_its_workers_with_one_line(many_text_images, sig, code, line):
    proc, workers = start_eval(many_text_images, sig.name)
    stopped_at = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()
    err = (many_text_images / f"{sig.name}.err").read_text()
    assert proc.returncode == code, err[-3000:]
    assert time.monotonic() - stopped_at < 15  # not after every queued image has been read
    assert err.rstrip("\n").split("\n")[-1] == line
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert all(gone(w, within=5) for w in workers)


def test_workers_die_with_a_killed_parent(many_text_images):
    proc, workers = start_eval(many_text_images, "SIGKILL")
    proc.kill()  # no handler runs: only the kernel can tell the workers
    proc.wait(timeout=30)
    assert all(gone(w, within=10) for w in workers)
