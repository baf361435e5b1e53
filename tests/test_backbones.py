"""`model.encoder.kind: auto`: any transformers image backbone (tiny random EfficientNet, ConvNeXt,
ViT, DINOv2 and ResNet saved with their image processors) as ClipCap's and the LSTM's encoder."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, CLIPConfig, CLIPModel, EfficientNetImageProcessorPil, ViTImageProcessorPil

from memecap.config import GenerationConfig, load_config
from memecap.config_checks import ConfigError
from memecap.data.datasets import CaptionEvalSet
from memecap.data.tables import load_split
from memecap.models import build_model, load_model
from memecap.models.clipcap.plan import image_features
from memecap.models.encoders import build_image_encoder
from tests.helpers import BACKBONE_MEAN, BACKBONE_STD, nudge_trained_parts, save_backbone, tiny_backbone, stacked


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return {arch: (root / arch, save_backbone(root / arch, arch))
            for arch in ("efficientnet", "convnext", "resnet", "vit", "dinov2")}


# (arch, features): the tokens and width each gives for a 32 px image
SHAPES = {("efficientnet", "pooled"): (1, 128), ("efficientnet", "patches"): (1, 128),
          ("convnext", "pooled"): (1, 16), ("convnext", "patches"): (4 * 4, 16),
          ("resnet", "pooled"): (1, 16), ("resnet", "patches"): (4 * 4, 16),
          ("vit", "pooled"): (1, 16), ("vit", "patches"): (4 * 4 + 1, 16),
          ("dinov2", "pooled"): (1, 16), ("dinov2", "patches"): (4 * 4 + 1, 16)}


@pytest.mark.parametrize("arch, features", sorted(SHAPES))
def test_auto_encoder_is_the_backbones_own_output(arch, features, backbones):
    folder, model = backbones[arch]
    encoder = build_image_encoder("auto", str(folder), features=features)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=x)
        got = encoder(x)
    if features == "pooled":
        expected = out.pooler_output.flatten(1)
    else:  # a CNN map [B, C, H, W] is read as H*W tokens
        hidden = out.last_hidden_state
        expected = hidden.flatten(2).transpose(1, 2) if hidden.dim() == 4 else hidden
    torch.testing.assert_close(got, expected)
    tokens, width = SHAPES[arch, features]
    assert got.shape == ((2, width) if features == "pooled" else (2, tokens, width))
    assert (encoder.embed_dim, encoder.image_size) == (width, 32)
    assert encoder.mean == pytest.approx(BACKBONE_MEAN) and encoder.std == pytest.approx(BACKBONE_STD)
    assert encoder.describe() == {"kind": "auto", "name": str(folder), "revision": None, "embed_dim": width,
                                  "image_size": 32, "features": features}

    # A trained encoder has no parameter without a gradient (DDP refuses those); what only shapes
    # the other output (ConvNeXt's final norm, ViT's pooler, DINOv2's mask token) stays, as a buffer.
    encoder(x).sum().backward()
    assert not [n for n, p in encoder.named_parameters() if p.grad is None]
    assert set(encoder.model.state_dict()) == set(model.state_dict())

    # memecap plan reads the same shape from the config alone
    cfg = load_config("clipcap_mlp_frozen", ["model.encoder.kind=auto", f"model.encoder.name={folder}",
                                             f"model.encoder.features={features}"])
    assert image_features(cfg) == (tokens, width)


def test_image_settings_come_from_the_processor_or_the_config(tmp_path):
    config, _ = tiny_backbone("vit")
    AutoModel.from_config(config).save_pretrained(tmp_path)
    encoder = build_image_encoder("auto", str(tmp_path))  # no processor: the config's size, ImageNet's mean
    assert encoder.image_size == 32 and encoder.mean == pytest.approx([0.485, 0.456, 0.406])

    ViTImageProcessorPil(size={"height": 32, "width": 48}).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model\.encoder\.name=.*ViTImageProcessorPil.*square") as err:
        build_image_encoder("auto", str(tmp_path))
    assert "\n" not in str(err.value)


def test_a_clip_checkpoint_under_auto_names_its_kind(tmp_path):
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50,
                max_position_embeddings=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"CLIPModel does not encode an image alone.*kind clip or siglip"):
        build_image_encoder("auto", str(tmp_path))


@pytest.mark.parametrize("settings", ["config.json", "preprocessor_config.json"])
def test_a_backbone_naming_its_own_code_is_refused_before_loading(tmp_path, settings):
    from memecap.models.backbones import backbone_config
    from memecap.untrusted import UntrustedCodeReference

    folder = tmp_path / "convnext"
    save_backbone(folder, "convnext")
    values = json.loads((folder / settings).read_text())
    (folder / settings).write_text(json.dumps({**values, "auto_map": {"AutoModel": "evil.Model"}}))
    for load in (lambda: build_image_encoder("auto", str(folder)), lambda: backbone_config(str(folder), None)):
        with pytest.raises(UntrustedCodeReference, match=rf"{settings}: auto_map names Python code"):
            load()


@pytest.mark.parametrize("processor", [
    # include_top
    EfficientNetImageProcessorPil(size={"height": 32, "width": 32}, image_mean=BACKBONE_MEAN, image_std=BACKBONE_STD),
    EfficientNetImageProcessorPil(size={"height": 32, "width": 32}, rescale_factor=1 / 127.5, rescale_offset=True,
                                  do_normalize=False, include_top=False),  # pixels / 127.5 - 1
    ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=BACKBONE_MEAN, image_std=BACKBONE_STD),
], ids=["efficientnet-include-top", "efficientnet-offset", "vit"])
def test_memecaps_pixels_are_the_processors(processor):
    import numpy as np
    from PIL import Image

    from memecap.data.images import ImageTransform
    from memecap.models.backbones import image_settings

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    expected = processor(image, do_resize=False, return_tensors="pt")["pixel_values"][0].float()
    size, mean, std = image_settings(None, processor, "tiny")
    torch.testing.assert_close(ImageTransform(size, mean, std, resize_mode="squash")(image), expected,
                               atol=1e-5, rtol=1e-5)


def test_missing_folder_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        build_image_encoder("auto", str(tmp_path))


def test_config_accepts_auto_and_checks_packaged_names():
    cfg = load_config("lstm_resnet50", ["model.encoder.kind=auto", "model.encoder.name=package:efficientnet-lite0"])
    assert cfg.model.encoder.kind == "auto"
    with pytest.raises(ConfigError,
                       match=r"package:efficientnet-lite0.*set model\.encoder\.kind=auto \(it is resnet\)"):
        load_config("lstm_resnet50", ["model.encoder.name=package:efficientnet-lite0"])
    with pytest.raises(ConfigError, match=r"package:resnet-50.*known: package:efficientnet-lite0"):
        load_config("lstm_resnet50", ["model.encoder.kind=auto", "model.encoder.name=package:resnet-50"])


def perturb(model):
    nudge_trained_parts(model)
    return model.eval()


def captions(model, paths):
    feats = model.image_inputs(paths, cache_dir=None, device="cpu", progress=False)
    gen = GenerationConfig(strategy="greedy", max_new_tokens=6)
    return feats, model.generate(model.collate([CaptionEvalSet(feats)[i] for i in range(len(paths))]), gen)


@pytest.mark.parametrize("family, arch, features, trainable", [
    ("clipcap", "efficientnet", "pooled", False), ("clipcap", "convnext", "patches", True),
    ("clipcap", "vit", "pooled", True), ("clipcap", "dinov2", "patches", False),
    ("lstm", "efficientnet", "patches", False), ("lstm", "vit", "pooled", True),
    ("lstm", "convnext", "pooled", False),
])
def test_trains_a_step_exports_and_loads_back_the_same(family, arch, features, trainable, backbones,
                                                        tiny_gpt2_dir, synthetic_data, tmp_path):
    folder, _ = backbones[arch]
    examples = load_split(synthetic_data["train"], log=None)[0]
    common = ["model.encoder.kind=auto", f"model.encoder.name={folder}", f"model.encoder.features={features}",
              f"model.encoder.trainable={str(trainable).lower()}"]
    if family == "clipcap":
        cfg = load_config("clipcap_mlp_frozen", [*common, f"model.decoder.name={tiny_gpt2_dir}"])
    else:
        attention = ["model.lstm.attention=true"] if features == "patches" else []
        cfg = load_config("lstm_resnet50", [*common, *attention, "model.lstm.embed_dim=16", "model.lstm.hidden_dim=32",
                                            "model.lstm.attention_dim=16", "model.lstm.min_word_count=1"])
    model = build_model(cfg.model, work_dir=tmp_path, train_texts=[c for e in examples for c in e.captions])
    assert (model.encoder is not None) == trainable

    # One optimizer step moves exactly what trains: the encoder too when it is trainable.
    paths = [e.image_path for e in examples[:4]]
    feats = model.image_inputs(paths, cache_dir=None, device="cpu", progress=False)
    batch = model.collate([{"image": feats[i], "input_ids": model.encode_caption(e.captions[0], 32)}
                           for i, e in enumerate(examples[:4])])
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("encoder.") for n in trained) == trainable
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    model(batch)["loss"].backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == trained, changed ^ trained

    perturb(model)
    out = tmp_path / "export"
    model.save_pretrained(out)
    loaded = load_model(out, with_encoder=True)
    assert loaded.encoder is not None and loaded.encoder.kind == "auto"
    expected_feats, expected = captions(model, paths[:3])
    got_feats, got = captions(loaded, paths[:3])
    if not trainable:
        torch.testing.assert_close(got_feats, expected_feats)
    assert got == expected
    if trainable:  # the trained encoder's weights came back, buffers included
        mine = model.encoder.state_dict()
        assert all(torch.equal(mine[k], v) for k, v in loaded.encoder.state_dict().items())


def test_pooled_and_patch_features_of_one_backbone_are_cached_apart(backbones, tiny_gpt2_dir, tmp_path):
    """EfficientNet's pooled vector and grid come from the very same weights (nothing is dropped)."""
    folder, _ = backbones["efficientnet"]
    images = [save_image(tmp_path / f"{i}.png", i) for i in range(2)]
    shapes = []
    for features in ("pooled", "patches"):
        cfg = load_config("clipcap_mlp_frozen", ["model.encoder.kind=auto", f"model.encoder.name={folder}",
                                                 f"model.encoder.features={features}",
                                                 f"model.decoder.name={tiny_gpt2_dir}"])
        model = build_model(cfg.model, work_dir=tmp_path)
        shapes.append(tuple(stacked(model.image_inputs(images, cache_dir=tmp_path / "cache", device="cpu",
                                                       progress=False)).shape))
        assert model.frozen_encoder.last_cache.misses == 2
    assert shapes == [(2, 128), (2, 1, 128)]


def save_image(path, seed: int):
    from PIL import Image

    rng = torch.Generator().manual_seed(seed)
    Image.fromarray(torch.randint(0, 255, (32, 32, 3), generator=rng, dtype=torch.uint8).numpy()).save(path)
    return path
