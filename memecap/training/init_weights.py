"""`train.init_from`: a new run that starts from the weights an earlier run trained.

What comes over is the model: the trained parameters in the checkpoint's `model.safetensors`, and
the files its family built the model from in that run's folder (tiny bases made for the run, the
LSTM's vocabulary: outputs/run_layout.MODEL_FILES), copied into the new run's folder so the new run
never depends on, or writes into, the old one. What does not: the optimizer, the schedule, the
counters, the data position, the seed (that is `train.resume`, which continues the same run). So a
self-critical stage can run, from one cross-entropy checkpoint, under several seeds or settings.

The model settings must be the checkpoint's: other settings build another model, which the weights
would not fit, or would fit only by the accident of equal shapes. (An export as the start:
training/init_export.py.)
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from memecap.config import Config, ConfigError, load_saved_config
from memecap.outputs.run_layout import MODEL_FILES, STATE_FILE
from memecap.training.checkpoint import WEIGHTS_FILE, find_resume_point, resume_changes, verify_checkpoint
from memecap.training.checkpoint_weights import missing_trained, trained_aliases


def init_checkpoint(init_from: str, log: Callable[[str], None]) -> Path:
    """The verified checkpoint `init_from` names: a checkpoint folder, or a run folder (its newest
    complete checkpoint)."""
    path = Path(init_from).expanduser()
    if (path / STATE_FILE).is_file():
        verify_checkpoint(path)
        found = path
    else:
        found = find_resume_point("auto", path, log) if path.is_dir() else None
    if found is None:
        raise ConfigError(f"train.init_from={init_from}: no complete training checkpoint or export there (a "
                          f"checkpoints/step_N folder, a run folder holding one, or an exported model's folder)")
    if not (found / WEIGHTS_FILE).is_file():
        raise ConfigError(f"train.init_from={found}: no {WEIGHTS_FILE} (a DeepSpeed checkpoint keeps its weights "
                          f"in shards); start from a checkpoint of a run without DeepSpeed, or from its export")
    return found


def model_changes(checkpoint: Path, cfg: Config) -> list[str]:
    """`model.key: theirs -> ours` for each model setting that differs from the checkpoint's (those a
    resume would refuse too: how many processes read the OCR is not the model). The dtype frozen
    weights are stored in is not among them: trained weights are fp32 whatever it is, the frozen ones
    are built again from their source, and `auto` already resolves differently on a GPU and a CPU."""
    from memecap.untrusted import check_published_config

    saved = load_saved_config(checkpoint / "config.yaml", check=check_published_config)
    exact, _ = resume_changes(saved, cfg)
    return [change for change in exact if change.startswith("model.") and not frozen_dtype_key(change)]


def frozen_dtype_key(change: str) -> bool:
    return change.split(":")[0].rsplit(".", 1)[-1] in ("dtype", "base_dtype")


def check_init(checkpoint: Path, cfg: Config) -> None:
    changed = model_changes(checkpoint, cfg)
    if changed:
        raise ConfigError(f"train.init_from={checkpoint}: its model was built with other settings, so its weights "
                          f"do not belong to this one: {'; '.join(changed)}. Give the model settings of the run "
                          f"that wrote it")


def take_model_files(checkpoint: Path, out_dir: Path) -> list[str]:
    """Copy the checkpoint's run-folder model files (MODEL_FILES) that `out_dir` does not have yet;
    each appears whole or not at all. Returns the names copied."""
    source_run = checkpoint.parent.parent
    copied = []
    for name in MODEL_FILES:
        source, target = source_run / name, Path(out_dir) / name
        if not source.exists() or target.exists():
            continue
        tmp = target.with_name(target.name + ".tmp")
        if tmp.is_dir():  # left by an interrupted copy
            shutil.rmtree(tmp)
        else:
            tmp.unlink(missing_ok=True)
        if source.is_dir():
            shutil.copytree(source, tmp, symlinks=True)
        else:
            shutil.copy2(source, tmp)
        tmp.rename(target)
        copied.append(name)
    return copied


def load_trained_weights(model: torch.nn.Module, checkpoint: Path) -> int:
    """Load into `model` every parameter it trains, and every buffer, from the checkpoint's weights.
    Frozen parameters stay the bases as built (a quantized base is not re-read from a state dict).
    Returns how many tensors were loaded."""
    from safetensors import safe_open

    path = checkpoint / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as weights:
        return copy_trained(model, set(weights.keys()), weights.get_tensor,
                            f"train.init_from={checkpoint}: {path.name}")


def copy_trained(model: torch.nn.Module, stored: set, get_tensor: Callable[[str], torch.Tensor], source: str) -> int:
    """Copy into `model`, from the tensors `stored` names (read by `get_tensor`), every parameter it
    trains and every buffer `stored` has; `source` names them in errors. Returns how many were copied."""
    params = {id(p): p for p in model.parameters()}
    trained = {i for i, p in params.items() if p.requires_grad}
    missing = missing_trained(model, trained, stored)
    if missing:
        raise ConfigError(f"{source} lacks {len(missing)} of the parameters this run trains "
                          f"(first: {', '.join(missing[:3])})")
    pairs = [(next(n for n in names if n in stored), params[i]) for i, names in trained_aliases(model, trained).items()]
    pairs += [(name, b) for name, b in model.named_buffers() if name in stored]
    with torch.no_grad():
        for name, target in pairs:
            tensor = get_tensor(name)
            if tensor.shape != target.shape:
                raise ConfigError(f"{source}: {name} is {tuple(tensor.shape)} there and {tuple(target.shape)} here")
            target.copy_(tensor.to(target.dtype))
    return len(pairs)


@dataclass(frozen=True)
class CheckpointStart:
    """Starting weights from a training checkpoint (and the files its run built the model from)."""

    path: Path

    def take_files(self, out_dir: Path) -> list[str]:
        return take_model_files(self.path, out_dir)

    def load_into(self, model: torch.nn.Module) -> int:
        return load_trained_weights(model, self.path)

    def describe(self) -> str:
        return str(self.path)
