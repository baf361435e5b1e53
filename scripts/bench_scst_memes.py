"""Self-critical fine-tuning measured on real memes: from one cross-entropy checkpoint, an scst run per
seed (`train.init_from`); the checkpoint and each run's final weights are then scored on val the way
`memecap eval` scores them, and printed with the mean and the spread (max - min) over the seeds.

    DATA=../shared/data/memes-sample
    ARGS=...  # the settings the cross-entropy run was trained with (docs/benchmarks.md)
    .venv/bin/python scripts/bench_scst_memes.py --init runs/memes_ce/checkpoints/step_0000380 \\
        --seeds 0 1 2 --steps 60 --lr 3e-4 $ARGS model.ocr.enabled=true generation.quote=copy

Columns: CIDEr-D, BLEU-4, METEOR, ROUGE-L, quote CER (lower is better), the share of captions that open
exactly one quote and the share that open none, and the mean share of repeated word bigrams in a
caption (what a reward that ignores a caption's tail lets through: `на на на`). Below the table, the
checkpoint's predictions and the seeds' are compared meme by meme as `memecap compare` does: each score's
gain with a 95% bootstrap interval over the memes, the share of the checkpoint's CIDEr-D that its 10 best
memes hold (on 100 memes a few exact long quotes carry the score), and the memes that moved most. A seed's run folder
that already exists is continued (`train.resume=auto`; changed settings are refused: use a new
`--work`), so with `--time-limit 50m` a measurement longer than one sitting runs in parts: each
call stops its runs in time, and the one that finds every seed finished scores them. Extra key=value
arguments go to every scst run (they must give the model settings of the checkpoint's run; `scst.*`
weights, the sampling's `generation.temperature` and so on may be set here too). `--recipe` names
the recipe the checkpoint was trained with (the demo's tiny ClipCap unless given), e.g. the
real-weights model:

    .venv/bin/python scripts/bench_scst_memes.py --recipe clipcap_effnet_gemma_ocr \
        --init runs/gemma_ocr/checkpoints/step_0000150 --seeds 0 1 2 --steps 20 --lr 2e-4 \
        data.train=$DATA/train.tsv data.val=$DATA/val.tsv model.decoder.name=$HOME/.cache/memecap/gemma-3-270m \
        train.batch_size=2 scst.samples=4 generation.temperature=0.7 scst.kl=0.1
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCORES = ("cider", "bleu4", "meteor", "rougeL", "quote")
SHARES = ("one_quote", "no_quote", "repeated")


def scored(model: Path, val: str, out: Path, cache_dir: str | None) -> dict:
    """`model` (a checkpoint or run folder) captioned on `val` as `memecap eval` does, its predictions
    written to `out`, with the share of its captions that quote once / never and their repeated
    bigrams. Before and after are scored by this one path, so both decode with the same code and
    settings (the checkpoint's generation settings)."""
    sys.path.insert(0, str(REPO))
    from memecap.inference.exported import evaluate_export
    from memecap.metrics.quote_score import quote_spans
    from memecap.training.scst import repetition_penalty

    out.unlink(missing_ok=True)
    metrics, predictions = evaluate_export(model, val, out_path=out, cache_dir=cache_dir, progress=False)
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    captions = [row["prediction"] for row in rows]
    counts = [len(quote_spans(c)) for c in captions]
    n = len(counts)
    return {**{k: metrics[k] for k in SCORES}, "one_quote": sum(c == 1 for c in counts) / n,
            "no_quote": sum(c == 0 for c in counts) / n,
            "repeated": -sum(repetition_penalty(c) for c in captions) / n}


def paired(before: Path, after: list[Path]) -> str:
    """The checkpoint's predictions against the seeds' (their mean), meme by meme: `memecap compare`."""
    from memecap.compare import compare_predictions, format_comparison

    return format_comparison(compare_predictions(before, after, show=3))


def run_all(pending: list[tuple[list[str], Path]], jobs: int, poll_s: float = 5.0) -> list[str]:
    """Runs each (command, run folder), `jobs` at once, and waits for every one it started, also after
    one fails, so no run is left going on its own. Returns a line per failed run, naming its folder."""
    started: list[tuple[subprocess.Popen, Path]] = []
    for cmd, out in pending:
        while sum(proc.poll() is None for proc, _ in started) >= jobs:
            time.sleep(poll_s)
        if any(proc.poll() == 0 and not (done / "summary.json").is_file() for proc, done in started):
            break  # a run stopped at its time limit: the time is up for the ones after it too
        if any(proc.poll() for proc, _ in started):
            break  # one failed: start no more, finish the ones going
        started.append((subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, env=run_env(jobs)), out))
    return [failure(out, proc.wait()) for proc, out in started if proc.wait()]


def failure(out: Path, code: int) -> str:
    if code < 0:  # a signal; the kernel's out-of-memory killer sends SIGKILL
        hint = " (SIGKILL: if the machine ran out of memory, run fewer at once with --jobs)" if code == -9 else ""
        return f"scst run {out} was killed by signal {-code}{hint}"
    return f"scst run {out} failed with exit code {code} (its error is above)"


def row(name: str, scores: dict) -> str:
    cells = " | ".join(f"{scores[k]:.3f}" for k in (*SCORES, *SHARES))
    return f"| {name} | {cells} |"


def run_env(jobs: int) -> dict:
    """The environment of each run: with several at once, each gets its share of the CPU cores (one
    GPU each leaves them idle anyway); two runs of two threads each on two cores wait on each other."""
    env = dict(os.environ)
    if jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", type=Path, required=True, help="the cross-entropy checkpoint (checkpoints/step_N)")
    parser.add_argument("--recipe", default="demo", help="the recipe the checkpoint's run was trained with")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--jobs", type=int, default=1,
                        help="scst runs at once: one per GPU; on a CPU each run gets an equal share of the cores "
                             "(OMP_NUM_THREADS, unless set): on 2 cores, two 1-thread runs of the real-weights "
                             "model made 1.4x the steps of one 2-thread run")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_scst_memes"))
    parser.add_argument("--time-limit", help="each run's train.time_limit (e.g. 50m): runs that stop there are "
                                             "continued by the same command later, and scoring waits for all")
    args, overrides = parser.parse_known_args()
    settings = dict(o.split("=", 1) for o in overrides if "=" in o)
    val, cache_dir = settings["data.val"], settings.get("cache.dir")
    args.work.mkdir(parents=True, exist_ok=True)
    limit = [f"train.time_limit={args.time_limit}"] if args.time_limit else []
    pending = []
    for seed in args.seeds:
        out = args.work / f"seed{seed}"
        if (out / "summary.json").is_file():
            continue
        # The run's own closing evaluation reads two val rows: the whole of val is scored below, once.
        pending.append(([sys.executable, "-m", "memecap", "train", args.recipe, *overrides, "data.max_val_rows=2",
                        f"train.init_from={args.init}",
                        "train.objective=scst", f"train.max_steps={args.steps}", f"train.eval_every={args.steps}",
                        f"optim.lr={args.lr}", "optim.warmup_steps=0", f"train.seed={seed}", f"train.output_dir={out}",
                        "train.progress_bar=false", "train.trackers=[]", "eval.compare_constant=false",
                        "train.resume=auto", *limit], out))  # an unfinished run continues; changed settings are refused
    failed = run_all(pending, args.jobs)
    if failed:
        raise SystemExit("\n".join(failed))
    unfinished = [seed for seed in args.seeds if not (args.work / f"seed{seed}" / "summary.json").is_file()]
    if unfinished:
        print(f"seeds {unfinished} not finished (the time limit came first): the same command continues", flush=True)
        return
    before = scored(args.init, val, args.work / "before.jsonl", cache_dir)
    header = "| model | CIDEr-D | BLEU-4 | METEOR | ROUGE-L | quote CER | one quote | no quote | repeated bigrams |"
    print("\n".join([header, "|---" * 9 + "|", row(f"cross-entropy ({args.init.name})", before)]), flush=True)
    after = []
    for seed in args.seeds:
        after.append(scored(args.work / f"seed{seed}" / "final", val, args.work / f"seed{seed}.jsonl", cache_dir))
        print(row(f"+ scst, seed {seed}", after[-1]), flush=True)
    keys = (*SCORES, *SHARES)
    mean = {k: sum(a[k] for a in after) / len(after) for k in keys}
    spread = {k: max(a[k] for a in after) - min(a[k] for a in after) for k in keys}
    print(row(f"+ scst, mean of {len(after)}", mean))
    print(row("+ scst, spread (max - min)", spread))
    gain = f" ({(mean['cider'] / before['cider'] - 1) * 100:+.1f}%)" if before["cider"] else ""
    print(f"CIDEr-D {before['cider']:.3f} -> {mean['cider']:.3f}{gain}, "
          f"METEOR {before['meteor']:.3f} -> {mean['meteor']:.3f}")
    print("\n" + paired(args.work / "before.jsonl", [args.work / f"seed{seed}.jsonl" for seed in args.seeds]))


if __name__ == "__main__":
    main()
