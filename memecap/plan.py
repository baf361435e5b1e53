"""Estimated accelerator memory of a training run, before any weights are downloaded.

    memecap plan clipcap_qlora_large train.batch_size=8 [--zero 2 --offload-optimizer --processes 4]

Parameter counts are exact: the decoder and mapping network are built on PyTorch's `meta`
device (shapes only, no storage) from their configs (ruGPT-3's shapes ship here; other decoders'
config.json is read). The rest is arithmetic on those counts: weights, gradients, optimizer
states (on the accelerator, or offloaded), activations at the recipe's batch and sequence
length, with and without gradient checkpointing. It is the floor that measured peaks are
compared with: the CUDA context, allocator fragmentation and temporary buffers come on top.
"""
from __future__ import annotations

from memecap.config import Config
from memecap.models.memory_plan import GIB, OPTIMIZER_BYTES, Plan  # noqa: F401 (the plan's units, for callers)
from memecap.models.clipcap.plan import plan_clipcap
from memecap.models.rudolph.plan import plan_rudolph
from memecap.models.vlm.plan import plan_vlm

# model.family -> its planner; the LSTM baselines (a few million parameters) fit any GPU.
PLANNERS = {"clipcap": plan_clipcap, "rudolph": plan_rudolph, "vlm": plan_vlm}


def plan_memory(cfg: Config, **settings) -> Plan:
    """`settings`: processes, zero_stage, offload_optimizer, offload_params, batch_size, seq_len,
    mixed_precision (each planner takes the ones that apply to it)."""
    if cfg.model.family not in PLANNERS:
        raise ValueError(f"memecap plan estimates {', '.join(sorted(PLANNERS))} models; "
                         f"model.family={cfg.model.family!r} has no planner")
    return PLANNERS[cfg.model.family](cfg, **settings)
