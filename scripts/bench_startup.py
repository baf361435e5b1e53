"""Time from process start to the first optimizer step: `memecap train demo` against a bare script.

    .venv/bin/python scripts/bench_startup.py [--repeats 5]
    git worktree add /tmp/before COMMIT && .venv/bin/python scripts/bench_startup.py --before /tmp/before

Each measurement is a fresh Python process started from here. A global optimizer-step hook
(`torch.optim.optimizer.register_optimizer_step_post_hook`, registered the same way in both) reports
at the first step the wall time since the process was spawned and the CPU time the process has used
(less sensitive than wall time to other jobs on a shared machine), then ends the process. The arms
run interleaved, so drift in the machine's load hits them alike; printed as Markdown rows for
docs/benchmarks.md: each arm's median (min-max) times and, against the bare script, the ratio of
each round's pair summarised as median (min-max), then every round's wall ratio. `--before DIR`
also times `memecap train demo` from another checkout of memecap (put first on PYTHONPATH), in the
same interleaving.

The run folder and the feature cache are emptied before every memecap run, so the encoder runs in
every arm; the image check's cache (`cache.dir/image_checks/`) is kept from an untimed first run, as
at any start after the first on the same data. `--cold` empties it too (a first start).

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
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run first in every measured process: torch's optimizer module is imported before the hook in both arms.
LAUNCHER = """
import json, os, sys, time
from torch.optim.optimizer import register_optimizer_step_post_hook

def first_step(*args):
    stamp = {"wall": time.time(), "cpu": time.process_time()}
    print("FIRST_STEP " + json.dumps(stamp), file=sys.__stdout__, flush=True)
    os._exit(0)

register_optimizer_step_post_hook(first_step)
sys.argv = sys.argv[1:]
if sys.argv[0] == "--bare":
    sys.path.insert(0, os.path.dirname(sys.argv[1]))
    import bench_startup
    bench_startup.bare(sys.argv[2])
else:
    import runpy
    runpy.run_module("memecap.train", run_name="__main__")
"""


def bare(data_dir: str) -> None:
    """The bare script: the same model and data, one optimizer step, nothing else."""
    import torch

    from memecap.config import load_config
    from memecap.models import build_model
    from memecap.data.datasets import CaptionTrainSet

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


def measure(args: list[str], checkout: str | None = None) -> tuple[float, float]:
    """(wall seconds from spawn to the first optimizer step, CPU seconds the process used by then)."""
    env = dict(os.environ)
    if checkout:
        env["PYTHONPATH"] = os.pathsep.join([checkout, *filter(None, [env.get("PYTHONPATH")])])
    start = time.time()
    # Not from this folder: `python -c` puts the working directory first on sys.path, where a
    # checkout's memecap would shadow the one on PYTHONPATH.
    out = subprocess.run([sys.executable, "-c", LAUNCHER, *args], capture_output=True, text=True, env=env,
                         cwd=tempfile.gettempdir())
    lines = [line for line in out.stdout.splitlines() if line.startswith("FIRST_STEP ")]
    if not lines:
        raise RuntimeError(f"no optimizer step in {args}: {out.stderr[-2000:]}")
    stamp = json.loads(lines[0].split(" ", 1)[1])
    return stamp["wall"] - start, stamp["cpu"]


def memecap_args(run_dir: Path, keep_checks: bool) -> list[str]:
    from memecap.data.fingerprint import CHECKS_FOLDER

    for path in run_dir.iterdir():  # keep the generated data; a run's outputs must not carry over
        if path.name == "cache" and keep_checks:
            for entry in path.iterdir():
                if entry.name != CHECKS_FOLDER:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        elif path.name != "data":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return ["memecap.train", "demo", f"train.output_dir={run_dir}", f"cache.dir={run_dir / 'cache'}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", metavar="DIR", help="another memecap checkout to time in the same runs")
    parser.add_argument("--cold", action="store_true", help="empty the image check's cache before every run too")
    args = parser.parse_args()
    arms = ["memecap", "bare"] + (["before"] if args.before else [])
    results: dict[str, list[tuple[float, float]]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "demo"
        run_dir.mkdir()
        from memecap.config import load_config
        from memecap.data.sources import synthetic_tables

        data_dir = synthetic_tables(load_config("demo", []).data, run_dir)["train"].parent
        if not args.cold:  # untimed: the first start on this data fills the image check's cache
            measure(memecap_args(run_dir, keep_checks=True))
        for r in range(args.repeats):
            for arm in arms:
                if arm == "bare":
                    results[arm].append(measure(["--bare", os.path.abspath(__file__), str(data_dir)]))
                else:
                    results[arm].append(measure(memecap_args(run_dir, not args.cold),
                                                args.before if arm == "before" else None))
            done = (f"{arm} {results[arm][-1][0]:.2f} s wall / {results[arm][-1][1]:.2f} s CPU" for arm in arms)
            print(f"run {r}: " + ", ".join(done), flush=True)
    report(results, args.before)


def pair_ratios(arm: list[tuple[float, float]], bare: list[tuple[float, float]], i: int) -> list[float]:
    """The ratio of each interleaved pair (round r of the arm against round r of the bare script):
    the two ran back to back, so they saw about the same load."""
    return [a[i] / b[i] for a, b in zip(arm, bare)]


def spread(values: list[float], unit: str = "x") -> str:
    """median (min-max)"""
    return f"{statistics.median(values):.2f}{unit} ({min(values):.2f}-{max(values):.2f})"


def report(results: dict, before: str | None) -> None:
    print("| run | wall to the first step | CPU by then | wall / bare, per pair | CPU / bare, per pair |")
    print("| --- | --- | --- | --- | --- |")
    for arm, label in (("memecap", "memecap train demo"), ("before", f"memecap train demo from {before}")):
        if arm in results:
            times = [spread([x[i] for x in results[arm]], " s") for i in range(2)]
            ratios = [spread(pair_ratios(results[arm], results["bare"], i)) for i in range(2)]
            print(f"| {label} | {times[0]} | {times[1]} | {ratios[0]} | {ratios[1]} |")
    bare = [spread([x[i] for x in results["bare"]], " s") for i in range(2)]
    print(f"| bare script | {bare[0]} | {bare[1]} | 1.00x | 1.00x |")
    for arm in ("memecap", "before"):
        if arm in results:
            pairs = ", ".join(f"{w:.2f}x" for w in pair_ratios(results[arm], results["bare"], 0))
            print(f"{arm}: wall ratio of each round: {pairs}")

if __name__ == "__main__":
    main()
