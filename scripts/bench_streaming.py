"""Streaming rows: one epoch's read time per image and peak RSS, tar shards of tiny JPEGs, 1 and 2 processes.

    python scripts/bench_streaming.py --images 10000 100000 --shards 100

Each process reads its share of the shards (memecap.data.streaming.RowStream) and checks each image's header;
pixels are not decoded (that is the model transform's cost, the same with or without streaming).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

READ = """
import resource, sys, time
from memecap.data.streaming import RowStream, shard_paths
start = time.perf_counter()
n = sum(1 for _ in RowStream(shard_paths(sys.argv[1]), rank=int(sys.argv[2]), world_size=int(sys.argv[3])))
print(n, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_shards(root: Path, images: int, shards: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 30, 200)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    per = images // shards
    for s in range(shards):
        with tarfile.open(root / f"train-{s:06d}.tar", "w") as tar:
            for i in range(per):
                for name, data in ((f"{s}_{i}.jpg", jpeg), (f"{s}_{i}.txt", f"подпись {s} {i}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / f"train-{{000000..{shards - 1:06d}}}.tar")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--shards", type=int, default=100)
    args = parser.parse_args()
    print("| images | processes | rows/process | epoch s (slowest) | µs per image (wall / images) | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for images in args.images:
        with tempfile.TemporaryDirectory() as tmp:
            spec = write_shards(Path(tmp), images, args.shards)
            for world in (1, 2):
                procs = [subprocess.Popen([sys.executable, "-c", READ, spec, str(r), str(world)],
                                          stdout=subprocess.PIPE, text=True) for r in range(world)]
                out = [p.communicate()[0].split() for p in procs]
                rows = [int(o[0]) for o in out]
                secs = max(float(o[1]) for o in out)
                rss = max(int(o[2]) for o in out) / 1024
                assert sum(rows) == images, rows
                print(f"| {images} | {world} | {rows[0]} | {secs:.2f} | {secs / images * 1e6:.1f} | {rss:.0f} |")



if __name__ == "__main__":
    main()
