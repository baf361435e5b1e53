"""RuDOLPH (ai-forever): left text, image as VQGAN codes, right text = the caption. The family's
entry points (memecap/models/__init__.py); the rudolph/rudalle packages load only when they are called."""
from __future__ import annotations


def build(cfg, *, work_dir, train_texts):
    from memecap.models.rudolph.model import build_rudolph, materialize_tiny_rudolph

    return build_rudolph(materialize_tiny_rudolph(cfg, work_dir, train_texts))


def load(folder, with_encoder: bool = True):
    from memecap.models.rudolph.model import RuDolph

    return RuDolph.from_pretrained(folder, with_encoder=with_encoder)


def plan_memory(cfg, **settings):
    from memecap.models.rudolph.plan import plan_rudolph

    return plan_rudolph(cfg, **settings)


def merge(folder, out_dir, *, dtype: str = "auto"):
    from memecap.models.rudolph.merge_lora import merge_rudolph

    return merge_rudolph(folder, out_dir, dtype=dtype)
