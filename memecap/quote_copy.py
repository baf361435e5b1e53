"""Faithful quotes (`generation.quote=copy`): once the decoder has just written an opening quote
mark, the meme's OCR text is forced token by token, then the closing mark; then decoding is free
again, except that no second quote is opened. A quote mark is written freely only by a token that
ends with an opening mark (it starts the copy): tokens holding a mark elsewhere (`".`, `",`) would
open or close a quote the copy never sees, and a reward that ignores a caption's tail teaches a
sampler to write them there. The quote is then exactly what the OCR read, once, never invented.

It is a transformers `LogitsProcessor`, so ClipCap's `generate` (greedy, beam, sample) and the
hand-written loops that use `memecap.generation.logits_processors` (RuDOLPH's) share it. Where each
row stands is read from its own token ids at every step, never from a count of calls: under beam
search a row's history is replaced by another beam's when beams are reordered.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from transformers.generation.logits_process import LogitsProcessor

# Opening mark -> its closing mark (as memecap.metrics.quote reads quotes).
QUOTE_PAIRS = {'"': '"', "«": "»", "“": "”", "„": "“"}
_MARKS = str.maketrans("", "", '"«»“”„')


def quote_text(text: str) -> str:
    """The OCR text as it is copied: without quote marks, which would end the quote early."""
    return " ".join(text.translate(_MARKS).split())


def quote_mark_tokens(vocab_size: int, decode: Callable[[int], str]) -> tuple[dict[int, str], list[int]]:
    """(Token id -> the closing mark it calls for, for every token whose text ends with an opening mark:
    `"`, ` "`, `:"`, `«`, ...; the other tokens whose text holds a quote mark: `".`, `»`, ...)."""
    openers, stray = {}, []
    for token in range(vocab_size):
        text = decode(token).rstrip()
        if text and text[-1] in QUOTE_PAIRS:
            openers[token] = QUOTE_PAIRS[text[-1]]
        elif text.translate(_MARKS) != text:
            stray.append(token)
    return openers, stray


class QuoteCopyProcessor(LogitsProcessor):
    """Forces, per batch item, `quotes[item]` then the closing mark's tokens after an opening mark.

    `quotes`: the token ids of each item's OCR text; rows of `input_ids` are items in order, each
    repeated for its beams or returned sequences (row // (rows / items) is the item). `openers`: the
    opening-mark tokens and their closing marks; `closers`: closing mark -> its token ids. `start`:
    how many leading ids of `input_ids` are not generated (a prompt the loop passes in). `stray`: the
    other tokens holding a quote mark, never written freely.
    """

    def __init__(self, quotes: Sequence[Sequence[int]], openers: dict[int, str], closers: dict[str, list[int]],
                 start: int = 0, stray: Sequence[int] = ()):
        self.quotes = [list(q) for q in quotes]
        self.openers, self.closers, self.start = openers, closers, start
        self.stray_ids = torch.tensor(sorted(stray), dtype=torch.long)
        # Banned once a row has copied: the openers too.
        self.marked_ids = torch.tensor(sorted({*openers, *stray}), dtype=torch.long)

    def forced_token(self, item: int, generated: list[int]) -> tuple[int | None, bool]:
        """(The token this row must write next, or None when it decodes freely; whether the row
        has copied the quote already). The row's ids are replayed from the start: an opening mark
        starts a copy, which lasts for the quote's tokens and the closing mark's, whatever those
        tokens are (a closing `"` does not open another)."""
        pending: list[int] = []
        copied = False
        for token in generated:
            if pending:
                # A row that left the copy (cut by a length limit) is free.
                pending = pending[1:] if token == pending[0] else []
                copied = copied or not pending
            elif token in self.openers:
                pending = self.quotes[item] + self.closers[self.openers[token]]
        return (pending[0] if pending else None), copied

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        per_item = max(input_ids.shape[0] // max(len(self.quotes), 1), 1)
        for row, ids in enumerate(input_ids[:, self.start:].tolist()):
            token, copied = self.forced_token(row // per_item, ids)
            if token is not None:
                scores[row] = float("-inf")
                scores[row, token] = 0.0
            elif copied:
                # The OCR text is the meme's whole text: a second quote could only repeat it or invent one.
                scores[row, self.marked_ids.to(scores.device)] = float("-inf")
            elif len(self.stray_ids):
                scores[row, self.stray_ids.to(scores.device)] = float("-inf")
        return scores


def quote_processor(texts: Sequence[str], encode: Callable[[str], list[int]], openers: dict[int, str],
                    start: int = 0, stray: Sequence[int] = ()) -> QuoteCopyProcessor:
    """The processor copying each item's OCR text (`texts`), with `encode` the model's tokenizer
    (text -> ids, as the model writes words after a quote mark)."""
    closers = {mark: encode(mark) for mark in set(openers.values())}
    return QuoteCopyProcessor([encode(quote_text(t)) if quote_text(t) else [] for t in texts], openers, closers, start,
                              stray)
