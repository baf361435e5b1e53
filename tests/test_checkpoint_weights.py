"""A checkpoint keeps the weights the run trains (and the buffers), fingerprints the frozen rest,
and is refused when the frozen bases it was trained on changed; one written with every weight
still resumes."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from memecap import train
from memecap.config_checks import ConfigError
from memecap.inference.exported import export_checkpoint
from memecap.models import build_model
from memecap.training import checkpoint as checkpoint_module
from memecap.training.checkpoint import DamagedCheckpoint, write_manifest
from memecap.training.checkpoint_weights import FROZEN_FILE
from tests.helpers import (LORA_RUN, assert_resumed_exactly, log_rows, reset_accelerate, straight_and_resumed,
                           tiny_run_config)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

COMMON = (*LORA_RUN, "train.max_steps=5", "train.save_every=2", "train.keep_checkpoints=5", "train.eval_every=100")


def losses(out):
    return {r["step"]: r["loss"] for r in log_rows(out)}


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, synthetic_data):
    """A LoRA run straight through, and the same run resumed from its step-2 checkpoint."""
    return straight_and_resumed(tmp_path_factory.mktemp("slim"), synthetic_data, COMMON, step=2)


def test_a_lora_checkpoint_keeps_the_trained_weights_and_resumes_exactly(lora_runs, synthetic_data, tmp_path):
    straight, resumed = lora_runs
    checkpoint = straight / "checkpoints" / "step_0000002"
    model = build_model(tiny_run_config(tmp_path, synthetic_data, *COMMON).model, work_dir=straight)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as weights:
        stored = set(weights.keys())
    assert trained and frozen
    assert trained <= stored and not stored & frozen, sorted(stored & frozen)[:3]
    assert set(json.loads((checkpoint / FROZEN_FILE).read_text())) == frozen
    assert FROZEN_FILE in json.loads((checkpoint / "manifest.json").read_text())["files"]
    assert_resumed_exactly(straight, resumed, [3, 4, 5], ("mapper.safetensors", "adapter/adapter_model.safetensors"))


def test_a_lora_checkpoint_exports_with_its_bases_built_again(lora_runs):
    straight, _ = lora_runs
    checkpoint = straight / "checkpoints" / "step_0000004"
    out = export_checkpoint(checkpoint)
    saved, exported = load_file(checkpoint / "model.safetensors"), load_file(out / "mapper.safetensors")
    for key, tensor in exported.items():
        torch.testing.assert_close(tensor, saved[f"mapper.{key}"], rtol=0, atol=0)


def changed_base(run, to):
    """A copy of the run whose tiny decoder base (a frozen one) has one weight changed."""
    shutil.copytree(run, to)
    weights = to / "base_models" / "decoder" / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k in tensors if k.endswith("c_attn.weight"))
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return to


def test_resuming_on_a_changed_frozen_base_is_refused_by_name(lora_runs, synthetic_data, tmp_path):
    run = changed_base(lora_runs[0], tmp_path / "run")
    checkpoint = run / "checkpoints" / "step_0000002"
    with pytest.raises(ConfigError, match=r"train.resume: .*step_0000002 was trained on other frozen weights .*"
                                          r"first: decoder\..*c_attn.*pin the revision"):
        train.main(tiny_run_config(run, synthetic_data, *COMMON, f"train.resume={checkpoint}"))
    with pytest.raises(ConfigError, match="was trained on other frozen weights"):
        export_checkpoint(checkpoint)


def test_a_checkpoint_lacking_a_trained_weight_is_damaged_and_named(lora_runs, synthetic_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lora_runs[0], run)
    checkpoint = run / "checkpoints" / "step_0000002"
    tensors = load_file(checkpoint / "model.safetensors")
    dropped = next(k for k in tensors if "lora_A" in k)
    del tensors[dropped]
    save_file(tensors, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
    write_manifest(checkpoint)  # consistent files: only what they hold is wrong
    with pytest.raises(DamagedCheckpoint, match=rf"model.safetensors: lacks 1 of the parameters this run trains "
                                                rf"\(first: {dropped}\)"):
        train.main(tiny_run_config(run, synthetic_data, *COMMON, f"train.resume={checkpoint}"))


def test_a_checkpoint_with_every_weight_still_resumes(synthetic_data, tmp_path, monkeypatch):
    """What earlier versions wrote: every weight, no fingerprints (the save called without the model)."""
    real = checkpoint_module.save_checkpoint

    def with_every_weight(*args, model=None, trainable=None, **kwargs):
        return real(*args, **kwargs)

    out = tmp_path / "old"
    with monkeypatch.context() as patch:
        patch.setattr(train, "save_checkpoint", with_every_weight)
        try:
            train.main(tiny_run_config(out, synthetic_data, *COMMON))
        finally:
            reset_accelerate()
    checkpoint = out / "checkpoints" / "step_0000002"
    assert not (checkpoint / FROZEN_FILE).exists()
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as weights:
        assert any("c_attn.base_layer" in k for k in weights.keys())  # the frozen base is in there
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "base_models", resumed / "base_models")
    train.main(tiny_run_config(resumed, synthetic_data, *COMMON, f"train.resume={checkpoint}"))
    a, b = losses(out), losses(resumed)
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])
