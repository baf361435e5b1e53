"""Tests for memecap.data: table formats, validation, image loading, transforms, synthetic data."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from memecap.data import synthetic
from memecap.data.images import ImageReadError, ImageTransform, load_rgb
from memecap.data.synthetic import make_synthetic_dataset
from memecap.data.tables import load_split, read_table
from memecap.data.validation import DataError

MEMES = Path("/work/shared/data")


def _jpeg(path: Path, colour=(200, 30, 30), size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")
    return path


def _table(tmp_path: Path, body: bytes, name="train.tsv", images=()) -> Path:
    for uid in images:
        _jpeg(tmp_path / "images" / f"{uid}.jpg")
    path = tmp_path / name
    path.write_bytes(body)
    return path


# ---- the meme TSV format -------------------------------------------------------------------

def test_tsv_ampersand_quoting_round_trip(tmp_path):
    tricky = 'tab\there, && amp, "quotes" & more'
    # Written by hand exactly as the original project's csv.writer(quotechar="&") wrote it.
    body = ('uid\ttext\n1\t&tab\there, &&&& amp, "quotes" && more&\n2\tПодпись: "привет"\n').encode()
    path = _table(tmp_path, body, images=[1, 2])
    examples, report = load_split(path, log=None)
    assert report.ok
    assert [e.captions for e in examples] == [('tab\there, && amp, "quotes" & more',), ('Подпись: "привет"',)]
    assert examples[0].image_path == tmp_path / "images" / "1.jpg"
    assert (examples[1].source, examples[1].line) == (str(path), 3)

    # A quoted field may span lines; the rows after it must keep their true line numbers.
    path.write_bytes(b"uid\ttext\n1\t&two\nlines&\n2\tnext\n")
    rows = read_table(path)
    assert [(r.line, r.captions) for r in rows] == [(2, ("two\nlines",)), (4, ("next",))]

    buf = io.StringIO()
    csv.writer(buf, delimiter="\t", quotechar="&", lineterminator="\n").writerows([("uid", "text"), ("1", tricky)])
    path.write_text(buf.getvalue(), encoding="utf-8")
    assert read_table(path)[0].captions == (tricky,)


def test_image_dir_override(tmp_path):
    _jpeg(tmp_path / "pics" / "5.jpg")
    path = _table(tmp_path, b"uid\ttext\n5\tcat\n")
    examples, _ = load_split(path, image_dir=tmp_path / "pics", log=None)
    assert examples[0].image_path == tmp_path / "pics" / "5.jpg"


@pytest.mark.skipif(not (MEMES / "memes-sample").is_dir(), reason="real meme sample not present")
def test_real_meme_sample():
    examples, report = load_split(MEMES / "memes-sample" / "train.tsv", log=None)
    assert len(examples) == 300 and report.ok
    assert sum('"' in e.captions[0] for e in examples) > 250  # straight quotes are literal text
    assert all(len(e.captions) == 1 and e.image_path.is_file() for e in examples)
    # The full caption file has the few &-quoted rows; their && must come back as a single &.
    rows = {r.uid: r for r in read_table(MEMES / "memes-captions-train.tsv")}
    assert len(rows) == 2548 and all(r.error is None for r in rows.values())
    assert "M&M's" in rows["624"].captions[0] and rows["624"].captions[0].endswith("Eminem")
    assert not any(c.startswith("&") for r in rows.values() for c in r.captions)


# ---- validation ----------------------------------------------------------------------------

def _bad_table(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    _jpeg(images / "3.jpg")
    (images / "3.jpg").write_bytes(b"this is not a jpeg")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, "JPEG")
    (images / "4.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])  # truncated
    body = (
        b"uid\ttext\n"
        b"1\tgood one\n"             # 2
        b"2\tno image\n"             # 3 missing image
        b"3\tcorrupt image\n"        # 4
        b"4\ttruncated image\n"      # 5
        b"5\t   \n"                  # 6 empty caption
        b"6\tbad \xff byte\n"        # 7 bad UTF-8
        b"1\tgood one\n"             # 8 duplicate of line 2
        b"7\tgood too\n"             # 9
    )
    return _table(tmp_path, body, images=[1, 5, 6, 7])


BAD_LINES = {3: "missing image", 4: "unreadable image", 5: "unreadable image", 6: "empty caption",
             7: "bad encoding", 8: "duplicate uid"}


def test_every_problem_is_found_and_raised(tmp_path):
    path = _bad_table(tmp_path)
    with pytest.raises(DataError) as err:
        load_split(path, log=None)
    problems = err.value.problems
    assert {p.line: p.kind for p in problems} == BAD_LINES
    message = str(err.value)
    for line in BAD_LINES:
        assert f"{path}:{line} " in message
    assert f"{path}:3 uid=2: image not found: {tmp_path / 'images' / '2.jpg'}" in message
    assert f"{path}:8 uid=1: duplicate row: same uid and caption as line 2" in message
    assert "byte 0xff" in message


def test_skip_drops_exactly_the_bad_rows(tmp_path):
    path = _bad_table(tmp_path)
    logged = []
    examples, report = load_split(path, on_bad_row="skip", log=logged.append)
    assert [(e.uid, e.line) for e in examples] == [("1", 2), ("7", 9)]
    assert examples[0].captions == ("good one",)
    assert report.skipped_rows == 6 and report.n_rows == 8
    assert report.counts() == {"missing image": 1, "unreadable image": 2, "empty caption": 1,
                               "bad encoding": 1, "duplicate uid": 1}
    assert len(logged) == 7 and logged[-1].startswith(f"{path}: skipped 6 of 8 rows (2 unreadable image")


def test_error_message_is_capped(tmp_path):
    body = b"uid\ttext\n" + b"".join(b"%d\tx\n" % i for i in range(30))
    with pytest.raises(DataError, match=r"\.\.\. and 10 more"):
        load_split(_table(tmp_path, body), log=None)


def test_skipping_everything_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no usable rows left of 2"):
        load_split(_table(tmp_path, b"uid\ttext\n1\ta\n2\tb\n"), on_bad_row="skip", log=None)


def test_bad_header_and_field_count(tmp_path):
    with pytest.raises(DataError, match="bad header"):
        read_table(_table(tmp_path, b"id,text\n1,a\n"))
    rows = read_table(_table(tmp_path, b"uid\ttext\n1\tan unquoted\ttab\n"))
    assert rows[0].error[0] == "bad row" and "got 3" in rows[0].error[1]


@pytest.mark.parametrize("body, bad_line", [
    (b"uid\ttext\n1\t&never closed\n2\tswallowed?\n", 2),
    (b"uid\ttext\n1\tfine\n2\t&x&y\n3\tok\n", 3),
    (b"uid\ttext\n1\t&opens\n2\tand closes&\n3\tok\n", 2),
])
def test_stray_quote_never_swallows_rows_silently(tmp_path, body, bad_line):
    rows = read_table(_table(tmp_path, body))
    bad = [r for r in rows if r.error]
    assert [(r.line, r.error[0]) for r in bad] == [(bad_line, "bad row")]
    assert all("\n" not in c for r in rows for c in r.captions)


def test_a_field_opening_a_quote_counts_every_row_it_swallows(tmp_path):
    # A caption that starts with & opens a quoted field: the rows after it vanish into it.
    body = b"uid\ttext\n1\tgood\n2\t&amp starts here\n" + b"".join(b"%d\ttext %d\n" % (i, i) for i in range(3, 13))
    path = _table(tmp_path, body, images=range(1, 13))
    logged = []
    examples, report = load_split(path, on_bad_row="skip", log=logged.append)
    assert [e.uid for e in examples] == ["1"]
    assert (report.skipped_rows, report.n_rows) == (11, 12)
    assert logged[-1].startswith(f"{path}: skipped 11 of 12 rows")
    assert "lines 3-13 (11 rows)" in logged[0]
    assert "field 2 of line 3 starts with &, which opens a quoted field" in logged[0]

    # Closed lines later, the swallowed span is one legal field: counted the same way.
    body = b"uid\ttext\n1\t&opens\n2\tb\n3\tand closes&\n4\tok\n"
    examples, report = load_split(_table(tmp_path, body, images=range(1, 5)), on_bad_row="skip", log=None)
    assert [e.uid for e in examples] == ["4"] and (report.skipped_rows, report.n_rows) == (3, 4)
    assert "lines 2-4 (3 rows)" in report.problems[0].detail


def test_max_rows_and_check_images_off(tmp_path):
    path = _table(tmp_path, b"uid\ttext\n1\ta\n2\tb\n3\tc\n", images=[1, 2, 3])
    (tmp_path / "images" / "3.jpg").write_bytes(b"junk")
    examples, _ = load_split(path, max_rows=2, log=None)
    assert [e.uid for e in examples] == ["1", "2"]
    examples, _ = load_split(path, check_images=False, log=None)  # existence only, no decoding
    assert len(examples) == 3


# ---- other table formats -------------------------------------------------------------------

def test_csv_groups_references_and_flags_conflicting_uids(tmp_path):
    for name in ("a", "b", "c"):
        _jpeg(tmp_path / "img" / f"{name}.png")
    body = (
        'uid,image,caption\n'
        'a,img/a.png,"a dog, running"\n'
        'a,img/a.png,"a ""fast"" dog"\n'
        'b,img/b.png,a cat\n'
        'b,img/c.png,another image\n'
    )
    path = _table(tmp_path, body.encode(), name="t.csv")
    with pytest.raises(DataError) as err:
        load_split(path, log=None)
    (p,) = err.value.problems
    assert (p.line, p.kind, p.uid) == (5, "duplicate uid", "b") and "first at line 4" in p.detail
    examples, _ = load_split(path, on_bad_row="skip", log=None)
    assert examples[0].captions == ("a dog, running", 'a "fast" dog')
    assert examples[0].image_path == tmp_path / "img" / "a.png"
    assert [e.uid for e in examples] == ["a", "b"]


def test_jsonl(tmp_path):
    _jpeg(tmp_path / "images" / "1.jpg")
    _jpeg(tmp_path / "images" / "2.jpg")
    lines = [
        json.dumps({"uid": 1, "captions": ["один", "два"]}, ensure_ascii=False),
        json.dumps({"uid": "2", "image": "images/2.jpg", "caption": "три"}, ensure_ascii=False),
        "",
        "{not json",
        json.dumps({"uid": 3}),
    ]
    path = _table(tmp_path, "\n".join(lines).encode(), name="t.jsonl")
    rows = read_table(path)
    kinds = [(r.line, r.error and r.error[0]) for r in rows]
    assert kinds == [(1, None), (2, None), (4, "bad row"), (5, "bad row")]
    examples, report = load_split(path, on_bad_row="skip", log=None)
    assert [(e.uid, e.captions) for e in examples] == [("1", ("один", "два")), ("2", ("три",))]
    assert report.skipped_rows == 2


def _imagefolder(root: Path) -> Path:
    for i in range(3):
        _jpeg(root / f"{i}.jpg", colour=(i * 50, 0, 0))
    meta = [{"file_name": "0.jpg", "text": "первая"}, {"file_name": "1.jpg", "text": "вторая"},
            {"file_name": "2.jpg", "text": "третья"}, {"file_name": "0.jpg", "text": "первая ещё раз"}]
    text = "\n".join(json.dumps(m, ensure_ascii=False) for m in meta)
    (root / "metadata.jsonl").write_text(text, encoding="utf-8")
    return root


def test_hf_imagefolder(tmp_path):
    root = _imagefolder(tmp_path / "folder")
    examples, report = load_split(f"hf:imagefolder:{root}", cache_dir=tmp_path / "cache", log=None)
    assert report.ok and report.source == f"hf:imagefolder:{root}@train"
    assert [(e.uid, e.captions) for e in examples] == [
        ("0", ("первая", "первая ещё раз")), ("1", ("вторая",)), ("2", ("третья",))]
    assert load_rgb(examples[1].image_path).getpixel((0, 0))[0] == pytest.approx(50, abs=3)


def test_hf_images_without_files_are_materialised(tmp_path):
    datasets = pytest.importorskip("datasets")
    blobs = [(tmp_path / f"{i}.jpg") for i in range(2)]
    for i, b in enumerate(blobs):
        _jpeg(b, colour=(0, 100 * i, 0))
    features = datasets.Features({"uid": datasets.Value("string"), "caption": datasets.Value("string"),
                                  "image": datasets.Image()})
    ds = datasets.Dataset.from_dict(
        {"uid": ["x", "y"], "caption": ["a", "b"],
         "image": [{"bytes": b.read_bytes(), "path": f"gone/{b.name}"} for b in blobs]}, features=features)
    (tmp_path / "hub" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"))
    examples, _ = load_split(f"hf:{tmp_path / 'hub'}@train", cache_dir=tmp_path / "cache", log=None)
    assert [e.uid for e in examples] == ["x", "y"]
    assert all((tmp_path / "cache" / "hf_images") in e.image_path.parents for e in examples)
    assert load_rgb(examples[1].image_path).getpixel((0, 0))[1] == pytest.approx(100, abs=3)


# ---- images --------------------------------------------------------------------------------

def _saved(tmp_path: Path, img: Image.Image, name: str, **kw) -> Path:
    path = tmp_path / name
    img.save(path, **kw)
    return path


def test_load_rgb_modes(tmp_path):
    gray = load_rgb(_saved(tmp_path, Image.new("L", (5, 3), 77), "g.png"))
    assert (gray.mode, gray.size, gray.getpixel((0, 0))) == ("RGB", (5, 3), (77, 77, 77))

    wide = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    out = load_rgb(_saved(tmp_path, wide, "w.png"))
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 100, 255]

    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 0), 1)
    out = load_rgb(_saved(tmp_path, pal, "p.png", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (0, 0, 255)

    rgba = Image.new("RGBA", (3, 1))
    for x, px in enumerate([(255, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 128)]):
        rgba.putpixel((x, 0), px)
    out = load_rgb(_saved(tmp_path, rgba, "a.png"))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (0, 0, 0)
    assert out.getpixel((2, 0))[0] == pytest.approx(127, abs=1)

    bits = load_rgb(_saved(tmp_path, Image.new("1", (2, 2), 1), "b.png"))
    assert bits.getpixel((1, 1)) == (255, 255, 255)


def _strip_adobe_marker(jpeg: bytes) -> bytes:
    out, i = bytearray(jpeg[:2]), 2
    while jpeg[i + 1] != 0xDA:  # copy segments up to start-of-scan, dropping APP14
        length = int.from_bytes(jpeg[i + 2 : i + 4], "big")
        if jpeg[i + 1] != 0xEE:
            out += jpeg[i : i + 2 + length]
        i += 2 + length
    return bytes(out + jpeg[i:])


def test_load_rgb_cmyk_jpeg_with_and_without_adobe_marker(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (255, 0, 0, 0))  # pure cyan
    adobe = _saved(tmp_path, cmyk, "adobe.jpg", quality=95)
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(_strip_adobe_marker(adobe.read_bytes()))
    with Image.open(plain) as im:
        assert im.mode == "CMYK" and "adobe" not in im.info
    for path in (adobe, plain):
        assert np.allclose(load_rgb(path).getpixel((4, 4)), (0, 255, 255), atol=6), path


def test_load_rgb_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (4, 2), (255, 0, 0))
    img.paste((0, 0, 255), (2, 0, 4, 2))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; displayed rotated 90 degrees clockwise
    out = load_rgb(_saved(tmp_path, img, "r.png", exif=exif.tobytes()))
    assert out.size == (2, 4)
    assert out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((1, 3)) == (0, 0, 255)


def test_huge_images_are_decoded_reduced_or_refused_without_a_bomb_warning(tmp_path):
    import warnings

    from memecap.data.images import MAX_SIDE, REDUCED_FROM

    big = Image.new("L", (12000, 9000), 200)
    big.save(tmp_path / "big.jpg", quality=50)
    big.save(tmp_path / "big.png")
    del big
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would raise here
        img = load_rgb(tmp_path / "big.jpg")
    # Decoded at 1/4 scale by libjpeg itself (a full decode then a resize would give 4096 wide).
    assert img.size == (3000, 2250) and img.mode == "RGB" and img.info[REDUCED_FROM] == (12000, 9000)
    with pytest.raises(ImageReadError, match=r"12000 x 9000 pixels is too large to decode"):
        load_rgb(tmp_path / "big.png")
    # Training data says which images were read reduced; caption/report/OCR read them through load_rgb.
    (tmp_path / "images").mkdir()
    (tmp_path / "big.jpg").rename(tmp_path / "images" / "1.jpg")
    logged = []
    load_split(_table(tmp_path, b"uid\ttext\n1\ta huge meme\n"), log=logged.append)
    assert any(f"1 image(s) larger than {MAX_SIDE} px on a side are read reduced" in line
               and "(12000 x 9000)" in line for line in logged)


def test_load_rgb_errors_name_the_file(tmp_path):
    (tmp_path / "text.jpg").write_text("hello")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), 5).save(good, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(good.getvalue()[:300])
    for name in ("missing.jpg", "text.jpg", "cut.jpg"):
        with pytest.raises(ImageReadError, match=re.escape(str(tmp_path / name))):
            load_rgb(tmp_path / name)
    assert issubclass(ImageReadError, ValueError)


# ---- transforms ----------------------------------------------------------------------------

MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def _stripes(w=40, h=20) -> Image.Image:
    img = Image.new("RGB", (w, h), (0, 255, 0))
    img.paste((255, 0, 0), (0, 0, w // 4, h))
    img.paste((0, 0, 255), (w - w // 4, 0, w, h))
    return img


def test_transform_pad_letterboxes_with_the_mean():
    x = ImageTransform(16, MEAN, STD, "pad")(_stripes())
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x[:, :4], torch.zeros(3, 4, 16)) and torch.equal(x[:, 12:], torch.zeros(3, 4, 16))
    assert (x[:, 4:12].abs() > 0.5).all()  # the whole 2:1 image survives, left and right edges included
    red = (torch.tensor([1.0, 0, 0]) - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(x[:, 8, 0], red, atol=0.05)
    tall = ImageTransform(16, MEAN, STD)(_stripes().rotate(90, expand=True))
    assert torch.equal(tall[:, :, :4], torch.zeros(3, 16, 4))


def test_transform_crop_and_squash():
    green = (torch.tensor([0, 1.0, 0]) - torch.tensor(MEAN)) / torch.tensor(STD)
    crop = ImageTransform(16, MEAN, STD, "crop")(_stripes())
    assert crop.shape == (3, 16, 16)
    assert torch.allclose(crop[:, 8, 4:12], green[:, None].expand(3, 8), atol=0.05)  # centre kept
    squash = ImageTransform(16, MEAN, STD, "squash")(_stripes().convert("L").convert("RGB"))
    assert squash.shape == (3, 16, 16)
    assert not torch.allclose(squash[:, 8, 0], squash[:, 8, 8], atol=0.05)  # edges not cropped away


def test_transform_signature_and_arguments():
    base = ImageTransform(16, MEAN, STD)
    assert base.signature() == ImageTransform(16, MEAN, STD, "pad").signature()
    variants = [ImageTransform(32, MEAN, STD), ImageTransform(16, (0.5,) * 3, STD),
                ImageTransform(16, MEAN, (0.5,) * 3), ImageTransform(16, MEAN, STD, "crop"),
                ImageTransform(16, MEAN, STD, "squash")]
    assert len({base.signature(), *(v.signature() for v in variants)}) == 6
    with pytest.raises(ValueError, match="resize_mode"):
        ImageTransform(16, MEAN, STD, "flip")
    assert ImageTransform(8, MEAN, STD)(Image.new("L", (3, 9), 10)).shape == (3, 8, 8)


# ---- synthetic data ------------------------------------------------------------------------

# Each noun only with the colour forms of its own gender: agreement is part of the template.
COLOUR_FORMS = {g: "|".join(c[i] for c in synthetic.COLOURS.values())
                for g, i in synthetic.GENDER_INDEX.items()}
SHAPE_PART = "(?:" + "|".join(
    f"(?:{COLOUR_FORMS[g]}) {noun}" for noun, g in synthetic.SHAPES.values()) + ")"
POSITION = "(?:" + "|".join(p for _, p in synthetic.POSITIONS.values()) + ")"
BACKGROUND = "(?:" + "|".join(c[4] for c in synthetic.COLOURS.values()) + ")"
CAPTION = re.compile(
    rf'на картинке {SHAPE_PART} {POSITION}(?: и {SHAPE_PART} {POSITION})? на {BACKGROUND} фоне\.'
    rf'(?: подпись: "(?:{"|".join(synthetic.PHRASES)})")?'
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_is_deterministic_and_in_meme_format(tmp_path):
    paths = make_synthetic_dataset(tmp_path / "a", n_train=60, n_val=12, seed=0)
    make_synthetic_dataset(tmp_path / "b", n_train=60, n_val=12, seed=0)
    make_synthetic_dataset(tmp_path / "c", n_train=60, n_val=12, seed=1)
    a, b, c = (_files(tmp_path / d) for d in "abc")
    assert a == b and a != c
    assert set(paths) == {"train", "val"} and "README.txt" in a
    assert a["train.tsv"].startswith(b"uid\ttext\n")
    captions = []
    for split, n in (("train", 60), ("val", 12)):
        examples, report = load_split(paths[split], log=None)
        assert len(examples) == n and report.ok
        assert all(e.image_path.parent == tmp_path / "a" / "images" for e in examples)
        captions += [e.captions[0] for e in examples]
    assert all(CAPTION.fullmatch(t) for t in captions), [t for t in captions if not CAPTION.fullmatch(t)]
    assert 0.2 < np.mean(["подпись" in t for t in captions]) < 0.8
    assert any(" и " in t for t in captions)
    with Image.open(paths["train"].parent / "images" / "0.jpg") as im:
        assert im.size == (64, 64)


def test_synthetic_without_cyrillic_font_draws_stripes(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "_cyrillic_font", lambda px: None)
    paths = make_synthetic_dataset(tmp_path, n_train=20, n_val=0, seed=3)
    assert "stripe pattern" in (tmp_path / "README.txt").read_text(encoding="utf-8")
    examples, report = load_split(paths["train"], log=None)
    assert report.ok and len(examples) == 20


def test_cyrillic_glyph_check():
    try:
        latin_only = ImageFont.load_default(size=12)  # Aileron: no Cyrillic glyphs
    except TypeError:
        pytest.skip("Pillow < 10.1 has no scalable default font")
    assert not synthetic._renders_cyrillic(latin_only)
    font = synthetic._cyrillic_font(12)
    if font is not None:
        assert synthetic._renders_cyrillic(font)
