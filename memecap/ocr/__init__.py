"""Reading the text written on memes (OCR): pluggable engines, cleaning, a per-image cache.

    texts = read_texts(paths, cfg.model.ocr, cache_dir="~/.cache/memecap/features/ocr")

The default engine is Tesseract with Russian and English (Debian: tesseract-ocr,
tesseract-ocr-rus; Python: pytesseract). Nothing here is imported by memecap until OCR is
used, so the package works without Tesseract; using OCR without it raises `OcrUnavailable`
naming what to install.
"""
from memecap.ocr.cache import OcrCache
from memecap.ocr.cleaning import clean_text
from memecap.ocr.engines import ENGINES, OcrUnavailable, TesseractEngine, Word, build_engine
from memecap.ocr.run import read_texts, read_words

__all__ = ["ENGINES", "OcrCache", "OcrUnavailable", "TesseractEngine", "Word", "build_engine", "clean_text",
           "read_texts", "read_words"]
