"""Atomic training checkpoints and the resume contract.

A checkpoint is `output_dir/checkpoints/step_0000120/`: Accelerate's state (the weights the run
trains, optimizer, scheduler, RNG, gradient-accumulation counter), the frozen weights'
fingerprints (checkpoint_weights.py), `trainer_state.json` (counters, data position,
best score, history), the resolved `config.yaml` and, written last, `manifest.json`: the size
and SHA-256 of every other file. It is written under a `.tmp` name and renamed when complete,
so a crash mid-write never leaves a checkpoint that looks valid, and a checkpoint is verified
against its manifest before a resume uses it (a truncated or damaged file is found by name).
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Optional

from accelerate.utils import DistributedType
from safetensors import SafetensorError
from safetensors.torch import save_file

from memecap.config import Config, save_config, to_dict
from memecap.config.files import flat_keys
from memecap.data.fingerprint import file_digest
from memecap.models.export import UnsafePath, member
from memecap.outputs.run_layout import STATE_FILE
from memecap.training.checkpoint_weights import (check_frozen_weights, frozen_fingerprints, holds_frozen_weights,
                                                 keeping_trained_weights, missing_trained, stored_names, trained_ids,
                                                 write_fingerprints)
from memecap.training.train_state import TrainState
from memecap.quiet import quiet_weights

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"  # what Accelerate's save_state names the (one) model's weights
PREFIX = "step_"


class DamagedCheckpoint(ValueError):
    """A checkpoint whose files do not match its manifest (or that has none to check)."""


def read_train_state(checkpoint: Path) -> TrainState:
    path = Path(checkpoint) / STATE_FILE
    try:
        return TrainState.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError) as err:  # JSONDecodeError and unknown fields
        raise DamagedCheckpoint(f"{path}: not a readable trainer state ({err})") from None


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


def write_manifest(folder: Path) -> None:
    """Sizes and hashes of every file in the checkpoint; written last, so its presence means the
    rest was complete."""
    files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}
    tmp = folder / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps({"files": files}, indent=1), encoding="utf-8")
    os.replace(tmp, folder / MANIFEST_FILE)


def verify_checkpoint(folder: Path) -> None:
    """Raise DamagedCheckpoint naming the first file that is missing, truncated or changed (or the
    manifest, when there is none to check the files against)."""
    folder = Path(folder)
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        # Its files cannot be checked, and a truncated one would only fail inside the load.
        raise DamagedCheckpoint(f"{manifest}: missing, so the checkpoint's files cannot be verified")
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        entries = [(name, int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DamagedCheckpoint(f"{manifest}: unreadable ({err})") from None
    if STATE_FILE not in files:
        raise DamagedCheckpoint(f"{manifest}: does not list {STATE_FILE}")
    for name, size, digest in entries:
        try:
            path = member(folder, name, str(manifest))
        except FileNotFoundError:
            raise DamagedCheckpoint(f"{folder / name}: missing from the checkpoint") from None
        except UnsafePath as err:
            raise DamagedCheckpoint(str(err)) from None
        if path.stat().st_size != size:
            raise DamagedCheckpoint(f"{path}: {path.stat().st_size} bytes, the checkpoint wrote {size}")
        if file_digest(path) != digest:
            raise DamagedCheckpoint(f"{path}: its contents changed since the checkpoint was written")
    read_train_state(folder)


def find_resume_point(resume: Optional[str], output_dir: Path, log=print) -> Optional[Path]:
    """`None` -> start fresh; `auto` -> the newest checkpoint that verifies (damaged newer ones
    are skipped, and said so); a path -> that checkpoint, which must verify."""
    if resume is None:
        return None
    if resume == "auto":
        for path in reversed(list_checkpoints(output_dir)):
            try:
                verify_checkpoint(path)
                return path
            except DamagedCheckpoint as err:
                log(f"train.resume=auto: skipping a damaged checkpoint: {err}")
        return None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise DamagedCheckpoint(f"train.resume={resume}: not a complete checkpoint ({STATE_FILE} missing)")
    verify_checkpoint(path)
    return path


def save_checkpoint(accelerator, output_dir: Path, state: TrainState, cfg: Config, keep: int,
                    writer: Optional[bool] = None, extra: Optional[dict] = None,
                    model=None, trainable: Optional[frozenset] = None) -> Path:
    """Every process takes part (DeepSpeed shards are saved by each rank); the `writer` (the
    main process, or each machine's first one when machines keep their own) renames. `extra`:
    {file name: tensors} the writer adds as safetensors files (what an objective keeps).
    With the prepared `model` and `trainable` (the names of the parameters the run trains): keep
    those weights only and fingerprint the frozen rest (training/checkpoint_weights.py); without
    them, or under DeepSpeed, every weight."""
    writer = accelerator.is_main_process if writer is None else writer
    slim = model is not None and trainable is not None and accelerator.distributed_type != DistributedType.DEEPSPEED
    root = checkpoints_dir(output_dir)
    final = root / f"{PREFIX}{state.optimizer_step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    if writer:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with quiet_weights(), keeping_trained_weights(accelerator, trainable) if slim else contextlib.nullcontext():
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if writer:
        if slim:
            net = accelerator.unwrap_model(model)
            write_fingerprints(tmp, frozen_fingerprints(net, trained_ids(net, trainable)))
        state = replace(state, world_size=accelerator.num_processes)
        (tmp / STATE_FILE).write_text(state.to_json(), encoding="utf-8")
        for name, tensors in (extra or {}).items():
            save_file({k: t.detach().contiguous().cpu() for k, t in tensors.items()}, str(tmp / name))
        save_config(cfg, tmp / "config.yaml")
        write_manifest(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, model=None, trainable: Optional[frozenset] = None) -> TrainState:
    """Load the checkpoint into the prepared objects. One that keeps only the trained weights is
    first checked to hold every one of them, and to have been trained on the frozen weights built
    now (`model`: the prepared model; `trainable`: the names of the parameters the run trains)."""
    slim = not holds_frozen_weights(path)
    if slim:
        if model is None or trainable is None:
            raise DamagedCheckpoint(f"{path}: keeps only the trained weights; loading it needs the model and "
                                    "the names of the parameters it trains")
        net = accelerator.unwrap_model(model)
        trained = trained_ids(net, trainable)
        check_frozen_weights(net, trained, path, "train.resume")
        missing = missing_trained(net, trained, stored_names(path / WEIGHTS_FILE))
        if missing:
            raise DamagedCheckpoint(f"{path / WEIGHTS_FILE}: lacks {len(missing)} of the parameters this run trains "
                                    f"(first: {', '.join(missing[:3])})")
    try:
        # A slim checkpoint lacks the frozen weights by design: they stay as built (and checked above).
        accelerator.load_state(str(path), **({"strict": False} if slim else {}))
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError, SafetensorError) as err:
        # Verified files that still do not load (written by another torch, say): one line, not a traceback.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DamagedCheckpoint(f"{path}: could not be loaded ({first})") from None
    return read_train_state(path)


# Settings that define the steps already taken: resuming with other values would not continue
# the same run (another batch or data order, model, optimizer or schedule shape).
EXACT_RESUME_KEYS = ("data.train", "data.val", "data.max_train_rows", "data.max_caption_tokens",
                     "data.long_captions", "data.synthetic", "model", "optim", "stages", "train.seed",
                     "train.batch_size", "train.grad_accum", "train.mixed_precision", "train.objective", "scst")
# Settings whose change is allowed but alters the learning-rate schedule from the resume on.
SCHEDULE_KEYS = ("train.epochs", "train.max_steps")


def _under(key: str, prefixes: tuple) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def resume_changes(saved: Config, now: Config) -> tuple[list[str], list[str]]:
    """(keys that make the resume inexact, schedule keys that changed), as `key: old -> new`."""
    old, new = flat_keys(to_dict(saved)), flat_keys(to_dict(now))
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k)]
    exact = [c for c in changed if _under(c.split(":")[0], EXACT_RESUME_KEYS)
             and not _under(c.split(":")[0], ("model.ocr.workers",))]  # how many processes read, not what
    schedule = [c for c in changed if _under(c.split(":")[0], SCHEDULE_KEYS)]
    return exact, schedule
