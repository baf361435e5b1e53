"""Multi-stage training in the one loop: stage 2 starts from stage 1's weights with its own data,
learning rate and frozen parts, and a run resumed mid-stage 2 continues exactly."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from memecap import train
from memecap.config import ConfigError, load_config
from memecap.data.synthetic import make_synthetic_dataset
from tests.helpers import log_rows, reset_accelerate, tiny_run_config

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
SMALL = ("model.encoder.name=tiny-random", "model.lstm.embed_dim=16", "model.lstm.hidden_dim=32",
         "model.lstm.min_word_count=1", "eval.compare_constant=false", "train.eval_every=100",
         "generation.strategy=greedy", "generation.max_new_tokens=6")


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    return [make_synthetic_dataset(root / name, n_train=16, n_val=4, image_size=32, seed=seed)
            for name, seed in (("general", 5), ("memes", 6))]


def staged_config(out, synthetic_data, two_datasets, *overrides, freeze="embed"):
    general, memes = two_datasets
    stages = (f"stages=[{{name: general, train: [{general['train']}], val: {general['val']}, max_steps: 3}}, "
              f"{{name: memes, train: [{memes['train']}], val: {memes['val']}, max_steps: 4, lr: 5.0e-3, "
              f"freeze: [{freeze}]}}]")
    cfg = tiny_run_config(out, synthetic_data, *SMALL, "data.train=", "data.val=", stages, *overrides,
                          recipe="lstm_resnet50")
    return cfg


def test_two_stages_carry_weights_and_resume_mid_stage(tmp_path, synthetic_data, two_datasets):
    straight = tmp_path / "straight"
    summary = train.main(staged_config(straight, synthetic_data, two_datasets, "train.save_every=1",
                                       "train.keep_checkpoints=10"))
    assert summary["optimizer_steps"] == 7
    records = log_rows(straight)
    assert [(r["step"], r["stage"]) for r in records] == [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1), (6, 1), (7, 1)]
    assert records[3]["lr"] < 5.0e-3 and records[0]["lr"] < 1.0e-3  # each stage has its own schedule
    end_of_stage_1 = load_file(straight / "checkpoints" / "step_0000003" / "model.safetensors")
    final = load_file(straight / "final" / "lstm.safetensors")
    # Stage 2 froze the embeddings: they are exactly stage 1's, so stage 2 started from its weights.
    assert torch.equal(final["embed.weight"], end_of_stage_1["embed.weight"])
    assert not torch.equal(final["out.weight"], end_of_stage_1["out.weight"])
    preds = sorted(p.name for p in (straight / "predictions").glob("*.jsonl"))
    assert preds == ["step_0000003.jsonl", "step_0000007.jsonl"]  # each stage ends evaluated on its own val set
    state = json.loads((straight / "checkpoints" / "step_0000005" / "trainer_state.json").read_text())
    assert (state["stage"], state["stage_start_step"]) == (1, 3)
    reset_accelerate()

    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "base_models", resumed / "base_models")
    train.main(staged_config(resumed, synthetic_data, two_datasets,
                             f"train.resume={straight / 'checkpoints' / 'step_0000005'}"))
    again = {r["step"]: r["loss"] for r in log_rows(resumed)}
    first = {r["step"]: r["loss"] for r in records}
    assert sorted(again) == [6, 7]
    for step in again:
        assert again[step] == pytest.approx(first[step], abs=1e-6)
    for key, tensor in load_file(resumed / "final" / "lstm.safetensors").items():
        torch.testing.assert_close(tensor, final[key], rtol=0, atol=1e-6)


def test_stage_config_errors(tmp_path, synthetic_data, two_datasets):
    general, _ = two_datasets
    with pytest.raises(ConfigError, match="exclusive"):
        load_config("lstm_resnet50", ["data.train=a.tsv", "data.val=b.tsv",
                                      f"stages=[{{train: [{general['train']}], val: {general['val']}}}]"])
    with pytest.raises(ConfigError, match="needs train"):
        load_config("lstm_resnet50", [f"stages=[{{val: {general['val']}}}]"])
    with pytest.raises(ConfigError, match=r"stages\[1\]\.freeze: 'decoder' matches no module or parameter"):
        train.main(staged_config(tmp_path / "run", synthetic_data, two_datasets, freeze="decoder"))
