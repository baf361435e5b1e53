"""Tesseract in-process (tesserocr): one API object per language and page mode, reused for every
line of every image a process reads. pytesseract starts a `tesseract` process per call, which
costs more than reading a short line (docs/benchmarks.md)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from PIL import Image

TESSDATA_DIRS = ("/usr/share/tesseract-ocr/5/tessdata", "/usr/share/tesseract-ocr/4.00/tessdata",
                 "/usr/share/tessdata", "/usr/local/share/tessdata")
TESSEROCR_INSTALL = "pip install 'tesserocr==2.13.0'"


def tessdata_dir() -> Optional[str]:
    """Where Tesseract's language data is: $TESSDATA_PREFIX, else Debian's and the usual places."""
    candidates = [os.environ["TESSDATA_PREFIX"]] if os.environ.get("TESSDATA_PREFIX") else []
    for folder in candidates + list(TESSDATA_DIRS):
        if (Path(folder) / "eng.traineddata").exists() or (Path(folder) / "rus.traineddata").exists():
            return folder
    return None


def quiet_leptonica() -> None:
    """Leptonica (Tesseract's image library) prints `Error in boxClipToRectangle` and the like on
    stderr for boxes it clips and recovers from; the user sees our messages, not those. Its
    message level is a process-wide setting of the copy tesserocr loaded, found by name."""
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "libleptonica" in line.rsplit("/", 1)[-1]}
    except OSError:  # not Linux: the messages stay
        return
    for path in paths:
        try:
            ctypes.CDLL(path).setMsgSeverity(6)  # L_SEVERITY_NONE
        except (OSError, AttributeError):
            continue


class Recognizer:
    """Words with confidences (0-100) and line numbers from Tesseract, per language and page mode."""

    def __init__(self):
        self._apis: dict = {}

    @staticmethod
    def version() -> str:
        import tesserocr

        return f"tesserocr-{tesserocr.__version__}|{tesserocr.tesseract_version().splitlines()[0]}"

    def _api(self, lang: str, psm: int):
        if (lang, psm) not in self._apis:
            from tesserocr import OEM, PyTessBaseAPI

            quiet_leptonica()
            api = PyTessBaseAPI(path=tessdata_dir(), lang=lang, psm=psm, oem=OEM.LSTM_ONLY)
            # Crops carry no resolution; without one Tesseract guesses it and says so on stderr.
            api.SetVariable("user_defined_dpi", "300")
            api.SetVariable("debug_file", os.devnull)
            self._apis[lang, psm] = api
        return self._apis[lang, psm]

    def words(self, image: Image.Image, lang: str, psm: int) -> list[tuple[str, float, int]]:
        """(text, confidence, line) of each word Tesseract reads, lines numbered in its order."""
        from tesserocr import RIL, iterate_level

        api = self._api(lang, psm)
        api.SetImage(image)
        api.Recognize()
        out, line = [], -1
        iterator = api.GetIterator()
        if iterator is None:
            return out
        for word in iterate_level(iterator, RIL.WORD):
            if word.IsAtBeginningOf(RIL.TEXTLINE):
                line += 1
            try:
                text = word.GetUTF8Text(RIL.WORD)
            except RuntimeError:  # an empty block (a picture region) has no text to return
                continue
            if text and text.strip():
                out.append((text.strip(), float(word.Confidence(RIL.WORD)), max(line, 0)))
        return out
