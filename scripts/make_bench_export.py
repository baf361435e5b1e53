"""A LoRA export of a recipe's model with random weights, for timing merge and serve without a
training run: memory and speed do not need trained weights.

    python scripts/make_bench_export.py runs/bench_export demo model.decoder.mode=lora \\
        model.tiny.gpt_width=768 model.tiny.gpt_layers=12 model.tiny.gpt_heads=12   # GPT-2 small's shape
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from memecap.config import GenerationConfig, load_config
from memecap.data.synthetic import sample_pairs
from memecap.models import build_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="a new folder for the export")
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists: name a new folder")
    cfg = load_config(args.recipe, args.overrides)
    torch.manual_seed(0)
    texts = [caption for _, caption in sample_pairs(200, image_size=64)]  # the BPE of a tiny base learns them
    model = build_model(cfg.model, work_dir=args.out.parent / f"{args.out.name}-bases", train_texts=texts)
    with torch.no_grad():
        for p in model.trainable_parameters():  # a fresh adapter adds nothing (its B is zero)
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(args.out, generation=GenerationConfig(strategy="greedy", max_new_tokens=24))
    size = sum(p.numel() for p in model.parameters())
    print(f"{args.out}: {type(model).__name__}, {size / 1e6:.1f} M parameters in the module")
    return 0


if __name__ == "__main__":
    sys.exit(main())
