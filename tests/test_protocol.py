"""Every trainable family satisfies the one protocol the loop, inference, plan and publishing use."""
from __future__ import annotations

import pytest

from memecap.models.protocol import Captioner

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_pinned_family_export_is_a_captioner():
    from memecap.models import load_model
    from tests.data.make_pinned import EXPORTS, RUNS

    for family in RUNS:
        model = load_model(EXPORTS / family)
        assert isinstance(model, Captioner), family
        assert model.config.hidden_size > 0, family  # DeepSpeed's "auto" sizes
        assert isinstance(model.eos_id, int) and isinstance(model.pad_id, int), family


def test_model_card_tags_any_family_with_an_adapter():
    from memecap.publish.model_card import model_card

    meta = {"family": "rudolph", "model": {"rudolph": {"mode": "lora"}}, "bases": {},
            "files": ["adapter/adapter_config.json", "adapter/adapter_model.safetensors", "tokenizer/bpe.model"]}
    card = model_card(meta, None, [], repo_id="you/x", license="apache-2.0")
    assert "- lora" in card and "- peft" in card
    meta["files"] = ["model.safetensors"]
    assert "- lora" not in model_card(meta, None, [], repo_id="you/x", license="apache-2.0")


def test_a_checkpoint_with_a_tied_output_layer_exports(tiny_lora_run, tmp_path):
    """The tied lm_head is found from the model's own parameter aliases, not from a list of names."""
    import shutil

    from memecap.training.checkpoint import list_checkpoints
    from memecap.inference.exported import resolve_export

    run = tmp_path / "run"
    shutil.copytree(tiny_lora_run, run, ignore=shutil.ignore_patterns("export"))
    export = resolve_export(list_checkpoints(run)[-1])
    assert (export / "memecap.yaml").is_file() and (export / "adapter" / "adapter_model.safetensors").is_file()
