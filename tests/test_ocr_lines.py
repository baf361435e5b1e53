"""The default OCR engine (detect_tesseract) on drawn memes: detected lines read one by one, in a
person's reading order; an image without text, a huge one, an unreadable one; its cache."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from memecap.config import OcrConfig
from memecap.metrics.quote_score import normalize_quote
from memecap.ocr import LineEngine, read_texts, read_words
from memecap.ocr.line_engine import MAX_SIDE
from memecap.ocr.order import reading_order
from tests.ocr_images import cer
from tests.ocr_scenes import SCENES, make_scenes, photo_noise

MAX_CER = 0.1


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    drawn = make_scenes(root / "images")
    paths = [path for path, _ in drawn.values()]
    texts = read_texts(paths, OcrConfig(workers=2), cache_dir=root / "cache", progress=False)
    return {"root": root, "drawn": drawn, "texts": dict(zip(drawn, texts)), "paths": paths}


@pytest.mark.parametrize("name", list(SCENES))
def test_reads_each_scene_in_reading_order(scenes, name):
    text, lines = scenes["texts"][name], scenes["drawn"][name][1]
    assert cer(text, " ".join(lines)) <= MAX_CER, (name, text)
    # Each line where a person reads it: every line is found whole, after the one before it.
    low, at = normalize_quote(text), 0
    for line in lines:
        found = low.find(normalize_quote(line), at)
        assert found >= 0, (name, line, text)
        at = found + len(normalize_quote(line))


def test_the_whole_page_reading_gets_columns_and_panels_out_of_order(scenes):
    """The older engine (still selectable) reads the same lines row by row across columns and
    panels; the default engine reads each column and panel whole."""
    assert OcrConfig().engine == "detect_tesseract"
    paths = [scenes["drawn"][name][0] for name in ("two_columns", "two_panels")]
    page = read_texts(paths, OcrConfig(engine="tesseract", workers=1), progress=False)
    for text, name in zip(page, ("two_columns", "two_panels")):
        expected = " ".join(scenes["drawn"][name][1])
        assert sorted(normalize_quote(text).split()) == sorted(normalize_quote(expected).split())  # same words ...
        assert normalize_quote(text) != normalize_quote(expected)  # ... in another order
        assert normalize_quote(scenes["texts"][name]) == normalize_quote(expected)


def test_reading_order_of_boxes():
    def box(x0, y0, x1, y1):
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)

    columns = [box(10, 10 + 40 * i, 200, 40 + 40 * i) for i in range(3)] + \
              [box(300, 10 + 40 * i, 500, 40 + 40 * i) for i in range(3)]
    assert reading_order(columns[::-1]) == [5, 4, 3, 2, 1, 0]  # left column down, then the right one
    grid = [box(px + 20, py + 20 + 40 * i, px + 300, py + 50 + 40 * i)
            for px, py in ((0, 0), (400, 0), (0, 400), (400, 400)) for i in range(2)]
    assert reading_order(grid[::-1]) == list(range(8))[::-1]  # panels row by row, each panel whole
    title = [box(10, 10, 500, 40), box(10, 80, 200, 110), box(300, 80, 500, 110), box(10, 120, 200, 150)]
    assert reading_order(title) == [0, 1, 3, 2]  # a full-width title, then the columns
    assert reading_order([]) == []


def test_no_text_gives_an_empty_reading(tmp_path):
    blank, noise = tmp_path / "blank.png", tmp_path / "noise.jpg"
    Image.new("RGB", (400, 300), (200, 180, 150)).save(blank)
    photo_noise(400, 300, seed=3).save(noise, quality=90)
    assert read_texts([blank, noise], OcrConfig(workers=1), progress=False) == ["", ""]


def test_a_huge_image_is_read_at_a_bounded_size(scenes, monkeypatch):
    engine = LineEngine(["rus", "eng"])
    seen = []
    detect = engine.detector.boxes
    monkeypatch.setattr(engine.detector, "boxes", lambda rgb: seen.append(rgb.shape) or detect(rgb))
    image = Image.open(scenes["drawn"]["light_on_dark"][0]).convert("RGB")
    huge = image.resize((image.width * 8, image.height * 8))
    words = engine.read(huge)
    assert max(seen[0][:2]) == MAX_SIDE
    assert cer(" ".join(w.text for w in words), "Никто не пишет а ты всё ждёшь") <= MAX_CER


def test_an_unreadable_image_is_an_error_naming_it(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(Exception, match="broken.jpg"):
        read_texts([broken], OcrConfig(workers=1), progress=False)


def test_cache_hit_and_invalidation(scenes, monkeypatch):
    cache_dir = scenes["root"] / "cache"
    words, cache = read_words(scenes["paths"], OcrConfig(), cache_dir=cache_dir, progress=False)
    assert (cache.hits, cache.misses) == (len(scenes["paths"]), 0)  # the fixture's pool run filled it
    # Cleaning and the threshold apply after the cache: nothing is read again.
    _, cache = read_words(scenes["paths"], OcrConfig(cleaning=[], min_confidence=80), cache_dir=cache_dir,
                          progress=False)
    assert cache.misses == 0
    # A new engine version, another language list: another key, read again.
    monkeypatch.setattr(LineEngine, "VERSION", LineEngine.VERSION + 1)
    _, cache = read_words(scenes["paths"][:1], OcrConfig(workers=1), cache_dir=cache_dir, progress=False)
    assert (cache.hits, cache.misses) == (0, 1)
    monkeypatch.undo()
    _, cache = read_words(scenes["paths"][:1], OcrConfig(languages=["rus"], workers=1), cache_dir=cache_dir,
                          progress=False)
    assert (cache.hits, cache.misses) == (0, 1)
    assert LineEngine(["rus", "eng"]).signature() != LineEngine(["rus"]).signature()
