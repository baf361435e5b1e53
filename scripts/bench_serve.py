"""Load test of `memecap serve` on 127.0.0.1: throughput and latency with dynamic batching against
one request at a time, against `memecap caption` over the same images, and an overload run
(more clients than the queue takes) counting refusals and the server's peak memory.

    python scripts/bench_serve.py tests/data/exports/clipcap --images tests/data/exports/images
    python scripts/bench_serve.py runs/gemma_ocr/final --images memes/images --requests 64 --clients 8

Every request gets an answer (a caption, or a refusal counted by status); a request that gets
neither (a dropped connection) is counted as lost and fails the script.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def start_server(model: str, *flags: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "memecap", "serve", model, "--port", "0", *flags],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    match = re.search(r"at (http://[^/]+)/", line)
    if not match:
        process.kill()
        sys.exit(f"the server did not start: {line}{process.stderr.read()}")
    return process, match.group(1)


def stop_server(process: subprocess.Popen) -> int:
    """The server's peak resident memory in MiB, read just before it is stopped."""
    peak = 0
    with open(f"/proc/{process.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) // 1024
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    return peak


def one_request(url: str, body: bytes) -> tuple[int, float]:
    start = time.perf_counter()
    request = urllib.request.Request(f"{url}/caption?strategy=greedy", data=body,
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        err.read()
        status = err.code
    except OSError:
        status = 0  # no answer at all: lost
    return status, time.perf_counter() - start


def load(url: str, bodies: list[bytes], requests: int, clients: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: one_request(url, bodies[i % len(bodies)]), range(requests)))
    wall = time.perf_counter() - start
    ok = sorted(seconds for status, seconds in results if status == 200)
    return {"wall": wall, "statuses": Counter(status for status, _ in results), "ok": len(ok),
            "per_s": len(ok) / wall, "p50": statistics.median(ok) if ok else float("nan"),
            "p95": ok[max(0, int(round(0.95 * len(ok))) - 1)] if ok else float("nan")}


def serve_run(model: str, bodies: list[bytes], requests: int, clients: int, *flags: str) -> dict:
    process, url = start_server(model, *flags)
    try:
        one_request(url, bodies[0])  # the first request of a process pays for lazy set-up: not measured
        result = load(url, bodies, requests, clients)
    finally:
        result_peak = stop_server(process)
    return {**result, "peak_mib": result_peak}


def caption_command(model: str, images: list[Path], requests: int, batch_size: int) -> float:
    """Seconds `memecap caption` takes over `requests` images (model loading included)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i in range(requests):
            source = images[i % len(images)]
            shutil.copy(source, folder / f"{i}{source.suffix}")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "memecap", "caption", str(folder), "--model", model, "--out",
                        str(Path(tmp) / "captions.jsonl"), "--strategy", "greedy", "--batch-size", str(batch_size),
                        "--quiet"], check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="what `memecap serve` takes: a run or export folder, or ocr_template")
    parser.add_argument("--images", required=True, type=Path, help="folder of images sent in turn")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--overload-queue", type=int, default=4, help="--max-queue of the overload run")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        sys.exit(f"{args.images}: no images")
    bodies = [p.read_bytes() for p in images]
    batched = serve_run(args.model, bodies, args.requests, args.clients, "--max-batch", str(args.max_batch),
                        "--max-wait-ms", str(args.max_wait_ms))
    single = serve_run(args.model, bodies, args.requests, args.clients, "--max-batch", "1")
    overload = serve_run(args.model, bodies, args.requests, args.requests, "--max-batch", str(args.max_batch),
                         "--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(args.overload_queue))
    command = caption_command(args.model, images, args.requests, args.max_batch)
    print(f"{args.requests} requests, {args.clients} concurrent clients, {len(images)} distinct images, "
          f"greedy, {os.cpu_count()} CPU cores\n")
    print("| how | captions/s | p50 latency (s) | p95 latency (s) | answers by status | server peak RSS (MiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in ((f"serve, batches <= {args.max_batch}, wait {args.max_wait_ms:g} ms", batched),
                    ("serve, one request at a time (--max-batch 1)", single),
                    (f"serve under overload: {args.requests} clients at once, --max-queue {args.overload_queue}",
                     overload)):
        statuses = ", ".join(f"{code or 'lost'}: {n}" for code, n in sorted(r["statuses"].items()))
        print(f"| {name} | {r['per_s']:.2f} | {r['p50']:.3f} | {r['p95']:.3f} | {statuses} | {r['peak_mib']} |")
    print(f"| `memecap caption` over {args.requests} copies (batch {args.max_batch}, model loading included) | "
          f"{args.requests / command:.2f} | - | - | - | - |")
    lost = sum(r["statuses"].get(0, 0) for r in (batched, single, overload))
    if lost:
        print(f"\n{lost} request(s) got no answer", file=sys.stderr)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
