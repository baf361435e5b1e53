"""Self-critical sequence training (Rennie et al., 2017): the reward and the policy-gradient loss.

The reward of a sampled caption is a weighted sum of named parts, each returned on its own so it can
be logged:
- `cider`: CIDEr-D against the image's references, document frequencies from the training split
  (a few samples cannot be their own corpus: alone, every n-gram's idf would be log(1/1) = 0);
- `quote`: 1 - quote CER against the references' quote, or against the OCR text when no reference
  quotes anything (a meme without a reference quote but with OCR text still has text to copy);
  0 where neither exists, so the part never rewards an invented quote;
- `length`: minus the share of words beyond `max_words` (0 when within it);
- `brevity`: minus the share of a reference's words the caption falls short of (the reference
  closest in length, as BLEU's brevity penalty takes it; 0 when as long): a caption that drops the
  description after the quote keeps most of its CIDEr-D and quote reward, and pays here;
- `repetition`: minus the share of repeated word bigrams (a sampled caption that loops scores < 0).

The loss is -(reward - baseline) x the sampled caption's log-probability, summed over the tokens the
model chose: tokens forced by quote copying (`scored_mask` False) are left out, since the model did
not sample them and their gradient would only push probability towards text it was made to write.
The baseline of a sample is the mean reward of the image's other samples (leave-one-out), or a
given reward per image (e.g. the greedy caption's).

An optional KL penalty (`scst.kl`) adds, per sampled caption, an estimate of its KL divergence from a
reference policy (the stage's starting weights) over the same chosen tokens.

Pure arithmetic: no model; torch only inside the functions that need tensors.
"""

from collections import Counter

from memecap.config.sections import REWARD_PARTS
from memecap.metrics.cider_score import cider_d_with_df, document_frequency
from memecap.metrics.quote_score import levenshtein, normalize_quote, quoted_text
from memecap.metrics.tokenization import tokenize



class CiderDReward:
    """CIDEr-D of captions against their references, with the training split's document frequencies."""

    def __init__(self, training_references: list[list[str]]):
        if not training_references:
            raise ValueError("CIDEr-D reward: the training split has no references to count n-grams in")
        self.df = document_frequency([[tokenize(r) for r in refs] for refs in training_references])
        self.n_documents = len(training_references)

    def __call__(self, captions: list[str], references: list[list[str]]) -> list[float]:
        refs = [[tokenize(r) for r in rs] for rs in references]
        return cider_d_with_df([tokenize(c) for c in captions], refs, self.df, self.n_documents)


def quote_reward(caption: str, references: list[str], ocr_text: str = "") -> float:
    """1 - the best capped quote CER against the references' quotes (or the OCR text if none quotes)."""
    targets = [q for q in (quoted_text(r) for r in references) if q]
    if not targets and ocr_text.strip():
        targets = [normalize_quote(ocr_text)]
    if not targets:
        return 0.0
    quote = quoted_text(caption)
    return 1.0 - min(min(1.0, levenshtein(quote, t) / len(t)) for t in targets)


def length_penalty(caption: str, max_words: int) -> float:
    words = len(caption.split())
    return -max(0, words - max_words) / max(1, words)


def brevity_penalty(caption: str, references: list[str]) -> float:
    words = len(tokenize(caption))
    lengths = [len(tokenize(r)) for r in references]
    if not lengths:
        return 0.0
    closest = min(lengths, key=lambda n: (abs(n - words), n))
    return -max(0, closest - words) / max(1, closest)


def repetition_penalty(caption: str) -> float:
    words = tokenize(caption)
    bigrams = Counter(zip(words, words[1:]))
    total = sum(bigrams.values())
    return -sum(c - 1 for c in bigrams.values()) / total if total else 0.0


def caption_rewards(captions: list[str], references: list[list[str]], ocr_texts: list[str],
                    cider: CiderDReward, weights) -> dict[str, list[float]]:
    """Per caption: each part (unweighted) and `reward`, their weighted sum (`weights`: the `scst` config
    section, one weight per part and `max_words`)."""
    if not len(captions) == len(references) == len(ocr_texts):
        raise ValueError(f"{len(captions)} captions, {len(references)} reference lists, {len(ocr_texts)} OCR texts")
    parts = {
        "cider": cider(captions, references) if weights.cider else [0.0] * len(captions),
        "quote": [quote_reward(c, r, o) for c, r, o in zip(captions, references, ocr_texts)],
        "length": [length_penalty(c, weights.max_words) for c in captions],
        "brevity": [brevity_penalty(c, r) for c, r in zip(captions, references)],
        "repetition": [repetition_penalty(c) for c in captions],
    }
    parts["reward"] = [sum(getattr(weights, name) * parts[name][i] for name in REWARD_PARTS)
                       for i in range(len(captions))]
    return parts


def leave_one_out_baseline(rewards):
    """[images, K] rewards -> per sample, the mean reward of the image's other K - 1 samples."""
    k = rewards.shape[1]
    if k < 2:
        raise ValueError("the leave-one-out baseline needs at least 2 samples per image (scst.samples)")
    return (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)


def policy_gradient_loss(token_logprobs, scored_mask, advantages):
    """Mean over samples of -(advantage) x the sum of the log-probabilities of the sampled tokens.

    token_logprobs: [N, T] log-probability of each sampled token (under grad); scored_mask: [N, T]
    True where the model chose the token (False for padding and for tokens forced by quote copying);
    advantages: [N] reward - baseline, held constant.
    """
    sequence_logprob = (token_logprobs * scored_mask.to(token_logprobs.dtype)).sum(dim=1)
    return -(advantages.detach().to(sequence_logprob.dtype) * sequence_logprob).mean()


def kl_to_reference(token_logprobs, reference_logprobs, scored_mask):
    """Per sampled caption, the sum over its chosen tokens of exp(r - p) - (r - p) - 1, r and p the
    reference's and the policy's log-probabilities of the token: an estimate of KL(policy || reference)
    from samples of the policy that is never negative and 0 where the two agree (Schulman's k3), its
    gradient pulling p towards r."""
    delta = reference_logprobs.detach() - token_logprobs
    per_token = delta.exp() - delta - 1
    return (per_token * scored_mask.to(per_token.dtype)).sum(dim=1)
