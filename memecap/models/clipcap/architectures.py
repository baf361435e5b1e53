"""What differs between the causal LMs ClipCap's decoder may be (GPT-2/ruGPT-3, Llama, Qwen2,
Gemma 3, Mistral, ...): the modules LoRA adapts by default and whether they store transposed
weights. Everything else goes through transformers' common interface (`hidden_size`,
`get_input_embeddings()`)."""
from __future__ import annotations

from typing import Sequence

from torch import nn

# The default lists, tried in order: the first whose names all exist in the model is used.
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]  # GPT-2's Conv1D attention and MLP projections
# Llama/Qwen2/Gemma/Mistral
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_TARGETS = (GPT2_TARGETS, LLAMA_TARGETS)


def _names(model: nn.Module) -> set:
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}


def lora_targets(model: nn.Module, configured: Sequence[str]) -> list:
    """`configured` as given, unless it is the GPT-2 default (the setting's default) and the model
    lacks those modules: then the first default list whose modules all exist. A list that still
    names a missing module is refused by add_lora with the model's projections."""
    configured = list(configured)
    if configured != GPT2_TARGETS:
        return configured
    present = _names(model)
    return next((list(t) for t in DEFAULT_TARGETS if set(t) <= present), configured)


def transposed_weights(model: nn.Module, targets: Sequence[str]) -> bool:
    """Whether the targeted layers are GPT-2's Conv1D (weights stored in x out: PEFT's fan_in_fan_out)."""
    return any(type(m).__name__ == "Conv1D" and name.rsplit(".", 1)[-1] in targets
               for name, m in model.named_modules())


def lora_parameter_count(model: nn.Module, targets: Sequence[str], r: int) -> int:
    """Parameters LoRA adds at rank `r` on the layers named `targets` (a module name or its last
    part, as PEFT matches them): r x (in + out) per linear or Conv1D layer. Works on the meta device."""
    total = 0
    for name, m in model.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if isinstance(m, nn.Linear):
            total += r * (m.in_features + m.out_features)
        elif type(m).__name__ == "Conv1D":
            total += r * sum(m.weight.shape)
    return total


def decoder_width(config) -> int:
    """The decoder's embedding width, which the mapping network writes (GPT-2's `n_embd` is its
    `hidden_size` too)."""
    return config.get_text_config().hidden_size
