"""The vocabulary projection applied only at scored positions (family_parts.scored_positions_loss through
body_and_head) gives the loss, the per-token log-probabilities and the gradients of the decoder's own
forward, for every decoder architecture that takes that path, with and without a LoRA wrapper."""
from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (AutoModelForCausalLM, Gemma3TextConfig, GPTNeoConfig, GPTNeoForCausalLM, MistralConfig,
                          Qwen3Config)

from memecap.models.family_parts import IGNORED, PLAIN_HEADS, body_and_head, caption_loss, scored_positions_loss
from memecap.models.tiny_causal_lm import FAMILIES, save_tiny_causal_lm
from memecap.models.vocab_log_probs import frozen_linear
from tests.helpers import TEST_TINY

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def decoders(tmp_path_factory, examples, tiny_gpt2_dir) -> dict:
    root = tmp_path_factory.mktemp("causal_lms")
    texts = [c for ex in examples for c in ex.captions]
    folders = {"gpt2": tiny_gpt2_dir, **{f: save_tiny_causal_lm(root / f, f, TEST_TINY, texts) for f in FAMILIES}}
    shape = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1)
    for family, config in (("mistral", MistralConfig(**shape)), ("qwen3", Qwen3Config(**shape, head_dim=16))):
        AutoModelForCausalLM.from_config(config).save_pretrained(root / family)
        folders[family] = root / family
    return folders


def ragged_batch(vocab: int, width: int, seed: int = 0):
    """Embeddings of 3 rows of 14 positions: prompts of different lengths, captions after them, padding
    after those; labels scored on the caption tokens only."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(3, 14, width, generator=generator)
    mask = torch.ones(3, 14, dtype=torch.long)
    labels = torch.full((3, 14), IGNORED)
    for row, (prompt, caption) in enumerate([(2, 9), (6, 5), (4, 10)]):
        labels[row, prompt:prompt + caption] = torch.randint(0, vocab, (caption,), generator=generator)
        mask[row, prompt + caption:] = 0
    return inputs, mask, labels


@pytest.mark.parametrize("family", sorted(PLAIN_HEADS))
@pytest.mark.parametrize("lora", [False, True])
def test_projection_at_scored_positions_equals_the_full_forward(decoders, family, lora):
    model = AutoModelForCausalLM.from_pretrained(decoders[family])
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    split = body_and_head(model)
    assert model.config.model_type == family and split is not None
    body, head = split
    assert frozen_linear(head) == lora  # under LoRA the frozen projection goes block by block (vocab_log_probs)
    inputs, mask, labels = ragged_batch(model.config.vocab_size, model.get_input_embeddings().weight.shape[1])

    full_inputs = inputs.clone().requires_grad_(True)
    full = caption_loss(model(inputs_embeds=full_inputs, attention_mask=mask).logits[:, :-1], labels[:, 1:])
    full["loss"].backward()
    picked_inputs = inputs.clone().requires_grad_(True)
    hidden = body(inputs_embeds=picked_inputs, attention_mask=mask, use_cache=False).last_hidden_state
    picked = scored_positions_loss(hidden[:, :-1], labels[:, 1:], head)
    picked["loss"].backward()

    assert torch.equal(picked["token_scored"], full["token_scored"]) and picked["num_tokens"] == full["num_tokens"]
    torch.testing.assert_close(picked["token_log_probs"], full["token_log_probs"], rtol=1e-5, atol=1e-5)
    assert (picked["token_log_probs"][~picked["token_scored"]] == 0).all()
    torch.testing.assert_close(picked["loss"], full["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(picked_inputs.grad, full_inputs.grad, rtol=1e-4, atol=1e-6)
    assert picked_inputs.grad.abs().sum() > 0


def test_decoders_whose_logits_are_more_than_the_projection_keep_their_own_forward():
    capped = Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=8, final_logit_softcapping=30.0)
    assert body_and_head(AutoModelForCausalLM.from_config(capped)) is None
    other = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2,
                                           attention_types=[[["global"], 1]]))
    assert body_and_head(other) is None
