"""What the row and image check costs at the start of a run, per `data.check` mode, on synthetic
tables of N images (64 px JPEGs), each start in a fresh process doing what a training start does
with its data: the table read and checked (`load_split`), then fingerprinted (every image's digest).

    .venv/bin/python scripts/bench_data_check.py --images 10000 100000 [--work /tmp/bench-check]

Rows per size: `full` with an empty check cache (the first start), `full` again (the next start: the
table's kept check, data/table_checks.py), `full` after one image was touched (its modification
time moved: that image is checked again, the others' results come from the per-image cache), then
`sample` (1,000 images decoded) and `none` with an empty cache, and `none` again. The image files
each start decoded and hashed are counted by memecap's own counter (`IMAGE_WORK`; "-" for a memecap
without it). With two sizes or more, the peak RSS each image adds between them follows.
Prints Markdown rows for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys, time
from memecap.data.fingerprint import split_fingerprint
from memecap.data.tables import load_split
try:
    from memecap.data.fingerprint import IMAGE_WORK
except ImportError:  # a memecap from before the counter
    IMAGE_WORK = None
table, cache, mode = sys.argv[1:4]
start = time.perf_counter()
examples, _ = load_split(table, check=mode, check_sample=1000, check_cache=cache, log=None)
split_fingerprint(examples)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "examples": len(examples),
                  "decoded": IMAGE_WORK.decoded if IMAGE_WORK else None,
                  "hashed": IMAGE_WORK.hashed if IMAGE_WORK else None,
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""
ARMS = (("first", "full"), ("next", "full"), ("one image touched", "full"), ("first", "sample"),
        ("first", "none"), ("next", "none"))


def start(table: Path, cache: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(table), str(cache), mode], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.splitlines()[-1])


def touched(image: Path):
    """Move the image's modification time by a second, and back afterwards (so the table's data is as made)."""
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    return lambda: os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))


def bench(images: int, work: Path) -> dict:
    from memecap.data.synthetic import make_synthetic_dataset

    root = work / f"data-{images}"
    if not (root / ".complete").exists():
        make_synthetic_dataset(root, n_train=images, n_val=1, image_size=64, seed=0)
        (root / ".complete").touch()
    table, cache = root / "train.tsv", work / "checks"
    peaks = {}
    for label, mode in ARMS:
        if label == "first":
            shutil.rmtree(cache, ignore_errors=True)
        restore = touched(next((root / "images").iterdir())) if label == "one image touched" else None
        try:
            r = start(table, cache, mode)
        finally:
            if restore is not None:
                restore()
        per_image = 1000 * r["seconds"] / r["examples"]
        work_done = " | ".join("-" if r[k] is None else f"{r[k]:,}" for k in ("decoded", "hashed"))
        print(f"| {r['examples']:,} | {label} | {mode} | {r['seconds']:.2f} | {per_image:.3f} | {work_done} "
              f"| {r['rss'] / 2 ** 20:.0f} MiB |", flush=True)
        peaks[(label, mode)] = (r["examples"], r["rss"])
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[10000], help="table sizes, one run of the arms each")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-check"))
    args = parser.parse_args()
    print("| images | start | `data.check` | seconds | ms per image | decoded | hashed | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    runs = [bench(n, args.work) for n in args.images]
    if len(runs) > 1:
        print(f"\nPeak RSS added per image, {args.images[0]:,} -> {args.images[-1]:,} images:\n")
        print("| start | `data.check` | KiB per image |")
        print("| --- | --- | --- |")
        for arm in ARMS:
            (n0, rss0), (n1, rss1) = runs[0][arm], runs[-1][arm]
            print(f"| {arm[0]} | {arm[1]} | {(rss1 - rss0) / (n1 - n0) / 1024:.2f} |")


if __name__ == "__main__":
    main()
