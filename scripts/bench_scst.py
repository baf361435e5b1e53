"""Self-critical fine-tuning measured on the demo: a cross-entropy stage, then an scst stage from its
weights, through `memecap train` (one recipe, two stages). Prints, for each stage's end, the val
metrics the loop scored (CIDEr-D, BLEU-4, METEOR, ...) and the time per optimizer step.

    .venv/bin/python scripts/bench_scst.py --ce-epochs 16 --scst-steps 60 [--seeds 0 1 2] [key=value ...]

The demo's synthetic set (2,000 train / 200 val images) is made once under --work; extra key=value
overrides go to both stages' run (e.g. scst.samples=5 scst.baseline=greedy).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHOWN = ("cider", "bleu4", "meteor", "rougeL", "quote", "val_loss")


def stage_timings(log: Path) -> list[float]:
    """Median seconds per optimizer step of each stage, between consecutive train records with no
    evaluation between them (an evaluation's generation would count as training time)."""
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    evals = [r["step"] for r in rows if r["kind"] == "eval"]
    per_stage: dict[int, list[float]] = {}
    train = [r for r in rows if r["kind"] == "train"]
    for a, b in zip(train, train[1:]):
        if a.get("stage", 0) == b.get("stage", 0) and not any(a["step"] < e <= b["step"] for e in evals):
            per_stage.setdefault(b.get("stage", 0), []).append((b["time"] - a["time"]) / (b["step"] - a["step"]))
    return [statistics.median(t) if t else float("nan") for _, t in sorted(per_stage.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ce-epochs", type=int, default=16)
    parser.add_argument("--scst-steps", type=int, default=60)
    parser.add_argument("--scst-lr", type=float, default=1e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench_scst"))
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, str(REPO))
    from memecap.config import load_config
    from memecap.data.sources import synthetic_tables

    tables = synthetic_tables(load_config("demo").data, args.work)
    print("| seed | after | " + " | ".join(SHOWN) + " | s/step |")
    print("|---" * (len(SHOWN) + 3) + "|")
    for seed in args.seeds:
        out = args.work / f"seed{seed}"
        stages = (f"stages=[{{name: ce, train: [{tables['train']}], val: {tables['val']}, epochs: {args.ce_epochs}}}, "
                  f"{{name: scst, train: [{tables['train']}], val: {tables['val']}, max_steps: {args.scst_steps}, "
                  f"lr: {args.scst_lr}, objective: scst}}]")
        cmd = [sys.executable, "-m", "memecap", "train", "demo", "data.train=", "data.val=", stages,
               f"train.output_dir={out}", f"train.seed={seed}", "train.progress_bar=false", "train.trackers=[]",
               "train.overwrite=true", "eval.compare_constant=false", *overrides]
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        state = json.loads(sorted((out / "checkpoints").glob("step_*"))[-1].joinpath("trainer_state.json").read_text())
        ends = state["history"]
        ce_end = max((h for h in ends if h["step"] <= state["stage_start_step"]), key=lambda h: h["step"])
        timings = stage_timings(out / "log.jsonl")
        for name, h, t in (("ce", ce_end, timings[0]), ("+ scst", ends[-1], timings[-1])):
            scores = " | ".join(f"{h.get(k, float('nan')):.4f}" for k in SHOWN)
            print(f"| {seed} | {name} (step {h['step']}) | {scores} | {t:.3f} |", flush=True)


if __name__ == "__main__":
    main()
