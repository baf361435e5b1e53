"""`train.init_from`: a new run starts from another run's trained weights (not its optimizer,
counters or seed), with the files its model was built from, through the real loop."""
from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch
from safetensors.torch import load_file

from memecap import train
from memecap.config import ConfigError, load_config
from memecap.data.synthetic import make_synthetic_dataset
from memecap.training.run_setup import setup
from tests.helpers import QUICK_CHECKPOINTS, checkpointed_run, log_rows, reset_accelerate, tiny_run_config

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

LSTM = ("model.encoder.name=tiny-random", "model.lstm.embed_dim=16", "model.lstm.hidden_dim=32",
        "model.lstm.min_word_count=1", "generation.strategy=greedy", "generation.max_new_tokens=6")


def trained_tensors(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def built(cfg):
    """The model a run of `cfg` starts training (setup only: nothing trained, the folder released)."""
    try:
        with ExitStack() as held:
            _, model, state = setup(cfg, held)
        return model, state
    finally:
        reset_accelerate()


def test_a_run_starts_from_another_runs_weights_with_its_own_seed_and_counters(tmp_path, synthetic_data):
    first = tmp_path / "ce"
    checkpointed_run(first, synthetic_data, "train.max_steps=4", "optim.lr=3e-3")
    checkpoint = first / "checkpoints" / "step_0000004"
    saved = load_file(str(checkpoint / "model.safetensors"))

    fresh, _ = built(tiny_run_config(tmp_path / "fresh", synthetic_data))
    second = tmp_path / "scst"
    settings = (*QUICK_CHECKPOINTS, f"train.init_from={first}", "train.seed=7", "train.objective=scst",
                "scst.samples=2", "generation.max_new_tokens=6")
    model, state = built(tiny_run_config(second, synthetic_data, *settings))
    started = trained_tensors(model)
    assert started and all(torch.equal(t, saved[name]) for name, t in started.items())
    # Trained, not the fresh initialisation a run of these settings would start from.
    assert any(not torch.equal(t, trained_tensors(fresh)[name]) for name, t in started.items())
    assert state.optimizer_step == 0
    # The tiny bases came along unchanged: the same tokenizer, not one fitted again.
    tokenizer = "base_models/decoder/tokenizer.json"
    assert (second / tokenizer).read_bytes() == (first / tokenizer).read_bytes()

    summary = train.main(tiny_run_config(second, synthetic_data, *settings, "train.max_steps=2",
                                         "train.overwrite=true"))
    assert summary["optimizer_steps"] == 2 and all("reward" in r for r in log_rows(second))
    assert (first / tokenizer).stat().st_mtime_ns <= checkpoint.stat().st_mtime_ns  # the first run was not written


def test_init_from_continues_its_own_run_on_resume(tmp_path, synthetic_data):
    first = tmp_path / "ce"
    checkpointed_run(first, synthetic_data, "train.max_steps=2")
    common = (f"train.init_from={first}", "train.max_steps=4", "optim.lr=3e-3")
    second = tmp_path / "second"
    checkpointed_run(second, synthetic_data, *common)
    assert_resumes_exactly(second, tmp_path / "resumed", synthetic_data, *common)


def assert_resumes_exactly(run, resumed, data, *settings) -> None:
    """A run resumed in another folder from `run`'s step-2 checkpoint logs `run`'s steps 3 and 4."""
    resumed.mkdir()
    (resumed / "base_models").symlink_to(run / "base_models")  # what the interrupted run had copied
    checkpointed_run(resumed, data, *settings, f"train.resume={run / 'checkpoints' / 'step_0000002'}")
    a = {r["step"]: r["loss"] for r in log_rows(run)}
    b = {r["step"]: r["loss"] for r in log_rows(resumed)}
    assert sorted(b) == [3, 4] and all(b[s] == pytest.approx(a[s], abs=1e-6) for s in b)


def test_the_lstm_keeps_the_vocabulary_its_weights_were_trained_with(tmp_path, synthetic_data):
    first = tmp_path / "ce"
    checkpointed_run(first, synthetic_data, *LSTM, "train.max_steps=2", recipe="lstm_resnet50")
    other = make_synthetic_dataset(tmp_path / "other", n_train=20, n_val=6, image_size=32, seed=5)
    second = tmp_path / "second"
    cfg = tiny_run_config(second, other, *LSTM, *QUICK_CHECKPOINTS, f"train.init_from={first}",
                          "train.max_steps=2", recipe="lstm_resnet50")
    train.main(cfg)
    assert (second / "lstm_vocab.json").read_bytes() == (first / "lstm_vocab.json").read_bytes()


def test_init_from_is_refused_before_any_work_when_it_does_not_fit(tmp_path, synthetic_data):
    first = tmp_path / "ce"
    checkpointed_run(first, synthetic_data, "train.max_steps=2")
    other = tiny_run_config(tmp_path / "a", synthetic_data, f"train.init_from={first}",
                            "model.mapper.prefix_length=3")
    with pytest.raises(ConfigError, match=r"model\.mapper\.prefix_length: 10 -> 3"):
        built(other)
    assert not (tmp_path / "a" / "base_models").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no complete training checkpoint"):
        built(tiny_run_config(tmp_path / "b", synthetic_data, f"train.init_from={empty}"))


def test_a_run_may_store_the_frozen_base_in_another_dtype_than_the_run_it_starts_from(tmp_path, synthetic_data):
    """How frozen weights are stored is compute, not the model: a CPU run in fp32 goes on with a bf16
    base (as `auto` gives it on a GPU); the trained weights are taken as they were, still fp32."""
    first = tmp_path / "ce"
    checkpointed_run(first, synthetic_data, "model.decoder.mode=lora", "train.max_steps=2", "optim.lr=3e-3")
    saved = load_file(str(first / "checkpoints" / "step_0000002" / "model.safetensors"))
    second = tmp_path / "bf16"
    settings = (*QUICK_CHECKPOINTS, f"train.init_from={first}", "model.decoder.mode=lora",
                "model.decoder.dtype=bfloat16", "train.objective=scst", "scst.samples=2", "generation.max_new_tokens=6")
    model, _ = built(tiny_run_config(second, synthetic_data, *settings))
    started = trained_tensors(model)
    assert started and all(t.dtype == torch.float32 and torch.equal(t, saved[name]) for name, t in started.items())
    frozen = {p.dtype for name, p in model.named_parameters() if not p.requires_grad and "decoder" in name}
    assert frozen == {torch.bfloat16}

    summary = train.main(tiny_run_config(second, synthetic_data, *settings, "train.max_steps=2",
                                         "train.overwrite=true"))
    assert summary["optimizer_steps"] == 2
    # Any other model setting is still refused.
    with pytest.raises(ConfigError, match=r"model\.mapper\.prefix_length"):
        built(tiny_run_config(tmp_path / "c", synthetic_data, f"train.init_from={first}", "model.decoder.mode=lora",
                              "model.decoder.dtype=bfloat16", "model.mapper.prefix_length=3"))


def test_the_scst_recipe_starts_from_a_run_of_its_base_recipe_and_asks_for_it(tmp_path):
    data = [f"data.train={tmp_path}/train.tsv", f"data.val={tmp_path}/val.tsv", "model.decoder.name=gemma"]
    ce, scst = load_config("clipcap_effnet_gemma_ocr", data), load_config("clipcap_effnet_gemma_ocr_scst", data)
    assert scst.model == ce.model and scst.data == ce.data  # else init_from a run of the base recipe is refused
    assert (scst.train.objective, ce.train.objective) == ("scst", "ce")
    unset = load_config("clipcap_effnet_gemma_ocr_scst", [*data, f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"train\.init_from=CE_RUN \(see this recipe's header\): no complete"):
        built(unset)
    assert not (tmp_path / "run" / "base_models").exists()
