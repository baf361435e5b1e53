"""Each family reads its own sections of `model`: others are errors naming the key, the resolved and
saved configs hold only the family's, and configs written before the split still load. The config
learns all of it from the registry (FAMILIES), so a new family edits nothing in memecap/config."""
import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

import memecap.config
from memecap.config import (FAMILY_SECTIONS, ConfigError, OcrConfig, TinyConfig, config_from_dict, load_config,
                            load_saved_config, model_config_from_export, save_config, to_dict, to_yaml)
from memecap.config.binding import bind
from memecap.config.sections import SHARED_SECTIONS, ModelConfig, model_config_class
from memecap.models import DEFAULT_FAMILY, FAMILIES


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


# A family memecap/config has never heard of: its own section, a rule between it and a shared section,
# a key moved into it, a hint for the shared section it does not read, and no beam search.
FAKE_SETTINGS = '''
from dataclasses import dataclass
from memecap.config_checks import ConfigError, at_least

@dataclass
class FakeConfig:
    size: int = 4
    kind: str = "plain"

    def __post_init__(self):
        at_least("model.fake.size", self.size, 1)

SECTIONS = {"fake": FakeConfig}
MOVED_KEYS = {"encoder.kind": "fake.kind"}
FOREIGN_SECTION_HINTS = {"ocr": "the fake family reads no text"}
WITHOUT_BEAM_SEARCH = "the fake family decodes greedily"

def check_model(model):
    if model.fake.size > model.tiny.image_size:
        raise ConfigError("model.fake.size must be <= model.tiny.image_size")
'''

FAKE_RUN = '''
import json, sys
import memecap.models as models
models.FAMILIES["fake"] = models.Family("fakefam", ("fake", "tiny"), settings="fakefam.settings", beam_search=False)
from memecap.config import ConfigError, config_from_dict, load_config, to_dict, to_yaml
import yaml

def error(*overrides):
    try:
        load_config(None, ["model.family=fake", *overrides])
    except ConfigError as err:
        return str(err)

cfg = load_config(None, ["model.family=fake", "model.fake.size=3", "model.encoder.kind=fancy"])
saved = yaml.safe_load(to_yaml(cfg))
print(json.dumps({
    "fake": [cfg.model.fake.size, cfg.model.fake.kind],
    "saved_model": saved["model"],
    "round_trip": config_from_dict(saved, saved=True) == cfg,
    "own_check": error("model.fake.size=0"),
    "cross_check": error("model.fake.size=65"),
    "foreign": error("model.ocr.enabled=true"),
    "beam": error("data.train=a.tsv", "data.val=b.tsv", "generation.strategy=beam"),
    "quote": error("data.train=a.tsv", "data.val=b.tsv", "generation.quote=copy"),
    "clipcap_unchanged": to_dict(load_config("demo"))["model"]["family"],
    "torch": "torch" in sys.modules,
}))
'''


@pytest.fixture
def fake_family(tmp_path):
    """The folder `fakefam/` of a family outside memecap, importable while the test runs."""
    (tmp_path / "fakefam").mkdir()
    (tmp_path / "fakefam" / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "fakefam" / "settings.py").write_text(FAKE_SETTINGS, encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in ("fakefam", "fakefam.settings"):
        sys.modules.pop(name, None)


def test_a_new_family_is_one_registry_line_and_its_folder(fake_family):
    """Registering a family (here before memecap.config is imported, as the line in FAMILIES is) is
    all it takes: config binds, checks, saves and reloads its section with no edit to memecap/config."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", FAKE_RUN], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["fake"] == [3, "fancy"]  # the moved key read at its old place
    assert out["saved_model"] == {"family": "fake", "fake": {"size": 3, "kind": "fancy"},
                                  "tiny": dataclasses.asdict(TinyConfig())}
    assert out["round_trip"]
    assert out["own_check"].startswith("model.fake.size=0: must be >= 1")
    assert out["cross_check"] == "model.fake.size must be <= model.tiny.image_size"
    assert out["foreign"] == ("model.ocr.enabled: not read by model.family=fake (its settings: model.fake, "
                              "model.tiny); the fake family reads no text")
    assert out["beam"] == ("generation.strategy=beam: the fake family decodes greedily; "
                           "set generation.strategy=greedy or sample")
    assert out["quote"].endswith("on a clipcap, rudolph or vlm model")  # fake reads no OCR text
    assert out["clipcap_unchanged"] == "clipcap"
    assert not out["torch"]  # checking a config, a new family's included, imports no torch


def test_model_config_is_built_from_the_registry_it_is_given(fake_family):
    from memecap.config_checks import ConfigError as CheckError
    from memecap.models import Family

    registry = {"fake": Family("fakefam", ("fake", "tiny"), settings="fakefam.settings"),
                "reader": Family("unused", ("encoder", "ocr"))}
    cls = model_config_class(registry)
    assert [f.name for f in dataclasses.fields(cls)] == ["family", "encoder", "fake", "tiny", "ocr"]
    model = bind(cls, {"family": "fake", "fake": {"size": 3}}, "model")
    assert model.fake.size == 3 and model.ocr == OcrConfig()
    with pytest.raises(ConfigError, match=r"^model\.fake\.size='x': expected an integer"):
        bind(cls, {"family": "fake", "fake": {"size": "x"}}, "model")
    with pytest.raises(CheckError, match=r"^model\.fake\.size must be <= model\.tiny\.image_size"):
        bind(cls, {"family": "fake", "fake": {"size": 100}}, "model")
    with pytest.raises(CheckError, match=r"^model\.ocr\.enabled=true: the fake family reads no text, or set"):
        bind(cls, {"family": "fake", "ocr": {"enabled": True}}, "model")
    with pytest.raises(CheckError, match=r"model\.family='clipcap': must be one of fake, reader"):
        cls()  # the default family is not in this registry
    with pytest.raises(ValueError, match=r"FAMILIES\['odd'\]\.sections"):
        model_config_class({**registry, "odd": Family("unused", ("fake",))})  # another family's section
    with pytest.raises(ValueError, match=r"FAMILIES\['again'\]: model\.fake is defined twice"):
        model_config_class({**registry, "again": Family("fakefam", ("fake",), settings="fakefam.settings")})


def test_the_shipped_model_config_is_the_registrys():
    own = {name: section for family in FAMILIES.values() for name, section in family.own_sections.items()}
    hints = typing.get_type_hints(ModelConfig)
    assert {f.name for f in dataclasses.fields(ModelConfig)} == {"family", *SHARED_SECTIONS, *own}
    assert all(hints[name] is section for name, section in {**SHARED_SECTIONS, **own}.items())
    assert ModelConfig().family == DEFAULT_FAMILY == ModelConfig.__dataclass_fields__["family"].default


def test_config_code_names_no_family():
    """Adding a family edits nothing in memecap/config: no family's name is written there."""
    config_dir = Path(memecap.config.__file__).parent
    for path in config_dir.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        named = [name for name in FAMILIES if f'"{name}"' in text or f"'{name}'" in text]
        assert not named, f"{path.name} names {named}"
