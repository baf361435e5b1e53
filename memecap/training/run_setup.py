"""Everything a run shares, and how it is set up: the accelerator, the run folder (one run per
folder, shared or one per machine), the resume point and its checks, every stage's data, the
model. `setup` finds what is wrong before anything heavy runs; what it returns besides the
settings (the model and the counters) is the loop's to carry from there."""
from __future__ import annotations

import copy
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Union

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from memecap.training.accelerate_setup import make_accelerator, whole_weights
from memecap.training.agreement import same_everywhere
from memecap.training.checkpoint import find_resume_point, read_train_state, resume_changes
from memecap.config import Config, ConfigError, load_saved_config, save_config, to_yaml
from memecap.models import build_model
from memecap.quiet import no_cpu_accelerator_notice
from memecap.training.run_folder import (claim_run_folder, hold_run_folder, output_is_shared, preparing,
                                         writes_checkpoints)
from memecap.training.init_export import ExportStart, find_export
from memecap.training.init_weights import CheckpointStart, check_init, init_checkpoint
from memecap.training.run_log import RunLog
from memecap.training.stages import data_changes, data_fingerprint, load_stage_examples, plan_stages, LazyCaptions
from memecap.training.train_state import TrainState


@dataclass(frozen=True)
class Run:
    """What the whole run shares and never changes: settings, the accelerator, the folder, the
    stages and their data, where it resumes from."""

    cfg: Config
    accelerator: Accelerator
    log: RunLog
    out_dir: Path
    shared: bool  # every machine sees the same run folder
    writer: bool  # this process writes checkpoint files besides its own
    stages: tuple
    data: tuple  # (train examples or a StreamedSplit, val examples) of each stage
    trainable: frozenset  # parameter names the recipe trains (a stage may freeze some)
    resume_from: Optional[Path]
    synced_gpus: bool  # ZeRO-3: every rank runs generate's forward passes until all are done

    @property
    def many_stages(self) -> bool:
        return len(self.stages) > 1


def setup(cfg: Config, held: ExitStack) -> tuple[Run, torch.nn.Module, TrainState]:
    """Accelerator, run folder, resume point, every stage's data and the model, in that order, so
    that what is wrong is found before anything heavy runs. Returns the run, the model as built
    and the counters to start from (the checkpoint's, with the data as read now). The run folder
    stays locked until `held` closes."""
    no_cpu_accelerator_notice()
    out_dir = Path(cfg.train.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(cfg)
    log = RunLog(accelerator, out_dir / "log.jsonl")
    set_seed(cfg.train.seed)
    log.info(f"memecap: {accelerator.distributed_type} x{accelerator.num_processes}, device {accelerator.device}, "
             f"mixed precision {accelerator.mixed_precision}\n--- resolved config ---\n{to_yaml(cfg)}")
    shared = output_is_shared(accelerator, cfg, out_dir)
    writer = writes_checkpoints(accelerator, shared)
    hold_run_folder(accelerator, out_dir, held, writer=writer)
    resume_from = find_resume_point(cfg.train.resume, out_dir, log.info)
    same_everywhere(accelerator, resume_from.name if resume_from else None, "the checkpoint to resume from")
    claim_run_folder(accelerator, cfg, out_dir, log, writer=writer, has_checkpoint=resume_from is not None)
    init_from = starting_weights(cfg, resume_from, log)
    if accelerator.is_main_process:
        save_config(cfg, out_dir / "config.yaml")
    stages = tuple(plan_stages(cfg))
    if len(stages) > 1 and accelerator.state.deepspeed_plugin is not None:
        raise ConfigError("stages: multi-stage runs are not supported under DeepSpeed (its engine wraps one optimizer)")
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.zero_stage == 3 and cfg.scst.kl and any(s.objective == "scst" for s in stages):
        raise ConfigError("scst.kl: not under DeepSpeed ZeRO-3 (its parameters are partitioned, and the KL "
                          "reference is a whole copy of them); use ZeRO-2, or scst.kl=0")
    state = read_train_state(resume_from) if resume_from is not None else TrainState()
    if resume_from is not None:
        check_resume(cfg, resume_from, state, accelerator.num_processes, log)
    with preparing(accelerator, shared):  # every row of every stage is read and checked first
        data = tuple(load_stage_examples(cfg, stage, work_dir=out_dir, log=log.info) for stage in stages)
    state = replace(state, data_fingerprint=check_resume_data(stages, data, resume_from, state.data_fingerprint, log))
    # A run started from another's weights builds its model from that run's files (copied into this folder).
    train_texts = () if cfg.train.init_from else LazyCaptions([train for train, _ in data])
    with whole_weights(accelerator, log), preparing(accelerator, shared):
        if init_from is not None and writer:
            init_from.take_files(out_dir)
        # A copy: the family resolves "tiny-random" names to folders in it, the run's config keeps what was asked.
        model = build_model(copy.deepcopy(cfg.model), work_dir=out_dir, train_texts=train_texts)
        if init_from is not None:
            loaded = init_from.load_into(model)
            log.info(f"train.init_from: {loaded} trained tensors from {init_from.describe()} (not its optimizer, "
                     f"counters or data position)")
    run = Run(cfg, accelerator, log, out_dir, shared, writer, stages, data,
              trainable=frozenset(name for name, p in model.named_parameters() if p.requires_grad),
              resume_from=resume_from, synced_gpus=plugin is not None and plugin.zero_stage == 3)
    return run, model, state


def starting_weights(cfg: Config, resume_from: Optional[Path],
                     log: RunLog) -> Union[CheckpointStart, ExportStart, None]:
    """The checkpoint or export whose weights a fresh run starts from (`train.init_from`), checked to
    fit the model settings; None when there is none, or when the run resumes (its checkpoint has the
    weights)."""
    if not cfg.train.init_from or resume_from is not None:
        return None
    export = find_export(cfg.train.init_from)
    if export is not None:
        return ExportStart.open(export, cfg)
    checkpoint = init_checkpoint(cfg.train.init_from, log.info)
    check_init(checkpoint, cfg)
    return CheckpointStart(checkpoint)


def check_resume(cfg: Config, checkpoint: Path, state: TrainState, num_processes: int, log: RunLog) -> None:
    """Refuse a resume whose settings would not continue the same run; warn where only the
    schedule from here on changes."""
    exact, schedule = resume_changes(load_saved_config(checkpoint / "config.yaml"), cfg)
    if state.world_size is not None and state.world_size != num_processes:
        exact.append(f"processes: {state.world_size} -> {num_processes} (the global batch and data order)")
    if exact:
        raise ConfigError(f"train.resume: {checkpoint} was written with other settings, and resuming with these would "
                          f"not continue the same run: {'; '.join(exact)}. Resume with the checkpoint's settings, "
                          f"or start a new run (a new train.output_dir)")
    if schedule:
        log.info(f"train.resume: {'; '.join(schedule)}: the learning-rate schedule from step "
                 f"{state.optimizer_step} on follows the new length")


def check_resume_data(stages: list, data: list, checkpoint: Optional[Path], saved: Optional[list], log: RunLog) -> list:
    """The data's fingerprint now; a resume whose data changed since the checkpoint is refused."""
    now = data_fingerprint(data)
    if checkpoint is not None and saved is None:
        log.info(f"train.resume: {checkpoint} has no data fingerprint recorded "
                 "(an earlier memecap wrote it); not checked")
    changed = data_changes(stages, saved, now) if checkpoint is not None and saved is not None else []
    if changed:
        raise ConfigError(f"train.resume: the data changed since {checkpoint} was written, and resuming on it would "
                          f"not continue the same run: {'; '.join(changed)}. Resume on the data the checkpoint was "
                          f"trained on, or start a new run (a new train.output_dir)")
    return now
