"""The one LoRA wiring: PEFT adapters on named projections of a frozen base (ClipCap's GPT-2,
RuDOLPH's transformer, a vision-language model's language model and, optionally, its vision
tower). Each target must name a module, or the error lists the projections the model has: PEFT
alone only fails when no target matches at all."""
from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

from torch import nn

from memecap.config import ConfigError, LoraConfig

# memecap never resizes a base's vocabulary and never trains its embedding matrix, so an adapter
# never needs a copy of it. PEFT's default ("auto") decides by reading the base's config.json, on
# the Hub when the base is no local folder: a network call at every save, and a warning for a GGUF
# base (its folder holds no config.json).
ADAPTER_ONLY = {"save_embedding_layers": False}


def projection_names(model: nn.Module, within: str = "") -> list[str]:
    """Last name parts of the linear layers (GPT-2's Conv1D included) in `model`, or in its module
    named `within`: the usual LoRA targets."""
    found = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if name and (not within or name.startswith(within + "."))
             and (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D")}
    return sorted(n for n in found if not n.isdigit())  # a Sequential's index is no target name


def scoped_targets(scopes: Sequence[tuple[str, Sequence[str]]]) -> str:
    """A PEFT target regex: for each (module name, leaf names), those leaves inside that module only."""
    return "|".join(rf"(?:{re.escape(prefix)}\.(?:.*\.)?(?:{'|'.join(map(re.escape, names))}))"
                    for prefix, names in scopes if names)


@contextmanager
def quiet_peft():
    """PEFT 0.21 reads transformers' deprecated `is_gradient_checkpointing` when it wraps or loads
    a model: a FutureWarning on every build and load that says nothing about the user's run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def base_model(module: nn.Module) -> nn.Module:
    """The model inside a PEFT wrapper (or the module itself, when it has no adapters)."""
    return module.get_base_model() if hasattr(module, "get_base_model") else module


def load_adapter(base: nn.Module, folder: Path) -> nn.Module:
    """`base` with the PEFT adapter saved in `folder` (an export's; frozen for inference)."""
    from peft import PeftModel

    with quiet_peft():
        return PeftModel.from_pretrained(base, folder)


def merged_into_base(model: nn.Module) -> nn.Module:
    """The base model with the PEFT adapter's weights added into its own (the adapter gone)."""
    with quiet_peft():
        return model.merge_and_unload()


def add_lora(model: nn.Module, lora: LoraConfig, *, key: str, within: str = "",
             also: Sequence[tuple[str, Sequence[str]]] = (), modules_to_save: Optional[list] = None,
             task_type: Optional[str] = None, fan_in_fan_out: bool = False) -> nn.Module:
    """`model` frozen, with trainable adapters on `lora.target_modules` (module names or their last
    part), only inside the module named `within` when given; `also` adds (module, names) scopes
    whose names need not all exist (a vision tower's). `key` is the setting's dotted name, for
    errors; `fan_in_fan_out` for GPT-2's transposed Conv1D weights; `modules_to_save` train whole."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    inside = [n for n, _ in model.named_modules() if not within or n.startswith(within + ".")]
    for target in lora.target_modules:
        if not any(n == target or n.endswith("." + target) for n in inside):
            raise ConfigError(f"{key}.target_modules: {target!r} names no module of "
                              f"{within or 'the model'}; its projections are "
                              f"{', '.join(projection_names(model, within))}")
    if also and not within:
        raise ValueError("add_lora: `also` scopes go with `within`")  # a programming error, not the user's
    model.requires_grad_(False)
    targets = scoped_targets([(within, lora.target_modules), *also]) if within else list(lora.target_modules)
    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                              fan_in_fan_out=fan_in_fan_out, task_type=task_type, modules_to_save=modules_to_save)
    with quiet_peft():
        return get_peft_model(model, peft_cfg)
