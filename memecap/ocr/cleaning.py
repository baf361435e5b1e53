"""From an engine's words to the text the model sees: one line, confident words, no noise lines."""
from __future__ import annotations

import re
from typing import Sequence

from memecap.ocr.engines import Word

MIN_LETTERS = 2  # a line with fewer letters is noise: "|", "©", "—", a stray digit or picture edge
_BROKEN_WORD = re.compile(r"\w[-\u00ad\u2010]$")  # a line ending in a word cut by a hyphen
_SPACES = re.compile(r"\s+")


def clean_text(words: Sequence[Word], min_confidence: float) -> str:
    """The text of a reading as one line.

    Words below `min_confidence` are dropped; then lines with fewer than two letters left are
    dropped as noise; the rest are joined with spaces in reading order, except that a word cut
    by a hyphen at a line's end is joined to its rest on the next line.
    """
    lines: dict[int, list[str]] = {}
    for word in words:
        if word.confidence >= min_confidence:
            lines.setdefault(word.line, []).append(word.text)
    kept = [" ".join(parts) for _, parts in sorted(lines.items())]
    kept = [line for line in kept if sum(ch.isalpha() for ch in line) >= MIN_LETTERS]
    text = ""
    for line in kept:
        if _BROKEN_WORD.search(text) and line[:1].isalpha():
            text = text[:-1] + line
        else:
            text = f"{text} {line}" if text else line
    return _SPACES.sub(" ", text).strip()
