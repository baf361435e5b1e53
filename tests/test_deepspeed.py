"""The real loop under real DeepSpeed ZeRO-2 / ZeRO-3 with CPU offload, two CPU processes,
launched with the shipped Accelerate configs (gloo backend; see ../shared/PLATFORM_NOTES.md)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from memecap.config import GenerationConfig, save_config
from memecap.evaluation import read_predictions
from memecap.models import load_model
from memecap.data.datasets import CaptionEvalSet
from tests.helpers import log_rows, tiny_run_config
from tests.launching import accelerate_launch, launch_failure

REPO = Path(__file__).resolve().parents[1]


def launch_under_zero(config_file: str, stage: int, tmp_path: Path, cfg) -> subprocess.CompletedProcess:
    """The run of `cfg` on two processes under `config_file` (its output in `cfg.train.output_dir`).
    Under ZeRO-3 the ranks are made to generate captions of different lengths (rank 0 stops after
    2 tokens): the case where unsynced generation deadlocks. A hang fails on the timeout."""
    recipe = tmp_path / "run.yaml"
    save_config(cfg, recipe)
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}  # DeepSpeed must not see it
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TORCH_EXTENSIONS_DIR=str(REPO / ".torch_extensions"),
               PYTHONPATH=str(REPO))
    entry = [str(REPO / "tests" / "probes" / "uneven_generation.py")] if stage == 3 else ["-m", "memecap.train"]
    return accelerate_launch(config_file, [*entry, str(recipe), f"train.output_dir={cfg.train.output_dir}"], env,
                             processes=2)


@pytest.mark.parametrize("config_file, stage",
                         [("deepspeed_zero2_offload.yaml", 2), ("deepspeed_zero3_offload.yaml", 3)])
def test_two_process_zero_offload_run(config_file, stage, tmp_path, synthetic_data):
    out = tmp_path / "run"
    # Full decoder training: ZeRO partitions real optimizer state; 13 val images over 2 ranks is uneven,
    # and generation (synced_gpus under ZeRO-3) runs at every evaluation.
    cfg = tiny_run_config(out, synthetic_data, "train.epochs=2", "optim.lr=3e-3", "model.encoder.trainable=false",
                          "model.encoder.features=pooled", "eval.compare_constant=false")
    proc = launch_under_zero(config_file, stage, tmp_path, cfg)
    assert proc.returncode == 0, launch_failure(proc)
    if stage == 3:
        rank0, rank1 = (json.loads((out / f"generated_lengths.rank{r}.json").read_text()) for r in (0, 1))
        # Lengths are re-tokenised decoded text, so a 2-token caption can count a few more.
        assert (rank0 and rank1 and max(rank0) < max(rank1)
                and sorted(rank0)[len(rank0) // 2] * 3 < sorted(rank1)[len(rank1) // 2]), (rank0, rank1)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["distributed_type"] == "DistributedType.DEEPSPEED" and summary["num_processes"] == 2
    assert summary["replicas_in_sync"] is (True if stage == 2 else None)  # ZeRO-3 holds no whole copy to compare
    losses = [r["loss"] for r in log_rows(out)]
    assert losses[-1] < losses[0] - 0.3, losses
    for path in sorted((out / "predictions").glob("*.jsonl")):
        uids = [r["uid"] for r in read_predictions(path)]
        assert len(uids) == 13 and len(set(uids)) == 13

    # The export is consolidated: whole tensors, loadable and usable without DeepSpeed.
    decoder = load_file(out / "final" / "decoder" / "model.safetensors")
    assert all(t.numel() > 0 for t in decoder.values()) and decoder["transformer.wte.weight"].shape[0] > 100
    model = load_model(out / "final")
    feats = model.image_inputs([synthetic_data["val"].parent / "images" / "48.jpg"], cache_dir=None, device="cpu",
                               progress=False)
    captions = model.generate(model.collate([CaptionEvalSet(feats)[0]]),
                              GenerationConfig(strategy="greedy", max_new_tokens=8))
    assert len(captions) == 1 and captions[0][0]


@pytest.mark.parametrize("config_file, stage",
                         [("deepspeed_zero2_offload.yaml", 2), ("deepspeed_zero3_offload.yaml", 3)])
def test_two_process_zero_offload_self_critical_run(config_file, stage, tmp_path, synthetic_data):
    """Two scst steps of the whole decoder, against the greedy baseline (two generations a step). The
    untrained model's samples match the references in almost nothing, so the length and repetition
    penalties weigh in: they differ between an image's captions, so the loss and the update are not
    zero. Under ZeRO-3 rank 0 decodes 2 tokens while rank 1 decodes 8: sampling must run with
    synced_gpus or the run hangs (it does when SelfCritical passes synced_gpus=False)."""
    out = tmp_path / "run"
    cfg = tiny_run_config(out, synthetic_data, "train.objective=scst", "scst.samples=3", "scst.baseline=greedy",
                          "scst.length=1.0", "scst.max_words=2", "scst.repetition=1.0", "train.max_steps=2",
                          "train.eval_every=100", "optim.lr=3e-3", "optim.weight_decay=0",
                          "model.encoder.trainable=false", "model.encoder.features=pooled",
                          "eval.compare_constant=false", "generation.max_new_tokens=8")
    proc = launch_under_zero(config_file, stage, tmp_path, cfg)
    assert proc.returncode == 0, launch_failure(proc)
    if stage == 3:
        rank0, rank1 = (json.loads((out / f"generated_lengths.rank{r}.json").read_text()) for r in (0, 1))
        assert rank0 and rank1 and max(rank0) < max(rank1), (rank0, rank1)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["distributed_type"] == "DistributedType.DEEPSPEED" and summary["num_processes"] == 2
    assert summary["optimizer_steps"] == 2
    assert summary["replicas_in_sync"] is (True if stage == 2 else None)  # ZeRO-3 holds no whole copy to compare
    rows = log_rows(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:  # the log is rank 0's: under ZeRO-3 its 2-word samples all score 0, so does its loss
        assert r["reward"] == pytest.approx(r["cider"] + r["quote"] + r["length"] + r["repetition"], abs=1e-9)
        assert stage == 3 or r["loss"] != 0, r
    # The untrained model's samples run past 2 words; after one step at this rate they may not.
    assert stage == 3 or rows[0]["length"] < 0, rows[0]
    # The consolidated export holds the update (without weight decay, only a gradient moves a weight;
    # under ZeRO-3 rank 1's): every decoder tensor moved from the base it started from.
    start = load_file(out / "base_models" / "decoder" / "model.safetensors")
    end = load_file(out / "final" / "decoder" / "model.safetensors")
    assert start.keys() & end.keys() and all(not torch.equal(start[k], end[k]) for k in start.keys() & end.keys())
