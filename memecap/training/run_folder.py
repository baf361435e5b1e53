"""The run folder (`train.output_dir`): who writes it, whether every machine sees the same one,
and never mixing two runs in it.

A folder that holds a run (its config, log, checkpoints or exports) is only continued with
`train.resume` or started afresh with `train.overwrite=true`; anything else is refused before
any work, because the old log, checkpoints and tiny bases would silently mix with the new run.
A run records the entries it owns (`run_files.json`) before it writes any, and refuses a folder
where one of them is already someone else's; `train.overwrite` deletes only recorded entries, so
a folder that merely has a file of the same name (a user's `config.yaml`) never loses anything.
One training at a time holds the folder (an advisory lock the kernel drops when it dies).

On several machines the folder is either shared (one filesystem: the first process writes data,
bases and checkpoints once) or local to each machine (cloud disks: each machine's first process
prepares what it reads itself, and with `train.save_on_each_node=true` keeps its own
checkpoints). Which one it is, is checked in the first seconds with a marker file.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Optional

from accelerate.utils import gather_object

from memecap.config import Config, ConfigError
from memecap.models import FAMILIES
from memecap.outputs.file_lock import FileBusy, locked_folder
from memecap.training.agreement import agree

# What a run writes at the top of its folder; `train.overwrite` deletes these and nothing else.
# `data/` (prepared tables and synthetic images, keyed by their settings) is kept.
RUN_ENTRIES = ("config.yaml", "log.jsonl", "summary.json", "checkpoints", "best", "final", "best.tmp",
               "final.tmp", "predictions", "base_models", "memecap",
               *(name for family in FAMILIES.values() for name in family.run_files))
HOLDS_A_RUN = ("config.yaml", "log.jsonl", "checkpoints", "best", "final", "summary.json")
MARKER = "shared-folder-check"
RUN_FILES = "run_files.json"  # the entries the run owns, written before any of them


def holds_a_run(folder: Path) -> list[str]:
    return [name for name in HOLDS_A_RUN if (folder / name).exists()]


def recorded_entries(folder: Path) -> Optional[list[str]]:
    """The entries an earlier run recorded as its own, or None when no run recorded any."""
    path = folder / RUN_FILES
    if not path.is_file():
        return None
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["entries"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: unreadable ({err}); memecap cannot tell which files there are a run's. "
                          "Choose a new train.output_dir") from None
    # Only plain top-level names: a hand-edited record must not reach outside the folder.
    return [e for e in entries if isinstance(e, str) and e and "/" not in e and "\\" not in e and e not in (".", "..")]


def record_entries(folder: Path) -> None:
    """Claim every top-level entry a run may write, before it writes any (atomically)."""
    entries = sorted({*RUN_ENTRIES, MARKER, RUN_FILES})
    tmp = folder / (RUN_FILES + ".tmp")
    tmp.write_text(json.dumps({"entries": entries}, indent=1), encoding="utf-8")
    os.replace(tmp, folder / RUN_FILES)


def clear_run(folder: Path, recorded: list[str]) -> list[str]:
    """Delete the recorded entries of the earlier run (its record stays: this run rewrites it)."""
    removed = []
    for name in recorded:
        path = folder / name
        if name == RUN_FILES:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def foreign_entries(folder: Path, recorded: Optional[list[str]]) -> list[str]:
    """Entries a run would write that are already there and not a recorded run's."""
    ours = set(recorded or ())
    # The shared-folder marker is left out: this run wrote it moments ago, before the claim.
    return [name for name in (*RUN_ENTRIES, RUN_FILES) if name not in ours
            and ((folder / name).exists() or (folder / name).is_symlink())]


def claim_run_folder(accelerator, cfg: Config, folder: Path, log, *, writer: bool, has_checkpoint: bool) -> None:
    """Refuse to mix two runs in one folder, or a run with files that are not a run's;
    `train.overwrite` clears the recorded run first. Checked by the process that writes the folder
    (one per machine when each machine has its own)."""
    problem = _claim(cfg, folder, log, has_checkpoint) if writer else None
    problem = agree(accelerator, problem)
    if problem:
        raise ConfigError(problem)
    accelerator.wait_for_everyone()


def _claim(cfg: Config, folder: Path, log, has_checkpoint: bool) -> Optional[str]:
    found, recorded = holds_a_run(folder), recorded_entries(folder)
    starts_over = found and (cfg.train.overwrite or (cfg.train.resume == "auto" and not has_checkpoint))
    if found and not starts_over and cfg.train.resume is None:
        return (f"train.output_dir={folder} holds an earlier run ({', '.join(found)}). Continue it with "
                f"train.resume=auto, start afresh there with train.overwrite=true (deletes it), "
                f"or choose a new train.output_dir")
    if starts_over and recorded is None:
        return (f"train.output_dir={folder} has {', '.join(found)} but no record of a memecap run's files "
                f"({RUN_FILES}; an older memecap or someone else wrote them), so memecap deletes nothing there. "
                f"Choose a new train.output_dir, or move those files away yourself")
    if starts_over:
        why = ("train.overwrite=true: deleting the earlier run" if cfg.train.overwrite else
               "train.resume=auto: the earlier attempt left no checkpoint that verifies; "
               "starting from step 0, deleting it")
        log.info(f"{why} in {folder} ({', '.join(clear_run(folder, recorded)) or 'nothing left to delete'})")
    elif recorded is None and has_checkpoint:
        # Resuming where no run recorded its files (an older memecap's run, or bases copied beside a
        # checkpoint): the user names what is there a run's.
        recorded = foreign_entries(folder, None)
    foreign = foreign_entries(folder, recorded)
    if foreign:
        return (f"train.output_dir={folder} already has {', '.join(foreign)}, which no memecap run there recorded "
                f"as its own, and a run would write into it. Choose a new train.output_dir, or move them away")
    record_entries(folder)
    return None


def hold_run_folder(accelerator, folder: Path, held: ExitStack, *, writer: bool) -> None:
    """One training per run folder: the writer locks it until `held` closes (or the process
    dies, whatever kills it); a second training is refused at once, every process with it."""
    problem = None
    if writer:
        try:
            held.enter_context(locked_folder(folder, (
                f"train.output_dir={folder} is in use by another memecap training; wait for it to end "
                f"(train.resume=auto then continues it), or choose another train.output_dir")))
        except FileBusy as err:
            problem = str(err)
    problem = agree(accelerator, problem)
    if problem:
        raise ConfigError(problem)


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
