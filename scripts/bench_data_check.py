"""What the row and image check costs at the start of a run, per `data.check` mode, on synthetic
tables of N images (64 px JPEGs), each start in a fresh process.

    .venv/bin/python scripts/bench_data_check.py --images 10000 [--work /tmp/bench-check]

Rows: `full` with an empty check cache (the first start), `full` again (the next start: each image's
result comes back from the cache keyed by its file's size and modification time), then `sample`
(1,000 images decoded) and `none`, each with an empty cache. Prints Markdown rows for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys, time
from memecap.data.tables import load_split
table, cache, mode = sys.argv[1:4]
start = time.perf_counter()
examples, _ = load_split(table, check=mode, check_sample=1000, check_cache=cache, log=None)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "examples": len(examples),
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def start(table: Path, cache: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(table), str(cache), mode], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-check"))
    args = parser.parse_args()
    from memecap.data.synthetic import make_synthetic_dataset

    root = args.work / f"data-{args.images}"
    if not (root / ".complete").exists():
        make_synthetic_dataset(root, n_train=args.images, n_val=1, image_size=64, seed=0)
        (root / ".complete").touch()
    table, cache = root / "train.tsv", args.work / "checks"
    print("| images | start | `data.check` | seconds | ms per image | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, mode in (("first", "full"), ("next", "full"), ("first", "sample"), ("first", "none")):
        if label == "first":
            shutil.rmtree(cache, ignore_errors=True)
        r = start(table, cache, mode)
        per_image = 1000 * r["seconds"] / r["examples"]
        print(f"| {r['examples']:,} | {label} | {mode} | {r['seconds']:.2f} | {per_image:.3f} "
              f"| {r['rss'] / 2 ** 20:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
