"""Scoring during training, and what it leads to: the validation pass (loss, captions and metrics,
each example scored once across processes), the rule for a better score, and the export of the
model being trained."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from memecap.config import Config
from memecap.evaluation import compute_metrics
from memecap.metrics.registry import higher_is_better
from memecap.outputs.run_layout import EVALUATION_FILE
from memecap.training.nonfinite import ensure_finite_weights


@torch.no_grad()
def validation_pass(accelerator, model, eval_loader, loss_loader, examples, cfg: Config,
                    synced_gpus: bool) -> tuple[dict, list]:
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


def is_better(metric: str, new: float, best: Optional[float]) -> bool:
    """Whether `new` beats the best `metric` so far, in the direction the metric registry gives it."""
    if not math.isfinite(new):
        return False  # a NaN score is never the best
    if best is None:
        return True
    return new > best if higher_is_better(metric) else new < best


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
