"""Optimizer by dotted name and the learning-rate schedule."""
from __future__ import annotations

import importlib
import inspect
import math
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR

from memecap.config import OptimConfig


def import_object(dotted: str):
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"optim.name={dotted!r}: give a dotted path such as torch.optim.AdamW")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"optim.name={dotted!r}: cannot import {module_name} ({err})") from err
    if not hasattr(module, attr):
        raise ValueError(f"optim.name={dotted!r}: {module_name} has no {attr}")
    return getattr(module, attr)


def build_optimizer(cfg: OptimConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """`cfg.name` may be any torch-style optimizer class (torch.optim.AdamW,
    bitsandbytes.optim.AdamW8bit, ...). Biases and norm weights get no weight decay."""
    if not params:
        raise ValueError("the model has no trainable parameters: check model.decoder.mode and the encoder settings")
    cls = import_object(cfg.name)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {"lr": cfg.lr}
    if "betas" in accepted:
        kwargs["betas"] = tuple(cfg.betas)
    if "eps" in accepted:
        kwargs["eps"] = cfg.eps
    return cls(groups, **kwargs)


def _linear(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def _cosine(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _constant(step: int, *, warmup: int, total: int) -> float:
    return float(step) / float(max(1, warmup)) if step < warmup else 1.0


# transformers' linear, cosine and constant_with_warmup schedules (the same arithmetic), written here
# because `from transformers import get_scheduler` imports transformers.trainer_utils, which imports
# peft and bitsandbytes: 3.7 s more after `import memecap.train` (a 2-core machine, lightly loaded).
# Pinned to transformers' bit for bit by tests/test_startup.py.
SCHEDULES = {"linear": _linear, "cosine": _cosine, "constant": _constant}


def build_scheduler(cfg: OptimConfig, optimizer, total_steps: int, num_processes: int):
    # Accelerate's prepared scheduler advances once per process on every optimizer step, so the
    # schedule is laid out in those units (as in the transformers no_trainer examples).
    factor = partial(SCHEDULES[cfg.scheduler], warmup=cfg.warmup_steps * num_processes,
                     total=max(total_steps, 1) * num_processes)
    return LambdaLR(optimizer, factor)
