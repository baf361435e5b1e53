"""The image processor a model's files name, or its architecture's own when they name one transformers
does not have.

Published files are not always right: a public copy of Qwen2.5-VL's preprocessor_config.json names
`Qwen2_5_VLImageProcessor`, a class transformers never had (Qwen2.5-VL uses Qwen2-VL's), and
transformers' AutoImageProcessor then refuses the folder. memecap loads the image processor
transformers maps the model's type to instead, with the same settings file, and says so once.
"""
from __future__ import annotations

import logging
from typing import Optional

logger = logging.getLogger(__name__)


def load_image_processor(source: str, revision: Optional[str], model_type: str, **overrides):
    """The image processor of a Hub id / folder (PIL backend), with `overrides` of its settings."""
    from transformers import AutoImageProcessor

    declared = declared_type(source, revision)
    if declared is None or known_class(declared) is not None:
        return AutoImageProcessor.from_pretrained(source, revision=revision, backend="pil", trust_remote_code=False,
                                                  **overrides)
    fallback = architecture_class(model_type)
    if fallback is None:
        raise ValueError(f"{source}: image_processor_type {declared!r} is not an image processor transformers has, "
                         f"and it maps model type {model_type!r} to none; fix image_processor_type in its "
                         "preprocessor_config.json")
    logger.warning("%s: image_processor_type %r is not an image processor transformers has; using the one of "
                   "model type %r (%s)", source, declared, model_type, fallback.__name__)
    return fallback.from_pretrained(source, revision=revision, trust_remote_code=False, **overrides)


def declared_type(source: str, revision: Optional[str]) -> Optional[str]:
    """The `image_processor_type` the settings name (preprocessor_config.json, or processor_config.json's
    image processor section), read as transformers reads them; None when they name none or are absent."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        values, _ = ImageProcessingMixin.get_image_processor_dict(source, revision=revision)
    except (OSError, ValueError):
        return None  # absent or unreadable: AutoImageProcessor reports it as it would
    declared = values.get("image_processor_type")
    return declared if isinstance(declared, str) else None


def known_class(name: str):
    """transformers' class for an image processor name (its PIL or torchvision one, or a legacy "...Fast"), or None."""
    from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

    base = name[:-len("Fast")] if name.endswith("Fast") else name
    for candidate in (base + "Pil", base, name):
        found = get_image_processor_class_from_name(candidate)
        if found is not None:
            return found
    return None


def architecture_class(model_type: str):
    """The PIL image processor transformers maps `model_type` to, or None."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
    if isinstance(names, dict):  # transformers 5: backend -> class name
        names = [names.get("pil"), *names.values()]
    for name in names or ():
        found = known_class(name) if name else None
        if found is not None:
            return found
    return None
