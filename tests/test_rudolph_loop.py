"""RuDOLPH recipes through the one loop: in-process smoke run (train, evaluate, export, `memecap
eval` / `caption`), two real CPU processes under DDP, and under DeepSpeed ZeRO-3 with offload."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from memecap import cli, train
from memecap.config import save_config
from memecap.evaluation import read_predictions
from memecap.inference.exported import exported_generation
from memecap.models import load_model
from memecap.data.datasets import CaptionEvalSet
from tests.helpers import log_rows, reset_accelerate, rudolph_run_config
from tests.launching import REPO, accelerate_launch, launch_failure

pytestmark = pytest.mark.usefixtures("one_thread")


def train_losses(out: Path) -> list[float]:
    return [r["loss"] for r in log_rows(out)]


def test_recipe_smoke_trains_evaluates_exports_and_captions(tmp_path, synthetic_data, tiny_rudolph, capsys):
    out = tmp_path / "run"
    cfg = rudolph_run_config("rudolph_350m", out, synthetic_data, tiny_rudolph, "train.max_steps=8",
                             "train.eval_every=4", "eval.compare_constant=false")
    assert cfg.optim.name == "bitsandbytes.optim.AdamW8bit" and cfg.model.rudolph.gradient_checkpointing
    try:
        summary = train.main(cfg)
    finally:
        reset_accelerate()
    assert summary["optimizer_steps"] == 8
    losses = train_losses(out)
    assert losses[-1] < losses[0] - 0.5, losses
    predictions = sorted((out / "predictions").glob("*.jsonl"))
    assert [p.name for p in predictions] == ["step_0000004.jsonl", "step_0000008.jsonl"]
    rows = read_predictions(predictions[-1])
    assert len(rows) == 13 and all(isinstance(r["prediction"], str) for r in rows)

    final = out / "final"
    files = {p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file()}
    assert files == {"memecap.yaml", "model.safetensors", "tokenizer/bpe.model", "eval.json"}
    # what a push uploads: the weights and the BPE (the tiny bases are local folders, so bundled)
    from memecap.models.export import export_files

    assert set(export_files(final)) == {"memecap.yaml", "model.safetensors", "tokenizer/bpe.model"}
    model = load_model(final)
    images = [synthetic_data["val"].parent / "images" / f"{r['uid']}.jpg" for r in rows]
    codes = model.image_inputs(images, cache_dir=None, device="cpu", progress=False)
    generation = exported_generation(final)
    assert generation == cfg.generation and generation.repetition_penalty > 1  # the recipe's decoding travels with it
    captions = []
    for start in range(0, len(rows), 4):  # the loop's eval batches: a barely trained model has near-tied logits
        batch = model.collate([CaptionEvalSet(codes)[i] for i in range(start, min(start + 4, len(rows)))])
        captions += model.generate(batch, generation)
    assert [c[0] for c in captions] == [r["prediction"] for r in rows]  # the export is the evaluated model

    # The CLI's eval and caption commands work on it unchanged.
    assert cli.main(["eval", str(out), "--data", str(synthetic_data["val"]), "--out", str(tmp_path / "p.jsonl")]) == 0
    assert "bleu4" in capsys.readouterr().out
    assert cli.main(["caption", str(images[0]), "--model", str(final), "--out", str(tmp_path / "c.jsonl"),
                     "--strategy", "sample", "--top-k", "5", "--num-return-sequences", "2"]) == 0
    written = json.loads((tmp_path / "c.jsonl").read_text())
    assert written["caption"] and len(written["alternatives"]) == 1


def check_distributed_run(out: Path, distributed_type: str) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["distributed_type"] == distributed_type
    for path in sorted((out / "predictions").glob("*.jsonl")):
        uids = [r["uid"] for r in read_predictions(path)]
        assert len(uids) == 13 and len(set(uids)) == 13  # both ranks' captions, none twice
    losses = train_losses(out)
    assert losses[-1] < losses[0], losses
    return summary


def test_two_process_ddp_run(tmp_path, synthetic_data, tiny_rudolph):
    out = tmp_path / "run"
    # 13 validation images over 2 ranks with batch 4: the last batch is uneven and padded by Accelerate.
    cfg = rudolph_run_config("rudolph_350m", out, synthetic_data, tiny_rudolph, "train.epochs=2",
                             "eval.compare_constant=false")
    save_config(cfg, tmp_path / "run.yaml")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = accelerate_launch("cpu_ddp.yaml", ["-m", "memecap.train", str(tmp_path / "run.yaml")], env, processes=2)
    assert proc.returncode == 0, launch_failure(proc)
    summary = check_distributed_run(out, "DistributedType.MULTI_CPU")
    assert summary["replicas_in_sync"] is True  # gradients (through checkpointed layers) were all-reduced
    assert summary["optimizer_steps"] == 6  # 48 captions, batch 8 per rank, 2 ranks -> 3 steps an epoch


@pytest.mark.timeout(900)
def test_two_process_zero3_offload_run(tmp_path, synthetic_data, tiny_rudolph):
    """Partitioned weights: decoding must keep both ranks in step (synced_gpus) and the export is consolidated."""
    out = tmp_path / "run"
    cfg = rudolph_run_config("rudolph_350m", out, synthetic_data, tiny_rudolph, "train.epochs=1",
                             "eval.compare_constant=false", "optim.name=torch.optim.AdamW")
    save_config(cfg, tmp_path / "run.yaml")
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}  # DeepSpeed must not see it
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TORCH_EXTENSIONS_DIR=str(REPO / ".torch_extensions"))
    proc = accelerate_launch("deepspeed_zero3_offload.yaml", ["-m", "memecap.train", str(tmp_path / "run.yaml")], env,
                             processes=2)
    assert proc.returncode == 0, launch_failure(proc)
    check_distributed_run(out, "DistributedType.DEEPSPEED")
    model = load_model(out / "final")  # whole tensors, loadable without DeepSpeed
    assert model.rudolph.to_logits[1].weight.numel() > 0
