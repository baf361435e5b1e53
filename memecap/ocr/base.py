"""What every OCR engine returns, and the error it raises when its software is missing."""
from __future__ import annotations

from typing import NamedTuple


class OcrUnavailable(FileNotFoundError):
    """The OCR engine's program or its language data is not installed (the message says what to install)."""


class Word(NamedTuple):
    text: str
    confidence: float  # 0-100
    line: int  # index of its text line in reading order; words of one line share it
