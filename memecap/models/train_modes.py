"""The one place a `mode` (memecap/config_checks.py's TRAIN_MODES) becomes `requires_grad` flags
or adapters, for every family: frozen, full, subset (`trainable` patterns, matched by
memecap/models/param_patterns.py) or lora (memecap/models/lora.py)."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from memecap.config_checks import LoraConfig
from memecap.models.lora import add_lora
from memecap.models.param_patterns import select_parameters


def apply_train_mode(module: nn.Module, mode: str, *, trainable: Sequence[str], lora: LoraConfig, key: str,
                     what: str, **lora_options) -> nn.Module:
    """`module` set to train as `mode` says (a PEFT model for lora). `key` is the section's dotted
    name and `what` the model's, for errors; `lora_options` go to `add_lora`."""
    if mode == "full":
        return module.requires_grad_(True)
    if mode == "frozen":
        return module.requires_grad_(False)
    if mode == "subset":
        chosen = select_parameters(module, trainable, key=f"{key}.trainable", what=what)
        for name, param in module.named_parameters():
            param.requires_grad_(name in chosen)
        return module
    if mode == "lora":
        return add_lora(module, lora, key=f"{key}.lora", **lora_options)
    raise ValueError(f"{key}.mode={mode!r}")  # the config refuses it first
