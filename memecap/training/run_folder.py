"""The run folder (`train.output_dir`): who writes it, whether every machine sees the same one,
and never mixing two runs in it.

A folder that holds a run (its config, log, checkpoints or exports) is only continued with
`train.resume` or started afresh with `train.overwrite=true`; anything else is refused before
any work, because the old log, checkpoints and tiny bases would silently mix with the new run.

On several machines the folder is either shared (one filesystem: the first process writes data,
bases and checkpoints once) or local to each machine (cloud disks: each machine's first process
prepares what it reads itself, and with `train.save_on_each_node=true` keeps its own
checkpoints). Which one it is, is checked in the first seconds with a marker file.
"""
from __future__ import annotations

import secrets
import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Optional

from accelerate.utils import gather_object

from memecap.config import Config, ConfigError
from memecap.models import FAMILIES

# What a run writes at the top of its folder; `train.overwrite` deletes these and nothing else.
# `data/` (prepared tables and synthetic images, keyed by their settings) is kept.
RUN_ENTRIES = ("config.yaml", "log.jsonl", "summary.json", "checkpoints", "best", "final", "best.tmp",
               "final.tmp", "predictions", "base_models", "memecap",
               *(name for family in FAMILIES.values() for name in family.run_files))
HOLDS_A_RUN = ("config.yaml", "log.jsonl", "checkpoints", "best", "final", "summary.json")
MARKER = "shared-folder-check"


def agree(accelerator, problem: Optional[str]) -> Optional[str]:
    """Every process learns the first problem any process found, so all stop together instead
    of some waiting forever at the next collective call."""
    if accelerator.num_processes == 1:
        return problem
    found = [p for p in gather_object([problem]) if p]
    return found[0] if found else None


def same_everywhere(accelerator, value, what: str) -> None:
    """Every process must hold the same `value` (e.g. the checkpoint each machine resumes from)."""
    if accelerator.num_processes == 1:
        return
    values = gather_object([value])
    if len(set(values)) > 1:
        raise ConfigError(f"the processes disagree on {what}: {', '.join(sorted(set(map(str, values))))}; "
                          "each machine must hold the same checkpoints")


def holds_a_run(folder: Path) -> list[str]:
    return [name for name in HOLDS_A_RUN if (folder / name).exists()]


def clear_run(folder: Path) -> list[str]:
    removed = []
    for name in RUN_ENTRIES:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def claim_run_folder(accelerator, cfg: Config, folder: Path, log, *, writer: bool, has_checkpoint: bool) -> None:
    """Refuse to mix two runs in one folder; `train.overwrite` clears it first. Checked by the
    process that writes the folder (one per machine when each machine has its own)."""
    problem = None
    if writer:
        found = holds_a_run(folder)
        if found and cfg.train.overwrite:
            log.info(f"train.overwrite=true: deleting the earlier run in {folder} ({', '.join(clear_run(folder))})")
        elif found and cfg.train.resume is None:
            problem = (f"train.output_dir={folder} holds an earlier run ({', '.join(found)}). Continue it with "
                       f"train.resume=auto, start afresh there with train.overwrite=true (deletes it), "
                       f"or choose a new train.output_dir")
        elif found and cfg.train.resume == "auto" and not has_checkpoint:
            log.info(f"train.resume=auto: {folder} holds an earlier attempt that saved no checkpoint; "
                     f"starting from step 0 (its files are replaced: {', '.join(clear_run(folder))})")
    problem = agree(accelerator, problem)
    if problem:
        raise ConfigError(problem)
    accelerator.wait_for_everyone()


def output_is_shared(accelerator, cfg: Config, folder: Path) -> bool:
    """Whether every machine sees the first process's run folder. The first process writes a
    fresh token there; every machine's first process looks for it."""
    if accelerator.num_processes == _processes_on_this_machine(accelerator):
        return True  # one machine
    token = secrets.token_hex(8) if accelerator.is_main_process else None
    if accelerator.is_main_process:
        (folder / MARKER).write_text(token, encoding="utf-8")
    token = gather_object([token])[0]
    accelerator.wait_for_everyone()
    seen = None
    if accelerator.is_local_main_process:
        path = folder / MARKER
        seen = path.is_file() and path.read_text(encoding="utf-8") == token
    views = [v for v in gather_object([seen]) if v is not None]
    shared = all(views)
    if not shared and not cfg.train.save_on_each_node:
        raise ConfigError(
            f"train.output_dir={folder} is not shared between the machines: another machine does not see the "
            f"marker file the first machine wrote there. Put it on a filesystem every machine mounts, or set "
            f"train.save_on_each_node=true so each machine keeps its own checkpoints (and resumes from them)")
    if not shared and accelerator.state.deepspeed_plugin is not None:
        raise ConfigError(f"train.output_dir={folder} is not shared between the machines, and DeepSpeed's "
                          "checkpoints are written partly by the first process only: use a shared filesystem")
    return shared


def _processes_on_this_machine(accelerator) -> int:
    import os

    return int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))


def preparing(accelerator, shared: bool) -> AbstractContextManager:
    """Around data, base and cache preparation: once in all when the folder is shared, else
    once per machine (each machine reads what its own first process wrote)."""
    return accelerator.main_process_first() if shared else accelerator.local_main_process_first()


def writes_checkpoints(accelerator, shared: bool) -> bool:
    """The process that writes checkpoint files other than the per-process ones."""
    return accelerator.is_main_process or (not shared and accelerator.is_local_main_process)
