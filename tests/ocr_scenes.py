"""Drawn memes for the line-detection engine: known Cyrillic and Latin text over photo-like noise,
light on dark, in two columns and in two panels, each with the order a person reads it in."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from memecap.data.synthetic import _cyrillic_font


def photo_noise(width: int, height: int, seed: int) -> Image.Image:
    """Something like a photo: overlapping coloured blobs under per-pixel noise."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height))
    d = ImageDraw.Draw(img)
    for _ in range(50):
        x, y, r = rng.integers(0, width), rng.integers(0, height), rng.integers(20, 90)
        d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(40, 200, 3)))
    pixels = np.asarray(img, dtype=np.int16) + rng.integers(-25, 26, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _font(px: int = 34):
    font = _cyrillic_font(px)
    assert font is not None, "no Cyrillic font (DejaVu Sans): run scripts/system_packages.sh"
    return font


def over_photo() -> tuple[Image.Image, list[str]]:
    """The classic meme: white outlined captions over a picture, Russian on top, English below."""
    img = photo_noise(640, 400, seed=1)
    d = ImageDraw.Draw(img)
    lines = ["КОГДА ПОЗВОНИЛ БАБУШКЕ", "WHEN GRANDMA CALLS"]
    d.text((320, 40), lines[0], font=_font(), fill="white", stroke_width=3, stroke_fill="black", anchor="mm")
    d.text((320, 360), lines[1], font=_font(), fill="white", stroke_width=3, stroke_fill="black", anchor="mm")
    return img, lines


def light_on_dark() -> tuple[Image.Image, list[str]]:
    img = Image.new("RGB", (640, 200), (25, 30, 60))
    d = ImageDraw.Draw(img)
    lines = ["Никто не пишет", "а ты всё ждёшь"]
    for i, line in enumerate(lines):
        d.text((30, 40 + 70 * i), line, font=_font(), fill=(235, 235, 235))
    return img, lines


def two_columns() -> tuple[Image.Image, list[str]]:
    """A column on the left and one on the right, their lines side by side: read column by column."""
    img = Image.new("RGB", (820, 260), "white")
    d = ImageDraw.Draw(img)
    left, right = ["Ожидание:", "отпуск на море", "солнце и пляж"], ["Реальность:", "дождь весь месяц", "сижу дома"]
    for i, (a, b) in enumerate(zip(left, right)):
        d.text((20, 30 + 70 * i), a, font=_font(), fill="black")
        d.text((450, 30 + 70 * i), b, font=_font(), fill="black")
    return img, left + right


def two_panels() -> tuple[Image.Image, list[str]]:
    """A two-panel comic: the left panel's text sits lower than the right panel's, yet the left
    panel is read first."""
    img = Image.new("RGB", (900, 420), "white")
    d = ImageDraw.Draw(img)
    d.rectangle((10, 10, 440, 410), outline="black", width=6)
    d.rectangle((460, 10, 890, 410), outline="black", width=6)
    left, right = ["Мама: ты поел?", "Я: да"], ["Тоже я:", "ищу еду ночью"]
    for i, line in enumerate(left):
        d.text((40, 250 + 60 * i), line, font=_font(), fill="black")
    for i, line in enumerate(right):
        d.text((490, 60 + 60 * i), line, font=_font(), fill="black")
    return img, left + right


SCENES = {"over_photo": over_photo, "light_on_dark": light_on_dark, "two_columns": two_columns,
          "two_panels": two_panels}


def make_scenes(root: Path) -> dict[str, tuple[Path, list[str]]]:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, draw in SCENES.items():
        img, lines = draw()
        img.save(root / f"{name}.jpg", quality=92)
        out[name] = (root / f"{name}.jpg", lines)
    return out
