"""OCR quality and cost on real memes: the character error rate of the cleaned OCR text against
the text the human descriptions quote, per engine and split, by kind of meme, per cleaning rule,
and the time to read and to reload from cache.

    .venv/bin/python scripts/bench_ocr.py [--data ../shared/data/memes-sample] [--engines detect_tesseract tesseract]
        [--splits train val] [--limit N] [--cleaning] [--kinds]

CER is memecap's quote metric applied to the OCR text as a whole (metrics/quote.py: lower case,
ё -> е, capped at 1 per image, images whose description quotes nothing left out). It is a
pessimistic measure of the OCR: describers translate English memes, skip watermarks and
usernames, and quote only part of some images' text. `--cleaning` scores the default engine's
readings with no cleaning rule and with each rule left out; `--kinds` splits the figures by kind
of meme, told from the descriptions' words (kind_of). Prints Markdown rows for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import time
from pathlib import Path

from memecap.config import OcrConfig
from memecap.data.tables import load_split
from memecap.metrics.quote_score import quoted_text, text_cer
from memecap.ocr import clean_text, read_words
from memecap.ocr.cleaning import RULES
from memecap.ocr.run import min_confidence

REPO = Path(__file__).resolve().parents[1]
KINDS = ("screenshot", "comic", "english", "photo")
_SCREENSHOT = re.compile(r"скриншот|переписк|твит|tweet|комментари|пост\b|запис[ьи] из", re.IGNORECASE)
_COMIC = re.compile(r"комикс|кадр|панел|разделен|частей|части\b|две картинки|четыре картинки|верхн\w+ част",
                    re.IGNORECASE)
_LATIN = re.compile(r"[a-z]")


def kind_of(captions: list[str]) -> str:
    """The kind of meme by what its first description says: a screenshot of a post or chat, a comic
    or several panels, an English meme (its quote has Latin letters), else a photo with a caption."""
    text = captions[0]
    if _LATIN.search(quoted_text(text)):
        return "english"
    if _COMIC.search(text):
        return "comic"
    if _SCREENSHOT.search(text):
        return "screenshot"
    return "photo"


def scores(texts: list[str], examples) -> tuple[list[float], int]:
    """Per image with a quoted reference: the best CER over its references; and how many of those
    images got an empty reading."""
    out, empty = [], 0
    for text, ex in zip(texts, examples):
        cers = [c for c in (text_cer(text, ref) for ref in ex.captions) if c is not None]
        if cers:
            out.append(min(cers))
            empty += not text
    return out, empty


def row(name: str, texts: list[str], examples, extra: str = "") -> str:
    cers, empty = scores(texts, examples)
    if not cers:
        return f"| {name} | {len(examples)} | 0 | | | | |{extra}"
    near = sum(c <= 0.1 for c in cers) / len(cers)
    return (f"| {name} | {len(examples)} | {len(cers)} | {statistics.mean(cers):.3f} | {statistics.median(cers):.3f} | "
            f"{near:.0%} | {empty / len(cers):.0%} |{extra}")


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the OCR pool's workers): unlike the
    wall time it does not grow when other work shares the cores."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def compare_recognizers(data: Path, n: int) -> None:
    """Seconds per line crop for the same Russian single-line reading by both bindings (one thread)."""
    import numpy as np
    import pytesseract
    from PIL import Image

    from memecap.data.images import load_rgb
    from memecap.ocr.detection import LineDetector
    from memecap.ocr.line_engine import bounded
    from memecap.ocr.lines import crop_line, dark_on_light, for_tesseract
    from memecap.ocr.recognize import Recognizer

    os.environ["OMP_THREAD_LIMIT"] = "1"
    examples, _ = load_split(data / "val.tsv", log=None)
    detector, crops = LineDetector(), []
    for ex in examples[:n]:
        rgb = np.asarray(bounded(load_rgb(ex.image_path)))
        for quad in detector.boxes(rgb):
            crop = crop_line(rgb, quad)
            if crop.size:
                crops.append(for_tesseract(dark_on_light(np.asarray(Image.fromarray(crop).convert("L")))))
    recognizer = Recognizer()
    recognizer.words(crops[0], "rus", 7)  # load the model once, as a worker does
    timings = {}
    start = time.perf_counter()
    in_process = [" ".join(w[0] for w in recognizer.words(c, "rus", 7)) for c in crops]
    timings["tesserocr (in-process)"] = time.perf_counter() - start
    start = time.perf_counter()
    per_call = [" ".join(pytesseract.image_to_string(c, lang="rus", config="--psm 7").split()) for c in crops]
    timings["pytesseract (a process per call)"] = time.perf_counter() - start
    same = sum(a == b for a, b in zip(in_process, per_call))
    print(f"{len(crops)} line crops of {n} val images; identical readings: {same}; load {os.getloadavg()[0]:.1f}")
    for name, seconds in timings.items():
        print(f"| {name} | {1000 * seconds / len(crops):.0f} ms per line |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "memes-sample")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "bench_ocr" / "ocr")
    parser.add_argument("--engines", nargs="+", default=["detect_tesseract", "tesseract"])
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows of each split")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--cleaning", action="store_true")
    parser.add_argument("--kinds", action="store_true")
    parser.add_argument("--recognizers", type=int, default=0, metavar="N",
                        help="only time Tesseract per detected line, in-process (tesserocr) against a process "
                             "per call (pytesseract), on the first N val images")
    args = parser.parse_args()
    if args.recognizers:
        compare_recognizers(args.data, args.recognizers)
        return
    print("| engine, split | images | with a quoted reference | mean CER | median CER | CER <= 0.1 | nothing read | "
          "first read, s per image | cached reload |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    later = []
    for engine in args.engines:
        cfg = OcrConfig(engine=engine, workers=args.workers)
        for split in args.splits:
            examples, _ = load_split(args.data / f"{split}.tsv", log=None)
            examples = examples[:args.limit]
            paths = [ex.image_path for ex in examples]
            start, cpu = time.perf_counter(), cpu_seconds()
            words, cache = read_words(paths, cfg, cache_dir=args.cache, progress=True, desc=f"{engine}, {split}")
            first, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            fresh = cache.misses
            start = time.perf_counter()
            read_words(paths, cfg, cache_dir=args.cache, progress=False)
            reload = time.perf_counter() - start
            texts = [clean_text(w, min_confidence(cfg), cfg.cleaning) for w in words]
            per_image = (f"{first / fresh:.2f} wall, {cpu / fresh:.2f} CPU "
                         f"({fresh} read, load {os.getloadavg()[0]:.1f})" if fresh else "cached")
            print(row(f"{engine}, {split}", texts, examples, f" {per_image} | {reload:.2f} s |"), flush=True)
            later.append((engine, split, cfg, words, examples, texts))
    for engine, split, cfg, words, examples, texts in later:
        if args.kinds:
            kinds = [kind_of(ex.captions) for ex in examples]
            for kind in KINDS:
                keep = [i for i, k in enumerate(kinds) if k == kind]
                print(row(f"{engine}, {split}, {kind}", [texts[i] for i in keep], [examples[i] for i in keep], " | |"))
        if args.cleaning and engine == args.engines[0]:
            threshold = min_confidence(cfg)
            uncleaned = [clean_text(w, threshold, ()) for w in words]
            print(row(f"{engine}, {split}, no cleaning rule", uncleaned, examples, " | |"))
            for rule in RULES:
                rules = [r for r in cfg.cleaning if r != rule]
                print(row(f"{engine}, {split}, without `{rule}`", [clean_text(w, threshold, rules) for w in words],
                          examples, " | |"))


if __name__ == "__main__":
    main()
