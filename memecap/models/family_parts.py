"""What the model families do alike, written once: a caption's ids ending with the end token, the
loss over caption tokens (and which logits it needs), captions grouped per image, the parameters
that train, and the quote-copy processor (generation.quote=copy) over a family's tokenizer."""
from __future__ import annotations

import inspect
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from memecap.data.captions import CaptionTooLong
from memecap.models.lora import base_model
from memecap.models.vocab_log_probs import label_log_probs

IGNORED = -100  # the label of a position that is not scored: prompts, image slots, padding


def ended_caption(ids: list[int], eos_id: int, max_tokens: int, truncate: bool) -> list[int]:
    """A caption's token ids with the end token last, at most `max_tokens` in all: cut to fit, or
    CaptionTooLong when `truncate` is false and they do not fit."""
    if not truncate and len(ids) + 1 > max_tokens:
        raise CaptionTooLong(len(ids) + 1, max_tokens)
    return ids[: max_tokens - 1] + [eos_id]


def caption_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """`{"loss", "num_tokens", "token_log_probs", "token_scored"}` as models/protocol.py defines
    them: the cross-entropy summed over the scored labels (not IGNORED), divided by how many there
    are, each label's log-probability (0 where not scored) and where the labels are scored.
    `logits[:, t]` predicts `labels[:, t]`; they are scored in fp32 whatever the model computes in."""
    num_tokens = (labels != IGNORED).sum()
    per_token = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                ignore_index=IGNORED, reduction="none").view(labels.shape)
    return {"loss": per_token.sum() / num_tokens.clamp(min=1), "num_tokens": num_tokens, "token_log_probs": -per_token,
            "token_scored": labels != IGNORED}


def without_unscored(labels: torch.Tensor, unscored: Optional[torch.Tensor]) -> torch.Tensor:
    """`labels` ([rows, positions], each caption's tokens in order, IGNORED elsewhere) with the caption
    tokens that `unscored` ([rows, caption tokens], in the same order; a batch's optional "unscored")
    marks made IGNORED too: the tokens an objective leaves out of the log-probability (models/protocol.py)."""
    if unscored is None:
        return labels
    labels = labels.clone()
    for row in range(labels.shape[0]):
        positions = (labels[row] != IGNORED).nonzero().flatten()
        marks = unscored[row, :len(positions)].to(positions.device)
        labels[row, positions[:len(marks)][marks]] = IGNORED
    return labels


def scored_positions_loss(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module) -> dict:
    """`caption_loss` from hidden states, projected to the vocabulary only where a label is scored:
    `hidden[:, t]` predicts `labels[:, t]`. A batch's captions start after prompts of different
    lengths and end at different lengths, so a window of positions common to all rows holds other
    rows' prompts and padding; at a vocabulary of 150-260k words each projected position costs as
    much as a pass through the rest of the decoder, and its gradient as much again. A frozen projection
    keeps none of those logits for the backward (models/vocab_log_probs.py)."""
    scored = labels != IGNORED
    per_scored = -label_log_probs(hidden[scored], labels[scored], head)
    per_token = torch.zeros(labels.shape, dtype=per_scored.dtype, device=per_scored.device).masked_scatter(
        scored, per_scored)
    num_tokens = scored.sum()
    return {"loss": per_token.sum() / num_tokens.clamp(min=1), "num_tokens": num_tokens, "token_log_probs": -per_token,
            "token_scored": scored}


# transformers causal LMs whose logits are exactly their output projection of the body's last hidden
# state (checked against their forward in tests/test_scored_positions.py); Gemma's only while its
# logits are not soft-capped (Gemma 3 leaves them plain, Gemma 2 caps them).
PLAIN_HEADS = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma3_text")


def body_and_head(model: nn.Module) -> Optional[tuple[nn.Module, nn.Module]]:
    """(the transformer body, the output projection) of a transformers causal LM, or of the one in a
    PEFT wrapper, whose logits are nothing but that projection; None for any other, which is scored
    through its own forward."""
    lm = base_model(model)
    config = getattr(lm, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEADS or getattr(config, "final_logit_softcapping", None):
        return None
    body, head = getattr(lm, lm.base_model_prefix, None), lm.get_output_embeddings()
    return (body, head) if isinstance(body, nn.Module) and isinstance(head, nn.Module) else None


def scored_tail(labels: torch.Tensor) -> int:
    """How many of the last logit positions a caption loss reads: from the one that predicts the
    batch's earliest scored label to the end, one more than the labels from there (labels are padded
    on the right, the prompt before them unscored). The prompt's logits would be thrown away, and at
    a vocabulary of 150-260k words they cost as much as the rest of the decoder's forward."""
    scored = (labels != IGNORED).any(dim=0).nonzero()
    first = int(scored[0]) if len(scored) else labels.shape[1]
    return labels.shape[1] - first + 1


def takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether `model` (or the model inside its PEFT wrapper) can compute only its last logits."""
    return "logits_to_keep" in inspect.signature(type(base_model(model)).forward).parameters


def per_image(texts: list[str], k: int) -> list[list[str]]:
    """Generated texts in image order, `k` per image, as lists of each image's `k`."""
    return [texts[i * k:(i + 1) * k] for i in range(len(texts) // k)]


def parameters_that_train(module: nn.Module) -> list[nn.Parameter]:
    """The optimizer's parameters: those that require a gradient."""
    return [p for p in module.parameters() if p.requires_grad]


class QuoteCopying:
    """generation.quote=copy for one model (memecap/quote_copy.py). The tokens that hold a quote mark
    are found on first use: one pass over the vocabulary per model."""

    def __init__(self) -> None:
        self._marks: Optional[tuple[dict[int, str], list[int]]] = None

    def processor(self, texts: Sequence[str], *, vocab_size: int, token_text: Callable[[int], str],
                  encode: Callable[[str], list[int]], start: int = 0):
        """The processor forcing each text's tokens (`encode`: as the model writes words after a
        quote mark) after an opening quote mark; `token_text` names a token id of the vocabulary."""
        from memecap.quote_copy import quote_mark_tokens, quote_processor

        if self._marks is None:
            self._marks = quote_mark_tokens(vocab_size, token_text)
        openers, stray = self._marks
        return quote_processor(texts, encode, openers, start=start, stray=stray)

    def with_tokenizer(self, tokenizer, texts: Sequence[str], start: int = 0):
        """`processor` over a transformers tokenizer."""
        return self.processor(texts, vocab_size=len(tokenizer), token_text=lambda i: tokenizer.decode([i]),
                              encode=lambda t: tokenizer(t, add_special_tokens=False)["input_ids"], start=start)
