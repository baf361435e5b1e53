"""OCR: Tesseract on generated images with known Cyrillic text, cleaning, the per-image cache,
pluggable engines, and clear errors without Tesseract."""
from __future__ import annotations

import ast
import importlib
import json
import os
import threading
import time
from pathlib import Path

import psutil
import pytest

import memecap
from memecap.config import OcrConfig
from memecap.data.fingerprint import image_digest
from memecap.ocr import run as ocr_run
from memecap.ocr import LineEngine, OcrUnavailable, TesseractEngine, Word, clean_text, read_texts, read_words
from tests.ocr_images import IMAGES, MAX_CER, cer


def test_tesseract_reads_cyrillic(text_images):
    for text, (_, lines, _) in zip(text_images["texts"], IMAGES):
        expected = " ".join(lines)
        assert cer(text, expected) <= MAX_CER, (text, expected)
        assert "\n" not in text


def test_the_white_caption_needs_the_mask_reading(text_images):
    """A plain grayscale reading loses most of a white outlined caption; the engine keeps the
    reading of its white-pixel mask, which has it all."""
    from memecap.data.images import load_rgb

    image = load_rgb(text_images["paths"][1])
    gray_only = clean_text(TesseractEngine(["rus", "eng"]).readings(image)[0], 60)
    assert cer(gray_only, "ТЫ ОПЯТЬ ПОВЕРИЛ") > 0.3
    assert cer(text_images["texts"][1], "ТЫ ОПЯТЬ ПОВЕРИЛ") <= MAX_CER


def test_cleaning_by_hand():
    words = [Word("Когда", 95, 0), Word("пятни-", 91, 0), Word("ца", 90, 1), Word("шум", 12, 1),
             Word("|", 80, 2), Word("©", 70, 3), Word("7", 88, 3),  # noise lines: fewer than two letters
             Word("а", 93, 4), Word("ты", 96, 4), Word("на", 40, 5), Word("работе", 97, 5)]
    assert clean_text(words, min_confidence=60) == "Когда пятница а ты работе"
    assert clean_text(words, min_confidence=30) == "Когда пятница а ты на работе"
    assert clean_text(words, min_confidence=10) == "Когда пятница шум а ты на работе"
    # A hyphen inside a line is kept; only a word broken at a line's end is rejoined.
    assert clean_text([Word("кто-то", 90, 0), Word("пришёл", 90, 0)], 60) == "кто-то пришёл"
    assert clean_text([Word("ой", 90, 0), Word("-", 90, 0), Word("всё", 90, 1)], 60) == "ой - всё"
    assert clean_text([], 60) == ""


def test_cache_hits_and_invalidation(text_images, tmp_path):
    paths, cache_dir = text_images["paths"], text_images["cache"] / "ocr"
    words, cache = read_words(paths, OcrConfig(), cache_dir=cache_dir, progress=False)
    assert (cache.hits, cache.misses) == (3, 0)  # the fixture's run filled it
    assert [clean_text(w, 60) for w in words] == text_images["texts"]
    # Cleaning settings apply after the cache: changing them reads nothing again.
    _, cache = read_words(paths, OcrConfig(min_confidence=90, max_tokens=8), cache_dir=cache_dir, progress=False)
    assert (cache.hits, cache.misses) == (3, 0)
    # Another engine setting (languages) is another key.
    _, cache = read_words(paths[:1], OcrConfig(languages=["rus"]), cache_dir=cache_dir, progress=False)
    assert (cache.hits, cache.misses) == (0, 1)
    # Changed image bytes miss; the others still hit.
    changed = tmp_path / "changed.jpg"
    changed.write_bytes(paths[0].read_bytes() + b"\0")
    _, cache = read_words([changed, paths[1]], OcrConfig(), cache_dir=cache_dir, progress=False)
    assert (cache.hits, cache.misses) == (1, 1)
    assert not list(cache.dir.rglob("*.tmp"))  # written atomically: no leftovers


class CountingEngine:
    """A plugged-in engine (by dotted path) that reads the image width and counts its calls."""

    calls = 0

    def __init__(self, languages):
        self.languages = languages

    def check(self):
        pass

    def signature(self):
        return "counting-v1"

    def read(self, image):
        CountingEngine.calls += 1
        return [Word(f"ширина{image.width}", 99.0, 0)]


def test_engine_by_dotted_path_runs_once_per_image(text_images, tmp_path):
    cfg = OcrConfig(engine="tests.test_ocr.CountingEngine", workers=1)
    plugged = importlib.import_module("tests.test_ocr").CountingEngine  # the class the dotted path loads
    plugged.calls = 0
    first = read_texts(text_images["paths"], cfg, cache_dir=tmp_path / "ocr", progress=False)
    again = read_texts(text_images["paths"], cfg, cache_dir=tmp_path / "ocr", progress=False)
    assert first == again == ["ширина760", "ширина560", "ширина760"]
    assert plugged.calls == 3
    with pytest.raises(ValueError, match="known engines are detect_tesseract, tesseract"):
        read_texts(text_images["paths"], OcrConfig(engine="easyocr"), progress=False)


class StuckInWorkersEngine(CountingEngine):
    """Reads in the command's own process; in a pool worker it blocks for good, as a worker
    forked while another thread of the command held a lock does."""

    def read(self, image):
        if os.getpid() != int(os.environ["MEMECAP_TEST_COMMAND_PID"]):
            threading.Event().wait()
        return super().read(image)


def test_a_stuck_pool_is_ended_and_its_images_read_here(text_images, monkeypatch, capsys):
    monkeypatch.setenv("MEMECAP_TEST_COMMAND_PID", str(os.getpid()))
    monkeypatch.setattr(ocr_run, "STALL_SECONDS", 3.0)
    cfg = OcrConfig(engine="tests.test_ocr.StuckInWorkersEngine", workers=2)
    before = set(psutil.Process().children(recursive=True))
    started = time.monotonic()
    texts = read_texts(text_images["paths"], cfg, progress=False)
    assert texts == ["ширина760", "ширина560", "ширина760"]
    assert time.monotonic() - started < 60
    assert ("the OCR workers read nothing for 3 s; reading the 3 image(s) left in this process"
            in capsys.readouterr().err)
    stuck = set(psutil.Process().children(recursive=True)) - before
    assert not [w for w in stuck if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


def test_damaged_cache_entries_are_read_again_and_said_once(text_images, tmp_path, caplog):
    """An empty, truncated, hand-edited or checksum-less OCR cache file is a miss: the image is read
    again, the entry overwritten, one line says how many, and the texts equal a clean run's (an
    empty file used to fail every later eval with "Expecting value")."""
    cfg = OcrConfig(engine="tests.test_ocr.CountingEngine", workers=1)
    plugged = importlib.import_module("tests.test_ocr").CountingEngine
    paths, cache_dir = text_images["paths"], tmp_path / "ocr"
    clean, cache = read_words(paths, cfg, cache_dir=cache_dir, progress=False)
    files = [cache._path(image_digest(p)) for p in paths]
    files[0].write_text("", encoding="utf-8")                                        # empty
    files[1].write_text(files[1].read_text(encoding="utf-8")[:15], encoding="utf-8")  # truncated
    edited = json.loads(files[2].read_text(encoding="utf-8"))
    edited["words"][0][0] = "подделка"                                               # edited text
    files[2].write_text(json.dumps(edited, ensure_ascii=False), encoding="utf-8")

    plugged.calls = 0
    caplog.clear()
    again, cache = read_words(paths, cfg, cache_dir=cache_dir, progress=False)
    assert again == clean and plugged.calls == 3 and (cache.hits, cache.misses) == (0, 3)
    said = [r.getMessage() for r in caplog.records if "damaged cache entries" in r.getMessage()]
    assert said == [f"3 damaged cache entries in {cache.dir} were recomputed"]

    # Overwritten in place: read from the cache from now on, in silence.
    caplog.clear()
    assert read_words(paths, cfg, cache_dir=cache_dir, progress=False)[0] == clean and plugged.calls == 3
    assert not [r for r in caplog.records if "damaged" in r.getMessage()]

    # An entry of an older memecap (no checksum) is read again once too.
    files[0].write_text(json.dumps({"words": [list(w) for w in clean[0]]}), encoding="utf-8")
    caplog.clear()
    assert read_words(paths, cfg, cache_dir=cache_dir, progress=False)[0] == clean and plugged.calls == 4
    assert "1 written by an older memecap without a checksum" in caplog.text


def test_missing_tesseract_is_a_clear_error(monkeypatch, text_images):
    import pytesseract

    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    with pytest.raises(OcrUnavailable,
                       match=r"/nonexistent/tesseract.*apt-get install -y tesseract-ocr tesseract-ocr-rus"):
        read_texts(text_images["paths"], OcrConfig(engine="tesseract"), progress=False)


def test_missing_language_names_its_package():
    with pytest.raises(OcrUnavailable, match="tesseract-ocr-xyz"):
        TesseractEngine(["rus", "xyz"]).check()
    with pytest.raises(OcrUnavailable, match="tesseract-ocr-xyz"):
        LineEngine(["rus", "xyz"]).check()


def test_missing_language_data_is_a_clear_error(monkeypatch, tmp_path, text_images):
    from memecap.ocr import recognize

    monkeypatch.setattr(recognize, "TESSDATA_DIRS", ())
    monkeypatch.setenv("TESSDATA_PREFIX", str(tmp_path))  # a folder without traineddata files
    with pytest.raises(OcrUnavailable, match="apt-get install -y tesseract-ocr-rus"):
        read_texts(text_images["paths"], OcrConfig(), progress=False)


def test_memecap_imports_without_the_ocr_stack():
    """Only using OCR loads it: no module imports pytesseract or memecap.ocr at its top level
    (outside memecap/ocr, where pytesseract is imported inside the engine's methods), so without
    Tesseract the package imports and the demo and the other recipes run."""
    package = Path(memecap.__file__).parent
    for path in package.rglob("*.py"):
        inside_ocr = path.parent.name == "ocr"
        for node in ast.parse(path.read_text(encoding="utf-8")).body:  # module level only
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "pytesseract" for n in names), path
            assert inside_ocr or not any(n.startswith("memecap.ocr") for n in names), path
