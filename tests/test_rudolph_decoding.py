"""RuDOLPH decoding projects only the last position to logits, and decodes exactly as its own
`generate` does with every position projected (greedy and sampled, batched, with penalties)."""
from __future__ import annotations

import contextlib

import pytest
import torch

from memecap.config import GenerationConfig, load_config
from memecap.models import build_model
from memecap.data.datasets import CaptionEvalSet
from memecap.models.lora import base_model
from memecap.models.rudolph import model as rudolph_model
from memecap.models.rudolph.compat import last_position_logits
from tests.helpers import rudolph_overrides

pytestmark = pytest.mark.usefixtures("one_thread")
GENERATIONS = {
    "greedy": GenerationConfig(strategy="greedy", max_new_tokens=12),
    "sample": GenerationConfig(strategy="sample", top_k=20, top_p=0.95, temperature=1.3, num_return_sequences=3,
                               max_new_tokens=12),
    "penalties": GenerationConfig(strategy="greedy", max_new_tokens=12, repetition_penalty=1.3, no_repeat_ngram_size=2),
}


@pytest.fixture(scope="module")
def model_and_batch(tiny_rudolph, examples, tmp_path_factory):
    examples = examples[:4]
    cfg = load_config("rudolph_350m", rudolph_overrides(tiny_rudolph)).model
    model = build_model(cfg, work_dir=tmp_path_factory.mktemp("work")).eval()
    codes = model.image_inputs([e.image_path for e in examples], cache_dir=None, device="cpu", progress=False)
    batch = model.collate([CaptionEvalSet(codes)[i] for i in range(len(examples))])
    return model, batch


def decode_projecting_every_position(model, batch: dict, generation: GenerationConfig) -> list[list[str]]:
    """The model's own `generate` with the fast path switched off: `last_position_logits` made a
    no-op, so each step projects every position, as the package does, and keeps the last."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rudolph_model, "last_position_logits", lambda base: contextlib.nullcontext())
        return model.generate(batch, generation)


@pytest.mark.parametrize("name", list(GENERATIONS))
def test_captions_equal_those_of_projecting_every_position(name, model_and_batch):
    model, batch = model_and_batch
    generation = GENERATIONS[name]
    seen = []
    handle = base_model(model.rudolph).to_logits.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        torch.manual_seed(7)
        expected = decode_projecting_every_position(model, batch, generation)
        projected_all = list(seen)
        seen.clear()
        torch.manual_seed(7)
        got = model.generate(batch, generation)
    finally:
        handle.remove()
    # The reference really took the slow path: more than the last position reached the projection.
    assert projected_all and all(shape[1] > 1 for shape in projected_all), projected_all
    assert got == expected
    assert len(got) == 4 and all(len(c) == generation.num_return_sequences for c in got)
    assert any(text for captions in got for text in captions), "a test of empty captions compares nothing"
    assert seen and all(shape[1] == 1 for shape in seen), seen  # every step projected one position per row


def test_the_last_positions_logits_are_those_of_the_full_projection(model_and_batch):
    model, batch = model_and_batch
    base = base_model(model.rudolph)
    inputs = model._inputs(batch["image"], torch.tensor(model.right_prefix).expand(4, -1))
    mask = model._causal_mask(model.l_len + model.image_len + model.r_len, "cpu")
    with torch.no_grad():
        full, _ = base(inputs, mask, use_cache=True, return_loss=False)
        with last_position_logits(base):
            last, _ = base(inputs, mask, use_cache=True, return_loss=False)
    assert full.shape[1] == inputs.shape[1] and last.shape[1] == 1
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=0, atol=1e-6)


def test_training_still_projects_every_position_after_decoding(model_and_batch, examples_for_loss):
    model, batch = model_and_batch
    train_batch = examples_for_loss(model)
    before = model.loss(train_batch)["loss"].item()
    model.generate(batch, GENERATIONS["greedy"])
    assert not base_model(model.rudolph).to_logits._forward_pre_hooks  # the hook left with the decoding
    assert model.loss(train_batch)["loss"].item() == before


@pytest.fixture()
def examples_for_loss(examples):
    examples = examples[:2]

    def make(model):
        codes = model.image_inputs([e.image_path for e in examples], cache_dir=None, device="cpu", progress=False)
        return model.collate([{"image": codes[i], "input_ids": model.encode_caption(e.captions[0], 128)}
                              for i, e in enumerate(examples)])
    return make
