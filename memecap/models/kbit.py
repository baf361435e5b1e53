"""Loading a frozen base with bitsandbytes (8-bit, or 4-bit NF4 for QLoRA), and 4-bit layers
that train and evaluate alike on every x86-64 CPU.

On a CPU with AVX-512 BF16 (Sapphire Rapids and later), bitsandbytes 0.50's `Linear4bit`
repacks its weight for a fast bf16 kernel the first time it runs without gradients, which in
memecap is the first evaluation. Two things then go wrong:
- layers whose `in_features` is not a multiple of the quantization block (64) or whose
  `out_features` is not a multiple of 32 fail to repack ("shape '[96, 0]' is invalid");
- the repacked layout is an inference format that stays after `model.train()`: the next
  training step takes the inference kernel, which adds the bias in place on a tensor autograd
  tracks and computes no gradient for the layer's input.
memecap alternates training and evaluation on the same model, so every 4-bit layer is kept on
bitsandbytes' generic path, which computes the same product on any CPU and on GPUs is unused.
"""
from __future__ import annotations

import re

import torch
from torch import nn

# The quantization state bitsandbytes keeps beside each 4-bit weight in a state dict.
KBIT_STATE = re.compile(r"\.weight\.(absmax|quant_map|nested_absmax|nested_quant_map|quant_state\..+)$")


def prepare_base(model: nn.Module, *, quantized: bool, checkpointing: bool) -> nn.Module:
    """A base about to get adapters or be trained: peft's k-bit preparation where it is quantized
    (norms and the layers that are not quantized cast to fp32), then non-reentrant gradient
    checkpointing turned on by its current name (peft's own switch uses the deprecated one and
    prints transformers' FutureWarning on every build)."""
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # transformers before the rename (a GPU image's 5.17, say)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def keep_loaded_kbit_state(module: nn.Module) -> None:
    """Resuming a run on a 4-bit base: the frozen weights' quantization state stays as loaded from
    the base (it never changes), and a checkpoint's copy of it is dropped instead of refused as
    unexpected keys by `load_state_dict`."""
    def drop(_module, state_dict, prefix, *_args) -> None:
        for key in [k for k in state_dict if k.startswith(prefix) and KBIT_STATE.search(k)]:
            del state_dict[key]

    module.register_load_state_dict_pre_hook(drop)


def bitsandbytes_loading(quantization: str) -> dict:
    """`from_pretrained` keyword arguments for `quantization` (none | 8bit | 4bit): 8-bit, or 4-bit
    NF4 with double quantization, computing in bf16 where the GPU has it. Quantized weights are
    placed at load time, on this process's device."""
    if quantization == "none":
        return {}
    from accelerate import PartialState
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        quant = BitsAndBytesConfig(load_in_8bit=True)
    else:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32)
    return {"quantization_config": quant, "device_map": {"": PartialState().device}}


def keep_4bit_layers_on_generic_cpu_path(model: nn.Module) -> int:
    """Turn off bitsandbytes' AVX-512 BF16 repacking in every 4-bit layer; returns how many
    layers had it on. A no-op without bitsandbytes, without 4-bit layers, or on other CPUs."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    turned_off = 0
    for module in model.modules():
        if isinstance(module, Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            turned_off += 1
    return turned_off
