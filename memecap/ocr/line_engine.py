"""The default OCR engine: detect the text lines, then read each line alone with Tesseract.

A whole-page Tesseract reading (engines.TesseractEngine) misses text on photos, over busy
backgrounds, in speech bubbles and in comic panels. Here PP-OCR's detector (detection.py) finds
the line boxes; each line is cut out straight, scaled to a good text height and read as one line
(lines.py, recognize.py), in the order a person reads (order.py). Per line the candidates are its
two polarities and, when neither reads confidently, the mask of its white pixels (the reading
with the most confident words wins: light-on-dark captions read well inverted, outlined white
captions over a picture only as a mask) and, for a line whose Russian reading has few dictionary
words, the other languages (an English line read as Russian is `Ме еуегу тогптв`). Look-alike
letters are then put in their line's script (script.py). Each of these choices was measured on
the sample's memes (docs/benchmarks.md).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from memecap.ocr.base import OcrUnavailable, Word
from memecap.ocr.order import reading_order
from memecap.ocr.script import repair_words

MAX_SIDE = 1600  # a larger image is read scaled down to this longer side: bounded time and memory


class LineEngine:
    """Detected lines read one by one; `languages[0]` reads every line, the others re-read lines
    whose reading is not Russian words."""

    MIN_CONFIDENCE = 0.0  # the threshold clean_text applies when model.ocr.min_confidence is null
    LINE_PSM = 7  # Tesseract page mode "a single text line"
    MASK_BELOW = 85.0  # also read a line's white-pixel mask when neither polarity reads it with this mean confidence
    # re-read a line in the other languages when fewer of its letters are in known Russian words
    OTHER_LANGUAGE_BELOW = 0.5
    # ... or when its mean word confidence is lower (short Russian-looking words occur in English misread as Russian)
    OTHER_LANGUAGE_UNSURE = 75.0
    OTHER_LANGUAGE_MARGIN = 10.0  # ... and keep that reading when its mean word confidence is this much higher
    VERSION = 2  # bump when the reading changes, so cached readings are not reused

    def __init__(self, languages: list[str]):
        self.languages = list(languages)
        from memecap.ocr.detection import LineDetector
        from memecap.ocr.recognize import Recognizer

        self.detector, self.recognizer = LineDetector(), Recognizer()

    def check(self) -> None:
        from memecap.ocr.detection import RAPIDOCR_INSTALL
        from memecap.ocr.dictionary import PYMORPHY_INSTALL
        from memecap.ocr.recognize import TESSEROCR_INSTALL, tessdata_dir

        for module, install in (("rapidocr", RAPIDOCR_INSTALL), ("onnxruntime", RAPIDOCR_INSTALL),
                                ("tesserocr", TESSEROCR_INSTALL), ("pymorphy3", PYMORPHY_INSTALL)):
            try:
                __import__(module)
            except ImportError:
                raise OcrUnavailable(f"the detect_tesseract OCR engine needs the Python package {module}: "
                                     f"{install}   (or: bash scripts/setup.sh)") from None
        folder = tessdata_dir()
        if folder is None:
            raise OcrUnavailable("Tesseract's language data is not installed: sudo apt-get install -y "
                                 "tesseract-ocr-rus tesseract-ocr-eng   (or set TESSDATA_PREFIX)")
        import tesserocr

        missing = sorted(set(self.languages) - set(tesserocr.get_languages(folder)[1]))
        if missing:
            packages = " ".join(f"tesseract-ocr-{code}" for code in missing)
            raise OcrUnavailable(f"Tesseract has no data for language(s) {', '.join(missing)} in {folder}; "
                                 f"install it: sudo apt-get install -y {packages}")

    def signature(self) -> str:
        from memecap.ocr.dictionary import version as dictionary_version

        return (f"lines|{self.detector.version()}|{self.recognizer.version()}|{dictionary_version()}|"
                f"langs={'+'.join(self.languages)}|max_side={MAX_SIDE}|v{self.VERSION}")

    def read(self, image: Image.Image) -> list[Word]:
        image = bounded(image.convert("RGB"))
        rgb = np.asarray(image)
        quads = self.detector.boxes(rgb)
        words, line = [], 0
        for i in reading_order(quads):
            texts, confidences = self.read_line(rgb, quads[i])
            if texts:
                words += [Word(t, c, line) for t, c in zip(repair_words(texts), confidences)]
                line += 1
        return words

    def read_line(self, rgb: np.ndarray, quad: np.ndarray) -> tuple[list[str], list[float]]:
        """The words of one detected line and their confidences (empty when nothing is read)."""
        from memecap.ocr.dictionary import known_letters
        from memecap.ocr.lines import crop_line, dark_on_light, for_tesseract, white_mask

        crop = crop_line(rgb, quad)
        if crop.size == 0:
            return [], []
        upright = dark_on_light(np.asarray(Image.fromarray(crop).convert("L")))
        main = self.languages[0]
        images = [upright, 255 - upright]
        readings = [self.recognizer.words(for_tesseract(img), main, self.LINE_PSM) for img in images]
        if max(_mean_confidence(r) for r in readings) < self.MASK_BELOW:
            images.append(white_mask(crop))
            readings.append(self.recognizer.words(for_tesseract(images[-1]), main, self.LINE_PSM))
        choice = max(range(len(readings)), key=lambda k: _evidence(readings[k]))
        best = readings[choice]
        known, total = known_letters(" ".join(w[0] for w in best))
        if (total == 0 or known / total < self.OTHER_LANGUAGE_BELOW
                or _mean_confidence(best) < self.OTHER_LANGUAGE_UNSURE):
            image = for_tesseract(images[choice])
            for lang in self.languages[1:]:
                other = self.recognizer.words(image, lang, self.LINE_PSM)
                if _mean_confidence(other) > _mean_confidence(best) + self.OTHER_LANGUAGE_MARGIN:
                    best = other
        return [w[0] for w in best], [w[1] for w in best]


def bounded(image: Image.Image) -> Image.Image:
    """`image` scaled down so that its longer side is at most MAX_SIDE."""
    side = max(image.size)
    if side <= MAX_SIDE:
        return image
    scale = MAX_SIDE / side
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)


def _evidence(words) -> float:
    """How much confidently read text a reading holds: summed confidence of words of 2+ letters."""
    return sum(c for text, c, _ in words if sum(ch.isalpha() for ch in text) >= 2)


def _mean_confidence(words) -> float:
    confidences = [c for text, c, _ in words if any(ch.isalpha() for ch in text)]
    return sum(confidences) / len(confidences) if confidences else 0.0
