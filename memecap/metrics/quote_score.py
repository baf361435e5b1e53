"""Quote CER: how well a caption quotes the meme's own text (the arithmetic behind `quote.py`).

Nearly every meme description quotes the text written on the meme, and that quote is most of its
words; BLEU and METEOR cannot tell a correct quote from an invented one of the same length. The
rules (each tested in tests/test_quote_metric.py):

- The quoted text of a caption is every outermost span between quote marks, in order, joined by
  a space. Pairs: "...", «...», “...”, „...“; quotes nest (`"«дни сочтены»"` is one span), an
  unclosed quote runs to the end of the caption. Whatever label precedes it (Подпись, Надпись,
  текст) does not matter.
- Both sides are normalised before comparing: quote marks inside a span removed, lower case,
  ё -> е, runs of whitespace -> one space. Describers re-type the text in their own case.
- Per example: character edit distance (Levenshtein) / length of the reference quote, capped at
  1.0, so one runaway prediction cannot outweigh many good ones. With several references, the
  best (lowest) one counts.
- A prediction without a quote (or with an empty one) scores 1.0 against a non-empty reference
  quote: nothing of the text was reproduced.
- An example whose references quote nothing (a meme without text) is left out of the average:
  there is no text to get wrong. If no example quotes anything, the score is 0.0.
- The score is the mean over the counted examples; lower is better (0 = every quote exact).

This file must not import other memecap files (`evaluate.load` copies it beside quote.py), nor
`evaluate` (see bleu_score.py).
"""

import re

# Opening mark -> its closing mark. „ closes with “, so “ opens only when no „ span is open.
QUOTE_PAIRS = {'"': '"', "«": "»", "“": "”", "„": "“"}
_QUOTE_MARKS = re.compile('["«»“”„]')
_SPACES = re.compile(r"\s+")


def quote_spans(text: str) -> list[str]:
    """The outermost quoted spans of `text`, in order (raw, inner quote marks kept)."""
    spans, closers, start = [], [], 0
    for i, ch in enumerate(text):
        if closers and ch == closers[-1]:
            closers.pop()
            if not closers:
                spans.append(text[start:i])
        elif ch in QUOTE_PAIRS:
            if not closers:
                start = i + 1
            closers.append(QUOTE_PAIRS[ch])
    if closers:  # an unclosed quote: the describer forgot the closing mark
        spans.append(text[start:])
    return spans


def normalize_quote(text: str) -> str:
    """Lower case, ё -> е, no quote marks, single spaces, stripped."""
    text = _QUOTE_MARKS.sub(" ", text).lower().replace("ё", "е")
    return _SPACES.sub(" ", text).strip()


def quoted_text(caption: str) -> str:
    """The normalised quoted text of a caption; "" when it quotes nothing."""
    return normalize_quote(" ".join(quote_spans(caption)))


def levenshtein(a: str, b: str) -> int:
    """Character edit distance (insertions, deletions, substitutions each cost 1).

    Bit-parallel (Myers 1999, in Hyyro's formulation for the global distance): the column of the
    dynamic-programming table for all of `a` is held as bit vectors of vertical +1/-1 steps in
    Python integers, so each character of `b` costs a few integer operations instead of len(a)
    Python steps. Quotes run to hundreds of characters and every evaluation scores all of them.
    """
    if len(a) < len(b):
        a, b = b, a  # shorter text as `b`: fewer loop turns
    if not b:
        return len(a)
    mask = (1 << len(a)) - 1
    top = 1 << (len(a) - 1)
    match: dict[str, int] = {}
    for i, ch in enumerate(a):
        match[ch] = match.get(ch, 0) | (1 << i)
    plus, minus, score = mask, 0, len(a)  # column 0: every step down is +1
    for ch in b:
        eq = match.get(ch, 0)
        xv = eq | minus
        xh = ((((eq & plus) + plus) & mask) ^ plus) | eq
        h_plus = minus | (~(xh | plus) & mask)
        h_minus = plus & xh
        if h_plus & top:
            score += 1
        elif h_minus & top:
            score -= 1
        # Row 0 grows by one per character of `b`: its horizontal step is +1, shifted in at bit 0.
        h_plus = ((h_plus << 1) | 1) & mask
        h_minus = (h_minus << 1) & mask
        plus = h_minus | (~(xv | h_plus) & mask)
        minus = h_plus & xv
    return score


def quote_cer(prediction: str, reference: str) -> float | None:
    """Capped CER of the prediction's quote against the reference's; None if the reference quotes nothing."""
    ref = quoted_text(reference)
    if not ref:
        return None
    return min(1.0, levenshtein(quoted_text(prediction), ref) / len(ref))


def text_cer(text: str, reference: str) -> float | None:
    """Capped CER of plain text (e.g. OCR output, not itself quoted) against the reference's quote."""
    ref = quoted_text(reference)
    if not ref:
        return None
    return min(1.0, levenshtein(normalize_quote(text), ref) / len(ref))


def mean_quote_cer(predictions: list[str], references: list[list[str]], quoted: bool = True) -> tuple[float, int]:
    """(mean capped CER over the examples whose references quote something, how many those are).

    `quoted=False` compares each prediction as a whole (plain OCR text) instead of its quote.
    """
    scores = [s for s in example_quote_cers(predictions, references, quoted) if s is not None]
    return (sum(scores) / len(scores) if scores else 0.0), len(scores)


def example_quote_cers(predictions: list[str], references: list[list[str]], quoted: bool = True) -> list[float | None]:
    """Each example's capped CER against its best reference; None where no reference quotes anything."""
    per_pair = quote_cer if quoted else text_cer
    scores = []
    for prediction, refs in zip(predictions, references):
        candidates = [s for s in (per_pair(prediction, r) for r in refs) if s is not None]
        scores.append(min(candidates) if candidates else None)
    return scores


def quote_scores(captions) -> dict[str, float]:
    """Quote CER of a `memecap.evaluation.ScoredCaptions`, for the metric registry: the raw captions,
    not word tokens, so both scorings agree."""
    return {"quote": float(mean_quote_cer(captions.predictions, captions.references)[0])}
