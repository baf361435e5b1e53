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
from memecap.models import FAMILIES, family_module
from memecap.models.memory_plan import GIB, OPTIMIZER_BYTES, Plan  # noqa: F401 (the plan's units, for callers)


def plan_memory(cfg: Config, **settings) -> Plan:
    """The plan of the family's own planner (its module's `plan_memory`; the LSTM baselines, a few
    million parameters, have none). `settings`: processes, zero_stage, offload_optimizer, offload_params,
    batch_size, seq_len, mixed_precision (each planner takes the ones that apply to it)."""
    module = family_module(cfg.model.family)
    if not hasattr(module, "plan_memory"):
        planned = [name for name in FAMILIES if hasattr(family_module(name), "plan_memory")]
        raise ValueError(f"memecap plan estimates {', '.join(sorted(planned))} models; "
                         f"model.family={cfg.model.family!r} has no planner")
    scst = cfg.train.objective == "scst" or any(stage.objective == "scst" for stage in cfg.stages)
    if scst and settings.get("batch_size") is None:
        # A self-critical step scores every sampled caption in one forward: the batch times the samples.
        settings["batch_size"] = cfg.train.batch_size * cfg.scst.samples
    plan = module.plan_memory(cfg, **settings)
    if scst:
        plan.notes.append(f"objective scst: activations of train.batch_size x scst.samples = "
                          f"{settings['batch_size']} captions a step (the sampling itself holds less)")
    if scst and cfg.scst.kl:
        # The KL reference: a whole copy of the trained parameters, in their (fp32) training dtype.
        plan.add(f"scst.kl reference (a copy of the {plan.trainable:,} trained parameters)", plan.trainable * 4.0)
    return plan
