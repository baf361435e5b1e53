"""A base prepared for training with checkpointing recomputes its layers without the reentrant variant
(memecap/models/kbit.py turns it on by the name the installed transformers has)."""
from __future__ import annotations

from transformers import AutoModelForCausalLM

from memecap.models.kbit import prepare_base


def test_checkpointing_is_turned_on_non_reentrant(tiny_gpt2_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    assert not model.is_gradient_checkpointing
    model = prepare_base(model, quantized=False, checkpointing=True)
    assert model.is_gradient_checkpointing and model.config.use_cache is False
    layer = model.transformer.h[0]
    assert getattr(layer._gradient_checkpointing_func, "keywords", {}).get("use_reentrant") is False
