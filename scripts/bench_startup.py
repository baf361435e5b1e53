"""Seconds from process start to the first optimizer step: `memecap train demo` against a bare script.

    .venv/bin/python scripts/bench_startup.py [--repeats 5]

Each measurement is a fresh Python process, started from here, timed from just before it is spawned
to the wall-clock time of its first optimizer step (memecap: the step-1 record of `log.jsonl`; bare:
printed right after `optimizer.step()`). The two run interleaved, so drift in the machine's load hits
both alike; medians are printed, with a Markdown row for docs/benchmarks.md.

The bare script does the least that reaches the same step: it reads the demo's table with `csv`,
builds the same model with memecap's builder (the demo's tiny CLIP, mapper and GPT-2, tokenizer fit
on the captions), and takes one AdamW step on the first batch of 32. memecap's start also validates
every row, writes the config, prepares Accelerate and a tracker, runs the fail-fast probe (a forward
pass and an 8-token generation) and picks the best constant caption. The demo's synthetic images are
generated once, before the timed runs, for both.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO_ARGS = ["train.max_steps=1", "train.log_every=1"]


def bare(data_dir: str) -> None:
    """The bare script (run in its own process by `--bare`): prints the time of its first step."""
    import torch

    from memecap.config import load_config
    from memecap.models import build_model
    from memecap.models.clipcap import CaptionTrainSet

    cfg = load_config("demo", [])
    torch.manual_seed(cfg.train.seed)
    root = Path(data_dir)
    with open(root / "train.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quotechar="&"))
    model = build_model(cfg.model, work_dir=root / "bare", train_texts=[r["text"] for r in rows])
    images = model.image_inputs([root / "images" / f"{r['uid']}.jpg" for r in rows], cache_dir=None, device="cpu",
                                progress=False)
    ids = [model.encode_caption(r["text"], cfg.data.max_caption_tokens) for r in rows]
    loader = torch.utils.data.DataLoader(CaptionTrainSet(images, ids, list(range(len(ids)))),
                                         batch_size=cfg.train.batch_size, shuffle=True, collate_fn=model.collate)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.optim.lr)
    model.train()
    model(next(iter(loader)))["loss"].backward()
    optimizer.step()
    print(json.dumps({"first_step": time.time()}))


def time_memecap(run_dir: Path) -> float:
    for path in run_dir.iterdir():  # keep the generated data; a run's outputs must not carry over
        if path.name != "data":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    start = time.time()
    subprocess.run([sys.executable, "-m", "memecap.train", "demo", f"train.output_dir={run_dir}",
                    f"cache.dir={run_dir / 'cache'}", *DEMO_ARGS], check=True, capture_output=True)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return next(r["time"] for r in records if r["kind"] == "train" and r["step"] == 1) - start


def time_bare(data_dir: Path) -> float:
    start = time.time()
    out = subprocess.run([sys.executable, __file__, "--bare", str(data_dir)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["first_step"] - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bare", metavar="DATA_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        return bare(args.bare)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "demo"
        run_dir.mkdir()
        from memecap.config import load_config
        from memecap.data.sources import synthetic_tables

        data_dir = synthetic_tables(load_config("demo", []).data, run_dir)["train"].parent
        results = []
        for r in range(args.repeats):
            results.append((time_memecap(run_dir), time_bare(data_dir)))
            print(f"run {r}: memecap train demo {results[-1][0]:.2f} s, bare script {results[-1][1]:.2f} s", flush=True)
    ours, theirs = statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)
    print(f"| time to the first optimizer step, demo ({args.repeats} interleaved runs, medians) "
          f"| {ours:.2f} s | {theirs:.2f} s | {ours / theirs:.2f}x |")


if __name__ == "__main__":
    main()
