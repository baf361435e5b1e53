"""OCR engines: read the words written on an image, each with a confidence and its text line.

An engine is a class built from a list of language codes with three methods:
`signature()` (a string naming everything that changes its output: the engine's version,
languages, settings; it keys the OCR cache), `check()` (raise `OcrUnavailable` saying what to
install) and `read(image) -> list[Word]` (words in reading order), and a class attribute
`MIN_CONFIDENCE` (the word threshold used when `model.ocr.min_confidence` is null). `ENGINES` maps
short names to classes; `model.ocr.engine` may also be a dotted path (`mypkg.ocr.MyEngine`) to plug in another.
"""
from __future__ import annotations

import importlib
import os
import shutil

import numpy as np
from PIL import Image

from memecap.ocr.base import OcrUnavailable, Word
from memecap.ocr.line_engine import LineEngine

TESSERACT_INSTALL = "sudo apt-get install -y tesseract-ocr tesseract-ocr-rus   (or: bash scripts/system_packages.sh)"


class TesseractEngine:
    """Tesseract through pytesseract, with two readings of every image.

    Tesseract reads dark text on a light background well and, on photos, misses the classic
    meme caption: white letters with a dark outline over the picture. So each image is read
    twice, as it is (grayscale) and as a mask of its white, unsaturated pixels drawn black on
    white, and the reading with more confident words is kept. On the 100 validation memes of
    shared/data/memes-sample this cut the CER against the quoted text from 0.52 to 0.44
    (docs/benchmarks.md); reading the inverted image as well added nothing.
    """

    MIN_CONFIDENCE = 60.0  # the threshold clean_text applies when model.ocr.min_confidence is null
    PSM = 3  # fully automatic page segmentation: memes mix text blocks and pictures
    WHITE_LEVEL = 200  # darkest channel value of a "white" letter pixel
    WHITE_SPREAD = 40  # largest channel spread of a "white" letter pixel (unsaturated)
    VERSION = 1  # bump when the preprocessing changes, so cached readings are not reused

    def __init__(self, languages: list[str]):
        self.languages = list(languages)

    def _pytesseract(self):
        try:
            import pytesseract
        except ImportError:
            raise OcrUnavailable("the tesseract OCR engine needs the Python package pytesseract: "
                                 "pip install 'pytesseract>=0.3.10,<0.4'") from None
        return pytesseract

    def check(self) -> None:
        pytesseract = self._pytesseract()
        binary = pytesseract.pytesseract.tesseract_cmd
        if shutil.which(binary) is None:
            raise OcrUnavailable(f"OCR needs the `{binary}` binary (Tesseract), which is not on PATH; "
                                 f"install it: {TESSERACT_INSTALL}")
        missing = sorted(set(self.languages) - set(pytesseract.get_languages(config="")))
        if missing:
            packages = " ".join(f"tesseract-ocr-{code}" for code in missing)
            raise OcrUnavailable(f"Tesseract has no data for language(s) {', '.join(missing)}; "
                                 f"install it: sudo apt-get install -y {packages}")

    def signature(self) -> str:
        version = self._pytesseract().get_tesseract_version()
        return (f"tesseract-{version}|langs={'+'.join(self.languages)}|psm={self.PSM}|"
                f"white={self.WHITE_LEVEL},{self.WHITE_SPREAD}|v{self.VERSION}")

    def read(self, image: Image.Image) -> list[Word]:
        return max(self.readings(image), key=_evidence)

    def readings(self, image: Image.Image) -> tuple[list[Word], list[Word]]:
        """The grayscale reading and the white-text mask reading."""
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
        white = (rgb.min(axis=2) >= self.WHITE_LEVEL) & (np.ptp(rgb, axis=2) < self.WHITE_SPREAD)
        mask = Image.fromarray(np.where(white, 0, 255).astype(np.uint8))
        return self._words(image.convert("L")), self._words(mask)

    def _words(self, image: Image.Image) -> list[Word]:
        pytesseract = self._pytesseract()
        data = pytesseract.image_to_data(image, lang="+".join(self.languages), config=f"--psm {self.PSM}",
                                         output_type=pytesseract.Output.DICT)
        words, lines = [], {}
        for i, text in enumerate(data["text"]):
            confidence = float(data["conf"][i])
            if confidence < 0 or not text.strip():  # -1: a page/block/line record, not a word
                continue
            key = (data["page_num"][i], data["block_num"][i], data["par_num"][i], data["line_num"][i])
            words.append(Word(text.strip(), confidence, lines.setdefault(key, len(lines))))
        return words


def _evidence(words: list[Word]) -> float:
    """How much confidently read text a reading holds: summed confidence of words of 2+ letters."""
    return sum(w.confidence for w in words if sum(ch.isalpha() for ch in w.text) >= 2)


# detect_tesseract is the default (config.OcrConfig.engine); tesseract is the whole-page reading
# it replaced, kept selectable by name.
ENGINES = {"detect_tesseract": LineEngine, "tesseract": TesseractEngine}


def build_engine(name: str, languages: list[str]):
    """An engine by registry name or dotted path (`package.module.Class`)."""
    if name in ENGINES:
        return ENGINES[name](languages)
    if "." not in name:
        raise ValueError(f"model.ocr.engine={name!r}: known engines are {', '.join(ENGINES)}, "
                         "or give a dotted path to an engine class")
    module, _, attr = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"model.ocr.engine={name!r}: cannot import it ({err})") from err
    return cls(languages)


def limit_engine_threads() -> None:
    """Each OCR process reads one image at a time; Tesseract's own OpenMP threads on top of one
    process per core would only oversubscribe the cores."""
    os.environ["OMP_THREAD_LIMIT"] = "1"

