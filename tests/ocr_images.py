"""Images with known Cyrillic text for the OCR tests, drawn with DejaVu Sans."""
from __future__ import annotations

import csv
import random
from pathlib import Path

from PIL import Image, ImageDraw

from memecap.data.synthetic import _cyrillic_font
from memecap.metrics.quote_score import levenshtein, normalize_quote

# (file, lines of text, how it is drawn). The caption over a busy picture is the classic meme
# style (white letters, dark outline) that a plain grayscale reading misses.
IMAGES = [
    ("friday.jpg", ["Когда пятница,", "а ты на работе"], "plain"),
    ("caption.jpg", ["ТЫ ОПЯТЬ ПОВЕРИЛ"], "over_photo"),
    ("monday.jpg", ["Никто:", "Я в понедельник: ещё пять минут"], "plain"),
]
MAX_CER = 0.1


def cer(text: str, expected: str) -> float:
    expected = normalize_quote(expected)
    return levenshtein(normalize_quote(text), expected) / len(expected)


def draw(path: Path, lines: list[str], style: str) -> None:
    font = _cyrillic_font(36)
    assert font is not None, "no Cyrillic font (DejaVu Sans): run scripts/system_packages.sh"
    if style == "plain":
        img = Image.new("RGB", (760, 60 + 50 * len(lines)), "white")
        d = ImageDraw.Draw(img)
        for i, line in enumerate(lines):
            d.text((24, 30 + 50 * i), line, font=font, fill="black")
    else:
        rng = random.Random(0)
        img = Image.new("RGB", (560, 320))
        d = ImageDraw.Draw(img)
        for _ in range(60):
            x, y, r = rng.randrange(560), rng.randrange(320), rng.randrange(20, 90)
            d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(40, 200) for _ in range(3)))
        d.text((280, 270), lines[0], font=font, fill="white", stroke_width=3, stroke_fill="black", anchor="mm")
    img.save(path, quality=92)


def make_text_images(root: Path) -> tuple[list[Path], Path]:
    """`root/images/{i}.jpg` and a meme table `root/val.tsv` whose captions quote their text."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i, (_, lines, style) in enumerate(IMAGES):
        draw(root / "images" / f"{i}.jpg", lines, style)
        rows.append((str(i), f'на картинке текст. подпись: "{" ".join(lines)}"'))
    with open(root / "val.tsv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quotechar="&", lineterminator="\n")
        writer.writerows([("uid", "text"), *rows])
    return [root / "images" / f"{i}.jpg" for i in range(len(IMAGES))], root / "val.tsv"
