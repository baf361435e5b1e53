"""Load the image tower of ai-forever ruCLIP as a transformers `CLIPVisionModelWithProjection`.

ruCLIP is published as `config.json` + `pytorch_model.bin` (the state dict of `ruclip.model.CLIP`,
an OpenAI-CLIP-style model). The `ruclip` package cannot be imported on a modern stack (it pins
transformers 4.10 and imports names removed from huggingface_hub), so this module reads those two
files itself and maps the `visual.*` weights onto transformers' CLIP vision model, which computes
the same function: pre-LN ViT, QuickGELU, LayerNorm eps 1e-5, `ln_post(x[:, 0]) @ proj`.
"""

from __future__ import annotations

import json

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from memecap.models.hub_files import resolve_file

# ruCLIP's RuCLIPProcessor uses these when config.json has no "mean"/"std" (the OpenAI CLIP values).
RUCLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
RUCLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CONFIG_NAME = "config.json"
WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")  # first one found wins
_REQUIRED_CONFIG_KEYS = ("embed_dim", "image_resolution", "vision_layers", "vision_width", "vision_patch_size")


def _resolve_weights(name: str, revision: str | None) -> str:
    """model.safetensors when the source has it, else pytorch_model.bin."""
    missing = []
    for filename in WEIGHTS_NAMES:
        try:
            return resolve_file(name, filename, revision, "ruCLIP")
        except FileNotFoundError as err:
            missing.append(str(err))
    raise FileNotFoundError(f"no ruCLIP weights found ({' ; '.join(missing)})")


def load_state_dict_safely(path: str) -> dict[str, torch.Tensor]:
    """Read a state dict without running arbitrary pickled code."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def ruclip_vision_config(config: dict) -> CLIPVisionConfig:
    """transformers config for ruCLIP's image tower, from ruCLIP's own config.json dict."""
    missing = [key for key in _REQUIRED_CONFIG_KEYS if key not in config]
    if missing:
        raise ValueError(f"ruCLIP config.json lacks {missing}")
    width = int(config["vision_width"])
    if width < 64:
        # ruCLIP uses width // 64 heads; a narrower tower has zero heads and cannot exist.
        raise ValueError(f"ruCLIP vision_width must be >= 64 (heads = width // 64), got {width}")
    return CLIPVisionConfig(
        hidden_size=width,
        num_hidden_layers=int(config["vision_layers"]),
        num_attention_heads=width // 64,
        intermediate_size=4 * width,
        image_size=int(config["image_resolution"]),
        patch_size=int(config["vision_patch_size"]),
        projection_dim=int(config["embed_dim"]),
        num_channels=3,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
    )


def convert_ruclip_visual_state_dict(state_dict: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Map `visual.*` keys of a `ruclip.model.CLIP` state dict to `CLIPVisionModelWithProjection` keys.

    Text-tower keys are ignored. Raises KeyError listing any `visual.*` key left unconsumed or any
    expected source key that is missing.
    """
    source = {k[len("visual."):]: v for k, v in state_dict.items() if k.startswith("visual.")}
    used: set[str] = set()
    missing: list[str] = []

    def take(key: str) -> torch.Tensor | None:
        if key not in source:
            missing.append("visual." + key)
            return None
        used.add(key)
        return source[key]

    out: dict[str, torch.Tensor] = {}

    def put(target: str, tensor: torch.Tensor | None) -> None:
        if tensor is not None:
            out[target] = tensor.contiguous()

    vm = "vision_model."
    put(vm + "embeddings.class_embedding", take("class_embedding"))
    put(vm + "embeddings.patch_embedding.weight", take("conv1.weight"))
    put(vm + "embeddings.position_embedding.weight", take("positional_embedding"))
    for src, dst in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):  # sic: transformers' name
        put(f"{vm}{dst}.weight", take(f"{src}.weight"))
        put(f"{vm}{dst}.bias", take(f"{src}.bias"))
    proj = take("proj")  # [width, embed_dim], used as x @ proj; nn.Linear wants [out, in]
    put("visual_projection.weight", None if proj is None else proj.t())

    for i in range(num_layers):
        src = f"transformer.resblocks.{i}."
        dst = f"{vm}encoder.layers.{i}."
        # nn.MultiheadAttention packs q, k, v along dim 0 in that order; heads are contiguous
        # head_dim slices of each, exactly as transformers' CLIPAttention splits them.
        for suffix in ("weight", "bias"):
            packed = take(f"{src}attn.in_proj_{suffix}")
            if packed is not None:
                for proj_name, part in zip(("q_proj", "k_proj", "v_proj"), packed.chunk(3, dim=0)):
                    put(f"{dst}self_attn.{proj_name}.{suffix}", part)
        pairs = (
            ("attn.out_proj", "self_attn.out_proj"),
            ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
        )
        for s, d in pairs:
            put(f"{dst}{d}.weight", take(f"{src}{s}.weight"))
            put(f"{dst}{d}.bias", take(f"{src}{s}.bias"))

    unexpected = sorted("visual." + k for k in source if k not in used)
    if missing or unexpected:
        raise KeyError(
            f"ruCLIP weights do not match a {num_layers}-layer image tower: "
            f"missing {missing or 'none'}; unexpected {unexpected or 'none'}"
        )
    return out


def load_ruclip_vision(
    name: str, revision: str | None = None, dtype: torch.dtype | None = None
) -> tuple[CLIPVisionModelWithProjection, dict]:
    """ruCLIP's image tower as a transformers model, plus ruCLIP's config.json dict.

    `name` is a local folder or a Hub repo id such as `ai-forever/ruclip-vit-base-patch32-384`.
    """
    with open(resolve_file(name, CONFIG_NAME, revision, "ruCLIP"), encoding="utf-8") as f:
        config = json.load(f)
    vision_config = ruclip_vision_config(config)
    state_dict = convert_ruclip_visual_state_dict(
        load_state_dict_safely(_resolve_weights(name, revision)), vision_config.num_hidden_layers
    )

    model = CLIPVisionModelWithProjection(vision_config)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise KeyError(f"converted ruCLIP weights: missing {missing or 'none'}; unexpected {unexpected or 'none'}")
    model.load_state_dict(state_dict, strict=True)  # also raises on any shape mismatch
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), config


def ruclip_normalisation(config: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a ruCLIP checkpoint was trained with: config.json's, else ruCLIP's defaults."""
    mean = tuple(float(v) for v in (config.get("mean") or RUCLIP_MEAN))
    std = tuple(float(v) for v in (config.get("std") or RUCLIP_STD))
    return mean, std
