"""What a run reports: console lines on the main process, `log.jsonl` (with the training loss
averaged over the steps between two lines), and the trackers."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from accelerate import Accelerator
from tqdm.auto import tqdm

from memecap.config import Config, to_dict
from memecap.config.files import flat_keys


class RunLog:
    """Console lines on the main process and one JSON object per record in `log.jsonl`."""

    def __init__(self, accelerator: Accelerator, path: Path):
        self.accelerator = accelerator
        self.path = path

    def info(self, text: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(text, file=sys.stderr)

    def info_here(self, text: str) -> None:
        """What this process alone met (a row of its own share), said by every process that meets it."""
        many = self.accelerator.num_processes > 1
        tqdm.write(f"[process {self.accelerator.process_index}] {text}" if many else text, file=sys.stderr)

    def record(self, kind: str, step: int, values: dict) -> None:
        numeric = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        self.accelerator.log({f"{kind}/{k}": v for k, v in numeric.items()}, step=step)
        if self.accelerator.is_main_process:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values},
                                   ensure_ascii=False) + "\n")

    def forget_after(self, step: int) -> int:
        """After a resume at `step`: drop the records the interrupted attempt wrote past it (the
        resumed run writes them again), so each step is in the log once. Returns how many."""
        if not self.accelerator.is_main_process or not self.path.is_file():
            return 0
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if _step_of(line) is None or _step_of(line) <= step]
        if len(kept) != len(lines):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, self.path)
        return len(lines) - len(kept)


class LossWindow:
    """Token-weighted mean loss and throughput between two log lines; a resume reopens the window
    the checkpoint saved (`totals`), so the log goes on as if never interrupted."""

    def __init__(self, loss: float = 0.0, tokens: int = 0):
        self.loss, self.tokens, self.start = float(loss), int(tokens), time.perf_counter()

    def totals(self) -> list:
        return [self.loss, self.tokens]

    def add(self, loss: float, tokens: int) -> None:
        self.loss += loss * tokens
        self.tokens += tokens

    def close(self, num_processes: int) -> dict:
        elapsed = time.perf_counter() - self.start
        record = {"loss": self.loss / max(self.tokens, 1), "tokens_per_s": self.tokens * num_processes / elapsed}
        self.__init__()
        return record


def _step_of(line: str):
    try:
        return json.loads(line).get("step")
    except ValueError:  # a line torn by the crash
        return 10**18


def flat_hparams(cfg: Config) -> dict:
    """The config by dotted key, as trackers take hyperparameters: numbers and strings, anything else as text."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in flat_keys(to_dict(cfg)).items()}
