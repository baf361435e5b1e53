"""`train.init_from=EXPORT`: a new run starts from an exported model (a run's final/, a folder staged
for the Hub), built on the export's bases, through the real loop."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from memecap import train
from memecap.config import ConfigError
from memecap.data.synthetic import make_synthetic_dataset
from memecap.inference.exported import resolve_export
from memecap.models import load_model
from memecap.models.export import BASE_MANIFEST
from memecap.publish.hub import push
from memecap.training.init_export import find_export
from tests.helpers import QUICK_CHECKPOINTS, checkpointed_run, log_rows, reset_accelerate, tiny_run_config
from tests.test_init_from import LSTM, assert_resumes_exactly, built, trained_tensors
from tests.test_scst_families import family_config

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

SCST = ("train.objective=scst", "scst.samples=2", "generation.max_new_tokens=6")


def exported_tensors(export) -> dict:
    return {name: t.detach().clone() for name, t in load_model(export, with_encoder=False).state_dict().items()}


def files_of(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_run_starts_from_an_export_on_its_bases_and_never_makes_new_ones(tmp_path, synthetic_data):
    first = tmp_path / "ce"
    checkpointed_run(first, synthetic_data, "train.max_steps=2", "optim.lr=3e-3")
    export = first / "final"
    before = files_of(first)
    exported = exported_tensors(export)

    second = tmp_path / "scst"
    settings = (*QUICK_CHECKPOINTS, f"train.init_from={export}", "train.seed=7", *SCST)
    fresh, _ = built(tiny_run_config(tmp_path / "fresh", synthetic_data))
    model, state = built(tiny_run_config(second, synthetic_data, *settings))
    started = trained_tensors(model)
    assert started and all(torch.equal(t, exported[name]) for name, t in started.items())
    assert any(not torch.equal(t, trained_tensors(fresh)[name]) for name, t in started.items())
    assert state.optimizer_step == 0
    # Built on copies of the export's parts, no new random base made: the tiny encoder memecap wrote, and
    # the decoder the demo trains whole, with its tokenizer.
    assert ((second / "base_models/export-encoder/config.json").read_bytes()
            == (first / "base_models/encoder/config.json").read_bytes())
    assert ((second / "base_models/export-decoder/tokenizer.json").read_bytes()
            == (export / "tokenizer/tokenizer.json").read_bytes())
    assert ((second / "base_models/export-decoder/model.safetensors").read_bytes()
            == (export / "decoder/model.safetensors").read_bytes())
    assert not (second / "base_models" / "decoder").exists()

    summary = train.main(tiny_run_config(second, synthetic_data, *settings, "train.max_steps=2",
                                         "train.overwrite=true"))
    assert summary["optimizer_steps"] == 2 and all("reward" in r for r in log_rows(second))
    # Its own export and a checkpoint exported later both name the bases it was built on.
    for folder in (second / "final", resolve_export(second / "checkpoints" / "step_0000002")):
        bases = yaml.safe_load((folder / "memecap.yaml").read_text())["bases"]
        assert bases["decoder"]["name"] == str((second / "base_models/export-decoder").resolve())
    assert not (second / "base_models" / "decoder").exists()
    assert files_of(first) == before  # the export's run was only read


def test_a_lora_export_on_the_hub_starts_a_run_that_resumes_exactly(tmp_path, synthetic_data, standin_hub,
                                                                     monkeypatch):
    """A pushed export (its tiny bases bundled under bases/), named by its Hub id: downloaded, its
    bases copied into the run folder, and the run resumes on them."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    lora = ("model.decoder.mode=lora", "optim.lr=3e-3")
    first = tmp_path / "ce"
    checkpointed_run(first, synthetic_data, *lora, "train.max_steps=2")
    push(first / "final", "alice/memes-lora", log=lambda _: None)
    assert b"bases/decoder" in standin_hub.repos["alice/memes-lora"]["memecap.yaml"]
    exported = exported_tensors(first / "final")

    common = (*lora, "train.init_from=alice/memes-lora", "train.max_steps=4", *SCST)
    second = tmp_path / "second"
    model, _ = built(tiny_run_config(second, synthetic_data, *QUICK_CHECKPOINTS, *common))
    started = trained_tensors(model)
    assert any("lora_A" in name for name in started)
    assert all(torch.equal(t, exported[name]) for name, t in started.items())
    copied = second / "base_models" / "export-decoder"
    assert (copied / BASE_MANIFEST).is_file() and not any(p.is_symlink() for p in copied.rglob("*"))

    checkpointed_run(second, synthetic_data, *common, "train.overwrite=true")
    assert_resumes_exactly(second, tmp_path / "resumed", synthetic_data, *common)


def test_the_lstm_keeps_the_vocabulary_of_its_export(tmp_path, synthetic_data):
    first = tmp_path / "ce"
    checkpointed_run(first, synthetic_data, *LSTM, "train.max_steps=2", recipe="lstm_resnet50")
    other = make_synthetic_dataset(tmp_path / "other", n_train=20, n_val=6, image_size=32, seed=5)
    second = tmp_path / "second"
    train.main(tiny_run_config(second, other, *LSTM, *QUICK_CHECKPOINTS, f"train.init_from={first / 'final'}",
                               "train.max_steps=2", recipe="lstm_resnet50"))
    assert (second / "lstm_vocab.json").read_bytes() == (first / "final" / "vocab.json").read_bytes()
    assert (second / "final" / "vocab.json").read_bytes() == (first / "final" / "vocab.json").read_bytes()


@pytest.mark.parametrize("family,mode", [("rudolph", ()), ("vlm", ()), ("vlm", ("model.vlm.mode=full",))],
                         ids=["rudolph", "vlm-lora", "vlm-full"])
def test_every_generating_family_starts_from_its_export(family, mode, tmp_path, synthetic_data, tiny_rudolph):
    first = tmp_path / "first"
    try:
        train.main(family_config(family, first, synthetic_data, tiny_rudolph, "train.max_steps=1", *mode))
    finally:
        reset_accelerate()
    exported = exported_tensors(first / "final")
    second = tmp_path / "second"
    model, _ = built(family_config(family, second, synthetic_data, tiny_rudolph,
                                   f"train.init_from={first / 'final'}", *mode))
    started = trained_tensors(model)
    assert started and all(torch.equal(t, exported[name]) for name, t in started.items())
    if mode:  # a model trained whole is its own base: the export's weights and processing files
        base = second / "base_models" / "export-vlm"
        assert (base / "model.safetensors").read_bytes() == (first / "final/model/model.safetensors").read_bytes()
        assert (base / "chat_template.jinja").is_file()


def test_a_decoder_trained_whole_starts_a_run_without_the_folder_it_started_from(tmp_path, synthetic_data,
                                                                                  tiny_gpt2_dir, standin_hub,
                                                                                  monkeypatch):
    """A full fine-tune of the user's own decoder folder, pushed: the push does not bundle that folder
    (the export holds the whole decoder), so on another machine the run is built on the export's
    decoder and tokenizer."""
    import shutil

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    own = tmp_path / "mine" / "gpt"
    shutil.copytree(tiny_gpt2_dir, own)
    full = (f"model.decoder.name={own}", "model.decoder.mode=full", "optim.lr=3e-3")
    first = tmp_path / "ce"
    checkpointed_run(first, synthetic_data, *full, "train.max_steps=2")
    push(first / "final", "alice/memes-full", log=lambda _: None)
    card = standin_hub.repos["alice/memes-full"]["README.md"].decode()
    assert f"decoder: trained whole from `{own}`, in this repo's `decoder/`, `tokenizer/`" in card
    exported = exported_tensors(first / "final")
    shutil.rmtree(own)  # not on the machine that starts from the push

    common = (*full, "train.init_from=alice/memes-full", *SCST)
    second = tmp_path / "second"
    model, _ = built(tiny_run_config(second, synthetic_data, *QUICK_CHECKPOINTS, *common))
    started = trained_tensors(model)
    assert any(name.startswith("decoder.") for name in started)
    assert all(torch.equal(t, exported[name]) for name, t in started.items())
    base = second / "base_models" / "export-decoder"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in base.iterdir()}
    assert (base / BASE_MANIFEST).is_file() and not any(p.is_symlink() for p in base.rglob("*"))

    summary = checkpointed_run(second, synthetic_data, *common, "train.max_steps=2", "train.overwrite=true")
    assert summary["optimizer_steps"] == 2
    bases = yaml.safe_load((second / "final" / "memecap.yaml").read_text())["bases"]
    assert bases["decoder"]["name"] == str(base.resolve()) and bases["decoder"]["in_export"] == ["decoder", "tokenizer"]


def test_an_export_that_does_not_fit_is_refused_before_any_work(tmp_path, synthetic_data):
    first = tmp_path / "ce"
    checkpointed_run(first, synthetic_data, "train.max_steps=2")
    export = first / "final"
    with pytest.raises(ConfigError, match=r"model\.mapper\.prefix_length: 10 -> 3"):
        built(tiny_run_config(tmp_path / "a", synthetic_data, f"train.init_from={export}",
                              "model.mapper.prefix_length=3"))
    assert not (tmp_path / "a" / "base_models").exists()
    with pytest.raises(ConfigError, match=r"model\.family: 'clipcap' -> 'lstm'"):
        built(tiny_run_config(tmp_path / "b", synthetic_data, *LSTM, f"train.init_from={export}",
                              recipe="lstm_resnet50"))
    # A Hub id that is no folder here is looked up on the Hub (offline in the tests: a clear error).
    with pytest.raises(ConfigError, match="train.init_from=you/no-such-model: .*Hub"):
        find_export("you/no-such-model")


@pytest.mark.parametrize("stand_in", [["../outside"], ["tokenizer", "no-such-folder"]])
def test_an_export_naming_folders_outside_it_or_missing_as_its_trained_base_is_refused(tmp_path, stand_in):
    """`in_export` comes from a published file: only folders inside the export are read."""
    import shutil
    from dataclasses import replace

    from memecap.config import load_config, model_config_from_export
    from memecap.training.init_export import ExportStart

    export = tmp_path / "export"
    shutil.copytree(Path(__file__).parent / "data" / "exports" / "clipcap", export)
    (tmp_path / "outside").mkdir()
    meta = yaml.safe_load((export / "memecap.yaml").read_text())
    meta["bases"]["decoder"]["in_export"] = stand_in
    (export / "memecap.yaml").write_text(yaml.safe_dump(meta, allow_unicode=True, sort_keys=False))
    cfg = replace(load_config("demo"), model=model_config_from_export(meta["model"]))
    with pytest.raises(ConfigError, match=r"its decoder base: .*('\.\./outside' is not a path inside|"
                                          r"'no-such-folder' is missing)"):
        ExportStart.open(export, cfg)
