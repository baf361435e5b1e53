"""The training loop: one file, every model, any Accelerate setup.

    memecap train demo
    memecap train clipcap_lora data.train=memes/train.tsv data.val=memes/val.tsv
    accelerate launch -m memecap.train clipcap_lora optim.lr=3e-4          # same, on many devices

Setup -> fail-fast checks -> train (accumulation, clipping, schedule) -> evaluate every N steps
-> checkpoint atomically -> export the best model. Nothing here depends on the model family:
models follow the protocol in memecap/models/__init__.py.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from accelerate.utils import send_to_device, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from memecap.accelerate_setup import forget_prepared, make_accelerator, replicas_in_sync, whole_weights
from memecap.checkpoint import (STATE_FILE, DamagedCheckpoint, TrainState, find_resume_point, list_checkpoints, load_checkpoint,
                                resume_changes, save_checkpoint)
from memecap.config import Config, ConfigError, load_config, load_saved_config, save_config, to_yaml
from memecap.data.captions import encode_captions
from memecap.data.sources import load_train_val
from memecap.evaluation import best_constant_caption, compute_metrics, format_metrics_table, write_predictions
from memecap.file_names import shown
from memecap.generation import with_overrides
from memecap.hub import EVALUATION_FILE, push_run, require_hub_token
from memecap.model_card import training_summary
from memecap.models import build_model
from memecap.models.clipcap import CaptionEvalSet, CaptionTrainSet
from memecap.nonfinite import BadStepGuard, NonFiniteTraining, ensure_finite_weights
from memecap.optim import build_optimizer, build_scheduler
from memecap.os_errors import explain, probe_writable
from memecap.process_exit import end_launched_process
from memecap.run_folder import claim_run_folder, output_is_shared, preparing, same_everywhere, writes_checkpoints
from memecap.quiet import no_cpu_accelerator_notice
from memecap.run_log import RunLog, flat_hparams
from memecap.stages import apply_freeze, load_stage_examples, plan_stages


@torch.no_grad()
def evaluate(accelerator, model, eval_loader, loss_loader, examples, cfg: Config, synced_gpus: bool) -> tuple[dict, list]:
    """Validation loss, generated captions and metrics; every example is scored exactly once."""
    model.eval()
    net = accelerator.unwrap_model(model)
    loss_sum = torch.zeros((), device=accelerator.device)
    token_sum = torch.zeros((), device=accelerator.device)
    for batch in loss_loader:
        out = model(batch)
        loss_sum += out["loss"].float() * out["num_tokens"]
        token_sum += out["num_tokens"]
    loss_sum, token_sum = accelerator.reduce(loss_sum), accelerator.reduce(token_sum)
    captions: dict[int, list[str]] = {}
    bar = tqdm(eval_loader, desc="captioning", leave=False,
               disable=not (cfg.train.progress_bar and accelerator.is_main_process))
    for batch in bar:
        with accelerator.autocast():
            generated = net.generate(batch, cfg.generation, synced_gpus=synced_gpus)
        pairs = list(zip(batch["index"].tolist(), generated))
        for index, caps in accelerator.gather_for_metrics(pairs, use_gather_object=True):
            captions[index] = caps
    model.train()
    metrics = {"val_loss": (loss_sum / token_sum.clamp(min=1)).item()}
    rows = [{"uid": ex.uid, "references": list(ex.captions), "prediction": captions[i][0],
             **({"alternatives": captions[i][1:]} if len(captions[i]) > 1 else {})}
            for i, ex in enumerate(examples) if i in captions]
    if len(rows) != len(examples):
        raise RuntimeError(f"evaluation produced {len(rows)} captions for {len(examples)} examples")
    metrics.update(compute_metrics([r["prediction"] for r in rows], [r["references"] for r in rows],
                                   scoring=cfg.eval.scoring))
    return metrics, rows


LOWER_IS_BETTER = ("val_loss", "quote")  # a loss and an error rate


def is_better(metric: str, new: float, best: Optional[float]) -> bool:
    if not math.isfinite(new):
        return False  # a NaN score is never the best
    if best is None:
        return True
    return new < best if metric in LOWER_IS_BETTER else new > best


def export_model(accelerator, model, out_dir: Path, cfg: Config, evaluation: Optional[dict]) -> None:
    """Write the publishable model atomically (a crash keeps the previous export intact), with
    the evaluation that scored it (for the model card). The weights are consolidated first
    (every rank takes part under ZeRO-3), so the export loads without DeepSpeed."""
    accelerator.wait_for_everyone()
    ensure_finite_weights(accelerator, model, f"export to {out_dir}")
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(tmp, generation=cfg.generation, state_dict=state_dict)
        if evaluation is not None:
            (tmp / EVALUATION_FILE).write_text(json.dumps(evaluation, ensure_ascii=False, indent=1), encoding="utf-8")
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    accelerator.wait_for_everyone()


def main(cfg: Config) -> dict:
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
    claim_run_folder(accelerator, cfg, out_dir, log, writer=writer, has_checkpoint=bool(list_checkpoints(out_dir)))
    if accelerator.is_main_process:
        save_config(cfg, out_dir / "config.yaml")
    stages = plan_stages(cfg)
    if len(stages) > 1 and accelerator.state.deepspeed_plugin is not None:
        raise ConfigError("stages: multi-stage runs are not supported under DeepSpeed (its engine wraps one optimizer)")
    resume_from = find_resume_point(cfg.train.resume, out_dir, log.info)
    same_everywhere(accelerator, resume_from.name if resume_from else None, "the checkpoint to resume from")
    state = TrainState.from_file(resume_from / STATE_FILE) if resume_from is not None else TrainState()
    if resume_from is not None:
        check_resume(cfg, resume_from, state, accelerator.num_processes, log)

    # Data: read and validate every row of every stage before anything heavy happens.
    with preparing(accelerator, shared):
        data = [load_stage_examples(cfg, stage, work_dir=out_dir, log=log.info) for stage in stages]
    train_texts = [c for train_examples, _ in data for ex in train_examples for c in ex.captions]
    cache_dir = cfg.cache.dir if cfg.cache.enabled else None
    show = cfg.train.progress_bar and accelerator.is_local_main_process

    def stage_images(net, stage):
        return [net.image_inputs([ex.image_path for ex in examples], cache_dir=cache_dir, device=accelerator.device,
                                 progress=show, desc=f"{split} images")
                for split, examples in zip(("train", "val"), data[stage.index])]

    with whole_weights(accelerator, log), preparing(accelerator, shared):  # the first process writes caches
        # A copy: the family resolves "tiny-random" names to folders in it, the run's config keeps what was asked.
        model = build_model(copy.deepcopy(cfg.model), work_dir=out_dir, train_texts=train_texts)
        images = stage_images(model, stages[state.stage])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}

    def caption_set(examples, images, split):
        ids, owners = encode_captions(model, examples, cfg.data.max_caption_tokens, cfg.data.long_captions, split)
        return CaptionTrainSet(images, ids, owners)

    def loader(dataset, batch_size, shuffle):
        # A private generator: creating an iterator then draws from it, not from the global RNG
        # that dropout uses, so a resumed run's random stream matches the uninterrupted one.
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=model.collate,
                          num_workers=cfg.data.num_workers, generator=torch.Generator().manual_seed(cfg.train.seed))

    constant = None
    synced_gpus = accelerator.state.deepspeed_plugin is not None and accelerator.state.deepspeed_plugin.zero_stage == 3
    last_evaluation: dict = {}
    final: dict = {}
    first = True  # the first stage this process runs (the one a resume lands in)
    for stage in stages[state.stage:]:
        train_examples, val_examples = data[stage.index]
        if not first:
            model = accelerator.unwrap_model(model)
            with preparing(accelerator, shared):
                images = stage_images(model, stage)
        train_images, val_images = images
        apply_freeze(model, trainable, stage)
        train_set = caption_set(train_examples, train_images, "train")
        val_loss_set = caption_set(val_examples, val_images, "validation")
        train_loader = loader(train_set, cfg.train.batch_size, True)
        val_loss_loader = loader(val_loss_set, cfg.eval.batch_size, False)
        eval_loader = loader(CaptionEvalSet(val_images), cfg.eval.batch_size, False)

        steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / cfg.train.grad_accum)
        total_steps = stage.max_steps or steps_per_epoch * stage.epochs
        n_trainable = sum(p.numel() for p in model.trainable_parameters())
        n_total = sum(p.numel() for p in model.parameters())
        log.info(f"{stage.label + ': ' if len(stages) > 1 else ''}data: {len(train_examples)} train images "
                 f"({len(train_set)} captions), {len(val_examples)} val; model: {n_trainable:,} trainable of "
                 f"{n_total:,} parameters; {total_steps} optimizer steps")

        optimizer = build_optimizer(stage.optim, model.trainable_parameters())
        scheduler = build_scheduler(stage.optim, optimizer, total_steps, accelerator.num_processes)
        if not first:
            forget_prepared(accelerator)
        # The training loader is prepared with the model: DeepSpeed reads its micro-batch size from it.
        model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
        val_loss_loader, eval_loader = accelerator.prepare(val_loss_loader, eval_loader)

        if first:
            # Fail fast: a forward pass and a short generation on real validation items, before step 0.
            net = accelerator.unwrap_model(model)
            with torch.no_grad(), accelerator.autocast():
                probe = send_to_device(net.collate([val_loss_set[i] for i in range(min(2, len(val_loss_set)))]),
                                       accelerator.device)
                probe_loss = net(probe)["loss"].item()
                probe_eval = send_to_device(net.collate([CaptionEvalSet(val_images)[0]]), accelerator.device)
                # The configured decoding (beam width, sampling filters), only shorter.
                quick = with_overrides(cfg.generation, max_new_tokens=min(8, cfg.generation.max_new_tokens))
                probe_caption = net.generate(probe_eval, quick, synced_gpus=synced_gpus)[0][0]
            if not math.isfinite(probe_loss):
                raise RuntimeError(f"the initial loss is {probe_loss}: check the data and the model settings")
            log.info(f"check: initial loss {probe_loss:.3f}, untrained caption {probe_caption!r}")

            if resume_from is not None:
                state = load_checkpoint(accelerator, resume_from)
                replayed = log.forget_after(state.optimizer_step)
                log.info(f"resumed from {resume_from}: {stage.label + ', ' if len(stages) > 1 else ''}"
                         f"epoch {state.epoch}, optimizer step {state.optimizer_step}"
                         + (f" ({replayed} log records of the interrupted attempt after it were dropped)"
                            if replayed else ""))
            accelerator.init_trackers("memecap", config=flat_hparams(cfg))
            if cfg.eval.compare_constant and accelerator.is_main_process:
                # Against the data the run ends on: the last stage's.
                last_train, last_val = data[-1]
                caption, scores = best_constant_caption([c for ex in last_train for c in ex.captions],
                                                        [list(ex.captions) for ex in last_val], scoring=cfg.eval.scoring)
                constant = {"caption": caption, **scores}
                log.info(f"best constant caption: {caption!r} -> bleu4 {scores['bleu4']:.4f}")
        elif len(stages) > 1:
            log.info(f"{stage.label} starts from the weights of the previous stage at optimizer step {state.optimizer_step}")

        def run_evaluation() -> dict:
            metrics, rows = evaluate(accelerator, model, eval_loader, val_loss_loader, val_examples, cfg, synced_gpus)
            last_evaluation.update(step=state.optimizer_step, metrics=metrics, samples=rows[:5],
                                   data={"train": stage.train or cfg.data.train, "val": stage.val,
                                         "val_examples": len(rows)},
                                   training=training_summary(cfg, state.optimizer_step))
            if accelerator.is_main_process:
                write_predictions(out_dir / "predictions" / f"step_{state.optimizer_step:07d}.jsonl", rows)
                table = format_metrics_table(metrics, title=f"evaluation at optimizer step {state.optimizer_step}")
                samples = "\n".join(f"  [{r['uid']}] {r['prediction']}\n      ref: {r['references'][0]}"
                                    for r in rows[: cfg.eval.samples_to_show])
                log.info(f"{table}\n{samples}")
            log.record("eval", state.optimizer_step, metrics)
            state.history.append({"step": state.optimizer_step, **metrics})
            score = metrics[cfg.train.best_metric]
            if is_better(cfg.train.best_metric, score, state.best_score):
                state.best_score, state.best_step, state.evals_without_improvement = score, state.optimizer_step, 0
                export_model(accelerator, model, out_dir / "best", cfg, last_evaluation)
            else:
                state.evals_without_improvement += 1
            return metrics

        model.train()
        stage_step = state.optimizer_step - state.stage_start_step
        bar = tqdm(total=total_steps, initial=stage_step, desc="training", unit="step",
                   disable=not (cfg.train.progress_bar and accelerator.is_main_process))
        window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
        guard = BadStepGuard(accelerator, cfg.train.max_bad_steps)
        stop = stage_step >= total_steps
        last_saved = last_evaluated = state.optimizer_step
        while not stop and state.epoch < (stage.epochs if stage.max_steps is None else 10**9):
            train_loader.set_epoch(state.epoch)
            batches = (accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
                       if state.batches_in_epoch else train_loader)
            for batch in batches:
                with accelerator.accumulate(model):
                    out = model(batch)
                    accelerator.backward(out["loss"])
                    loss, tokens = out["loss"].item(), out["num_tokens"].item()
                    finite = guard.see_loss(loss)
                    grad_norm = None
                    if accelerator.sync_gradients and cfg.optim.max_grad_norm:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
                    bad_step = accelerator.sync_gradients and guard.step_is_bad(grad_norm)
                    if not bad_step:
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                state.micro_step += 1
                state.batches_in_epoch += 1
                if finite:
                    window_loss += loss * tokens
                    window_tokens += tokens
                if not accelerator.sync_gradients:
                    continue
                state.optimizer_step += 1
                if bad_step:
                    newest = list_checkpoints(out_dir)
                    guard.after_bad_step(state.optimizer_step, str(newest[-1]) if newest else None)
                    log.info(f"optimizer step {state.optimizer_step}: non-finite loss or gradient norm, step skipped "
                             f"({guard.bad_steps} of train.max_bad_steps={cfg.train.max_bad_steps})")
                    log.record("skipped", state.optimizer_step, {"bad_steps": guard.bad_steps})
                bar.update(1)
                if state.optimizer_step % cfg.train.log_every == 0:
                    elapsed = time.perf_counter() - window_start
                    record = {"loss": window_loss / max(window_tokens, 1), "lr": scheduler.get_last_lr()[0],
                              "epoch": state.epoch, "tokens_per_s": window_tokens * accelerator.num_processes / elapsed,
                              **({"stage": state.stage} if len(stages) > 1 else {})}
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                    log.record("train", state.optimizer_step, record)
                    window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
                stop = state.optimizer_step - state.stage_start_step >= total_steps
                if cfg.train.eval_every and state.optimizer_step % cfg.train.eval_every == 0:
                    run_evaluation()
                    last_evaluated = state.optimizer_step
                patience = cfg.train.early_stopping_patience
                if patience is not None and state.evals_without_improvement >= patience:
                    log.info(f"early stopping: {patience} evaluations without a better {cfg.train.best_metric}")
                    stop = True
                save_now = cfg.train.save_every and state.optimizer_step % cfg.train.save_every == 0
                if save_now or (not cfg.train.save_every and last_evaluated == state.optimizer_step != last_saved):
                    save_checkpoint(accelerator, out_dir, state, cfg, cfg.train.keep_checkpoints, writer)
                    last_saved = state.optimizer_step
                if stop:
                    break
            else:
                state.epoch += 1
                state.batches_in_epoch = 0
                if not cfg.train.eval_every and last_evaluated != state.optimizer_step:
                    run_evaluation()
                    last_evaluated = state.optimizer_step
                    if not cfg.train.save_every:
                        save_checkpoint(accelerator, out_dir, state, cfg, cfg.train.keep_checkpoints, writer)
                        last_saved = state.optimizer_step
        bar.close()

        # Every stage ends evaluated and checkpointed; a resume from that checkpoint moves straight on.
        final = state.history[-1] if state.history and last_evaluated == state.optimizer_step else run_evaluation()
        if last_saved != state.optimizer_step:
            save_checkpoint(accelerator, out_dir, state, cfg, cfg.train.keep_checkpoints, writer)
        first = False
        if stage.index + 1 < len(stages):
            # The next stage has its own data: its best checkpoint is chosen on its own validation set.
            state.stage, state.stage_start_step = stage.index + 1, state.optimizer_step
            state.epoch = state.batches_in_epoch = 0
            state.best_score, state.best_step, state.evals_without_improvement = None, None, 0

    export_model(accelerator, model, out_dir / "final", cfg, last_evaluation)
    in_sync = replicas_in_sync(accelerator, model)
    accelerator.end_training()
    summary = {"final": {k: v for k, v in final.items() if k != "step"}, "best_step": state.best_step,
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
            best = max((h["bleu4"] for h in state.history if h["step"] > state.stage_start_step or not state.stage),
                       default=final["bleu4"])
            log.info(f"best bleu4 {best:.4f} vs {constant['bleu4']:.4f} for the best constant caption "
                     f"({best - constant['bleu4']:+.4f}): "
                     + ("the model reads the images" if best - constant["bleu4"] >= 0.05 else
                        "the model has not learnt more than the caption template yet"))
    return summary


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


def cli(argv: Optional[list[str]] = None) -> int:
    """`python -m memecap.train RECIPE [key=value ...]` (what `accelerate launch -m` runs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        cfg = load_config(argv[0], argv[1:])
        require_hub_token(cfg)
    except ConfigError as err:
        print(f"memecap: config error: {err}", file=sys.stderr)
        return 2
    places = {"train.output_dir": cfg.train.output_dir, "cache.dir": cfg.cache.dir if cfg.cache.enabled else None}
    try:
        probe_writable(places)
        summary = main(cfg)  # its end_training() destroys the process group
    except ConfigError as err:  # found once the run folder or checkpoint is read
        print(f"memecap: config error: {err}", file=sys.stderr)
        return 2
    except (NonFiniteTraining, DamagedCheckpoint) as err:
        print(f"memecap: {shown(str(err))}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - a full disk or an unwritable folder is one line; the rest re-raise
        message = explain(err, places)
        if message is None:
            raise
        print(f"memecap: {shown(message)}", file=sys.stderr)
        return 2
    return 1 if summary.get("push", {}).get("ok") is False else 0  # scripts must notice a model left unpushed


if __name__ == "__main__":
    sys.exit(end_launched_process(cli()))
