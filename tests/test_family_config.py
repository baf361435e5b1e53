"""Each family reads its own sections of `model`: others are errors naming the key, the resolved and
saved configs hold only the family's, and configs written before the split still load."""
import dataclasses

import pytest
import yaml

from memecap.config import (FAMILY_SECTIONS, ConfigError, config_from_dict, load_config, load_saved_config,
                            model_config_from_export, save_config, to_dict, to_yaml)


@pytest.mark.parametrize("recipe, family", [("demo", "clipcap"), ("rudolph_350m", "rudolph"),
                                            ("lstm_resnet50", "lstm"), ("ocr_template", "ocr_template")])
def test_resolved_config_shows_only_the_familys_sections(recipe, family):
    shown = yaml.safe_load(to_yaml(load_config(recipe)))
    assert set(shown["model"]) == {"family", *FAMILY_SECTIONS[family]}


@pytest.mark.parametrize("recipe, override, key", [
    ("rudolph_350m", "model.decoder.mode=lora", r"model\.decoder\.mode"),
    ("rudolph_350m", "model.encoder.name=x", r"model\.encoder\.name"),
    ("lstm_resnet50", "model.mapper.type=transformer", r"model\.mapper\.type"),
    ("demo", "model.rudolph.mode=lora", r"model\.rudolph\.mode"),
    ("ocr_template", "model.lstm.hidden_dim=8", r"model\.lstm\.hidden_dim"),
])
def test_another_familys_setting_is_an_error_naming_the_key(recipe, override, key):
    with pytest.raises(ConfigError, match=key + ".*not read by model.family="):
        load_config(recipe, [override])


def test_unknown_family_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.family='gpt5'"):
        load_config("demo", ["model.family=gpt5"])


def test_moved_key_is_read_at_its_old_place_and_a_later_layer_wins(tmp_path):
    assert load_config("rudolph_350m").model.rudolph.resize_mode == "pad"
    # The recipe sets the new key; an override of the old one still wins, as any override does.
    assert load_config("rudolph_350m", ["model.encoder.resize_mode=crop"]).model.rudolph.resize_mode == "crop"
    old = tmp_path / "old.yaml"
    old.write_text("extends: rudolph_350m\nmodel:\n  encoder: {resize_mode: squash}\n", encoding="utf-8")
    assert load_config(str(old)).model.rudolph.resize_mode == "squash"
    with pytest.raises(ConfigError, match=r"model\.encoder\.resize_mode and model\.rudolph\.resize_mode"):
        config_from_dict({"model": {"family": "rudolph", "encoder": {"resize_mode": "crop"},
                                    "rudolph": {"resize_mode": "pad"}}})


def _written_before_the_split(recipe: str) -> dict:
    """A config as memecap wrote it before families had their own sections: every section, defaults included."""
    values = dataclasses.asdict(load_config(recipe))
    everything = dataclasses.asdict(load_config("demo"))["model"]
    values["model"] = {**everything, **values["model"]}
    if values["model"]["family"] == "rudolph":
        values["model"]["encoder"] = {**everything["encoder"], "resize_mode": "crop"}
        del values["model"]["rudolph"]["resize_mode"]
    return values


def test_a_saved_config_from_before_the_split_loads(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_written_before_the_split("rudolph_350m"), allow_unicode=True), encoding="utf-8")
    cfg = load_saved_config(path)
    assert cfg.model.family == "rudolph" and cfg.model.rudolph.resize_mode == "crop"
    save_config(cfg, tmp_path / "again.yaml")
    assert set(yaml.safe_load((tmp_path / "again.yaml").read_text(encoding="utf-8"))["model"]) == {
        "family", "rudolph", "ocr", "tiny"}
    # The same file given as a recipe is refused: a user's own recipe may not set what is never read.
    with pytest.raises(ConfigError, match="not read by model.family=rudolph"):
        load_config(str(path))


def test_an_export_model_section_from_before_the_split_loads():
    model = _written_before_the_split("lstm_resnet50")["model"]
    cfg = model_config_from_export(model)
    assert cfg.family == "lstm" and set(to_dict(cfg)) == {"family", "encoder", "lstm", "tiny"}


def test_a_partial_lora_section_keeps_its_familys_default_targets():
    rudolph = load_config("rudolph_350m", ["model.rudolph.mode=lora", "model.rudolph.lora.r=4"]).model.rudolph.lora
    assert rudolph.r == 4 and rudolph.target_modules == ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    decoder = load_config("demo", ["model.decoder.lora.r=4"]).model.decoder.lora
    assert decoder.r == 4 and decoder.target_modules == ["c_attn", "c_proj", "c_fc"]
    with pytest.raises(ConfigError, match=r"model\.rudolph\.lora\.target_modules is empty"):
        load_config("rudolph_350m", ["model.rudolph.lora.target_modules=[]"])
