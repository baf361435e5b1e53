"""Atomic training checkpoints and the resume contract.

A checkpoint is `output_dir/checkpoints/step_0000120/`: Accelerate's state (model, optimizer,
scheduler, RNG, gradient-accumulation counter), `trainer_state.json` (counters, data position,
best score, history) and the resolved `config.yaml`. It is written under a `.tmp` name and
renamed when complete, so a crash mid-write never leaves a checkpoint that looks valid.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from memecap.config import Config, save_config
from memecap.quiet import quiet_weights

STATE_FILE = "trainer_state.json"
PREFIX = "step_"


@dataclass
class TrainState:
    stage: int = 0  # index into cfg.stages of the stage in progress (0 for a run without stages)
    stage_start_step: int = 0  # optimizer_step at which that stage began
    epoch: int = 0  # epochs of the current stage fully done
    batches_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    micro_step: int = 0  # micro-batches seen in total
    optimizer_step: int = 0  # optimizer updates done
    best_score: Optional[float] = None
    best_step: Optional[int] = None
    evals_without_improvement: int = 0
    history: list = field(default_factory=list)  # evaluation records

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1)

    @classmethod
    def from_file(cls, path: Path) -> "TrainState":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def checkpoints_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (half-written `.tmp` folders are not checkpoints)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
            and not p.name.endswith(".tmp") and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def find_resume_point(resume: Optional[str], output_dir: Path) -> Optional[Path]:
    """`None` -> start fresh; `auto` -> newest checkpoint if any; a path -> that checkpoint."""
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"train.resume={resume}: not a complete checkpoint ({STATE_FILE} missing)")
    return path


def save_checkpoint(accelerator, output_dir: Path, state: TrainState, cfg: Config, keep: int) -> Path:
    """Every process takes part (DeepSpeed shards are saved by each rank); the main one renames."""
    root = checkpoints_dir(output_dir)
    final = root / f"{PREFIX}{state.optimizer_step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with quiet_weights():
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(state.to_json(), encoding="utf-8")
        save_config(cfg, tmp / "config.yaml")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> TrainState:
    accelerator.load_state(str(path))
    return TrainState.from_file(Path(path) / STATE_FILE)
