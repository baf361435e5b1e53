"""Loading a vision-language model and its processing parts, and choosing what trains.

Weights load with `AutoModelForImageTextToText` (transformers' own classes only: never
`trust_remote_code`, safetensors only), from a Hub id + revision or a local folder, optionally as
a bitsandbytes 8/4-bit base. LoRA adapts the language model's projections; the vision tower's
modules of the same names (Qwen2.5-VL's MLP has gate/up/down_proj, SigLIP's attention q/k/v_proj)
are adapted only with `model.vlm.vision=lora`: targets are a regular expression anchored at the
language model's (and vision tower's) module name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from torch import nn

from memecap.config import ModelConfig
from memecap.models.dtypes import weights_dtype
from memecap.models.lora import add_lora
from memecap.models.kbit import bitsandbytes_loading, keep_4bit_layers_on_generic_cpu_path, prepare_base
from memecap.models.vlm.image_processor import load_image_processor
from memecap.models.vlm.template import ChatTemplate
from memecap.untrusted import refuse_model_code

TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")  # the processor's template, as Hub repos ship it
VISION_NAMES = ("visual", "vision_model", "vision_tower")  # the vision tower's attribute in transformers' VLMs


def load_base(cfg: ModelConfig, folder: Optional[Path] = None) -> nn.Module:
    """The model named by `cfg.vlm` (or the whole trained model in an export's `folder`)."""
    from transformers import AutoModelForImageTextToText

    v = cfg.vlm
    trains_whole = v.mode == "full" or v.vision == "full"
    dtype = weights_dtype(v.dtype, trains=trains_whole)
    refuse_model_code(*((str(folder), None) if folder is not None else (v.name, v.revision)))
    if folder is not None:
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, use_safetensors=True,
                                                            trust_remote_code=False)
    else:
        model = AutoModelForImageTextToText.from_pretrained(v.name, revision=v.revision, dtype=dtype,
                                                            use_safetensors=True, trust_remote_code=False,
                                                            **bitsandbytes_loading(cfg.vlm.quantization))
    if v.quantization == "4bit":
        keep_4bit_layers_on_generic_cpu_path(model)
    return model


def read_template(source: str, revision: Optional[str], tokenizer) -> Optional[ChatTemplate]:
    """The processor's chat template file (chat_template.jinja / .json), else the tokenizer's, else
    None; with the file it came from, which messages about it name."""
    from memecap.models.hub_files import resolve_file

    def where(name: str) -> str:
        return str(Path(source) / name) if os.path.isdir(source) else f"{source} (revision {revision or 'main'}) {name}"

    for name in TEMPLATE_FILES:
        try:
            path = resolve_file(source, name, revision)
        except Exception:  # noqa: BLE001 - absent here: try the next place
            continue
        text = Path(path).read_text(encoding="utf-8")
        return ChatTemplate(json.loads(text)["chat_template"] if name.endswith(".json") else text, where(name))
    template = getattr(tokenizer, "chat_template", None)
    return ChatTemplate(template, where("tokenizer_config.json")) if isinstance(template, str) else None


def load_processing(cfg: ModelConfig, source: str, revision: Optional[str], model_type: str):
    """(tokenizer, image processor, chat template) from a Hub id / folder of a `model_type` model;
    the recipe's image budget (min/max_pixels for Qwen, longest_edge for Idefics3/SmolVLM) overrides
    the published one."""
    from transformers import AutoTokenizer

    v = cfg.vlm
    refuse_model_code(source, revision)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=False)
    overrides = {}
    if v.min_pixels is not None:
        overrides["min_pixels"] = v.min_pixels
    if v.max_pixels is not None:
        overrides["max_pixels"] = v.max_pixels
    if v.longest_edge is not None:
        overrides.update(size={"longest_edge": v.longest_edge}, max_image_size={"longest_edge": v.longest_edge},
                         do_image_splitting=False)
    image_processor = load_image_processor(source, revision, model_type, **overrides)
    if v.min_pixels is not None or v.max_pixels is not None:  # Qwen keeps the budget in `size` too
        size = dict(getattr(image_processor, "size", None) or {})
        if "shortest_edge" in size or "longest_edge" in size:
            if v.min_pixels is not None:
                size["shortest_edge"] = v.min_pixels
            if v.max_pixels is not None:
                size["longest_edge"] = v.max_pixels
            image_processor.size = size
    if hasattr(image_processor, "do_image_splitting"):
        image_processor.do_image_splitting = False  # one tile per image (memecap/models/vlm/chat.py)
    return tokenizer, image_processor, read_template(source, revision, tokenizer)


def load_processor(source: str, revision: Optional[str]):
    """The model's own AutoProcessor, for architectures whose image tokens memecap does not expand
    itself (LLaVA, ...). Its image processor and tokenizer are the ones the prompt is made with."""
    from transformers import AutoProcessor

    refuse_model_code(source, revision)
    return AutoProcessor.from_pretrained(source, revision=revision, trust_remote_code=False)


def module_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError("the module is not part of the model")


def language_model_name(model: nn.Module) -> str:
    """Dotted name of the language model inside a VLM (`model.language_model`, `model.text_model`)."""
    return module_name(model, model.get_decoder())


def vision_tower_name(model: nn.Module) -> str:
    names = [n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in VISION_NAMES]
    if not names:
        raise ValueError(f"{type(model).__name__}: no vision tower found "
                         f"(looked for modules named {', '.join(VISION_NAMES)})")
    return min(names, key=len)


def apply_training_mode(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Frozen base + LoRA on the language model (default), or the language model trained whole;
    the vision tower frozen, adapted or trained as `model.vlm.vision` says."""
    v = cfg.vlm
    language, vision = language_model_name(model), vision_tower_name(model)
    model = prepare_base(model, quantized=v.quantization != "none", checkpointing=v.gradient_checkpointing)
    if v.mode == "full":
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith(vision + ".") or v.vision == "full")
        return model
    also = [(vision, list(v.vision_target_modules))] if v.vision == "lora" else []
    return add_lora(model, v.lora, key="model.vlm.lora", within=language, also=also,
                    modules_to_save=[vision] if v.vision == "full" else None)


