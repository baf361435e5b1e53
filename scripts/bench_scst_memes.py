"""Self-critical fine-tuning measured on real memes: from one cross-entropy checkpoint, an scst run per
seed (`train.init_from`), each scored on val by the loop at its end; printed beside the checkpoint's
own val scores, with the mean and the spread (max - min) over the seeds.

    DATA=../shared/data/memes-sample
    ARGS=...  # the settings the cross-entropy run was trained with (docs/benchmarks.md)
    .venv/bin/python scripts/bench_scst_memes.py --init runs/memes_ce/checkpoints/step_0000380 \\
        --seeds 0 1 2 --steps 60 --lr 5e-5 $ARGS model.ocr.enabled=true generation.quote=copy

Columns: CIDEr-D, BLEU-4, METEOR, ROUGE-L, quote CER (lower is better), the share of captions that open
exactly one quote and the share that open none, and the mean share of repeated word bigrams in a
caption (what a reward that ignores a caption's tail lets through: `на на на`). Extra key=value
arguments go to every scst run (they must give the model settings of the checkpoint's run; `scst.*`
weights, the sampling's `generation.temperature` and so on may be set here too).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCORES = ("cider", "bleu4", "meteor", "rougeL", "quote")
SHARES = ("one_quote", "no_quote", "repeated")


def eval_at(run: Path, step: int | None = None) -> dict:
    """The loop's evaluation at `step` (the last one when None) and the share of its val captions
    that quote once / never, from the predictions written with it."""
    sys.path.insert(0, str(REPO))
    from memecap.metrics.quote_score import quote_spans
    from memecap.training.scst import repetition_penalty

    rows = [json.loads(line) for line in (run / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    evals = [r for r in rows if r["kind"] == "eval" and (step is None or r["step"] == step)]
    if not evals:
        raise SystemExit(f"{run}: no evaluation at step {step} in its log.jsonl")
    found = evals[-1]
    predictions = run / "predictions" / f"step_{found['step']:07d}.jsonl"
    captions = [json.loads(line)["prediction"] for line in predictions.read_text(encoding="utf-8").splitlines()]
    counts = [len(quote_spans(c)) for c in captions]
    n = len(counts)
    share = {"one_quote": sum(c == 1 for c in counts) / n, "no_quote": sum(c == 0 for c in counts) / n,
             "repeated": -sum(repetition_penalty(c) for c in captions) / n}
    return {**{k: found[k] for k in SCORES}, "step": found["step"], **share}


def row(name: str, scores: dict) -> str:
    cells = " | ".join(f"{scores[k]:.3f}" for k in (*SCORES, *SHARES))
    return f"| {name} | {cells} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", type=Path, required=True, help="the cross-entropy checkpoint (checkpoints/step_N)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--work", type=Path, default=Path("runs/bench_scst_memes"))
    args, overrides = parser.parse_known_args()
    before = eval_at(args.init.parent.parent, int(args.init.name.split("_")[-1]))
    header = "| model | CIDEr-D | BLEU-4 | METEOR | ROUGE-L | quote CER | one quote | no quote | repeated bigrams |"
    lines = [header, "|---" * 9 + "|", row(f"cross-entropy (step {before['step']})", before)]
    print("\n".join(lines), flush=True)
    after = []
    for seed in args.seeds:
        out = args.work / f"seed{seed}"
        cmd = [sys.executable, "-m", "memecap", "train", "demo", *overrides, f"train.init_from={args.init}",
               "train.objective=scst", f"train.max_steps={args.steps}", f"train.eval_every={args.steps}",
               f"optim.lr={args.lr}", "optim.warmup_steps=0", f"train.seed={seed}", f"train.output_dir={out}",
               "train.progress_bar=false", "train.trackers=[]", "eval.compare_constant=false"]
        if not (out / "log.jsonl").is_file() or not any('"kind": "eval"' in line for line in
                                                         (out / "log.jsonl").read_text().splitlines()):
            subprocess.run([*cmd, "train.overwrite=true"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        after.append(eval_at(out))
        print(row(f"+ scst, seed {seed}", after[-1]), flush=True)
    keys = (*SCORES, *SHARES)
    mean = {k: sum(a[k] for a in after) / len(after) for k in keys}
    spread = {k: max(a[k] for a in after) - min(a[k] for a in after) for k in keys}
    print(row(f"+ scst, mean of {len(after)}", mean))
    print(row("+ scst, spread (max - min)", spread))
    gain = (mean["cider"] / before["cider"] - 1) * 100
    print(f"CIDEr-D {before['cider']:.3f} -> {mean['cider']:.3f} ({gain:+.1f}%), "
          f"METEOR {before['meteor']:.3f} -> {mean['meteor']:.3f}")


if __name__ == "__main__":
    main()
