"""One vocabulary for what trains: `mode` frozen | full | subset | lora, with `trainable` name
patterns for subset (the grammar of a stage's `freeze` too), the same for every family."""
from __future__ import annotations

import pytest
from torch import nn

from memecap.config import ConfigError, GenerationConfig, LoraConfig, load_config
from memecap.data.datasets import CaptionEvalSet
from memecap.data.tables import load_split
from memecap.models import build_model, load_model
from memecap.models.train_modes import apply_train_mode
from memecap.plan import plan_memory
from tests.helpers import nudge_trained_parts, recipe_with_tiny_bases


def small():
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2)))


@pytest.mark.parametrize("mode, expected", [
    ("frozen", set()),
    ("full", {"0.weight", "0.bias", "2.0.weight", "2.0.bias", "2.1.weight", "2.1.bias"}),
    ("subset", {"2.0.weight", "2.0.bias", "0.bias"}),
])
def test_each_mode_sets_exactly_what_trains(mode, expected):
    module = apply_train_mode(small(), mode, trainable=["2.0", "0.bias"] if mode == "subset" else [],
                              lora=LoraConfig(target_modules=["0"]), key="model.x", what="the test model")
    assert {n for n, p in module.named_parameters() if p.requires_grad} == expected


def test_lora_mode_trains_only_adapters_and_a_bad_target_names_the_key():
    module = apply_train_mode(small(), "lora", trainable=[], lora=LoraConfig(r=2, target_modules=["0", "2.1"]),
                              key="model.x", what="the test model")
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(ConfigError, match=r"model\.x\.lora\.target_modules: 'q_proj' names no module"):
        apply_train_mode(small(), "lora", trainable=[], lora=LoraConfig(target_modules=["q_proj"]),
                         key="model.x", what="the test model")
    with pytest.raises(ConfigError, match=r"model\.x\.trainable: '3' matches no module or parameter"):
        apply_train_mode(small(), "subset", trainable=["3"], lora=LoraConfig(), key="model.x", what="the test model")


@pytest.mark.parametrize("recipe, section", [("demo", "decoder"), ("rudolph_350m", "rudolph")])
def test_subset_needs_patterns_and_patterns_need_subset_in_every_family(recipe, section):
    with pytest.raises(ConfigError, match=rf"model\.{section}\.mode=subset needs model\.{section}\.trainable"):
        load_config(recipe, [f"model.{section}.mode=subset"])
    with pytest.raises(ConfigError,
                       match=rf"model\.{section}\.trainable is only read with model\.{section}\.mode=subset"):
        load_config(recipe, [f"model.{section}.trainable=[a]"])


def test_clipcap_subset_trains_the_named_decoder_layers_exports_and_plans_them(tiny_ruclip_dir, tiny_gpt2_dir,
                                                                            synthetic_data, tmp_path):
    cfg = recipe_with_tiny_bases("clipcap_mlp_frozen", tiny_ruclip_dir, tiny_gpt2_dir, "model.decoder.mode=subset",
                                 "model.decoder.trainable=[transformer.h.1, transformer.ln_f]")
    model = build_model(cfg.model, work_dir=tmp_path)
    decoder_trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("decoder.")}
    assert decoder_trainable and all(n.startswith(("decoder.transformer.h.1.", "decoder.transformer.ln_f."))
                                     for n in decoder_trainable)
    assert "decoder.transformer.h.0.attn.c_attn.weight" not in decoder_trainable
    assert plan_memory(cfg).trainable == sum(p.numel() for p in model.trainable_parameters())

    nudge_trained_parts(model)
    model.eval()
    out = tmp_path / "export"
    model.save_pretrained(out)
    assert (out / "decoder" / "model.safetensors").is_file()  # exported whole, like a fully trained decoder
    loaded = load_model(out)
    examples = load_split(synthetic_data["train"], log=None)[0][:3]
    gen = GenerationConfig(strategy="greedy", max_new_tokens=8)

    def captions(m):
        feats = m.image_inputs([e.image_path for e in examples], cache_dir=None, device="cpu", progress=False)
        return m.generate(m.collate([CaptionEvalSet(feats)[i] for i in range(3)]), gen)

    assert captions(loaded) == captions(model)
    with pytest.raises(ConfigError, match=r"model\.decoder\.trainable: 'transformer\.h\.9' matches no module"):
        cfg = recipe_with_tiny_bases("clipcap_mlp_frozen", tiny_ruclip_dir, tiny_gpt2_dir,
                                     "model.decoder.mode=subset", "model.decoder.trainable=[transformer.h.9]")
        build_model(cfg.model, work_dir=tmp_path)
