"""A Russian word check (pymorphy3's dictionary of OpenCorpora, inflected forms included): the
share of a reading's letters that stand in real Russian words tells a reading from noise that
Tesseract was confident about (a texture read as `ииии`, a face read as `@ьл`)."""
from __future__ import annotations

import re

PYMORPHY_INSTALL = "pip install 'pymorphy3==2.0.6' 'pymorphy3-dicts-ru==2.4.417150.4580142'"
MIN_WORD = 3  # shorter words are too often "known" by chance (`пр`, `ыы` are in the dictionary)
_CYRILLIC_WORD = re.compile(r"[а-яё]+")

_ANALYZER = None


def _analyzer():
    global _ANALYZER
    if _ANALYZER is None:
        import pymorphy3

        _ANALYZER = pymorphy3.MorphAnalyzer(lang="ru")
    return _ANALYZER


def version() -> str:
    from importlib.metadata import version as package_version

    return f"pymorphy3-{package_version('pymorphy3')}|dicts-{package_version('pymorphy3-dicts-ru')}"


def known_letters(text: str) -> tuple[int, int]:
    """(letters in known Russian words, letters in Russian words) over the words of MIN_WORD+ letters."""
    known = total = 0
    morph = _analyzer()
    for word in _CYRILLIC_WORD.findall(text.lower()):
        if len(word) >= MIN_WORD:
            total += len(word)
            known += len(word) if morph.word_is_known(word) else 0
    return known, total
