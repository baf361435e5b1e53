"""The training loop: one file, every model, any Accelerate setup.

    memecap train demo
    memecap train clipcap_lora data.train=memes/train.tsv data.val=memes/val.tsv
    accelerate launch -m memecap.train clipcap_lora optim.lr=3e-4          # same, on many devices

Setup -> fail-fast checks -> train (accumulation, clipping, schedule) -> evaluate every N steps
-> checkpoint atomically -> export the best model. Nothing here depends on the model family:
models follow the protocol in memecap/models/protocol.py. Setup lives in run_setup.py, the
validation pass and exports in validation_pass.py, when to evaluate and save in schedule.py.
Each step returns what it changed: the live model comes out of `prepare_stage`, the counters a
checkpoint keeps (train_state.py) and the latest evaluation out of `train_stage`.
"""
from __future__ import annotations

import json
import math
import sys
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from memecap.training.accelerate_setup import forget_prepared, replicas_in_sync, whole_weights, with_micro_batch
from memecap.training.checkpoint import DamagedCheckpoint, list_checkpoints, load_checkpoint, save_checkpoint
from memecap.training.image_reads import RowCollate, readable_inputs
from memecap.config import Config, ConfigError, load_config
from memecap.data.captions import encode_captions
from memecap.evaluation import best_constant_caption, format_metrics_table, write_predictions
from memecap.outputs.redact import said
from memecap.generation import with_overrides
from memecap.publish.hub import push_run, require_hub_token
from memecap.publish.model_card import training_summary
from memecap.data.datasets import CaptionEvalSet, CaptionTrainSet
from memecap.training.nonfinite import BadStepGuard, NonFiniteTraining, ensure_finite_weights
from memecap.training.optim import build_optimizer, build_scheduler
from memecap.outputs.os_errors import explain, probe_writable
from memecap.training.process_exit import end_launched_process, run_stoppable
from memecap.training.run_folder import preparing
from memecap.training.run_log import LossWindow, flat_hparams
from memecap.training.run_setup import Run, setup
from memecap.training.schedule import Due, EvalSaveSchedule
from memecap.training.stages import Stage, apply_freeze, is_streamed, train_captions
from memecap.training.time_limit import StopForResume
from memecap.training.objectives import CrossEntropy, ImagesWithItems, SelfCritical
from memecap.training.train_batches import StreamBatches, TableBatches
from memecap.training.train_state import TrainState
from memecap.training.validation_pass import export_model, is_better, validation_pass


@dataclass(frozen=True)
class PreparedStage:
    """One stage's loaders, optimizer and schedule, prepared by Accelerate together with the model:
    `model` is the live model from then on (wrapped for the distributed setup)."""

    stage: Stage
    model: torch.nn.Module
    optimizer: object
    scheduler: object
    train_batches: "TableBatches | StreamBatches"
    objective: "CrossEntropy | SelfCritical"
    val_loss_loader: DataLoader
    eval_loader: DataLoader
    val_loss_set: CaptionTrainSet
    val_images: object
    val_examples: list  # those whose image could be read, in val_images' order
    total_steps: int


def main(cfg: Config) -> dict:
    stopper = StopForResume(cfg.train.time_limit)  # the time limit counts from here
    with ExitStack() as held:  # the run folder's lock and the SIGUSR1 handler, released however the run ends
        held.enter_context(stopper)
        run, model, state = setup(cfg, held)
        evaluation, constant = {}, None  # the latest evaluation (written beside an export), the floor
        for i, stage in enumerate(run.stages[state.stage:]):
            prepared = prepare_stage(run, model, stage, first=i == 0)
            model = prepared.model
            if i == 0:
                fail_fast(run, prepared)
                state = restore(run, prepared, state)
                constant = start_tracking(run)
            else:
                run.log.info(f"{stage.label} starts from the weights of the previous stage at optimizer step "
                             f"{state.optimizer_step}")
            state, evaluation = train_stage(run, prepared, state, evaluation, stopper)
            if stopper.stopped:
                return stopped_for_resume(run, state, stopper)
            if stage.index + 1 < len(run.stages):
                state = state.next_stage()
        return finish(run, model, state, evaluation, constant)


def stage_inputs(run: Run, net: torch.nn.Module, stage: Stage) -> tuple[list, list]:
    """The stage's train and val examples with a readable image, and their images as the model reads
    them (features from the cache, written by the first process of each machine, or pixels). A
    streamed train split stays as it is, its images read batch by batch (None here)."""
    examples, images = [], []
    with whole_weights(run.accelerator, run.log), preparing(run.accelerator, run.shared):
        for split, split_examples in zip(("train", "val"), run.data[stage.index]):
            if is_streamed(split_examples):
                examples.append(split_examples)
                images.append(None)
                continue
            kept, inputs = readable_inputs(split_examples, image_reader(run, net, f"{split} images"),
                                           on_bad_row=run.cfg.data.on_bad_row, split=split, log=run.log.info)
            examples.append(kept)
            images.append(inputs)
    return examples, images


def image_reader(run: Run, net: torch.nn.Module, desc: Optional[str]) -> Callable[[list], object]:
    """Image paths -> what the model reads of them (`desc`: the progress bar's, None for none)."""
    cache_dir = run.cfg.cache.dir if run.cfg.cache.enabled else None
    show = desc is not None and run.cfg.train.progress_bar and run.accelerator.is_local_main_process
    return lambda paths: net.image_inputs(paths, cache_dir=cache_dir, device=run.accelerator.device, progress=show,
                                          desc=desc or "")


def make_loader(run: Run, net: torch.nn.Module, dataset, batch_size: int, shuffle: bool, examples: list,
                split: str, batches: Callable = lambda collate: collate) -> DataLoader:
    # A private generator: creating an iterator then draws from it, not from the global RNG that
    # dropout uses, so a resumed run's random stream matches the uninterrupted one.
    # An evaluation never drops an image: every one of them is scored, or the run stops naming it.
    on_bad_row = run.cfg.data.on_bad_row if split == "train" else "error"
    collate = RowCollate(net.collate, examples, on_bad_row=on_bad_row, split=split, log=run.log.info_here)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=batches(collate),
                      num_workers=run.cfg.data.num_workers, generator=torch.Generator().manual_seed(run.cfg.train.seed))


@dataclass(frozen=True)
class TrainSource:
    """Where a stage's training batches come from and what its step minimises: a loader to prepare
    (a table read whole), or a stream's batches (nothing to prepare)."""

    loader: Optional[DataLoader]
    stream: Optional[StreamBatches]
    objective: "CrossEntropy | SelfCritical"
    steps_per_epoch: int
    description: str  # for the log


def caption_set(run: Run, net: torch.nn.Module, examples: list, images, split: str) -> CaptionTrainSet:
    cfg = run.cfg
    ids, owners = encode_captions(net, examples, cfg.data.max_caption_tokens, cfg.data.long_captions, split)
    return CaptionTrainSet(images, ids, owners, late_errors=True)


def train_source(run: Run, net: torch.nn.Module, stage: Stage, examples, images) -> TrainSource:
    """The stage's training batches: a streamed split's, images for self-critical sampling, or
    captions for cross-entropy; each with its objective and epoch length in optimizer steps."""
    cfg, processes = run.cfg, run.accelerator.num_processes
    if is_streamed(examples):
        stream = stream_batches(run, net, examples)
        return TrainSource(None, stream, CrossEntropy(), len(stream) // cfg.train.grad_accum,
                           f"{examples.rows} streamed train rows ({len(stream)} batches per process an epoch)")
    if stage.objective == "scst":
        loader = make_loader(run, net, CaptionEvalSet(images, late_errors=True), cfg.train.batch_size, True,
                             examples, "train", batches=ImagesWithItems)
        objective = SelfCritical(accelerator=run.accelerator, references=[list(ex.captions) for ex in examples],
                                 settings=cfg.scst, generation=cfg.generation,
                                 max_caption_tokens=cfg.data.max_caption_tokens, synced_gpus=run.synced_gpus)
        description = f"{len(examples)} train images ({cfg.scst.samples} sampled captions each, rewarded)"
    else:
        train_set = caption_set(run, net, examples, images, "train")
        loader = make_loader(run, net, train_set, cfg.train.batch_size, True, examples, "train")
        objective, description = CrossEntropy(), f"{len(examples)} train images ({len(train_set)} captions)"
    return TrainSource(loader, None, objective, math.ceil(len(loader) / processes / cfg.train.grad_accum), description)


def prepare_stage(run: Run, model: torch.nn.Module, stage: Stage, first: bool) -> PreparedStage:
    """The stage's datasets, loaders, optimizer and schedule, prepared with the model (the previous
    stage's, unwrapped: its trainable parameters may change)."""
    cfg, accelerator = run.cfg, run.accelerator
    net = accelerator.unwrap_model(model)
    (train_examples, val_examples), (train_images, val_images) = stage_inputs(run, net, stage)
    apply_freeze(net, run.trainable, stage)
    val_loss_set = caption_set(run, net, val_examples, val_images, "validation")
    val_loss_loader = make_loader(run, net, val_loss_set, cfg.eval.batch_size, False, val_examples, "validation")
    eval_loader = make_loader(run, net, CaptionEvalSet(val_images, late_errors=True), cfg.eval.batch_size, False,
                              val_examples, "validation")
    source = train_source(run, net, stage, train_examples, train_images)
    total_steps = stage.max_steps or source.steps_per_epoch * stage.epochs
    n_trainable = sum(p.numel() for p in net.trainable_parameters())
    run.log.info(f"{stage.label + ': ' if run.many_stages else ''}data: {source.description}, {len(val_examples)} val; "
                 f"model: {n_trainable:,} trainable of {sum(p.numel() for p in net.parameters()):,} parameters; "
                 f"{total_steps} optimizer steps")
    optimizer = build_optimizer(stage.optim, net.trainable_parameters())
    scheduler = build_scheduler(stage.optim, optimizer, total_steps, accelerator.num_processes)
    if not first:
        forget_prepared(accelerator)
    if source.loader is None:
        with_micro_batch(accelerator, cfg.train.batch_size)
        model, optimizer, scheduler = accelerator.prepare(net, optimizer, scheduler)
        train_batches = source.stream
    else:
        # The training loader is prepared with the model: DeepSpeed reads its micro-batch size from it.
        model, optimizer, train_loader, scheduler = accelerator.prepare(net, optimizer, source.loader, scheduler)
        train_batches = TableBatches(accelerator, train_loader)
    val_loss_loader, eval_loader = accelerator.prepare(val_loss_loader, eval_loader)
    return PreparedStage(stage, model, optimizer, scheduler, train_batches, source.objective, val_loss_loader,
                         eval_loader, val_loss_set, val_images, val_examples, total_steps)


def stream_batches(run: Run, net: torch.nn.Module, split) -> StreamBatches:
    """A streamed split's batches: images read as the model reads them, one batch at a time (no bar)."""
    cfg = run.cfg
    return StreamBatches(split, accelerator=run.accelerator, read=image_reader(run, net, None),
                         encode_caption=lambda text: net.encode_caption(text, cfg.data.max_caption_tokens,
                                                                        truncate=cfg.data.long_captions == "truncate"),
                         collate=net.collate, batch_size=cfg.train.batch_size, grad_accum=cfg.train.grad_accum,
                         seed=cfg.train.seed, log=run.log.info_here)


def fail_fast(run: Run, prepared: PreparedStage) -> None:
    """A forward pass and a short generation with the configured decoding on real validation
    items, before step 0: a broken setup fails in seconds, not after an epoch."""
    accelerator, net = run.accelerator, run.accelerator.unwrap_model(prepared.model)
    items = prepared.val_loss_set
    with torch.no_grad(), accelerator.autocast():
        collate_loss, collate_eval = prepared.val_loss_loader.collate_fn, prepared.eval_loader.collate_fn
        probe = send_to_device(collate_loss([items[i] for i in range(min(2, len(items)))]), accelerator.device)
        probe_loss = net(probe)["loss"].item()
        probe_eval = send_to_device(collate_eval([CaptionEvalSet(prepared.val_images, late_errors=True)[0]]),
                                    accelerator.device)
        quick = with_overrides(run.cfg.generation, max_new_tokens=min(8, run.cfg.generation.max_new_tokens))
        probe_caption = net.generate(probe_eval, quick, synced_gpus=run.synced_gpus)[0][0]
    if not math.isfinite(probe_loss):
        raise RuntimeError(f"the initial loss is {probe_loss}: check the data and the model settings")
    # Made before a resume's checkpoint is loaded (loading it restores the random streams the probe would draw on).
    what = "before training" if run.resume_from is None else "of the model as built, before its checkpoint is loaded"
    run.log.info(f"check: initial loss {probe_loss:.3f}, caption {what} {probe_caption!r}")


def restore(run: Run, prepared: PreparedStage, state: TrainState) -> TrainState:
    """Load the checkpoint to resume from into the prepared objects; returns its counters (with the
    data as read now, checked against the checkpoint's in setup)."""
    if run.resume_from is None:
        return state
    stage = prepared.stage
    restored = replace(load_checkpoint(run.accelerator, run.resume_from, prepared.model, run.trainable),
                       data_fingerprint=state.data_fingerprint)
    prepared.objective.resume_from(run.resume_from, mid_stage=restored.stage_steps > 0)
    replayed = run.log.forget_after(restored.optimizer_step)
    run.log.info(f"resumed from {run.resume_from}: {stage.label + ', ' if run.many_stages else ''}"
                 f"epoch {restored.epoch}, optimizer step {restored.optimizer_step}"
                 + (f" ({replayed} log records of the interrupted attempt after it were dropped)" if replayed else ""))
    return restored


def start_tracking(run: Run) -> Optional[dict]:
    """Start the trackers; returns the best constant caption and its scores (the floor a model must
    beat; on the main process, when `eval.compare_constant`)."""
    cfg = run.cfg
    run.accelerator.init_trackers("memecap", config=flat_hparams(cfg))
    if not (cfg.eval.compare_constant and run.accelerator.is_main_process):
        return None
    last_train, last_val = run.data[-1]  # against the data the run ends on: the last stage's
    caption, scores = best_constant_caption(train_captions(last_train),
                                            [list(ex.captions) for ex in last_val], scoring=cfg.eval.scoring)
    run.log.info(f"best constant caption: {caption!r} -> bleu4 {scores['bleu4']:.4f}")
    return {"caption": caption, **scores}


def evaluate_and_keep_best(run: Run, prepared: PreparedStage, state: TrainState) -> tuple[TrainState, dict]:
    """Score the model now, write the predictions, log the table and export it if it is the best.
    Returns the counters with the score in them, and the evaluation as written beside an export."""
    cfg, accelerator, step, stage = run.cfg, run.accelerator, state.optimizer_step, prepared.stage
    val_examples = prepared.val_examples
    metrics, rows = validation_pass(accelerator, prepared.model, prepared.eval_loader, prepared.val_loss_loader,
                                    val_examples, cfg, run.synced_gpus)
    evaluation = {"step": step, "metrics": metrics, "samples": rows[:5],
                  "data": {"train": stage.train or cfg.data.train, "val": stage.val, "val_examples": len(rows)},
                  "training": training_summary(cfg, step)}
    if accelerator.is_main_process:
        write_predictions(run.out_dir / "predictions" / f"step_{step:07d}.jsonl", rows)
        table = format_metrics_table(metrics, title=f"evaluation at optimizer step {step}")
        samples = "\n".join(f"  [{r['uid']}] {r['prediction']}\n      ref: {r['references'][0]}"
                            for r in rows[: cfg.eval.samples_to_show])
        run.log.info(f"{table}\n{samples}")
    run.log.record("eval", step, metrics)
    score = metrics[cfg.train.best_metric]
    better = is_better(cfg.train.best_metric, score, state.best_score)
    if better:
        export_model(accelerator, prepared.model, run.out_dir / "best", cfg, evaluation)
    return state.after_evaluation(metrics, score, better), evaluation


def save(run: Run, prepared: PreparedStage, state: TrainState, window: LossWindow) -> None:
    ensure_finite_weights(run.accelerator, prepared.model, f"checkpoint at optimizer step {state.optimizer_step}")
    kept = replace(state, loss_window=window.totals(), stream_positions=prepared.train_batches.positions())
    save_checkpoint(run.accelerator, run.out_dir, kept, run.cfg, run.cfg.train.keep_checkpoints, run.writer,
                    extra=prepared.objective.checkpoint_files(), model=prepared.model, trainable=run.trainable)


def micro_step(run: Run, prepared: PreparedStage, batch, guard: BadStepGuard, window: LossWindow) -> Optional[bool]:
    """Forward, backward and, at the end of an accumulation, the optimizer step (skipped when the
    loss or gradient norm is not finite). Returns None mid-accumulation, else whether the
    optimizer step was skipped."""
    accelerator, model = run.accelerator, prepared.model
    with accelerator.accumulate(model), prepared.objective.stepping(model):
        out = prepared.objective(model, batch)
        accelerator.backward(out["loss"])
        loss, tokens = out["loss"].item(), out["num_tokens"].item()
        if guard.see_loss(loss):
            window.add(loss, tokens)
        grad_norm = None
        if accelerator.sync_gradients and run.cfg.optim.max_grad_norm:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), run.cfg.optim.max_grad_norm)
        skipped = accelerator.sync_gradients and guard.step_is_bad(grad_norm)
        if not skipped:
            prepared.optimizer.step()
        prepared.scheduler.step()
        prepared.optimizer.zero_grad(set_to_none=True)
    return skipped if accelerator.sync_gradients else None


def report_step(run: Run, prepared: PreparedStage, state: TrainState, skipped: bool, guard: BadStepGuard,
                window: LossWindow, bar) -> None:
    """After an optimizer step: count it if skipped (too many stop the run), move the progress bar,
    write the loss log line."""
    cfg = run.cfg
    bar.update(1)
    if skipped:
        newest = list_checkpoints(run.out_dir)
        guard.after_bad_step(state.optimizer_step, str(newest[-1]) if newest else None)
        run.log.info(f"optimizer step {state.optimizer_step}: non-finite loss or gradient norm, step skipped "
                     f"({guard.bad_steps} of train.max_bad_steps={cfg.train.max_bad_steps})")
        run.log.record("skipped", state.optimizer_step, {"bad_steps": guard.bad_steps})
    if state.optimizer_step % cfg.train.log_every == 0:
        record = {**window.close(run.accelerator.num_processes), **prepared.objective.window(),
                  "lr": prepared.scheduler.get_last_lr()[0],
                  "epoch": state.epoch, **({"stage": state.stage} if run.many_stages else {})}
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        run.log.record("train", state.optimizer_step, record)


def act(run: Run, prepared: PreparedStage, due: Due, state: TrainState, window: LossWindow,
        evaluation: dict) -> tuple[TrainState, dict]:
    """Do what the schedule asked for: evaluate (and keep the best), then checkpoint. Returns the
    counters and the latest evaluation."""
    if due.evaluate:
        state, evaluation = evaluate_and_keep_best(run, prepared, state)
    if due.save:
        save(run, prepared, state, window)
    return state, evaluation


def stage_is_over(run: Run, prepared: PreparedStage, state: TrainState) -> bool:
    """After an optimizer step: the stage has its length, or early stopping ends it."""
    patience = run.cfg.train.early_stopping_patience
    if patience is not None and state.evals_without_improvement >= patience:
        run.log.info(f"early stopping: {patience} evaluations without a better {run.cfg.train.best_metric}")
        return True
    return state.stage_steps >= prepared.total_steps


def train_stage(run: Run, prepared: PreparedStage, state: TrainState, evaluation: dict,
                stopper: StopForResume) -> tuple[TrainState, dict]:
    """Optimizer steps until the stage's length, early stopping or its epochs are done, or until
    `stopper` stops the run to be resumed (then only a checkpoint is made); evaluations and
    checkpoints as the schedule says. Returns the counters and the latest evaluation."""
    cfg, stage = run.cfg, prepared.stage
    schedule = EvalSaveSchedule(cfg.train.eval_every, cfg.train.save_every, state.optimizer_step)
    guard, window = BadStepGuard(run.accelerator, cfg.train.max_bad_steps), LossWindow(*(state.loss_window or ()))
    prepared.model.train()
    bar = tqdm(total=prepared.total_steps, initial=state.stage_steps, desc="training", unit="step",
               disable=not (cfg.train.progress_bar and run.accelerator.is_main_process))
    done = state.stage_steps >= prepared.total_steps
    stopper.restart_interval()
    while not done and state.epoch < (stage.epochs if stage.max_steps is None else 10**9):
        for batch in prepared.train_batches.epoch(state.epoch, state.batches_in_epoch, state.stream_positions):
            skipped = micro_step(run, prepared, batch, guard, window)
            state = state.after_micro_batch()
            if skipped is None:
                continue  # mid-accumulation
            state = state.after_optimizer_step()
            report_step(run, prepared, state, skipped, guard, window, bar)
            state, evaluation = act(run, prepared, schedule.after_step(state.optimizer_step), state, window, evaluation)
            done = stage_is_over(run, prepared, state) or stopper.should_stop(run.accelerator)
            if done:
                break
        else:
            state = state.after_epoch()
            state, evaluation = act(run, prepared, schedule.at_epoch_end(state.optimizer_step), state, window,
                                    evaluation)
    bar.close()
    prepared.train_batches.close()
    if stopper.stopped:
        return act(run, prepared, schedule.before_stop(state.optimizer_step), state, window, evaluation)
    # Every stage ends evaluated and checkpointed; a resume from that checkpoint moves straight on.
    due = schedule.at_stage_end(state.optimizer_step)
    if not due.evaluate and not state.history:
        due = Due(evaluate=True, save=due.save)
    return act(run, prepared, due, state, window, evaluation)


def stopped_for_resume(run: Run, state: TrainState, stopper: StopForResume) -> dict:
    """Stopped with a checkpoint before the run's end: no final export and no summary.json, which
    a scheduler's script can test for; the trackers are flushed."""
    run.accelerator.end_training()
    checkpoint = list_checkpoints(run.out_dir)[-1]
    run.log.info(f"stopped at optimizer step {state.optimizer_step} ({stopper.reason}), checkpointed in {checkpoint}; "
                 "the same command with train.resume=auto continues from there")
    return {"stopped": {"optimizer_step": state.optimizer_step, "reason": stopper.reason,
                        "checkpoint": str(checkpoint)}}


def finish(run: Run, model: torch.nn.Module, state: TrainState, evaluation: dict, constant: Optional[dict]) -> dict:
    """Export the final model, check the replicas, push if asked, write and return the summary."""
    cfg, accelerator, log, out_dir = run.cfg, run.accelerator, run.log, run.out_dir
    export_model(accelerator, model, out_dir / "final", cfg, evaluation)
    in_sync = replicas_in_sync(accelerator, model)
    accelerator.end_training()
    final = {k: v for k, v in state.history[-1].items() if k != "step"}  # every stage ends evaluated
    summary = {"final": final, "best_step": state.best_step,
               "best_score": state.best_score, "best_metric": cfg.train.best_metric,
               "optimizer_steps": state.optimizer_step, "constant": constant,
               "distributed_type": str(accelerator.distributed_type), "num_processes": accelerator.num_processes,
               "replicas_in_sync": in_sync}
    if cfg.train.push_to_hub and accelerator.is_main_process:
        summary["push"] = push_run(out_dir, cfg, log.info)
    if accelerator.is_main_process:
        (out_dir / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
        log.info(f"done: best {cfg.train.best_metric} {state.best_score:.4f} at step {state.best_step}; "
                 f"exported to {out_dir / 'best'} and {out_dir / 'final'}")
        if constant is not None:
            log.info(compare_with_constant(state, final, constant))
    return summary


def compare_with_constant(state: TrainState, final: dict, constant: dict) -> str:
    best = max((h["bleu4"] for h in state.history if h["step"] > state.stage_start_step or not state.stage),
               default=final["bleu4"])
    margin = best - constant["bleu4"]
    verdict = ("the model reads the images" if margin >= 0.05 else
               "the model has not learnt more than the caption template yet")
    return f"best bleu4 {best:.4f} vs {constant['bleu4']:.4f} for the best constant caption ({margin:+.4f}): {verdict}"


def recipe_from_argv(argv: Optional[list[str]], doc: str, check: Callable[[Config], None] = lambda cfg: None
                     ) -> "Config | int":
    """The config of `RECIPE [key=value ...]` (the command line when `argv` is None), checked by
    `check`; or, after printing the help or the config error, the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(doc)
        return 0 if argv else 2
    try:
        cfg = load_config(argv[0], argv[1:])
        check(cfg)
    except ConfigError as err:
        print(f"memecap: config error: {said(str(err))}", file=sys.stderr)
        return 2
    return cfg


def cli(argv: Optional[list[str]] = None) -> int:
    """`python -m memecap.train RECIPE [key=value ...]` (what `accelerate launch -m` runs)."""
    from memecap.models.vlm.template import ChatTemplateError
    from memecap.untrusted import UntrustedCodeReference

    cfg = recipe_from_argv(argv, __doc__, require_hub_token)
    if isinstance(cfg, int):
        return cfg
    places = {"train.output_dir": cfg.train.output_dir, "cache.dir": cfg.cache.dir if cfg.cache.enabled else None}
    try:
        probe_writable(places)
        summary = main(cfg)  # its end_training() destroys the process group
    except ConfigError as err:  # found once the run folder or checkpoint is read
        print(f"memecap: config error: {said(str(err))}", file=sys.stderr)
        return 2
    except (NonFiniteTraining, DamagedCheckpoint) as err:
        print(f"memecap: {said(str(err))}", file=sys.stderr)
        return 1
    except (UntrustedCodeReference, ChatTemplateError) as err:  # a base model's files refused
        print(f"memecap: {said(str(err))}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a full disk or an unwritable folder is one line; the rest re-raise
        message = explain(err, places)
        if message is None:
            raise
        print(f"memecap: {said(message)}", file=sys.stderr)
        return 2
    return 1 if summary.get("push", {}).get("ok") is False else 0  # scripts must notice a model left unpushed


if __name__ == "__main__":
    sys.exit(end_launched_process(run_stoppable(cli)))
