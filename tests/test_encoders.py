"""Image encoders load tiny random checkpoints offline and compute what the original models compute."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from memecap.models.encoders import ImageEncoder, build_image_encoder
from memecap.models.ruclip_weights import RUCLIP_MEAN, RUCLIP_STD
from tests.helpers import ruclip_model_module

CUSTOM_MEAN = [0.1, 0.2, 0.3]
CUSTOM_STD = [0.4, 0.5, 0.6]


def _tiny_ruclip_config(vision_width: int) -> dict:
    return {
        "embed_dim": 16,
        "image_resolution": 32,
        "vision_layers": 2,
        "vision_width": vision_width,
        "vision_patch_size": 8,
        "context_length": 8,
        "vocab_size": 32,
        "transformer_width": 32,
        "transformer_heads": 2,
        "transformer_layers": 1,
    }


def _save_ruclip(folder: Path, config: dict, fmt: str = "bin"):
    """A random ruclip.model.CLIP saved in the published layout; returns the model."""
    torch.manual_seed(0)
    arch = {k: v for k, v in config.items() if k not in ("mean", "std")}
    clip = ruclip_model_module().CLIP(**arch).eval()
    with torch.no_grad():  # LayerNorms start at 1/0 and attention biases at 0: randomise them so
        for name, param in clip.named_parameters():  # a swapped norm or a mis-split bias would show
            if "ln_" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    state_dict = clip.state_dict()
    if fmt == "bin":
        torch.save(state_dict, folder / "pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / "model.safetensors"))
    return clip


@pytest.mark.parametrize("vision_width", [64, 128])  # 1 and 2 attention heads
@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_ruclip_matches_original_encode_image(tmp_path, vision_width, fmt):
    clip = _save_ruclip(tmp_path, _tiny_ruclip_config(vision_width), fmt)
    encoder = build_image_encoder("ruclip", str(tmp_path))

    assert isinstance(encoder, ImageEncoder)
    assert encoder.model.config.num_attention_heads == vision_width // 64
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = clip.encode_image(x)
        got = encoder(x)
    assert got.shape == (3, 16)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (encoder.embed_dim, encoder.image_size) == (16, 32)
    assert encoder.mean == pytest.approx(RUCLIP_MEAN) and encoder.std == pytest.approx(RUCLIP_STD)
    assert encoder.describe() == {
        "kind": "ruclip", "name": str(tmp_path), "revision": None, "embed_dim": 16, "image_size": 32,
        "features": "pooled",
    }


def test_ruclip_normalisation_from_config_and_dtype(tmp_path):
    config = {**_tiny_ruclip_config(64), "mean": CUSTOM_MEAN, "std": CUSTOM_STD}
    _save_ruclip(tmp_path, config)
    encoder = build_image_encoder("ruclip", str(tmp_path), dtype=torch.bfloat16)
    assert encoder.mean == pytest.approx(CUSTOM_MEAN) and encoder.std == pytest.approx(CUSTOM_STD)
    assert encoder(torch.randn(1, 3, 32, 32)).dtype == torch.bfloat16


def test_ruclip_rejects_mismatched_weights(tmp_path):
    clip = _save_ruclip(tmp_path, _tiny_ruclip_config(64))
    state_dict = clip.state_dict()
    del state_dict["visual.ln_post.bias"]
    state_dict["visual.extra.weight"] = torch.zeros(1)
    torch.save(state_dict, tmp_path / "pytorch_model.bin")
    with pytest.raises(KeyError, match=r"visual\.ln_post\.bias.*visual\.extra\.weight"):
        build_image_encoder("ruclip", str(tmp_path))

    # Weights of a 2-layer tower under a config that says 1 layer: layer 1 is unexpected.
    config = {**_tiny_ruclip_config(64), "vision_layers": 1}
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save(clip.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(KeyError, match=r"visual\.transformer\.resblocks\.1\."):
        build_image_encoder("ruclip", str(tmp_path))


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_ruclip_weights_are_not_unpickled(tmp_path):
    _save_ruclip(tmp_path, _tiny_ruclip_config(64))
    marker = tmp_path / "code_ran"
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"visual.proj": _RunsCodeWhenUnpickled(marker)}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        build_image_encoder("ruclip", str(tmp_path))
    assert not marker.exists()


def test_ruclip_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json") as err:
        build_image_encoder("ruclip", str(tmp_path))
    assert str(tmp_path) in str(err.value)

    (tmp_path / "config.json").write_text(json.dumps(_tiny_ruclip_config(64)))
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin") as err:
        build_image_encoder("ruclip", str(tmp_path))
    assert str(tmp_path) in str(err.value)


def _tiny_clip_vision_config(**overrides) -> CLIPVisionConfig:
    kwargs = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=12,
    )
    return CLIPVisionConfig(**{**kwargs, **overrides})


def test_clip_matches_original_and_reads_processor(tmp_path):
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(_tiny_clip_vision_config()).eval()
    model.save_pretrained(tmp_path)
    CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=CUSTOM_MEAN, image_std=CUSTOM_STD
    ).save_pretrained(tmp_path)

    encoder = build_image_encoder("clip", str(tmp_path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), model(pixel_values=x).image_embeds, atol=1e-6, rtol=1e-6)
    assert (encoder.embed_dim, encoder.image_size) == (12, 32)
    assert encoder.mean == pytest.approx(CUSTOM_MEAN) and encoder.std == pytest.approx(CUSTOM_STD)
    assert encoder.describe()["kind"] == "clip"


def test_clip_from_full_clip_model_without_processor(tmp_path):
    # Hub CLIP ids (openai/clip-vit-*) hold a full CLIPModel; the vision tower must load from it.
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=50, max_position_embeddings=8),
        vision_config=_tiny_clip_vision_config().to_dict(),
        projection_dim=12,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(tmp_path)

    encoder = build_image_encoder("clip", str(tmp_path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
        torch.testing.assert_close(encoder(x), expected, atol=1e-6, rtol=1e-6)
    assert encoder.image_size == 32
    assert encoder.mean == pytest.approx(RUCLIP_MEAN) and encoder.std == pytest.approx(RUCLIP_STD)  # OpenAI's


def test_clip_processor_size_must_match_model(tmp_path):
    CLIPVisionModelWithProjection(_tiny_clip_vision_config()).save_pretrained(tmp_path)
    CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="64px"):
        build_image_encoder("clip", str(tmp_path))


def _tiny_siglip_vision_config() -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )


def test_siglip_matches_original_and_reads_processor(tmp_path):
    torch.manual_seed(0)
    model = SiglipVisionModel(_tiny_siglip_vision_config()).eval()
    model.save_pretrained(tmp_path)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}, image_mean=CUSTOM_MEAN).save_pretrained(tmp_path)

    encoder = build_image_encoder("siglip", str(tmp_path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), model(pixel_values=x).pooler_output, atol=1e-6, rtol=1e-6)
    assert (encoder.embed_dim, encoder.image_size) == (32, 32)
    assert encoder.mean == pytest.approx(CUSTOM_MEAN) and encoder.std == pytest.approx([0.5, 0.5, 0.5])


def test_siglip_from_full_model_without_processor(tmp_path):
    torch.manual_seed(0)
    config = SiglipConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=50, max_position_embeddings=8),
        vision_config=_tiny_siglip_vision_config().to_dict(),
    )
    model = SiglipModel(config).eval()
    model.save_pretrained(tmp_path)

    encoder = build_image_encoder("siglip", str(tmp_path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), model.vision_model(pixel_values=x).pooler_output, atol=1e-6, rtol=1e-6)
    assert encoder.mean == pytest.approx([0.5] * 3) and encoder.std == pytest.approx([0.5] * 3)


def test_unknown_kind_lists_kinds(tmp_path):
    with pytest.raises(ValueError, match=r"'blip'.*clip.*ruclip.*siglip"):
        build_image_encoder("blip", str(tmp_path))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_folder_missing_files(tmp_path, kind):
    with pytest.raises(FileNotFoundError, match=r"config\.json") as err:
        build_image_encoder(kind, str(tmp_path))
    assert str(tmp_path) in str(err.value)

    _tiny_clip_vision_config().save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors") as err:
        build_image_encoder(kind, str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_patch_features_are_the_last_layer_tokens(tmp_path):
    clip = _save_ruclip(tmp_path, _tiny_ruclip_config(64))
    encoder = build_image_encoder("ruclip", str(tmp_path), features="patches")
    x = torch.randn(2, 3, 32, 32)
    tokens = encoder(x)
    assert tokens.shape == (2, (32 // 8) ** 2 + 1, 64) and encoder.embed_dim == 64
    # The pooled embedding is ln_post(class token) @ proj: recompute it from the tokens.
    visual = clip.visual
    pooled = visual.ln_post(tokens[:, 0]) @ visual.proj
    torch.testing.assert_close(pooled, clip.encode_image(x), atol=1e-5, rtol=1e-4)
    assert encoder.describe()["features"] == "patches"
    with pytest.raises(ValueError, match="pooled or patches"):
        build_image_encoder("ruclip", str(tmp_path), features="grid")


def test_patch_mode_keeps_only_parameters_that_shape_the_tokens(tmp_path):
    """Every parameter left must receive a gradient from the patch tokens (DDP fails otherwise)."""
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=16, patch_size=8, projection_dim=8)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    siglip = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=16, patch_size=8)
    SiglipVisionModel(siglip).save_pretrained(tmp_path / "siglip")
    for kind in ("clip", "siglip"):
        encoder = build_image_encoder(kind, str(tmp_path / kind), features="patches")
        encoder(torch.randn(2, 3, 16, 16)).sum().backward()
        no_grad = [n for n, p in encoder.named_parameters() if p.grad is None]
        assert not no_grad, (kind, no_grad)
