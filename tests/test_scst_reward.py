"""The SCST reward parts on hand-made cases, the leave-one-out baseline, and the policy-gradient loss:
its sign (a reward that prefers one token raises that token's probability) and forced tokens left out."""

import math

import pytest
import torch

from memecap.config import ScstConfig
from memecap.metrics.cider_score import cider_d, cider_d_with_df, document_frequency
from memecap.training.scst import (
    CiderDReward,
    brevity_penalty,
    caption_rewards,
    leave_one_out_baseline,
    length_penalty,
    policy_gradient_loss,
    quote_reward,
    repetition_penalty,
)

TRAIN_REFS = [["кот сидит на столе"], ["собака бежит по полю"], ["кот спит на диване"], ["птица поет на ветке"]]


def test_cider_with_given_frequencies_equals_cider_on_the_same_corpus():
    hyps = [["кот", "сидит"], ["собака", "бежит", "по", "полю"]]
    refs = [[["кот", "сидит", "на", "столе"]], [["собака", "бежит", "по", "полю"]]]
    assert cider_d_with_df(hyps, refs, document_frequency(refs), len(refs)) == cider_d(hyps, refs)


def test_cider_reward_uses_the_training_frequencies_so_one_caption_scores_above_zero():
    reward = CiderDReward(TRAIN_REFS)
    exact, wrong = reward(["кот сидит на столе", "птица поет"], [["кот сидит на столе"]] * 2)
    assert exact > 1.0  # alone, its own corpus would give idf 0 and a score of 0
    assert wrong == 0.0
    with pytest.raises(ValueError, match="training split"):
        CiderDReward([])


def test_quote_reward_against_the_reference_quote_or_else_the_ocr_text():
    refs = ['Кот с надписью "Привет мир"']
    assert quote_reward('Надпись: «привет мир»', refs) == 1.0
    assert quote_reward("Кот без подписи", refs) == 0.0
    assert quote_reward('Надпись "привет ми"', refs) == pytest.approx(1 - 1 / len("привет мир"))
    # No reference quote: the OCR text is the target; neither: nothing to reward.
    assert quote_reward('Надпись "утро"', ["Кот сидит"], ocr_text="Утро") == 1.0
    assert quote_reward('Надпись "утро"', ["Кот сидит"], ocr_text="") == 0.0


def test_length_and_repetition_penalties():
    assert length_penalty("a b c", max_words=3) == 0.0
    assert length_penalty("a b c d", max_words=2) == pytest.approx(-0.5)
    assert repetition_penalty("кот сидит на столе") == 0.0
    assert repetition_penalty("кот кот кот кот") == pytest.approx(-2 / 3)  # 3 bigrams, 2 repeats


def test_brevity_penalty_charges_what_the_closest_reference_has_more():
    refs = ["кот сидит на столе", "на фото кот сидит на столе у окна и смотрит на улицу"]
    assert brevity_penalty("кот сидит", refs) == pytest.approx(-0.5)  # 2 of the 4 words of the closest
    assert brevity_penalty("кот сидит на столе у окна", refs) == 0.0  # longer than the closest: no charge
    assert brevity_penalty("на фото кот сидит на столе у окна и смотрит", refs[1:]) == pytest.approx(-2 / 12)
    assert brevity_penalty("", refs) == -1.0 and brevity_penalty("кот", []) == 0.0


def test_reward_is_the_weighted_sum_of_its_parts_each_returned():
    weights = ScstConfig(cider=0.5, quote=2.0, length=1.0, brevity=3.0, repetition=1.0, max_words=3)
    parts = caption_rewards(['кот "привет" кот "привет"'], [['кот "привет" на фото с котом и надписью']], [""],
                            CiderDReward(TRAIN_REFS), weights)
    assert set(parts) == {"cider", "quote", "length", "brevity", "repetition", "reward"}
    expected = (0.5 * parts["cider"][0] + 2.0 * parts["quote"][0] + parts["length"][0] + 3.0 * parts["brevity"][0]
                + parts["repetition"][0])
    assert parts["reward"][0] == pytest.approx(expected)
    assert parts["length"][0] < 0 and parts["brevity"][0] < 0 and parts["repetition"][0] < 0
    with pytest.raises(ValueError, match="OCR texts"):
        caption_rewards(["a"], [["a"]], [], CiderDReward(TRAIN_REFS), weights)


def test_leave_one_out_baseline():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    assert torch.equal(leave_one_out_baseline(rewards), torch.tensor([[2.5, 2.0, 1.5], [3.0, 3.0, 0.0]]))
    with pytest.raises(ValueError, match="scst.samples"):
        leave_one_out_baseline(torch.ones(2, 1))


def test_a_reward_that_prefers_one_token_raises_its_probability():
    torch.manual_seed(0)
    vocab, steps, k, liked = 6, 2, 8, 3
    logits = torch.nn.Parameter(torch.zeros(steps, vocab))  # a tiny policy: one distribution per position
    optimizer = torch.optim.SGD([logits], lr=0.5)
    before = torch.softmax(logits.detach(), -1)[:, liked].clone()
    for _ in range(20):
        dist = torch.distributions.Categorical(logits=logits.expand(k, steps, vocab))
        tokens = dist.sample()
        rewards = (tokens == liked).float().sum(1).view(1, k)
        advantages = (rewards - leave_one_out_baseline(rewards)).view(k)
        loss = policy_gradient_loss(dist.log_prob(tokens), torch.ones(k, steps, dtype=torch.bool), advantages)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = torch.softmax(logits.detach(), -1)[:, liked]
    assert (after > before + 0.2).all(), (before, after)


def test_forced_tokens_get_no_gradient():
    token_logprobs = torch.log(torch.full((2, 3), 0.5)).requires_grad_()
    scored = torch.tensor([[True, False, True], [False, False, True]])
    loss = policy_gradient_loss(token_logprobs, scored, torch.tensor([1.0, -2.0]))
    loss.backward()
    assert torch.equal(token_logprobs.grad[~scored], torch.zeros(3))
    assert torch.equal(token_logprobs.grad[scored], torch.tensor([-0.5, -0.5, 1.0]))
    assert loss.item() == pytest.approx(-(1.0 * 2 * math.log(0.5) - 2.0 * math.log(0.5)) / 2)
