"""Time per image and peak RSS of a frozen encoder's features over a whole split: the first start
(every image encoded into the cache) and the next (every entry read back and verified), each in a
fresh process, on synthetic 64 px JPEGs made by scripts/bench_data_check.py's layout.

    .venv/bin/python scripts/bench_feature_memory.py --images 10000 [--work /tmp/bench-check]

The model is the demo recipe with its encoder frozen (a tiny random CLIP giving 50 patch features
of width 64 per image, 12.8 KB: the size of the features does the talking, not the encoder).
Prints Markdown rows for docs/benchmarks.md.
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
from memecap.config import load_config
from memecap.data.tables import load_split
from memecap.models import build_model
table, cache, work = sys.argv[1:4]
examples, _ = load_split(table, check="none", log=None)
cfg = load_config("demo", ["model.encoder.trainable=false"])
model = build_model(cfg.model, work_dir=work, train_texts=[c for e in examples for c in e.captions])
start = time.perf_counter()
images = model.image_inputs([e.image_path for e in examples], cache_dir=cache, device="cpu", progress=False)
first = images[0]
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "images": len(images), "shape": list(first.shape),
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def start(table: Path, cache: Path, work: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(table), str(cache), str(work)], check=True,
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
    cache = args.work / "features"
    shutil.rmtree(cache, ignore_errors=True)
    for label in ("first (encode + store)", "next (read back)"):
        r = start(root / "train.tsv", cache, args.work / "models")
        files = sum(1 for _ in cache.rglob("*.safetensors"))
        print(f"| {r['images']:,} | {label} | {1000 * r['seconds'] / r['images']:.2f} | {r['rss'] / 2 ** 20:.0f} MiB "
              f"| {files:,} |", flush=True)


if __name__ == "__main__":
    main()
