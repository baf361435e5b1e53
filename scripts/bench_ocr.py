"""OCR quality and cost on real memes: the character error rate of the cleaned OCR text against
the text the human descriptions quote, per split, and the time to read and to reload from cache.

    .venv/bin/python scripts/bench_ocr.py [--data ../shared/data/memes-sample] [--ablation]

CER is memecap's quote metric applied to the OCR text as a whole (metrics/quote.py: lower case,
ё -> е, capped at 1 per image, images whose description quotes nothing left out). It is a
pessimistic measure of the OCR: describers translate English memes, skip watermarks and
usernames, and quote only part of some images' text. `--ablation` also scores the two readings
the Tesseract engine chooses between, each alone (two more passes over val, uncached). Prints
Markdown rows for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from memecap.config import OcrConfig
from memecap.data.images import load_rgb
from memecap.data.tables import load_split
from memecap.metrics.quote_score import text_cer
from memecap.ocr import TesseractEngine, clean_text, read_words

REPO = Path(__file__).resolve().parents[1]


def scores(texts: list[str], examples) -> list[float]:
    """Per image with a quoted reference: the best CER over its references."""
    out = []
    for text, ex in zip(texts, examples):
        cers = [c for c in (text_cer(text, ref) for ref in ex.captions) if c is not None]
        if cers:
            out.append(min(cers))
    return out


def row(name: str, cers: list[float], n_images: int, empty: int, extra: str = "") -> str:
    near = sum(c <= 0.1 for c in cers) / len(cers)
    return (f"| {name} | {n_images} | {len(cers)} | {statistics.mean(cers):.3f} | {statistics.median(cers):.3f} | "
            f"{near:.0%} | {empty / n_images:.0%} |{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "memes-sample")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "bench_ocr" / "ocr")
    parser.add_argument("--ablation", action="store_true")
    args = parser.parse_args()
    cfg = OcrConfig()
    print("| split | images | with a quoted reference | mean CER | median CER | CER <= 0.1 | no text read | "
          "first read | cached reload |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for split in ("train", "val"):
        examples, _ = load_split(args.data / f"{split}.tsv", log=None)
        paths = [ex.image_path for ex in examples]
        start = time.perf_counter()
        words, cache = read_words(paths, cfg, cache_dir=args.cache, progress=True, desc=f"{split}: OCR")
        first = time.perf_counter() - start
        fresh = cache.misses
        start = time.perf_counter()
        read_words(paths, cfg, cache_dir=args.cache, progress=False)
        reload = time.perf_counter() - start
        texts = [clean_text(w, cfg.min_confidence) for w in words]
        timing = f" {first:.1f} s ({fresh} read) | {reload:.2f} s |"
        print(row(split, scores(texts, examples), len(paths), sum(not t for t in texts), timing), flush=True)
    if args.ablation:
        examples, _ = load_split(args.data / "val.tsv", log=None)
        engine = TesseractEngine(list(cfg.languages))
        readings = {"grayscale reading only": [], "white-text mask reading only": []}
        for ex in examples:
            image = load_rgb(ex.image_path)
            gray, mask = engine.readings(image)
            readings["grayscale reading only"].append(clean_text(gray, cfg.min_confidence))
            readings["white-text mask reading only"].append(clean_text(mask, cfg.min_confidence))
        for name, texts in readings.items():
            print(row(f"val, {name}", scores(texts, examples), len(examples), sum(not t for t in texts), " | |"))


if __name__ == "__main__":
    main()
