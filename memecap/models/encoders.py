"""Image encoders for ClipCap and the LSTM: a frozen CLIP-like vision tower -> one embedding per image.

    encoder = build_image_encoder("ruclip", "ai-forever/ruclip-vit-base-patch32-384")
    embeds = encoder(pixel_values)  # [B, 3, S, S] normalised with encoder.mean/std -> [B, embed_dim]

The builders load weights (from a local folder or the Hub) and `ImageEncoder` only wraps a built
model, so tests can wrap tiny random towers offline. Every kind ends up as a transformers model.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionModelWithProjection,
    ConvNextImageProcessorPil,
    PreTrainedModel,
    ResNetModel,
    SiglipImageProcessorPil,
    SiglipVisionModel,
)
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

from memecap.data.images import ImageTransform
from memecap.models.ruclip_weights import load_ruclip_vision, ruclip_normalisation
from memecap.untrusted import refuse_model_code

if TYPE_CHECKING:
    from memecap.config import EncoderConfig

logger = logging.getLogger(__name__)

PROCESSOR_CONFIG = "preprocessor_config.json"
# Any one of these makes a folder loadable by `from_pretrained` (sharded checkpoints have an index).
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

Triple = tuple[float, float, float]


class ImageEncoder(nn.Module):
    """Wraps a vision tower; `forward` returns the embedding ClipCap feeds to its mapping network.

    `output_key` names the field of the tower's output to return: `image_embeds` for CLIP/ruCLIP
    (the projected pooled embedding), `pooler_output` for SigLIP.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        output_key: str,
        embed_dim: int,
        image_size: int,
        mean: Triple,
        std: Triple,
        kind: str,
        name: str,
        revision: str | None = None,
    ):
        super().__init__()
        self.model = model
        self.output_key = output_key
        self.embed_dim = embed_dim
        self.image_size = image_size
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.kind, self.name, self.revision = kind, name, revision

    def use_patches(self) -> "ImageEncoder":
        """Return every token of the last layer ([B, tokens, width]) instead of one pooled vector:
        the decoder then sees where things are and the strokes of the meme's text."""
        self.output_key = "last_hidden_state"
        if isinstance(self.model, ResNetModel):  # the grid is the last stage's map; pooling has no weights
            return self
        self.embed_dim = self.model.config.hidden_size
        # Layers that only shape the pooled vector would get no gradient from patch features, which
        # DDP rejects as unused parameters; the tower keeps only what it uses.
        if hasattr(self.model, "visual_projection"):  # CLIP / ruCLIP: post-norm acts on the class token only
            self.model.visual_projection = nn.Identity()
            self.model.vision_model.post_layernorm = nn.Identity()
        if getattr(self.model, "use_head", False):  # SigLIP's attention-pooling head
            self.model.use_head = False
            del self.model.head
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        outputs = self.model(pixel_values=pixel_values.to(dtype))
        out = getattr(outputs, self.output_key)
        if out.dim() == 4:  # a CNN's [B, C, H, W] map: pooled -> [B, C], grid -> [B, H*W, C] like patch tokens
            out = out.flatten(1) if self.output_key == "pooler_output" else out.flatten(2).transpose(1, 2)
        return out

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "revision": self.revision,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "features": "patches" if self.output_key == "last_hidden_state" else "pooled",
        }


def _check_local_folder(name: str, revision: str | None) -> None:
    """Say which file a local transformers folder lacks, before from_pretrained's generic OSError;
    refuse a folder or Hub repo whose settings name code of its own."""
    refuse_model_code(name, revision)
    if not os.path.isdir(name):
        return  # a Hub repo id: from_pretrained downloads and reports its own errors
    if not os.path.isfile(os.path.join(name, "config.json")):
        raise FileNotFoundError(f"model folder {name!r} has no 'config.json'")
    if not any(os.path.isfile(os.path.join(name, f)) for f in HF_WEIGHTS):
        raise FileNotFoundError(f"model folder {name!r} has no weights file (one of {list(HF_WEIGHTS)})")


def _load_processor(processor_cls, name: str, revision: str | None):
    """The image processor saved beside the weights, or None when there is none."""
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, PROCESSOR_CONFIG)):
            return None
        return processor_cls.from_pretrained(name, trust_remote_code=False)
    try:
        return processor_cls.from_pretrained(name, revision=revision, trust_remote_code=False)
    except OSError as err:
        logger.warning(
            "no %s for %r (%s); using the model config and default normalisation", PROCESSOR_CONFIG, name, err
        )
        return None


def _processor_image_size(processor) -> int:
    """Side of the square the processor hands the model: the crop when it crops, else the resize."""
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    height, width = size.get("height"), size.get("width")
    if height is None and width is None:
        height = width = size.get("shortest_edge")
    if height is None or height != width:
        raise ValueError(f"image processor must produce square images, got size {dict(size)}")
    return int(height)


def _settings(model_image_size: int, processor, default_mean: Triple, default_std: Triple, name: str):
    """(image_size, mean, std): from the processor when there is one, else model config + defaults."""
    if processor is None:
        return model_image_size, tuple(default_mean), tuple(default_std)
    image_size = _processor_image_size(processor)
    if image_size != model_image_size:
        raise ValueError(
            f"{name!r}: image processor gives {image_size}px images but the model was built for {model_image_size}px"
        )
    return image_size, tuple(processor.image_mean), tuple(processor.image_std)


def build_clip(name: str, revision: str | None = None, dtype: torch.dtype | None = None) -> ImageEncoder:
    """Any transformers CLIP checkpoint (vision-only or full CLIPModel); returns `image_embeds`."""
    _check_local_folder(name, revision)
    model = CLIPVisionModelWithProjection.from_pretrained(name, revision=revision, dtype=dtype or torch.float32,
                                                          trust_remote_code=False)
    processor = _load_processor(CLIPImageProcessorPil, name, revision)
    image_size, mean, std = _settings(model.config.image_size, processor, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, name)
    return ImageEncoder(
        model, output_key="image_embeds", embed_dim=model.config.projection_dim, image_size=image_size,
        mean=mean, std=std, kind="clip", name=name, revision=revision,
    )


def build_siglip(name: str, revision: str | None = None, dtype: torch.dtype | None = None) -> ImageEncoder:
    """A transformers SigLIP checkpoint (vision-only or full SiglipModel); returns `pooler_output`."""
    _check_local_folder(name, revision)
    model = SiglipVisionModel.from_pretrained(name, revision=revision, dtype=dtype or torch.float32,
                                              trust_remote_code=False)
    processor = _load_processor(SiglipImageProcessorPil, name, revision)
    image_size, mean, std = _settings(
        model.config.image_size, processor, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, name
    )
    return ImageEncoder(
        model, output_key="pooler_output", embed_dim=model.config.hidden_size, image_size=image_size,
        mean=mean, std=std, kind="siglip", name=name, revision=revision,
    )


def build_ruclip(name: str, revision: str | None = None, dtype: torch.dtype | None = None) -> ImageEncoder:
    """ai-forever ruCLIP (config.json + pytorch_model.bin/model.safetensors), converted to transformers."""
    model, config = load_ruclip_vision(name, revision=revision, dtype=dtype or torch.float32)
    mean, std = ruclip_normalisation(config)
    return ImageEncoder(
        model, output_key="image_embeds", embed_dim=model.config.projection_dim, image_size=model.config.image_size,
        mean=mean, std=std, kind="ruclip", name=name, revision=revision,
    )


def build_resnet(name: str, revision: str | None = None, dtype: torch.dtype | None = None) -> ImageEncoder:
    """A transformers ResNet (`microsoft/resnet-50`, `-101`); returns the pooled last-stage vector."""
    _check_local_folder(name, revision)
    model = ResNetModel.from_pretrained(name, revision=revision, dtype=dtype or torch.float32, trust_remote_code=False)
    processor = _load_processor(ConvNextImageProcessorPil, name, revision)
    # ResNet is fully convolutional; 224 is the size it was trained at when no processor says otherwise.
    size = _processor_image_size(processor) if processor is not None else 224
    image_size, mean, std = _settings(size, processor, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, name)
    return ImageEncoder(
        model, output_key="pooler_output", embed_dim=model.config.hidden_sizes[-1], image_size=image_size,
        mean=mean, std=std, kind="resnet", name=name, revision=revision,
    )


def build_auto(name: str, revision: str | None = None, dtype: torch.dtype | None = None,
               features: str = "pooled") -> ImageEncoder:
    """Any transformers image backbone (AutoModel + AutoImageProcessor); see models/backbones.py."""
    from memecap.models.backbones import build_auto as build

    return build(name, revision=revision, dtype=dtype, features=features)


ENCODERS: dict[str, Callable[..., ImageEncoder]] = {
    "clip": build_clip,
    "siglip": build_siglip,
    "ruclip": build_ruclip,
    "resnet": build_resnet,
    "auto": build_auto,
}


def build_image_encoder(
    kind: str, name: str, revision: str | None = None, dtype: torch.dtype | None = None,
    features: str = "pooled",
) -> ImageEncoder:
    """Load an image encoder of `kind` (a key of ENCODERS) from a local folder or Hub id.

    `features="pooled"` gives one vector per image, `"patches"` every token of the last layer.
    `dtype` defaults to float32. Parameters keep requires_grad; the caller freezes what it freezes.
    """
    if kind not in ENCODERS:
        raise ValueError(f"unknown image encoder kind {kind!r}; known kinds: {sorted(ENCODERS)}")
    if features not in ("pooled", "patches"):
        raise ValueError(f"unknown image features {features!r}; use pooled or patches")
    if kind == "auto":  # its output width and unused layers are measured for the features asked for
        return build_auto(name, revision=revision, dtype=dtype, features=features)
    encoder = ENCODERS[kind](name, revision=revision, dtype=dtype)
    return encoder.use_patches() if features == "patches" else encoder


def encoder_transform(encoder: ImageEncoder, cfg: EncoderConfig) -> ImageTransform:
    """The pixels `encoder` reads: its input size and normalisation, resized as `cfg` says."""
    return ImageTransform(encoder.image_size, tuple(encoder.mean), tuple(encoder.std), resize_mode=cfg.resize_mode)
