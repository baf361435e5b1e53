"""Optimizer by dotted name and the learning-rate schedule."""
from __future__ import annotations

import importlib
import inspect

import torch
from transformers import get_scheduler

from memecap.config import OptimConfig

# Optimizers an exported or published config may name (memecap/untrusted.py); a recipe or the
# command line may name any class by dotted path.
REGISTERED_OPTIMIZERS = (
    "torch.optim.AdamW", "torch.optim.Adam", "torch.optim.SGD", "torch.optim.Adafactor",
    "bitsandbytes.optim.AdamW8bit", "bitsandbytes.optim.Adam8bit", "bitsandbytes.optim.PagedAdamW8bit",
    "bitsandbytes.optim.PagedAdamW", "bitsandbytes.optim.Lion8bit", "bitsandbytes.optim.PagedLion8bit",
)


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


def build_scheduler(cfg: OptimConfig, optimizer, total_steps: int, num_processes: int):
    # Accelerate's prepared scheduler advances once per process on every optimizer step, so the
    # schedule is laid out in those units (as in the transformers no_trainer examples).
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps * num_processes,
                         num_training_steps=max(total_steps, 1) * num_processes)
