"""From an engine's words to the text the model sees: one line of what a describer would quote.

Two steps. First, words below the confidence threshold and lines with fewer than two letters
(`|`, `©`, a picture's edge) are dropped. Then the rules of `RULES` remove what describers never
quote: each is a small function of one text line, named in `model.ocr.cleaning`, and each was
measured on the sample's memes (docs/benchmarks.md, `scripts/bench_ocr.py --cleaning`).
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

from memecap.ocr.base import Word

MIN_LETTERS = 2  # a line with fewer letters is noise: "|", "©", "—", a stray digit or picture edge
_BROKEN_WORD = re.compile(r"\w[-\u00ad\u2010]$")  # a line ending in a word cut by a hyphen
_SPACES = re.compile(r"\s+")
LEFTOVER_WORDS = 1  # a line a rule cut down to this many words is dropped whole

# @name handles (Twitter, VK, Telegram), optionally after a display name's separator.
_HANDLE = re.compile(r"(?<![\w@])@\S{2,}")
# Timestamps and dates of posts and comments: 19:21, 2 ноя в 19:19, 7 февр. 2018 г., 12.03.2021,
# вчера в 12:30, 5 мин назад.
_MONTH = r"(?:янв|фев|февр|мар|апр|ма[яй]|июн|июл|авг|сен|сент|окт|ноя|дек)[а-я]*\.?"
_TIMESTAMP = re.compile(
    r"(?:\b(?:сегодня|вчера)\s+в\s+)?\b\d{1,2}:\d{2}(?::\d{2})?(?:\s*(?:AM|PM|ам|пм))?\b"
    rf"|\b\d{{1,2}}\s+{_MONTH}(?:\s+\d{{4}}\s*(?:г\.?)?)?(?:\s+в\b)?"
    r"|\b\d{1,2}[./]\d{1,2}[./]\d{2,4}\b"
    r"|\b\d+\s+(?:сек|мин|ч|час|часа|часов|дн|дня|дней|нед)\.?\s+назад\b",
    re.IGNORECASE)
# Buttons and labels of the social-network pages memes are screenshots of.
_CHROME = re.compile(
    r"\bотметки\s+«?нравится»?|"
    r"\b(?:ответить|ответил[аи]?|поделиться|показать\s+полностью|показать\s+ещ[её]|читать|"
    r"комментировать|нравится|коснитесь\s+дважды.*|"
    r"reply|retweets?|likes?|подписаться|в\s+избранное|репост\w*)\b", re.IGNORECASE)
# Site names and web addresses: watermarks of meme pages.
_WATERMARK = re.compile(r"\b(?:https?://\S+|www\.\S+|(?:vk|t|instagram|fb|ok|twitter|youtube|tiktok|reddit|9gag|imgflip)"
                        r"\.(?:com|me|ru)\S*|[\w-]+\.(?:com|ru|net|org|рф)\b\S*)", re.IGNORECASE)


def drop_handles(line: str) -> str:
    """Usernames: `@name`. Describers quote what people wrote, never who wrote it."""
    return _HANDLE.sub(" ", line)


def drop_timestamps(line: str) -> str:
    """Times and dates of posts and comments (`2 ноя в 19:19`, `7 февр. 2018 г.`, `5 мин назад`)."""
    return _TIMESTAMP.sub(" ", line)


def drop_chrome(line: str) -> str:
    """Buttons and labels of the page: `Ответить`, `Нравится`, `Показать полностью`, `Читать`."""
    return _CHROME.sub(" ", line)


def drop_watermarks(line: str) -> str:
    """Web addresses and site names stamped on the picture (`vk.com/textmeme`, `9gag.com`)."""
    return _WATERMARK.sub(" ", line)


RULES: dict[str, Callable[[str], str]] = {
    "handles": drop_handles,
    "timestamps": drop_timestamps,
    "chrome": drop_chrome,
    "watermarks": drop_watermarks,
}


def clean_text(words: Sequence[Word], min_confidence: float, rules: Sequence[str] = tuple(RULES)) -> str:
    """The text of a reading as one line.

    Words below `min_confidence` are dropped; the cleaning `rules` apply to each line; then lines
    with fewer than two letters left are dropped as noise; the rest are joined with spaces in
    reading order, except that a word cut by a hyphen at a line's end is joined to its rest on
    the next line.
    """
    lines: dict[int, list[str]] = {}
    for word in words:
        if word.confidence >= min_confidence:
            lines.setdefault(word.line, []).append(word.text)
    kept = []
    for _, parts in sorted(lines.items()):
        line = " ".join(parts)
        for name in rules:
            cut = RULES[name](line)
            # What is left beside a handle or a button is the poster's name: `Ерлан ответил`.
            if cut != line and len(cut.split()) <= LEFTOVER_WORDS:
                cut = ""
            line = cut
        line = _SPACES.sub(" ", line).strip(" ,;|")
        if sum(ch.isalpha() for ch in line) >= MIN_LETTERS:
            kept.append(line)
    text = ""
    for line in kept:
        if _BROKEN_WORD.search(text) and line[:1].isalpha():
            text = text[:-1] + line
        else:
            text = f"{text} {line}" if text else line
    return _SPACES.sub(" ", text).strip()
