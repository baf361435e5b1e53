"""Script repair: Tesseract reading Russian and English at once puts Latin look-alikes inside
Russian words on noisy backgrounds (`HE` for `НЕ`, `пpивет` with a Latin `p`), and the reverse in
English words. A word is rewritten in the script most of its letters are in; a word made only of
look-alikes follows its line's script."""
from __future__ import annotations

import re

# Latin letter -> the Cyrillic letter printed the same way (upper and lower case apart: Latin `m`,
# `n`, `r`, `u` have no printed twin; Cyrillic `т` and `п` have none in lower case).
LATIN_TO_CYRILLIC = {
    "A": "А", "B": "В", "C": "С", "E": "Е", "H": "Н", "K": "К", "M": "М", "O": "О", "P": "Р", "T": "Т",
    "X": "Х", "Y": "У", "a": "а", "c": "с", "e": "е", "o": "о", "p": "р", "x": "х", "y": "у", "k": "к",
}
CYRILLIC_TO_LATIN = {cyr: lat for lat, cyr in LATIN_TO_CYRILLIC.items()}
_WORD = re.compile(r"[^\W\d_]+")


def is_cyrillic(ch: str) -> bool:
    return "\u0400" <= ch <= "\u04ff"


def is_latin(ch: str) -> bool:
    return ch.isascii() and ch.isalpha()


def script_counts(text: str) -> tuple[int, int]:
    """(Cyrillic letters, Latin letters) of `text`."""
    return sum(map(is_cyrillic, text)), sum(map(is_latin, text))


def _rewrite(word: str, table: dict) -> str:
    return "".join(table.get(ch, ch) for ch in word)


def repair_word(word: str, line_script: str) -> str:
    """`word` (letters only) in one script where its look-alikes allow.

    Mixed words go to the script of most of their letters (a tie goes to the line's); a word whose
    letters are all look-alikes of the other script (`HE`, `TAK`, `cop`) goes to the line's script.
    Letters with no twin are never changed, so a truly mixed word keeps them.
    """
    cyr, lat = script_counts(word)
    if cyr and lat:
        target = "cyr" if cyr > lat or (cyr == lat and line_script == "cyr") else "lat"
    elif lat and line_script == "cyr" and all(ch in LATIN_TO_CYRILLIC for ch in word):
        target = "cyr"
    elif cyr and line_script == "lat" and all(ch in CYRILLIC_TO_LATIN for ch in word):
        target = "lat"
    else:
        return word
    return _rewrite(word, LATIN_TO_CYRILLIC if target == "cyr" else CYRILLIC_TO_LATIN)


def line_script(text: str) -> str:
    """"cyr" or "lat": the script of most of the line's letters that are not look-alikes (all its
    letters when every one is a look-alike); "cyr" on a tie, as the memes are Russian."""
    distinct = [ch for ch in text if ch.isalpha() and ch not in LATIN_TO_CYRILLIC and ch not in CYRILLIC_TO_LATIN]
    cyr, lat = script_counts("".join(distinct) or text)
    return "lat" if lat > cyr else "cyr"


def repair_line(text: str) -> str:
    """Every word of a line repaired against the line's script (punctuation and digits untouched)."""
    script = line_script(text)
    return _WORD.sub(lambda m: repair_word(m.group(0), script), text)


def repair_words(words: list[str]) -> list[str]:
    """The words of one line, each repaired against the line's script."""
    script = line_script(" ".join(words))
    return [_WORD.sub(lambda m: repair_word(m.group(0), script), w) for w in words]
