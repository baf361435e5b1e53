"""`memecap` command line: thin wrappers over train, inference and config.

    memecap train RECIPE_OR_YAML [key=value ...]
    memecap eval RUN_OR_EXPORT --data TABLE [--scoring seed] [--out predictions.jsonl]
    memecap eval ocr_template [key=value ...] --data TABLE      # a baseline recipe: nothing to train
    memecap caption IMAGE_OR_FOLDER --model RUN_OR_EXPORT [--out captions.jsonl] [--num-beams 5]
    memecap plan RECIPE [key=value ...] [--zero 2 --offload-optimizer --processes 4]   # memory estimate
    memecap recipes            # list shipped recipes
    memecap config RECIPE [key=value ...]   # print the resolved config without running
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from memecap.config import ConfigError, list_recipes, load_config, to_yaml


def _train(args) -> int:
    from memecap import train

    return train.cli([args.recipe, *args.overrides])


def _config(args) -> int:
    print(to_yaml(load_config(args.recipe, args.overrides)), end="")
    return 0


def _plan(args) -> int:
    from memecap.plan import plan_memory

    cfg = load_config(args.recipe, args.overrides)
    plan = plan_memory(cfg, processes=args.processes, zero_stage=args.zero, offload_optimizer=args.offload_optimizer,
                       offload_params=args.offload_params, seq_len=args.seq_len, mixed_precision=args.mixed_precision)
    print(f"memory plan for {args.recipe} ({args.processes} process(es), ZeRO {args.zero or 'off'}):")
    print(plan.format())
    return 0


def _recipes(args) -> int:
    for name in list_recipes():
        print(name)
    return 0


def _generation_overrides(args):
    from memecap.config import GenerationConfig
    from memecap.generation import with_overrides

    def build(base: GenerationConfig) -> GenerationConfig:
        strategy = args.strategy or ("beam" if args.num_beams and args.num_beams > 1 else None)
        return with_overrides(base, strategy=strategy, num_beams=args.num_beams,
                              max_new_tokens=args.max_new_tokens, num_return_sequences=args.num_return_sequences,
                              top_k=args.top_k, top_p=args.top_p, temperature=args.temperature)
    return build


def _eval(args) -> int:
    from memecap.config import GenerationConfig
    from memecap.evaluation import format_metrics_table
    from memecap.inference import evaluate_model, open_model

    loaded = open_model(args.model, args.overrides)
    generation = _generation_overrides(args)(loaded.generation or GenerationConfig())
    metrics, path = evaluate_model(loaded, args.data, out_path=args.out, scoring=args.scoring,
                                   generation=generation, max_rows=args.max_rows, image_dir=args.image_dir,
                                   on_bad_row=args.on_bad_row, batch_size=args.batch_size)
    print(format_metrics_table(metrics, title=f"{loaded.home} on {args.data} ({args.scoring} scoring)"))
    print(f"predictions: {path}")
    return 0


def _caption(args) -> int:
    from memecap.config import GenerationConfig
    from memecap.inference import caption_paths, default_device, find_images, open_model

    loaded = open_model(args.model)  # a wrong --model is reported before the images are looked at
    generation = _generation_overrides(args)(loaded.generation or GenerationConfig())
    paths = find_images(Path(args.target))
    if not paths:
        print(f"memecap: no images found in {args.target}", file=sys.stderr)
        return 1
    captions = caption_paths(loaded.model, paths, generation, device=default_device(), batch_size=args.batch_size,
                             cache_dir=loaded.cache_dir)
    lines = [json.dumps({"image": str(p), "captions": caps}, ensure_ascii=False) for p, caps in zip(paths, captions)]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {len(lines)} captions to {args.out}")
    else:
        for p, caps in zip(paths, captions):
            print(f"{p}\t{caps[0]}" + "".join(f"\n\t{c}" for c in caps[1:]))
    return 0


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", choices=["greedy", "beam", "sample"], help="decoding strategy")
    p.add_argument("--num-beams", type=int, help="beam width (implies --strategy beam when > 1)")
    p.add_argument("--max-new-tokens", type=int, help="caption length cap in tokens")
    p.add_argument("--num-return-sequences", type=int, help="captions per image")
    p.add_argument("--top-k", type=int, help="sampling: top-k")
    p.add_argument("--top-p", type=float, help="sampling: nucleus mass")
    p.add_argument("--temperature", type=float, help="sampling temperature")
    p.add_argument("--batch-size", type=int, default=32, help="images per generation batch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memecap", description="Fine-tune image captioners for Russian memes.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train from a recipe (name or YAML) with key=value overrides")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="e.g. optim.lr=3e-4 train.batch_size=16")
    p.set_defaults(func=_train)

    p = sub.add_parser("config", help="print the resolved config of a recipe and overrides")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_config)

    p = sub.add_parser("plan", help="estimate accelerator memory of a recipe before downloading anything")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--processes", type=int, default=1, help="data-parallel processes (GPUs)")
    p.add_argument("--zero", type=int, choices=[0, 2, 3], default=0, help="DeepSpeed ZeRO stage (0 = off)")
    p.add_argument("--offload-optimizer", action="store_true", help="ZeRO: optimizer states in CPU RAM")
    p.add_argument("--offload-params", action="store_true", help="ZeRO-3: parameters in CPU RAM")
    p.add_argument("--seq-len", type=int, help="tokens per sample (default: prefix + OCR prompt + data.max_caption_tokens)")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="activation precision (default: the recipe's)")
    p.set_defaults(func=_plan)

    p = sub.add_parser("recipes", help="list the shipped recipes")
    p.set_defaults(func=_recipes)

    p = sub.add_parser("eval", help="score an exported model (or a run's best, or a baseline recipe) on a table")
    p.add_argument("model", help="run folder, exported model folder, or a baseline recipe (ocr_template)")
    p.add_argument("overrides", nargs="*", help="baseline recipes only: e.g. model.ocr.min_confidence=50")
    p.add_argument("--data", required=True, help="table (.tsv/.csv/.jsonl) or hf:...")
    p.add_argument("--scoring", choices=["memecap", "seed"], default="memecap")
    p.add_argument("--out", help="predictions file (JSON Lines)")
    p.add_argument("--max-rows", type=int)
    p.add_argument("--image-dir")
    p.add_argument("--on-bad-row", choices=["error", "skip"], default="error")
    _add_generation_flags(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("caption", help="caption an image or every image in a folder")
    p.add_argument("target", help="image file or folder")
    p.add_argument("--model", required=True, help="run folder, exported model folder, or a baseline recipe")
    p.add_argument("--out", help="write JSON Lines here instead of printing")
    _add_generation_flags(p)
    p.set_defaults(func=_caption)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as err:  # FileNotFoundError includes OcrUnavailable
        print(f"memecap: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
