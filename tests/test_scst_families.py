"""Self-critical fine-tuning through the one loop for every family that generates, not only ClipCap
(tests/test_scst_loop.py): RuDOLPH (8-bit AdamW, gradient checkpointing), a vision-language model
with LoRA, and the LSTM baseline. Each run samples, is rewarded, logs every reward part, and moves
its trained weights away from where the stage started, which the KL estimate to the starting weights
(0 at the first step, where policy and reference are the same weights) shows."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from memecap import train
from memecap.config import load_config
from memecap.training.objectives import KL_REFERENCE_FILE
from tests.helpers import log_rows, reset_accelerate, rudolph_run_config, tiny_run_config

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")

SCST = ("train.objective=scst", "scst.samples=2", "scst.kl=0.5", "train.max_steps=3", "train.save_every=1",
        "train.keep_checkpoints=3", "train.eval_every=100", "eval.compare_constant=false",
        "generation.max_new_tokens=6", "optim.lr=1e-2", "optim.warmup_steps=0")


def family_config(family: str, out, synthetic_data, tiny_rudolph, *extra: str):
    if family == "rudolph":
        return rudolph_run_config("rudolph_350m", out, synthetic_data, tiny_rudolph, *SCST, *extra)
    if family == "lstm":
        return tiny_run_config(out, synthetic_data, "model.encoder.name=tiny-random", "model.lstm.embed_dim=16",
                               "model.lstm.hidden_dim=32", "model.lstm.attention_dim=16", "model.lstm.min_word_count=1",
                               *SCST, *extra, recipe="lstm_resnet50")
    return load_config("vlm_tiny", [
        f"data.train={synthetic_data['train']}", f"data.val={synthetic_data['val']}", f"train.output_dir={out}",
        f"cache.dir={out / 'cache'}", "train.trackers=[]", "train.progress_bar=false", "train.batch_size=8",
        "eval.batch_size=4", "train.log_every=1", "model.vlm.tiny_architecture=qwen2_5_vl", "model.vlm.mode=lora",
        *SCST, *extra])


@pytest.mark.parametrize("family", ["rudolph", "vlm", "lstm"])
def test_every_generating_family_trains_self_critically(family, tmp_path, synthetic_data, tiny_rudolph):
    out = tmp_path / "run"
    cfg = family_config(family, out, synthetic_data, tiny_rudolph)
    assert cfg.train.objective == "scst"
    try:
        summary = train.main(cfg)
    finally:
        reset_accelerate()
    assert summary["optimizer_steps"] == 3
    rows = log_rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert {"reward", "cider", "quote", "length", "repetition", "kl"} <= set(r), family
        assert math.isfinite(r["loss"]) and r["reward"] == pytest.approx(r["cider"] + r["quote"], abs=1e-9)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6), family  # policy = reference before any update
    assert rows[-1]["kl"] > 1e-6, family  # the updates moved the policy

    checkpoints = out / "checkpoints"
    reference = load_file(str(checkpoints / "step_0000003" / KL_REFERENCE_FILE))
    trained = load_file(str(checkpoints / "step_0000003" / "model.safetensors"))
    assert reference and set(reference) <= set(trained), family
    moved = [name for name, start in reference.items() if not torch.equal(start, trained[name].to(start.dtype))]
    assert moved, f"{family}: no trained weight moved in 3 scst steps"
