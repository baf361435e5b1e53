"""The one LoRA wiring: PEFT adapters on named projections of a frozen base (ClipCap's GPT-2,
RuDOLPH's transformer). Each target must name a module, or the error lists the projections the
model has: PEFT alone only fails when no target matches at all."""
from __future__ import annotations

from typing import Optional

from torch import nn

from memecap.config import ConfigError, LoraConfig


def projection_names(model: nn.Module) -> list[str]:
    """Last name parts of the model's linear layers (GPT-2's Conv1D included), the usual LoRA targets."""
    found = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if name and (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D")}
    return sorted(n for n in found if not n.isdigit())  # a Sequential's index is no target name


def add_lora(model: nn.Module, lora: LoraConfig, *, key: str, task_type: Optional[str] = None,
             fan_in_fan_out: bool = False) -> nn.Module:
    """`model` frozen, with trainable adapters on `lora.target_modules` (module names or their last part).
    `key` is the setting's dotted name, for errors; `fan_in_fan_out` for GPT-2's transposed Conv1D weights."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    module_names = [n for n, _ in model.named_modules()]
    for target in lora.target_modules:
        if not any(n == target or n.endswith("." + target) for n in module_names):
            raise ConfigError(f"{key}.target_modules: {target!r} names no module of the model; "
                              f"its projections are {', '.join(projection_names(model))}")
    model.requires_grad_(False)
    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=list(lora.target_modules), fan_in_fan_out=fan_in_fan_out,
                              task_type=task_type)
    return get_peft_model(model, peft_cfg)
