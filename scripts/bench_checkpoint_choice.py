"""Would choosing an scst run's checkpoint on held-out memes beat taking its last step?

Each kept checkpoint of each run (and the checkpoint the runs started from, as step 0) captions
`--val` once, as `memecap eval` does. Then, over `--splits` random halvings of val: on one half the
checkpoint with the highest CIDEr-D is chosen per run, and it is scored on the other half, against
the last step and the starting checkpoint scored on that same half (and the halves swapped). Per-meme
CIDEr-D uses the document frequencies of all of val's references, so a half's score is the mean of
its memes' scores and no prediction informs the choice on the half that scores it.

    python scripts/bench_checkpoint_choice.py --before runs/gemma_ocr/checkpoints/step_0000150 \
      --runs runs/scst_seed0 runs/scst_seed1 --val memes/val.tsv --work runs/choice
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def captioned(model: Path, val: str, out: Path, cache_dir: str | None) -> list[dict]:
    """`model`'s predictions on `val` (written once to `out`, read back on a later call)."""
    if not out.exists():
        from memecap.inference.exported import evaluate_export

        partial = out.with_suffix(".partial")
        evaluate_export(model, val, out_path=partial, cache_dir=cache_dir, progress=False)
        partial.replace(out)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def per_meme_cider(rows: list[dict], df, n_documents: int) -> dict[str, float]:
    from memecap.metrics.cider_score import cider_d_with_df
    from memecap.metrics.tokenization import tokenize

    scores = cider_d_with_df([tokenize(r["prediction"]) for r in rows],
                             [[tokenize(ref) for ref in r["references"]] for r in rows], df, n_documents)
    return {r["uid"]: s for r, s in zip(rows, scores)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the checkpoint the runs started from")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="scst run folders (their checkpoints/)")
    parser.add_argument("--val", required=True)
    parser.add_argument("--work", type=Path, required=True, help="where the predictions are kept")
    parser.add_argument("--splits", type=int, default=1000)
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="caption only these kept steps (each captioning takes minutes on a CPU)")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from memecap.metrics.cider_score import document_frequency
    from memecap.metrics.tokenization import tokenize

    args.work.mkdir(parents=True, exist_ok=True)
    before_rows = captioned(args.before, args.val, args.work / "before.jsonl", args.cache_dir)
    df = document_frequency([[tokenize(ref) for ref in r["references"]] for r in before_rows])
    before = per_meme_cider(before_rows, df, len(before_rows))
    runs = {}
    for run in args.runs:
        steps = {0: before}
        for checkpoint in sorted((run / "checkpoints").glob("step_*")):
            step = int(checkpoint.name.split("_")[1])
            if args.steps is not None and step not in args.steps:
                continue
            out = args.work / f"{run.parent.name}_{run.name}_{checkpoint.name}.jsonl"
            print(f"{run}: step {step}", flush=True)
            steps[step] = per_meme_cider(captioned(checkpoint, args.val, out, args.cache_dir), df, len(before_rows))
        runs[run] = steps
    uids = sorted(before)

    def mean(scores, memes):
        return sum(scores[u] for u in memes) / len(memes)

    print("\nCIDEr-D on all of val, per run and step:")
    for run, steps in runs.items():
        print(f"  {run}: " + ", ".join(f"{s}: {mean(c, uids):.3f}" for s, c in sorted(steps.items())))
    rng = random.Random(0)
    chosen_total = last_total = before_total = 0.0
    picks: dict[int, int] = {}
    for _ in range(args.splits):
        shuffled = rng.sample(uids, len(uids))
        halves = (shuffled[:len(uids) // 2], shuffled[len(uids) // 2:])
        for choose_on, score_on in (halves, halves[::-1]):
            for steps in runs.values():
                step = max(steps, key=lambda s: (mean(steps[s], choose_on), s))
                picks[step] = picks.get(step, 0) + 1
                chosen_total += mean(steps[step], score_on)
                last_total += mean(steps[max(steps)], score_on)
                before_total += mean(before, score_on)
    n = 2 * args.splits * len(runs)
    chosen, last, start = chosen_total / n, last_total / n, before_total / n
    print(f"\nheld-out CIDEr-D, mean over {args.splits} halvings x 2 x {len(runs)} runs:")
    print(f"  starting checkpoint {start:.3f}")
    print(f"  last step           {last:.3f} ({last / start - 1:+.1%})")
    print(f"  chosen on the other half {chosen:.3f} ({chosen / start - 1:+.1%})")
    print("  steps chosen: " + ", ".join(f"{s}: {c / n:.0%}" for s, c in sorted(picks.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
