"""ClipCap: image encoder -> mapping network -> causal LM decoder (GPT-2/ruGPT-3, Llama, Qwen2,
Gemma 3, ...). The family's entry points (memecap/models/__init__.py); the code is imported when
they are called."""
from __future__ import annotations


def build(cfg, *, work_dir, train_texts):
    from memecap.models.clipcap.model import build_clipcap, materialize_tiny_bases

    return build_clipcap(materialize_tiny_bases(cfg, work_dir, train_texts))


def load(folder, with_encoder: bool = True):
    from memecap.models.clipcap.model import ClipCap

    return ClipCap.from_pretrained(folder, with_encoder=with_encoder)


def plan_memory(cfg, **settings):
    from memecap.models.clipcap.plan import plan_clipcap

    return plan_clipcap(cfg, **settings)


def merge(folder, out_dir, *, dtype: str = "auto"):
    from memecap.models.clipcap.merge_lora import merge_clipcap

    return merge_clipcap(folder, out_dir, dtype=dtype)
