"""Shared steps of the converters in scripts/: group caption rows by image, split by image,
check that each image exists, and write memecap's JSONL table (one line per image, all its
references in `captions`, `image` relative to the table)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable


@dataclass
class CaptionRow:
    source: str  # file:line, for reports
    uid: str
    image: str  # file name inside the images folder
    caption: str


@dataclass
class ImageRecord:
    uid: str
    image: str
    captions: list = field(default_factory=list)
    sources: list = field(default_factory=list)


def group_by_image(rows: Iterable[CaptionRow]) -> list[ImageRecord]:
    """One record per image, captions in file order; empty captions and exact repeats dropped."""
    records: dict[str, ImageRecord] = {}
    for row in rows:
        rec = records.setdefault(row.uid, ImageRecord(row.uid, row.image))
        text = row.caption.strip()
        if text and text not in rec.captions:
            rec.captions.append(text)
            rec.sources.append(row.source)
    return [r for r in records.values() if r.captions]


def split_by_image(records: list[ImageRecord], fractions: dict[str, float], seed: int = 0) -> dict[str, list]:
    """Assign whole images to splits by a hash of (seed, uid): no image is in two splits, and an
    image keeps its split when the table grows."""
    total = sum(fractions.values())
    bounds, acc = [], 0.0
    for name, frac in fractions.items():
        acc += frac / total
        bounds.append((acc, name))
    out: dict[str, list] = {name: [] for name in fractions}
    for rec in records:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{rec.uid}".encode()).digest()[:8], "big") / 2**64
        out[next(name for bound, name in bounds if h < bound or bound == bounds[-1][0])].append(rec)
    return out


def drop_missing_images(records: list[ImageRecord], image_dir: Path, log: Callable[[str], None] = print
                        ) -> list[ImageRecord]:
    """Keep the records whose image file exists; report every other one with the rows it came from."""
    kept, missing = [], []
    for rec in records:
        (kept if (Path(image_dir) / rec.image).is_file() else missing).append(rec)
    for rec in missing:
        log(f"missing image {Path(image_dir) / rec.image} (uid {rec.uid}): rows {', '.join(rec.sources)}")
    if missing:
        log(f"{len(missing)} of {len(records)} images are missing and were left out "
            f"({sum(len(r.captions) for r in missing)} captions)")
    return kept


def write_jsonl(path: Path, records: list[ImageRecord], image_dir: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            image = os.path.relpath(Path(image_dir).resolve() / rec.image, path.parent.resolve())
            f.write(json.dumps({"uid": rec.uid, "image": image, "captions": rec.captions}, ensure_ascii=False) + "\n")
