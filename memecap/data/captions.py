"""Captions -> token ids for training, with too-long captions handled on purpose.

Each model's `encode_caption(text, max_tokens, truncate=True)` knows its own limit (the smaller
of `max_tokens` and what the model can hold) and either cuts the caption, keeping the
end-of-text token last, or raises `CaptionTooLong`. `data.long_captions=reject` turns those
into one error that counts every caption over the limit, instead of training on cut text.
"""
from __future__ import annotations

from typing import Sequence


class CaptionTooLong(ValueError):
    """A caption that needs more tokens (end-of-text included) than the model takes."""

    def __init__(self, tokens: int, limit: int):
        self.tokens, self.limit = tokens, limit
        super().__init__(f"caption needs {tokens} tokens (end-of-text included); the limit is {limit}")


def encode_captions(model, examples: Sequence, max_tokens: int, policy: str, split: str
                    ) -> tuple[list[list[int]], list[int]]:
    """Token ids of every caption of `examples` and the index of the example each belongs to."""
    ids, owners, too_long = [], [], []
    for i, ex in enumerate(examples):
        for caption in ex.captions:
            try:
                ids.append(model.encode_caption(caption, max_tokens, truncate=policy == "truncate"))
                owners.append(i)
            except CaptionTooLong as err:
                too_long.append((ex.uid, err))
    if too_long:
        limit = too_long[0][1].limit
        shown = ", ".join(f"{uid} ({err.tokens} tokens)" for uid, err in too_long[:5])
        raise ValueError(f"data.long_captions=reject: {len(too_long)} of {len(ids) + len(too_long)} {split} captions "
                         f"are longer than {limit} tokens: {shown}{' ...' if len(too_long) > 5 else ''}; shorten them, "
                         f"raise data.max_caption_tokens (up to the model's limit) or set data.long_captions=truncate")
    return ids, owners
