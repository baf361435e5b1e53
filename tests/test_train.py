"""The real training loop, in-process, on tiny models: smoke run, exact resume, pinned loss."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from memecap import train
from memecap.training.checkpoint import list_checkpoints
from memecap.evaluation import read_predictions
from tests.helpers import log_rows, reset_accelerate, tiny_run_config

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def train_losses(out_dir):
    return {r["step"]: r["loss"] for r in log_rows(out_dir)}


def test_demo_recipe_smoke_run_writes_everything(tmp_path, synthetic_data):
    out = tmp_path / "run"
    cfg = tiny_run_config(out, synthetic_data, "train.epochs=2", "optim.lr=3e-3", "train.trackers=[tensorboard]")
    summary = train.main(cfg)
    assert list((out / "memecap").glob("events.out.tfevents.*"))  # TensorBoard through Accelerate's tracker

    assert summary["optimizer_steps"] == 2 * 6  # 48 captions / batch 8, two epochs
    losses = train_losses(out)
    first, last = sum(list(losses.values())[:3]) / 3, sum(list(losses.values())[-3:]) / 3
    assert last < first - 0.5, losses
    for name in ("config.yaml", "log.jsonl", "summary.json", "best/memecap.yaml", "final/mapper.safetensors",
                 "final/decoder/model.safetensors", "final/tokenizer/tokenizer.json"):
        assert (out / name).is_file(), name
    preds = read_predictions(sorted((out / "predictions").glob("*.jsonl"))[-1])
    assert len(preds) == 13 and len({p["uid"] for p in preds}) == 13
    assert [p.name for p in list_checkpoints(out)] == ["step_0000006", "step_0000012"]
    assert set(summary["final"]) >= {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "cider", "rougeL", "val_loss"}
    assert summary["constant"]["caption"]  # the floor is scored and reported


def test_resume_continues_exactly(tmp_path, synthetic_data):
    """N steps straight == k steps, stop, resume, N-k steps: same losses and same weights.
    Dropout is on (GPT-2's default 0.1) and gradients accumulate over 2 micro-batches, so RNG,
    data position and the accumulation counter must all come back."""
    common = ("train.max_steps=7", "train.save_every=2", "train.keep_checkpoints=5", "train.grad_accum=2",
              "train.eval_every=100", "eval.compare_constant=false")
    straight = tmp_path / "straight"
    train.main(tiny_run_config(straight, synthetic_data, *common))
    reset_accelerate()

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "base_models", resumed / "base_models")
    # 6 micro-batches an epoch, 2 per step: step 2 ends mid-epoch, after 4 micro-batches.
    checkpoint = straight / "checkpoints" / "step_0000002"
    train.main(tiny_run_config(resumed, synthetic_data, *common, f"train.resume={checkpoint}"))

    a, b = train_losses(straight), train_losses(resumed)
    assert sorted(b) == [3, 4, 5, 6, 7]
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])
    wa, wb = load_file(straight / "final" / "mapper.safetensors"), load_file(resumed / "final" / "mapper.safetensors")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6)
    da = load_file(straight / "final" / "decoder" / "model.safetensors")
    db = load_file(resumed / "final" / "decoder" / "model.safetensors")
    for key in da:
        torch.testing.assert_close(da[key], db[key], rtol=0, atol=1e-6)


def test_resume_auto_picks_newest_complete_checkpoint(tmp_path, synthetic_data):
    out = tmp_path / "run"
    train.main(tiny_run_config(out, synthetic_data, "train.max_steps=4", "train.save_every=2",
                               "eval.compare_constant=false", "train.eval_every=100"))
    reset_accelerate()
    # A half-written checkpoint (crash mid-save) must be ignored, not resumed from.
    (out / "checkpoints" / "step_0000009.tmp").mkdir()
    summary = train.main(tiny_run_config(out, synthetic_data, "train.max_steps=6", "train.save_every=2",
                                         "train.resume=auto", "eval.compare_constant=false", "train.eval_every=100"))
    assert summary["optimizer_steps"] == 6
    steps = [r["step"] for r in log_rows(out)]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 1-4 from the first run, then 5-6 only: nothing redone
