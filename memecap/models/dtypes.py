"""The dtype frozen base weights are stored in.

Frozen weights get no gradients or optimizer states, so storing them in bf16 halves their
memory at no cost to training. Trained weights stay fp32 (the config refuses 16-bit ones):
they are the master copy the optimizer updates, and mixed precision gives 16-bit compute.
"""
from __future__ import annotations

from typing import Optional

import torch


def bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def weights_dtype(requested: str, *, trains: bool, sixteen_bit: Optional[bool] = None) -> torch.dtype:
    """`auto` is bf16 for frozen weights where compute is 16-bit anyway (`sixteen_bit`; default:
    this machine has a bf16 GPU) and fp32 for everything else, CPUs included."""
    if requested != "auto":
        return getattr(torch, requested)
    sixteen_bit = bf16_available() if sixteen_bit is None else sixteen_bit
    return torch.bfloat16 if sixteen_bit and not trains else torch.float32


def merge_dtype(requested: str) -> str:
    """The dtype name a LoRA merge loads its base in: as asked, or for `auto` what a frozen base
    gets here (bf16 on a bf16 GPU, else fp32); never a quantized one."""
    return str(weights_dtype(requested, trains=False)).removeprefix("torch.")
