"""What the SCST reward costs on CPU: CIDEr-D (document frequencies from the training split), quote,
length and repetition parts for K captions per validation image of a TSV dataset (uid, text). Training
captions drawn at random stand in for samples, so the reward values are a floor, not a model's.

    .venv/bin/python scripts/bench_scst_reward.py --data /work/shared/data/memes-sample --samples 5
"""
import argparse
import csv
import random
import time
from pathlib import Path

from memecap.config import ScstConfig
from memecap.training.scst import CiderDReward, caption_rewards


def captions(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f, delimiter="\t")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    train, val = captions(args.data / "train.tsv"), captions(args.data / "val.tsv")
    start = time.perf_counter()
    cider = CiderDReward([[t] for t in train])
    setup = time.perf_counter() - start
    random.seed(0)
    samples = [c for _ in val for c in random.sample(train, args.samples)]
    references = [[v] for v in val for _ in range(args.samples)]
    start = time.perf_counter()
    parts = caption_rewards(samples, references, [""] * len(samples), cider, ScstConfig(length=1, repetition=1))
    elapsed = time.perf_counter() - start
    print(f"| {len(train)} | {len(val)} x {args.samples} | {setup * 1000:.0f} ms | {elapsed * 1000:.0f} ms "
          f"| {elapsed / len(samples) * 1000:.2f} ms |")
    print({name: round(sum(v) / len(v), 3) for name, v in parts.items()})


if __name__ == "__main__":
    main()
