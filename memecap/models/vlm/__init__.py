"""The vision-language-model family (`model.family: vlm`): any model transformers loads with
AutoModelForImageTextToText, fine-tuned (LoRA or whole, on a 16-bit or 8/4-bit base) to describe
memes through memecap's loop. One folder: its settings (settings.py), prompt and image tokens
(chat.py; the chat template rendered with bounded work, template.py), loading and what trains
(loading.py; the image processor, image_processor.py), the captioner (model.py), tiny random models
(tiny.py), the memory plan (plan.py, known.py). The family's entry points (memecap/models/__init__.py)
import transformers only when they are called.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from memecap.models import TINY


def materialize_tiny_vlm(cfg, work_dir: Path, train_texts: Sequence[str]):
    """Replace a "tiny-random" name with a folder holding a freshly made tiny model of
    `model.vlm.tiny_architecture`, so it loads through the same path as Hub weights."""
    from memecap.models.export import record_local_base
    from memecap.models.vlm.tiny import save_tiny_vlm

    v = cfg.vlm
    if v.name != TINY:
        return cfg
    target = Path(work_dir) / "base_models" / f"vlm-{v.tiny_architecture}"
    if not (target / "config.json").is_file():
        if not train_texts:
            raise ValueError("a tiny-random vision-language model needs training captions to fit its tokenizer")
        save_tiny_vlm(target, v.tiny_architecture, [*train_texts, v.instruction, v.ocr_instruction])
        record_local_base(target)
    v.name, v.revision = str(target.resolve()), None
    return cfg


def build(cfg, *, work_dir: Path, train_texts: Sequence[str] = ()):
    """Load the model named in `cfg.vlm` with its processing parts and set what trains."""
    from memecap.models.vlm.chat import KNOWN_TYPES
    from memecap.models.vlm.loading import apply_training_mode, load_base, load_processing, load_processor
    from memecap.models.vlm.model import Vlm

    cfg = materialize_tiny_vlm(cfg, work_dir, train_texts)
    v = cfg.vlm
    base = load_base(cfg)
    known = base.config.model_type in KNOWN_TYPES
    model = apply_training_mode(base, cfg)
    tokenizer, image_processor, template = load_processing(cfg, v.name, v.revision, base.config.model_type)
    processor = None if known else load_processor(v.name, v.revision)
    if processor is not None:  # the prompt is made by the processor's own parts
        tokenizer, image_processor = processor.tokenizer, processor.image_processor
    return Vlm(cfg, model, tokenizer, image_processor, template, processor)


def load(folder: Path, with_encoder: bool = True):
    from memecap.models.vlm.model import Vlm

    return Vlm.from_pretrained(folder, with_encoder=with_encoder)


def plan_memory(cfg, **settings):
    from memecap.models.vlm.plan import plan_vlm

    return plan_vlm(cfg, **settings)


def merge(folder, out_dir, *, dtype: str = "auto"):
    from memecap.models.vlm.merge_lora import merge_vlm

    return merge_vlm(folder, out_dir, dtype=dtype)
