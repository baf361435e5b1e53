"""memecap/sampling.py: tokens drawn with the probabilities softmax(scores) gives, never a banned one,
and transformers' greedy decoding with DrawToken last samples what its own sampling samples."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from memecap.config import GenerationConfig
from memecap.generation import hf_generate_drawing_kwargs
from memecap.sampling import BLOCK, _pick, draw_tokens


def assert_frequencies_match(tokens: torch.Tensor, probs: torch.Tensor, draws: int):
    """Every token's count within 5 standard deviations of its binomial expectation."""
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    expected = probs.double() * draws
    spread = (expected * (1 - probs.double())).clamp_min(1e-12).sqrt()
    worst = ((counts - expected).abs() / spread)[probs > 0].max().item()
    assert worst < 5, f"a token drawn {worst:.1f} standard deviations away from its probability"
    assert counts[probs == 0].sum() == 0, "a token of probability 0 was drawn"


def test_draws_follow_softmax_across_blocks_and_never_banned_tokens():
    vocab = 3 * BLOCK + 77  # not a whole number of blocks: the padding must never be drawn
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(vocab, generator=generator) * 0.5
    scores[:40] += 4.0  # most of the mass in the first block, some spread everywhere
    scores[vocab - 1] += 6.0  # and a heavy token in the last, partial block
    banned = torch.randperm(vocab, generator=generator)[:300]
    scores[banned] = float("-inf")
    draws = 200_000
    tokens = draw_tokens(scores.expand(draws, -1).contiguous(), generator=generator)
    assert tokens.shape == (draws,) and tokens.max() < vocab
    assert_frequencies_match(tokens, torch.softmax(scores, dim=-1), draws)


def test_a_single_allowed_token_is_always_drawn_and_rows_are_independent():
    scores = torch.full((3, 2 * BLOCK), float("-inf"))
    scores[0, 5] = 0.0
    scores[1, 2 * BLOCK - 1] = -50.0  # weight exp(0) after the row's max is taken out: still drawn
    scores[2] = 0.0  # uniform row
    for _ in range(20):
        tokens = draw_tokens(scores)
        assert tokens[0] == 5 and tokens[1] == 2 * BLOCK - 1
    uniform = draw_tokens(scores[2:].expand(20_000, -1).contiguous(), generator=torch.Generator().manual_seed(1))
    assert_frequencies_match(uniform, torch.full((2 * BLOCK,), 1 / (2 * BLOCK)), 20_000)


def test_the_same_generator_state_draws_the_same_tokens():
    scores = torch.randn(8, 5000)
    first = draw_tokens(scores, generator=torch.Generator().manual_seed(7))
    again = draw_tokens(scores, generator=torch.Generator().manual_seed(7))
    other = draw_tokens(scores, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_rounding_up_to_the_total_falls_back_to_the_last_weighted_index():
    cumulative = torch.tensor([[0.0, 0.25, 0.25, 1.0, 1.0, 1.0]], dtype=torch.float64)  # weights 0 .25 0 .75 0 0
    assert _pick(cumulative, torch.tensor([1.0 - 2.0 ** -53], dtype=torch.float64)).item() == 3
    assert _pick(cumulative, torch.tensor([1.0], dtype=torch.float64)).item() == 3  # even a uniform of exactly 1
    assert _pick(cumulative, torch.tensor([0.0], dtype=torch.float64)).item() == 1  # weight 0 at index 0 skipped


@pytest.mark.parametrize("bad", [float("-inf"), float("nan")])
def test_a_row_with_nothing_to_draw_is_an_error(bad):
    scores = torch.zeros(2, 10)
    scores[1] = bad
    with pytest.raises(ValueError, match="no token to draw"):
        draw_tokens(scores)


def test_greedy_generate_with_draw_token_samples_the_tempered_distribution(tiny_gpt2_dir, one_thread):
    """The first new token of many rows through transformers' generate, against the probabilities the
    model gives at temperature 0.5 and top-k 20: transformers' sampling order, drawn by DrawToken."""
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    prompt = torch.tensor([[5, 9, 13]])
    with torch.no_grad():
        logits = model(prompt).logits[0, -1]
    tempered = logits / 0.5
    kept = tempered.topk(20).indices
    probs = torch.zeros_like(tempered)
    probs[kept] = torch.softmax(tempered[kept], dim=-1)
    cfg = GenerationConfig(strategy="sample", temperature=0.5, top_k=20, num_return_sequences=4, max_new_tokens=1)
    kwargs = hf_generate_drawing_kwargs(cfg, [], eos_token_id=-1, pad_token_id=0)
    assert kwargs["do_sample"] is False and kwargs["num_return_sequences"] == 1
    draws = 6000
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(prompt.expand(draws, -1), attention_mask=torch.ones(draws, 3, dtype=torch.long),
                             **kwargs)
    assert out.shape == (draws, 4)
    assert_frequencies_match(out[:, -1], probs, draws)


def test_drawing_kwargs_refuse_a_strategy_that_does_not_sample():
    with pytest.raises(ValueError, match="strategy is 'greedy'"):
        hf_generate_drawing_kwargs(GenerationConfig(strategy="greedy"), [], eos_token_id=1, pad_token_id=0)
