"""A tiny learnable demo dataset of shapes and Russian captions, in the real meme table format."""

from __future__ import annotations

import csv
import importlib.util
import math
import random
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# name -> (RGB, masculine, feminine, neuter, prepositional "на ... фоне")
COLOURS = {
    "red": ((215, 35, 35), "красный", "красная", "красное", "красном"),
    "green": ((35, 160, 60), "зелёный", "зелёная", "зелёное", "зелёном"),
    "blue": ((35, 70, 200), "синий", "синяя", "синее", "синем"),
    "yellow": ((240, 210, 40), "жёлтый", "жёлтая", "жёлтое", "жёлтом"),
    "white": ((250, 250, 250), "белый", "белая", "белое", "белом"),
    "black": ((20, 20, 20), "чёрный", "чёрная", "чёрное", "чёрном"),
}
LIGHT = {"white", "yellow"}  # backgrounds that get a black caption bar (the rest a white one)
GENDER_INDEX = {"m": 1, "f": 2, "n": 3}
# Shapes cover all three genders so the colour adjective must agree with the noun.
SHAPES = {
    "circle": ("круг", "m"),
    "square": ("квадрат", "m"),
    "star": ("звезда", "f"),
    "ring": ("кольцо", "n"),
}
# Centres as fractions of the side; far enough apart that two shapes never overlap.
POSITIONS = {
    "left": ((0.25, 0.42), "слева"),
    "right": ((0.75, 0.42), "справа"),
    "top": ((0.5, 0.2), "сверху"),
    "bottom": ((0.5, 0.62), "снизу"),
    "center": ((0.5, 0.42), "в центре"),
}
PAIRS = (("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top"))
PHRASES = ("привет мир", "ой всё", "жиза", "кек", "да ладно", "ну и ну")
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/arial.ttf",
)
README = """Synthetic demo data for memecap (made by memecap.data.synthetic, seed {seed}).

Each image is a plain background with one or two coloured shapes and, on about half of
them, a short Russian phrase in a text band at the bottom. Captions describe them in
Russian, e.g.
  на картинке красный круг слева на синем фоне. подпись: "привет мир"
train.tsv / val.tsv use the real meme table format (tab-separated, header uid<TAB>text,
quotechar &, images/{{uid}}.jpg), so the demo exercises the real reader.
It is for smoke tests and demos only: a model that learns it has learnt nothing about memes.
Text renderer: {text_mode}.
"""


def make_synthetic_dataset(
    out_dir: str | Path, n_train: int = 2000, n_val: int = 200, image_size: int = 64, seed: int = 0
) -> dict[str, Path]:
    """Write `train.tsv`, `val.tsv`, `images/{uid}.jpg` and `README.txt`; return the table paths."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    font = _cyrillic_font(max(6, round(image_size * 0.14)))
    tables, uid = {}, 0
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        for _ in range(n):
            img, caption = _sample(rng, image_size, font)
            img.save(out / "images" / f"{uid}.jpg", quality=92)
            rows.append((str(uid), caption))
            uid += 1
        tables[split] = out / f"{split}.tsv"
        with open(tables[split], "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", quotechar="&", lineterminator="\n")
            writer.writerow(("uid", "text"))
            writer.writerows(rows)
    text_mode = "Cyrillic font" if font else "stripe pattern per phrase (no Cyrillic font found)"
    (out / "README.txt").write_text(README.format(seed=seed, text_mode=text_mode), encoding="utf-8")
    return tables


def sample_pairs(n: int, image_size: int = 224, seed: int = 0) -> list[tuple[Image.Image, str]]:
    """`n` demo (image, caption) pairs (shapes, half with a Cyrillic caption bar), the same for the
    same seed: a fixed sample when no memes are at hand (comparing captions, timing)."""
    rng = random.Random(seed)
    font = _cyrillic_font(max(6, round(image_size * 0.14)))
    return [_sample(rng, image_size, font) for _ in range(n)]


def sample_images(n: int, image_size: int = 224, seed: int = 0) -> list[Image.Image]:
    return [image for image, _ in sample_pairs(n, image_size, seed)]


def _sample(rng: random.Random, size: int, font) -> tuple[Image.Image, str]:
    bg = rng.choice(list(COLOURS))
    img = Image.new("RGB", (size, size), COLOURS[bg][0])
    draw = ImageDraw.Draw(img)
    positions = rng.choice(PAIRS) if rng.random() < 0.25 else (rng.choice(list(POSITIONS)),)
    parts = []
    for pos in positions:
        shape = rng.choice(list(SHAPES))
        colour = rng.choice([c for c in COLOURS if c != bg])
        (fx, fy), pos_ru = POSITIONS[pos]
        jitter = size * 0.02
        cx, cy = fx * size + rng.uniform(-jitter, jitter), fy * size + rng.uniform(-jitter, jitter)
        _draw_shape(draw, shape, cx, cy, size * rng.uniform(0.13, 0.15), COLOURS[colour][0])
        noun, gender = SHAPES[shape]
        parts.append(f"{COLOURS[colour][GENDER_INDEX[gender]]} {noun} {pos_ru}")
    caption = f"на картинке {' и '.join(parts)} на {COLOURS[bg][4]} фоне."
    if rng.random() < 0.5:
        phrase = rng.choice(PHRASES)
        # Like a meme's caption bar: a full-width band that contrasts with the background.
        band, ink = ((0, 0, 0), (255, 255, 255)) if bg in LIGHT else ((255, 255, 255), (0, 0, 0))
        draw.rectangle((0, round(size * 0.8), size, size), fill=band)
        _draw_text(draw, phrase, size, font, ink)
        caption += f' подпись: "{phrase}"'
    return img, caption


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, round(r * 0.4)))
    elif shape == "star":
        points = [
            (cx + rad * math.sin(k * math.pi / 5), cy - rad * math.cos(k * math.pi / 5))
            for k, rad in enumerate([r * 1.2, r * 0.5] * 5)
        ]
        draw.polygon(points, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _draw_text(draw: ImageDraw.ImageDraw, phrase: str, size: int, font, ink) -> None:
    band_top = round(size * 0.8)
    if font is None:
        # Without a Cyrillic font, a distinct stripe count per phrase keeps captions learnable.
        k = PHRASES.index(phrase) + 2
        step = size / (2 * k + 1)
        for j in range(k):
            x0 = round(step * (2 * j + 1))
            draw.rectangle((x0, band_top, x0 + max(1, round(step)) - 1, size - 2), fill=ink)
        return
    while font.getlength(phrase) > size * 0.95 and font.size > 6:
        font = font.font_variant(size=font.size - 1)
    draw.text((size / 2, (band_top + size) / 2), phrase, font=font, fill=ink, anchor="mm")


@lru_cache(maxsize=8)
def _cyrillic_font(px: int):
    """A font that really has Cyrillic glyphs at `px` pixels, or None."""
    candidates = list(FONT_CANDIDATES)
    spec = importlib.util.find_spec("matplotlib")
    if spec and spec.origin:  # matplotlib ships DejaVuSans; find it without importing matplotlib
        candidates.insert(0, str(Path(spec.origin).parent / "mpl-data/fonts/ttf/DejaVuSans.ttf"))
    fonts = []
    for path in candidates:
        if Path(path).is_file():
            try:
                fonts.append(ImageFont.truetype(path, px))
            except OSError:
                continue
    try:
        fonts.append(ImageFont.load_default(size=px))
    except (TypeError, AttributeError, OSError):
        pass  # Pillow < 10.1 has no scalable default font
    return next((f for f in fonts if _renders_cyrillic(f)), None)


def _renders_cyrillic(font) -> bool:
    # A font without the glyphs draws the same "missing glyph" boxes as for unassigned code points.
    cyr = font.getmask("жщ")
    missing = font.getmask("\U000f0000\U000f0001")
    return cyr.size[0] > 0 and (cyr.size != missing.size or bytes(cyr) != bytes(missing))
