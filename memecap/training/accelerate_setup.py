"""The Accelerate plumbing of the training loop: the accelerator for a config, loading models
whole under ZeRO-3, forgetting a finished stage's prepared objects, and the end-of-run check
that every rank holds the same weights."""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Optional

import torch
from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs
from accelerate.utils import ProjectConfiguration
from accelerate.utils import gather_object

from memecap.config import Config
from memecap.training.process_exit import launched_with_peers
from memecap.training.run_log import RunLog


def make_accelerator(cfg: Config) -> Accelerator:
    precision = cfg.train.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    handlers = []
    if not torch.cuda.is_available() and launched_with_peers():
        # DeepSpeed picks NCCL unless told otherwise; on CPU-only machines gloo is the one that works.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(
        gradient_accumulation_steps=cfg.train.grad_accum,
        mixed_precision=precision,
        log_with=list(cfg.train.trackers) or None,
        project_config=ProjectConfiguration(project_dir=cfg.train.output_dir,
                                            save_on_each_node=cfg.train.save_on_each_node),
        kwargs_handlers=handlers,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.train.seed),
    )


@contextmanager
def whole_weights(accelerator: Accelerator, log: RunLog):
    """Build models with whole tensors, also under ZeRO-3: the frozen encoder feeds the feature
    cache outside DeepSpeed's engine and tiny bases are made on one process, so neither may be
    partitioned at construction. `prepare` partitions the trained module afterwards."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or not plugin.hf_ds_config.is_zero3():
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    if plugin.zero3_init_flag:
        log.info("zero3_init_flag is ignored: models are loaded whole on each process, then partitioned")
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def with_micro_batch(accelerator: Accelerator, batch_size: int) -> None:
    """DeepSpeed's per-device batch, where its config leaves it to "auto": read from the training
    loader when one is prepared, from here when batches come from a stream (nothing to prepare)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.is_auto("train_micro_batch_size_per_gpu"):
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size


def forget_prepared(accelerator: Accelerator) -> None:
    """Before a new stage prepares its own optimizer, scheduler and loaders (and re-wraps the model,
    whose trainable parameters may have changed): Accelerate checkpoints every object it has
    prepared, and a resumed run must find exactly the objects of the stage it resumes."""
    for registry in (accelerator._models, accelerator._optimizers, accelerator._schedulers, accelerator._dataloaders):
        registry.clear()


def replicas_in_sync(accelerator, model) -> Optional[bool]:
    """Whether every process ends with identical trained weights (a broken gradient all-reduce
    shows here); None where weights are sharded (ZeRO-3) and a copy per rank does not exist. ZeRO-1/2
    shard only the optimizer state and gradients: each rank holds the whole updated weights."""
    plugin = accelerator.state.deepspeed_plugin
    if accelerator.num_processes == 1 or (plugin is not None and plugin.zero_stage == 3):
        return None
    digest = hashlib.sha256()
    for p in accelerator.unwrap_model(model).trainable_parameters():
        digest.update(p.detach().float().cpu().numpy().tobytes())
    digests = gather_object([digest.hexdigest()])
    return len(set(digests)) == 1
