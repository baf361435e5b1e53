"""Which of the model's weights a checkpoint keeps, and the check that the rest is still what the
run trained on.

A checkpoint keeps the parameters the run trains and the model's buffers. The frozen parameters
(LoRA's base model, a frozen encoder or decoder, a quantized base) never change during a run, and
a resume, or an export made from a checkpoint, builds them again from the same model settings. So
they are left out: with LoRA on Gemma 3 270M they were 1.07 GB of the 1.19 GB weights file written
at every save.

What is left out is fingerprinted instead (`frozen_weights.json`: per frozen parameter its shape,
dtype and a SHA-256 of up to 4096 of its elements taken at even strides), and the fingerprints are
checked before the checkpoint is used. A base that changed since (a Hub model without a pinned
revision that moved on, a local folder or GGUF file replaced) is then refused by name instead of
being resumed on silently.

DeepSpeed writes its own sharded checkpoint of every weight and is left as it is; a checkpoint
written without a fingerprint file holds every weight and loads as before.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from memecap.config_checks import ConfigError

FROZEN_FILE = "frozen_weights.json"
SAMPLED_ELEMENTS = 4096


def trained_ids(model: nn.Module, trainable: frozenset) -> set[int]:
    """The parameters (by identity, so every name a tied one has counts) that the run trains;
    `trainable` holds their names in `model` as built, before any stage froze some."""
    return {id(p) for name, p in model.named_parameters(remove_duplicate=False) if name in trainable}


def unwrapped_name(name: str) -> str:
    """A state-dict name as the unwrapped model has it (a DDP wrapper's state dict adds `module.`)."""
    return name.removeprefix("module.")


def kept_names(model: nn.Module, trained: set[int]) -> set[str]:
    """The state-dict names of the (unwrapped) `model` a checkpoint keeps."""
    names = {name for name, p in model.named_parameters(remove_duplicate=False) if id(p) in trained}
    return names | {name for name, _ in model.named_buffers(remove_duplicate=False)}


def frozen_parameters(model: nn.Module, trained: set[int]) -> dict[str, torch.Tensor]:
    """{first name: parameter} of every parameter the run does not train (a tied one once)."""
    return {name: p for name, p in model.named_parameters() if id(p) not in trained}


def fingerprint(tensor: torch.Tensor) -> str:
    flat = tensor.detach().reshape(-1)
    sample = flat[::max(1, flat.numel() // SAMPLED_ELEMENTS)][:SAMPLED_ELEMENTS].contiguous().cpu()
    digest = hashlib.sha256(f"{tuple(tensor.shape)} {tensor.dtype}".encode())
    digest.update(sample.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def frozen_fingerprints(model: nn.Module, trained: set[int]) -> dict[str, str]:
    return {name: fingerprint(p) for name, p in frozen_parameters(model, trained).items()}


def write_fingerprints(folder: Path, fingerprints: dict[str, str]) -> None:
    (Path(folder) / FROZEN_FILE).write_text(json.dumps(fingerprints, indent=1, sort_keys=True), encoding="utf-8")


def holds_frozen_weights(checkpoint: Path) -> bool:
    """Whether the checkpoint keeps every weight (written by DeepSpeed, or before fingerprints)."""
    return not (Path(checkpoint) / FROZEN_FILE).is_file()


def check_frozen_weights(model: nn.Module, trained: set[int], checkpoint: Path, key: str) -> None:
    """Raise a ConfigError (starting with `key`) when the frozen parameters built now are not the
    ones the checkpoint was trained on."""
    path = Path(checkpoint) / FROZEN_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        raise ConfigError(f"{key}: {path} is unreadable ({err})") from None
    now = frozen_fingerprints(model, trained)
    differ = sorted(set(saved) ^ set(now)) or [name for name in sorted(now) if saved[name] != now[name]]
    if differ:
        raise ConfigError(f"{key}: {checkpoint} was trained on other frozen weights than the model built now "
                          f"({len(differ)} differ, first: {differ[0]}): the base model its settings name changed "
                          "since it was written (a Hub model without a pinned revision that moved on, or a local "
                          "folder or file replaced). Restore that base, or pin the revision the run used")


def stored_names(weights_file: Path) -> set[str]:
    """The names a weights file holds, as the unwrapped model has them."""
    from safetensors import safe_open

    with safe_open(str(weights_file), framework="pt") as weights:
        return {unwrapped_name(name) for name in weights.keys()}


def trained_aliases(model: nn.Module, trained: set[int]) -> dict[int, list[str]]:
    """{id: every name} of each trained parameter: a tied one is stored once, under any of its names."""
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in trained:
            aliases.setdefault(id(p), []).append(name)
    return aliases


def missing_trained(model: nn.Module, trained: set[int], stored: set[str]) -> list[str]:
    """The first name of each trained parameter the stored names lack under every name it has."""
    return [names[0] for names in trained_aliases(model, trained).values() if not stored.intersection(names)]


@contextlib.contextmanager
def keeping_trained_weights(accelerator, trainable: frozenset) -> Iterator[None]:
    """Within it, `accelerator.save_state` writes only the weights a checkpoint keeps."""
    def drop_frozen(models, weights, output_dir):
        for model, state in zip(models, weights):
            net = accelerator.unwrap_model(model)
            keep = kept_names(net, trained_ids(net, trainable))
            for name in [n for n in state if unwrapped_name(n) not in keep]:
                del state[name]

    handle = accelerator.register_save_state_pre_hook(drop_frozen)
    try:
        yield
    finally:
        handle.remove()
