"""The training loop: one file, every model, any Accelerate setup.

    memecap train demo
    memecap train clipcap_lora data.train=memes/train.tsv data.val=memes/val.tsv
    accelerate launch -m memecap.train clipcap_lora optim.lr=3e-4          # same, on many devices

Setup -> fail-fast checks -> train (accumulation, clipping, schedule) -> evaluate every N steps
-> checkpoint atomically -> export the best model. Nothing here depends on the model family:
models follow the protocol in memecap/models/protocol.py. Setup lives in run_setup.py, the
validation pass and exports in validation_pass.py, when to evaluate and save in schedule.py.
"""
from __future__ import annotations

import json
import math
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Optional

import torch
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from memecap.training.accelerate_setup import forget_prepared, replicas_in_sync, whole_weights
from memecap.training.checkpoint import DamagedCheckpoint, TrainState, list_checkpoints, load_checkpoint, save_checkpoint
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
from memecap.training.run_log import flat_hparams
from memecap.training.run_setup import Run, setup
from memecap.training.schedule import Due, EvalSaveSchedule
from memecap.training.stages import Stage, apply_freeze
from memecap.training.validation_pass import export_model, is_better, validation_pass


@dataclass
class StageRun:
    """The prepared objects of one stage."""

    stage: Stage
    model: torch.nn.Module
    optimizer: object
    scheduler: object
    train_loader: DataLoader
    val_loss_loader: DataLoader
    eval_loader: DataLoader
    val_loss_set: CaptionTrainSet
    val_images: object
    total_steps: int


def main(cfg: Config) -> dict:
    with ExitStack() as held:  # the run folder's lock, released however the run ends
        run = setup(cfg, held)
        final: dict = {}
        for i, stage in enumerate(run.stages[run.state.stage:]):
            stage_run = prepare_stage(run, stage, first=i == 0)
            if i == 0:
                fail_fast(run, stage_run)
                start(run, stage_run)
            elif run.many_stages:
                run.log.info(f"{stage.label} starts from the weights of the previous stage at optimizer step "
                             f"{run.state.optimizer_step}")
            final = train_stage(run, stage_run)
            next_stage(run.state, stage, len(run.stages))
        return finish(run, final)


def stage_images(run: Run, stage: Stage) -> list:
    """The stage's train and val images as the model reads them (features from the cache, written
    by the first process of each machine, or pixels)."""
    net = run.accelerator.unwrap_model(run.model)
    cache_dir = run.cfg.cache.dir if run.cfg.cache.enabled else None
    show = run.cfg.train.progress_bar and run.accelerator.is_local_main_process
    with whole_weights(run.accelerator, run.log), preparing(run.accelerator, run.shared):
        return [net.image_inputs([ex.image_path for ex in examples], cache_dir=cache_dir,
                                 device=run.accelerator.device, progress=show, desc=f"{split} images")
                for split, examples in zip(("train", "val"), run.data[stage.index])]


def make_loader(run: Run, dataset, batch_size: int, shuffle: bool) -> DataLoader:
    # A private generator: creating an iterator then draws from it, not from the global RNG that
    # dropout uses, so a resumed run's random stream matches the uninterrupted one.
    net = run.accelerator.unwrap_model(run.model)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=net.collate,
                      num_workers=run.cfg.data.num_workers, generator=torch.Generator().manual_seed(run.cfg.train.seed))


def prepare_stage(run: Run, stage: Stage, first: bool) -> StageRun:
    """The stage's datasets, loaders, optimizer and schedule, prepared with the model."""
    cfg, accelerator = run.cfg, run.accelerator
    run.model = accelerator.unwrap_model(run.model)
    train_examples, val_examples = run.data[stage.index]
    train_images, val_images = stage_images(run, stage)
    apply_freeze(run.model, run.trainable, stage)

    def caption_set(examples, images, split):
        ids, owners = encode_captions(run.model, examples, cfg.data.max_caption_tokens, cfg.data.long_captions, split)
        return CaptionTrainSet(images, ids, owners)

    train_set = caption_set(train_examples, train_images, "train")
    val_loss_set = caption_set(val_examples, val_images, "validation")
    train_loader = make_loader(run, train_set, cfg.train.batch_size, True)
    val_loss_loader = make_loader(run, val_loss_set, cfg.eval.batch_size, False)
    eval_loader = make_loader(run, CaptionEvalSet(val_images), cfg.eval.batch_size, False)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / cfg.train.grad_accum)
    total_steps = stage.max_steps or steps_per_epoch * stage.epochs
    n_trainable = sum(p.numel() for p in run.model.trainable_parameters())
    run.log.info(f"{stage.label + ': ' if run.many_stages else ''}data: {len(train_examples)} train images "
                 f"({len(train_set)} captions), {len(val_examples)} val; model: {n_trainable:,} trainable of "
                 f"{sum(p.numel() for p in run.model.parameters()):,} parameters; {total_steps} optimizer steps")
    optimizer = build_optimizer(stage.optim, run.model.trainable_parameters())
    scheduler = build_scheduler(stage.optim, optimizer, total_steps, accelerator.num_processes)
    if not first:
        forget_prepared(accelerator)
    # The training loader is prepared with the model: DeepSpeed reads its micro-batch size from it.
    run.model, optimizer, train_loader, scheduler = accelerator.prepare(run.model, optimizer, train_loader, scheduler)
    val_loss_loader, eval_loader = accelerator.prepare(val_loss_loader, eval_loader)
    return StageRun(stage, run.model, optimizer, scheduler, train_loader, val_loss_loader, eval_loader,
                    val_loss_set, val_images, total_steps)


def fail_fast(run: Run, stage_run: StageRun) -> None:
    """A forward pass and a short generation with the configured decoding on real validation
    items, before step 0: a broken setup fails in seconds, not after an epoch."""
    accelerator, net = run.accelerator, run.accelerator.unwrap_model(run.model)
    items = stage_run.val_loss_set
    with torch.no_grad(), accelerator.autocast():
        probe = send_to_device(net.collate([items[i] for i in range(min(2, len(items)))]), accelerator.device)
        probe_loss = net(probe)["loss"].item()
        probe_eval = send_to_device(net.collate([CaptionEvalSet(stage_run.val_images)[0]]), accelerator.device)
        quick = with_overrides(run.cfg.generation, max_new_tokens=min(8, run.cfg.generation.max_new_tokens))
        probe_caption = net.generate(probe_eval, quick, synced_gpus=run.synced_gpus)[0][0]
    if not math.isfinite(probe_loss):
        raise RuntimeError(f"the initial loss is {probe_loss}: check the data and the model settings")
    run.log.info(f"check: initial loss {probe_loss:.3f}, untrained caption {probe_caption!r}")


def start(run: Run, stage_run: StageRun) -> None:
    """Restore a checkpoint into the prepared objects, start the trackers, score the floor."""
    cfg, log = run.cfg, run.log
    if run.resume_from is not None:
        data = run.state.data_fingerprint  # the data as read now, checked against the checkpoint's in setup
        run.state = load_checkpoint(run.accelerator, run.resume_from)
        run.state.data_fingerprint = data
        replayed = log.forget_after(run.state.optimizer_step)
        log.info(f"resumed from {run.resume_from}: {stage_run.stage.label + ', ' if run.many_stages else ''}"
                 f"epoch {run.state.epoch}, optimizer step {run.state.optimizer_step}"
                 + (f" ({replayed} log records of the interrupted attempt after it were dropped)" if replayed else ""))
    run.accelerator.init_trackers("memecap", config=flat_hparams(cfg))
    if cfg.eval.compare_constant and run.accelerator.is_main_process:
        last_train, last_val = run.data[-1]  # against the data the run ends on: the last stage's
        caption, scores = best_constant_caption([c for ex in last_train for c in ex.captions],
                                                [list(ex.captions) for ex in last_val], scoring=cfg.eval.scoring)
        run.constant = {"caption": caption, **scores}
        log.info(f"best constant caption: {caption!r} -> bleu4 {scores['bleu4']:.4f}")


def evaluate_and_keep_best(run: Run, stage_run: StageRun) -> dict:
    """Score the model now, write the predictions, log the table and export it if it is the best."""
    cfg, state, accelerator = run.cfg, run.state, run.accelerator
    stage = stage_run.stage
    val_examples = run.data[stage.index][1]
    metrics, rows = validation_pass(accelerator, run.model, stage_run.eval_loader, stage_run.val_loss_loader, val_examples,
                             cfg, run.synced_gpus)
    run.last_evaluation.update(step=state.optimizer_step, metrics=metrics, samples=rows[:5],
                               data={"train": stage.train or cfg.data.train, "val": stage.val,
                                     "val_examples": len(rows)},
                               training=training_summary(cfg, state.optimizer_step))
    if accelerator.is_main_process:
        write_predictions(run.out_dir / "predictions" / f"step_{state.optimizer_step:07d}.jsonl", rows)
        table = format_metrics_table(metrics, title=f"evaluation at optimizer step {state.optimizer_step}")
        samples = "\n".join(f"  [{r['uid']}] {r['prediction']}\n      ref: {r['references'][0]}"
                            for r in rows[: cfg.eval.samples_to_show])
        run.log.info(f"{table}\n{samples}")
    run.log.record("eval", state.optimizer_step, metrics)
    state.history.append({"step": state.optimizer_step, **metrics})
    score = metrics[cfg.train.best_metric]
    if is_better(cfg.train.best_metric, score, state.best_score):
        state.best_score, state.best_step, state.evals_without_improvement = score, state.optimizer_step, 0
        export_model(accelerator, run.model, run.out_dir / "best", cfg, run.last_evaluation)
    else:
        state.evals_without_improvement += 1
    return metrics


def save(run: Run, window: LossWindow) -> None:
    ensure_finite_weights(run.accelerator, run.model, f"checkpoint at optimizer step {run.state.optimizer_step}")
    run.state.loss_window = window.totals()
    save_checkpoint(run.accelerator, run.out_dir, run.state, run.cfg, run.cfg.train.keep_checkpoints, run.writer)


class LossWindow:
    """Token-weighted mean loss and throughput between two log lines; a resume reopens the window
    the checkpoint saved (`totals`), so the log goes on as if never interrupted."""

    def __init__(self, loss: float = 0.0, tokens: int = 0):
        self.loss, self.tokens, self.start = float(loss), int(tokens), time.perf_counter()

    def totals(self) -> list:
        return [self.loss, self.tokens]

    def add(self, loss: float, tokens: int) -> None:
        self.loss += loss * tokens
        self.tokens += tokens

    def close(self, num_processes: int) -> dict:
        elapsed = time.perf_counter() - self.start
        record = {"loss": self.loss / max(self.tokens, 1), "tokens_per_s": self.tokens * num_processes / elapsed}
        self.__init__()
        return record


def micro_step(run: Run, stage_run: StageRun, batch, guard: BadStepGuard, window: LossWindow) -> Optional[bool]:
    """Forward, backward and, at the end of an accumulation, the optimizer step (skipped when the
    loss or gradient norm is not finite). Returns None mid-accumulation, else whether the
    optimizer step was skipped."""
    accelerator, model = run.accelerator, stage_run.model
    with accelerator.accumulate(model):
        out = model(batch)
        accelerator.backward(out["loss"])
        loss, tokens = out["loss"].item(), out["num_tokens"].item()
        if guard.see_loss(loss):
            window.add(loss, tokens)
        grad_norm = None
        if accelerator.sync_gradients and run.cfg.optim.max_grad_norm:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), run.cfg.optim.max_grad_norm)
        skipped = accelerator.sync_gradients and guard.step_is_bad(grad_norm)
        if not skipped:
            stage_run.optimizer.step()
        stage_run.scheduler.step()
        stage_run.optimizer.zero_grad(set_to_none=True)
    run.state.micro_step += 1
    run.state.batches_in_epoch += 1
    return skipped if accelerator.sync_gradients else None


def after_optimizer_step(run: Run, stage_run: StageRun, skipped: bool, guard: BadStepGuard, window: LossWindow,
                         bar) -> None:
    cfg, state = run.cfg, run.state
    state.optimizer_step += 1
    bar.update(1)
    if skipped:
        newest = list_checkpoints(run.out_dir)
        guard.after_bad_step(state.optimizer_step, str(newest[-1]) if newest else None)
        run.log.info(f"optimizer step {state.optimizer_step}: non-finite loss or gradient norm, step skipped "
                     f"({guard.bad_steps} of train.max_bad_steps={cfg.train.max_bad_steps})")
        run.log.record("skipped", state.optimizer_step, {"bad_steps": guard.bad_steps})
    if state.optimizer_step % cfg.train.log_every == 0:
        record = {**window.close(run.accelerator.num_processes), "lr": stage_run.scheduler.get_last_lr()[0],
                  "epoch": state.epoch, **({"stage": state.stage} if run.many_stages else {})}
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        run.log.record("train", state.optimizer_step, record)


def act(run: Run, stage_run: StageRun, due: Due, window: LossWindow) -> Optional[dict]:
    """Do what the schedule asked for: evaluate (and keep the best), then checkpoint."""
    metrics = evaluate_and_keep_best(run, stage_run) if due.evaluate else None
    if due.save:
        save(run, window)
    return metrics


def train_stage(run: Run, stage_run: StageRun) -> dict:
    """Optimizer steps until the stage's length, early stopping or its epochs are done; evaluations
    and checkpoints as the schedule says. Returns the stage's last evaluation."""
    cfg, state, stage = run.cfg, run.state, stage_run.stage
    schedule = EvalSaveSchedule(cfg.train.eval_every, cfg.train.save_every, state.optimizer_step)
    guard, window = BadStepGuard(run.accelerator, cfg.train.max_bad_steps), LossWindow(*(state.loss_window or ()))
    patience = cfg.train.early_stopping_patience
    stage_run.model.train()
    bar = tqdm(total=stage_run.total_steps, initial=state.optimizer_step - state.stage_start_step, desc="training",
               unit="step", disable=not (cfg.train.progress_bar and run.accelerator.is_main_process))
    done = state.optimizer_step - state.stage_start_step >= stage_run.total_steps
    while not done and state.epoch < (stage.epochs if stage.max_steps is None else 10**9):
        stage_run.train_loader.set_epoch(state.epoch)
        batches = (run.accelerator.skip_first_batches(stage_run.train_loader, state.batches_in_epoch)
                   if state.batches_in_epoch else stage_run.train_loader)
        for batch in batches:
            skipped = micro_step(run, stage_run, batch, guard, window)
            if skipped is None:
                continue
            after_optimizer_step(run, stage_run, skipped, guard, window, bar)
            done = state.optimizer_step - state.stage_start_step >= stage_run.total_steps
            act(run, stage_run, schedule.after_step(state.optimizer_step), window)
            if patience is not None and state.evals_without_improvement >= patience:
                run.log.info(f"early stopping: {patience} evaluations without a better {cfg.train.best_metric}")
                done = True
            if done:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
            act(run, stage_run, schedule.at_epoch_end(state.optimizer_step), window)
    bar.close()
    # Every stage ends evaluated and checkpointed; a resume from that checkpoint moves straight on.
    due = schedule.at_stage_end(state.optimizer_step)
    if not due.evaluate and not state.history:
        due = Due(evaluate=True, save=due.save)
    metrics = act(run, stage_run, due, window)
    return metrics if metrics is not None else state.history[-1]


def next_stage(state: TrainState, stage: Stage, n_stages: int) -> None:
    if stage.index + 1 < n_stages:
        # The next stage has its own data: its best checkpoint is chosen on its own validation set.
        state.stage, state.stage_start_step = stage.index + 1, state.optimizer_step
        state.epoch = state.batches_in_epoch = 0
        state.best_score, state.best_step, state.evals_without_improvement = None, None, 0
        state.loss_window = None  # the next stage's log starts its own window


def finish(run: Run, final: dict) -> dict:
    """Export the final model, check the replicas, push if asked, write and return the summary."""
    cfg, state, accelerator, log, out_dir = run.cfg, run.state, run.accelerator, run.log, run.out_dir
    export_model(accelerator, run.model, out_dir / "final", cfg, run.last_evaluation)
    in_sync = replicas_in_sync(accelerator, run.model)
    accelerator.end_training()
    summary = {"final": {k: v for k, v in final.items() if k != "step"}, "best_step": state.best_step,
               "best_score": state.best_score, "best_metric": cfg.train.best_metric,
               "optimizer_steps": state.optimizer_step, "constant": run.constant,
               "distributed_type": str(accelerator.distributed_type), "num_processes": accelerator.num_processes,
               "replicas_in_sync": in_sync}
    if cfg.train.push_to_hub and accelerator.is_main_process:
        summary["push"] = push_run(out_dir, cfg, log.info)
    if accelerator.is_main_process:
        (out_dir / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
        log.info(f"done: best {cfg.train.best_metric} {state.best_score:.4f} at step {state.best_step}; "
                 f"exported to {out_dir / 'best'} and {out_dir / 'final'}")
        if run.constant is not None:
            log.info(compare_with_constant(state, final, run.constant))
    return summary


def compare_with_constant(state: TrainState, final: dict, constant: dict) -> str:
    best = max((h["bleu4"] for h in state.history if h["step"] > state.stage_start_step or not state.stage),
               default=final["bleu4"])
    margin = best - constant["bleu4"]
    verdict = ("the model reads the images" if margin >= 0.05 else
               "the model has not learnt more than the caption template yet")
    return f"best bleu4 {best:.4f} vs {constant['bleu4']:.4f} for the best constant caption ({margin:+.4f}): {verdict}"


def cli(argv: Optional[list[str]] = None) -> int:
    """`python -m memecap.train RECIPE [key=value ...]` (what `accelerate launch -m` runs)."""
    from memecap.models.vlm.template import ChatTemplateError
    from memecap.untrusted import UntrustedCodeReference

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        cfg = load_config(argv[0], argv[1:])
        require_hub_token(cfg)
    except ConfigError as err:
        print(f"memecap: config error: {said(str(err))}", file=sys.stderr)
        return 2
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
