"""Reading the text written on memes (OCR): pluggable engines, cleaning, a per-image cache.

    texts = read_texts(paths, cfg.model.ocr, cache_dir="~/.cache/memecap/features/ocr")

The default engine (`detect_tesseract`, line_engine.py) finds the text lines with PP-OCR's
detector (Python: rapidocr, onnxruntime) and reads each with Tesseract in-process (tesserocr;
Debian: tesseract-ocr-rus, tesseract-ocr-eng), checking Russian words with pymorphy3's dictionary;
`tesseract` is the older whole-page reading (pytesseract, the tesseract binary). Nothing here is
imported by memecap until OCR is used, so the package works without them; using OCR without
them raises `OcrUnavailable` naming what to install.
"""
from memecap.ocr.cache import OcrCache
from memecap.ocr.cleaning import clean_text
from memecap.ocr.engines import ENGINES, OcrUnavailable, TesseractEngine, Word, build_engine
from memecap.ocr.line_engine import LineEngine
from memecap.ocr.run import read_texts, read_words

__all__ = ["ENGINES", "LineEngine", "OcrCache", "OcrUnavailable", "TesseractEngine", "Word", "build_engine",
           "clean_text", "read_texts", "read_words"]
