"""Does a trained captioner look at the picture? Captions a table twice: as it is, and with each
meme's picture swapped for another meme's (its OCR text kept), then prints the metrics of both and
how often the captions name the cat, dog, man, ... that the references name (memecap/looks.py).

    .venv/bin/python scripts/bench_looks.py runs/x --data memes/val.tsv [--seed 0] [--out runs/x/looks]

Writes both predictions files (for `memecap report`) and looks.json beside them.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from memecap.data.tables import load_split
from memecap.evaluation import compute_metrics, write_predictions
from memecap.inference.exported import caption_items, default_device, open_model
from memecap.looks import SwappedPictures, class_naming, derangement, overall_recall

METRICS = ("bleu1", "bleu4", "meteor", "cider", "rougeL", "quote")


def naming_table(rows_own, rows_swapped_own, rows_swapped_picture) -> list[str]:
    lines = ["| class | memes | named (own picture) | named (swapped: own meme's) | named (swapped: the picture's) "
             "| named where no reference does (own) |", "| --- | --- | --- | --- | --- | --- |"]
    for own, sw, pic in zip(rows_own, rows_swapped_own, rows_swapped_picture):
        lines.append(f"| {own.name} | {own.memes} | {own.named}/{own.memes} | {sw.named}/{sw.memes} | "
                     f"{pic.named}/{pic.memes} | {own.named_wrongly}/{own.others} |")
    lines.append(f"| all | {sum(r.memes for r in rows_own)} | {overall_recall(rows_own):.2f} | "
                 f"{overall_recall(rows_swapped_own):.2f} | {overall_recall(rows_swapped_picture):.2f} | |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run, export or checkpoint folder")
    ap.add_argument("--data", required=True, help="table (.tsv/.csv/.jsonl)")
    ap.add_argument("--seed", type=int, default=0, help="which swap of pictures")
    ap.add_argument("--out", help="folder for the predictions and looks.json (default: MODEL/looks)")
    ap.add_argument("--scoring", choices=["memecap", "seed"], default="memecap")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/memecap/features"),
                    help="feature and OCR cache (the training run's cache.dir reuses its OCR)")
    args = ap.parse_args()

    loaded = open_model(args.model)
    out = Path(args.out) if args.out else loaded.home / "looks"
    examples, _ = load_split(args.data, log=print)
    references = [list(ex.captions) for ex in examples]
    device = default_device()
    items = loaded.model.image_inputs([ex.image_path for ex in examples], cache_dir=args.cache_dir,
                                      device=device, progress=True)
    order = derangement(len(items), args.seed)
    generation = loaded.generation
    own = [c[0] for c in caption_items(loaded.model, items, generation, device=device, batch_size=args.batch_size)]
    swapped = [c[0] for c in caption_items(loaded.model, SwappedPictures(items, order), generation, device=device,
                                           batch_size=args.batch_size)]

    scores = {arm: compute_metrics(preds, references, scoring=args.scoring)
              for arm, preds in (("own", own), ("swapped", swapped))}
    naming = {"own": class_naming(own, references), "swapped_own_meme": class_naming(swapped, references),
              "swapped_picture": class_naming(swapped, [references[j] for j in order])}
    for arm, preds in (("own", own), ("swapped", swapped)):
        write_predictions(out / f"predictions-{arm}.jsonl",
                          [{"uid": ex.uid, "references": refs, "prediction": p,
                            **({"picture_of": examples[j].uid} if arm == "swapped" else {})}
                           for ex, refs, p, j in zip(examples, references, preds, order)])
    summary = {"model": str(args.model), "data": str(args.data), "seed": args.seed, "scoring": args.scoring,
               "metrics": scores,
               "naming": {arm: [vars(r) for r in rows] for arm, rows in naming.items()},
               "naming_recall": {arm: overall_recall(rows) for arm, rows in naming.items()}}
    (out / "looks.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")

    print("| pictures | " + " | ".join(METRICS) + " |")
    print("| --- |" + " --- |" * len(METRICS))
    for arm in ("own", "swapped"):
        print(f"| {arm} | " + " | ".join(f"{scores[arm].get(m, float('nan')):.3f}" for m in METRICS) + " |")
    print()
    print("\n".join(naming_table(naming["own"], naming["swapped_own_meme"], naming["swapped_picture"])))
    print(f"\nwritten: {out}/predictions-own.jsonl, predictions-swapped.jsonl, looks.json")


if __name__ == "__main__":
    main()
