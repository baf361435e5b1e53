"""`memecap` command line: thin wrappers over train, inference and config.

    memecap train RECIPE_OR_YAML [key=value ...]
    memecap eval RUN_OR_EXPORT --data TABLE [--scoring seed] [--out predictions.jsonl]
    memecap caption IMAGE_OR_FOLDER --model RUN_OR_EXPORT_OR_REPO [--out captions.jsonl] [--num-beams 5]
    memecap eval ocr_template [key=value ...] --data TABLE      # a baseline recipe: nothing to train
    memecap push RUN_OR_EXPORT --repo user/name [--private]
    memecap report PREDICTIONS --images DIR --out report.html
    memecap export RUN_OR_EXPORT --merge --out DIR [--dtype bfloat16]   # LoRA merged into its base, whole
    memecap serve RUN_OR_EXPORT [--port 8000] [--max-batch 8]   # HTTP: POST /caption, a web page at /
    memecap plan RECIPE [key=value ...] [--zero 2 --offload-optimizer --processes 4]   # memory estimate
    memecap recipes            # list shipped recipes
    memecap config RECIPE [key=value ...]   # print the resolved config without running
    memecap prepare RECIPE [key=value ...]  # check the data and fill the caches ahead (accelerate launch too)
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from memecap.config import ConfigError, list_recipes, load_config, to_yaml


def _train(args) -> int:
    from memecap import train
    from memecap.training.process_exit import end_launched_process

    return end_launched_process(train.cli([args.recipe, *args.overrides]))


def _prepare(args) -> int:
    from memecap import prepare

    return prepare.cli([args.recipe, *args.overrides])


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
                              top_k=args.top_k, top_p=args.top_p, temperature=args.temperature, quote=args.quote)
    return build


def _eval(args) -> int:
    from memecap.config import GenerationConfig
    from memecap.evaluation import format_metrics_table
    from memecap.inference.exported import evaluate_model, open_model

    _probe_out(args)
    loaded = open_model(args.model, args.overrides)
    generation = _generation_overrides(args)(loaded.generation or GenerationConfig())
    metrics, path = evaluate_model(loaded, args.data, out_path=args.out, scoring=args.scoring,
                                   generation=generation, max_rows=args.max_rows, image_dir=args.image_dir,
                                   on_bad_row=args.on_bad_row, batch_size=args.batch_size)
    print(format_metrics_table(metrics, title=f"{loaded.home} on {args.data} ({args.scoring} scoring)"))
    print(f"predictions: {path}")
    return 0


def _compare(args) -> int:
    import json

    from memecap.compare import compare_predictions, format_comparison

    comparison = compare_predictions(Path(args.before), [Path(p) for p in args.after], scoring=args.scoring,
                                     resamples=args.resamples, level=args.level, seed=args.seed, by=args.by,
                                     show=args.show)
    print(json.dumps(comparison.to_json(), ensure_ascii=False, indent=1) if args.json
          else format_comparison(comparison))
    worse = [m.name for m in comparison.metrics if m.verdict == "worse"]
    if args.fail_if_worse and worse:
        print(f"memecap: worse beyond chance: {', '.join(worse)}", file=sys.stderr)
        return 1
    return 0


def _caption(args) -> int:
    from memecap.inference.caption_folder import done_images, refuse_non_file
    from memecap.outputs.file_lock import sole_writer

    if not args.out:
        return _caption_run(args)
    _probe_out(args)
    refuse_non_file(Path(args.out))
    # One writer per captions file, for the whole run: a second `caption` on it is refused at once.
    with sole_writer(Path(args.out), "--out"):
        done_images(Path(args.out))  # refuse a file that is not ours before minutes of model loading
        return _caption_run(args)


def _caption_run(args) -> int:
    from memecap.inference.caption_folder import caption_folder
    from memecap.inference.captioner import Captioner
    from memecap.outputs.file_names import shown

    captioner = Captioner.from_pretrained(args.model, revision=args.revision, device=args.device)
    generation = _generation_overrides(args)(captioner.generation)

    def show(row: dict) -> None:
        if not args.out:
            print(f"{shown(row['image'])}\t{row['caption']}" + "".join(f"\n\t{c}" for c in row.get("alternatives", [])))

    report = caption_folder(captioner.model, Path(args.target), generation, device=captioner.device,
                            out=Path(args.out) if args.out else None, batch_size=args.batch_size,
                            progress=not args.quiet, emit=show)
    print(report.format(Path(args.out) if args.out else None), file=sys.stderr)
    return 1 if report.captioned + report.already_done == 0 else 0


def _push(args) -> int:
    from memecap.publish.hub import PushError, push, stage_export
    from memecap.inference.exported import resolve_export

    if args.dry_run:  # what would be uploaded, staged locally; nothing is sent
        import tempfile

        export = resolve_export(Path(args.model))
        with tempfile.TemporaryDirectory(prefix="memecap-dry-run-") as staging:
            files = stage_export(export, Path(staging), repo_id=args.repo, license=args.license, datasets=args.dataset)
        width = max(len(name) for name, _ in files)
        print("\n".join(f"{name:<{width}}  {size:>13,} bytes" for name, size in files))
        print(f"{len(files)} files, {sum(size for _, size in files):,} bytes "
              f"would be pushed from {export} to {args.repo}")
        return 0
    try:
        push(Path(args.model), args.repo, private=args.private, license=args.license, datasets=args.dataset,
             commit_message=args.message)
    except PushError as err:
        from memecap.outputs.redact import redact

        print(f"memecap: {redact(str(err))}", file=sys.stderr)  # two lines: what failed, how to retry
        return 1
    return 0


def _report(args) -> int:
    from memecap.outputs.file_names import shown
    from memecap.publish.report import write_report

    _probe_out(args)
    summary = write_report(Path(args.predictions), Path(args.out), images_dir=args.images,
                           log_path=Path(args.log) if args.log else None, title=args.title, scoring=args.scoring,
                           compare=Path(args.compare) if args.compare else None)
    missing = f", {summary['images_missing']} without an image" if summary["images_missing"] else ""
    refused = (f" ({summary['images_refused']} named a path outside {args.images or 'the predictions folder'}, "
               "not read)" if summary["images_refused"] else "")
    print(shown(f"wrote {args.out}: {summary['examples']} examples{missing}{refused}"))
    return 0


def _export(args) -> int:
    from memecap.merging import merge_export

    images = None
    if args.images:
        from memecap.inference.exported import IMAGE_SUFFIXES
        from memecap.inference.folder_listing import list_files

        root, files, _ = list_files(Path(args.images))
        images = [root / f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise FileNotFoundError(f"--images {args.images}: no images there")
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(args.dtype, args.dtype)
    report = merge_export(Path(args.model), Path(args.out), dtype=dtype, images=images, sample=args.sample,
                          device=args.device)
    print(report.format())
    return 0


def _serve(args) -> int:
    try:
        from memecap.serve.server import serve
    except ModuleNotFoundError as err:
        if err.name not in ("fastapi", "starlette", "uvicorn"):
            raise
        raise FileNotFoundError(f"memecap serve needs {err.name}: pip install 'memecap[serve]'") from None
    from memecap.serve.settings import ServeSettings

    settings = ServeSettings(host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             max_queue=args.max_queue, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                             max_pixels=args.max_pixels, max_new_tokens=args.max_new_tokens, max_beams=args.max_beams,
                             api_key_env=args.api_key_env, allow_files=args.allow_files)
    return serve(args.model, args.overrides, settings, device=args.device)


def _number(kind=int, low=None, high=None, above=None, below=None):
    """An argparse type: a number in range, so `--batch-size 0` is a usage error, not a crash later."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if not ((low is None or value >= low) and (high is None or value <= high) and (above is None or value > above)
                and (below is None or value < below)):
            bounds = [f">= {low}" if low is not None else "", f"> {above}" if above is not None else "",
                      f"<= {high}" if high is not None else "", f"< {below}" if below is not None else ""]
            raise argparse.ArgumentTypeError(f"must be {' and '.join(b for b in bounds if b)}, got {text}")
        return value
    return parse


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", choices=["greedy", "beam", "sample"], help="decoding strategy")
    p.add_argument("--num-beams", type=_number(low=1), help="beam width (implies --strategy beam when > 1)")
    p.add_argument("--max-new-tokens", type=_number(low=1), help="caption length cap in tokens")
    p.add_argument("--num-return-sequences", type=_number(low=1), help="captions per image")
    p.add_argument("--top-k", type=_number(low=0), help="sampling: top-k (0 = off)")
    p.add_argument("--top-p", type=_number(float, above=0.0, high=1.0), help="sampling: nucleus mass")
    p.add_argument("--temperature", type=_number(float, above=0.0), help="sampling temperature")
    p.add_argument("--quote", choices=["free", "copy"],
                   help="copy: an opened quote is the meme's OCR text (OCR models)")
    p.add_argument("--batch-size", type=_number(low=1), default=32, help="images per generation batch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memecap", description="Fine-tune image captioners for Russian memes.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train from a recipe (name or YAML) with key=value overrides")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="e.g. optim.lr=3e-4 train.batch_size=16")
    p.set_defaults(func=_train)

    p = sub.add_parser("prepare", help="check the data and fill the caches ahead of training (also under "
                       "accelerate launch -m memecap.prepare)")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("config", help="print the resolved config of a recipe and overrides")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_config)

    p = sub.add_parser("plan", help="estimate accelerator memory of a recipe before downloading anything")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--processes", type=_number(low=1), default=1, help="data-parallel processes (GPUs)")
    p.add_argument("--zero", type=int, choices=[0, 2, 3], default=0, help="DeepSpeed ZeRO stage (0 = off)")
    p.add_argument("--offload-optimizer", action="store_true", help="ZeRO: optimizer states in CPU RAM")
    p.add_argument("--offload-params", action="store_true", help="ZeRO-3: parameters in CPU RAM")
    p.add_argument("--seq-len", type=_number(low=1),
                   help="tokens per sample (default: prefix + OCR prompt + data.max_caption_tokens)")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"],
                   help="activation precision (default: the recipe's)")
    p.set_defaults(func=_plan)

    p = sub.add_parser("recipes", help="list the shipped recipes")
    p.set_defaults(func=_recipes)

    p = sub.add_parser("eval", help="score an exported model (or a run's best, or a baseline recipe) on a table")
    p.add_argument("model", help="run folder, exported model folder, or a baseline recipe (ocr_template)")
    p.add_argument("overrides", nargs="*", help="baseline recipes only: e.g. model.ocr.min_confidence=50")
    p.add_argument("--data", required=True, help="table (.tsv/.csv/.jsonl) or hf:...")
    p.add_argument("--scoring", choices=["memecap", "seed"], default="memecap")
    p.add_argument("--out", help="predictions file (JSON Lines)")
    p.add_argument("--max-rows", type=_number(low=1))
    p.add_argument("--image-dir")
    p.add_argument("--on-bad-row", choices=["error", "skip"], default="error")
    _add_generation_flags(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("compare", help="is one model better than another on the same memes, or is it chance? "
                       "every score, paired meme by meme, with bootstrap intervals")
    p.add_argument("before", help="predictions file (JSON Lines of `memecap eval --out`)")
    p.add_argument("after", nargs="+",
                   help="predictions file(s) of the same table; several are runs of one setup (seeds), averaged")
    p.add_argument("--scoring", choices=["memecap", "seed"], default="memecap")
    p.add_argument("--resamples", type=_number(low=100), default=10_000, help="bootstrap resamples of the memes")
    p.add_argument("--level", type=_number(float, above=0, below=1), default=0.95, help="the intervals' level")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    p.add_argument("--by", help="the per-meme score the memes that moved most are ranked by "
                   "(default: cider, or meteor under --scoring seed)")
    p.add_argument("--show", type=_number(low=0), default=5, help="memes shown that rose most, and that fell most")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--fail-if-worse", action="store_true",
                   help="exit with status 1 when any score is worse beyond chance (a gate for CI)")
    p.set_defaults(func=_compare)

    p = sub.add_parser("caption", help="caption an image or every image in a folder")
    p.add_argument("target", help="image file or folder")
    p.add_argument("--model", required=True,
                   help="run, export or checkpoint folder, a Hub repo id, or a baseline recipe (ocr_template)")
    p.add_argument("--revision", help="Hub revision of --model")
    p.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
    p.add_argument("--out", help="append JSON Lines here (resumable: images already in it are skipped)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_generation_flags(p)
    p.set_defaults(func=_caption)

    p = sub.add_parser("push", help="upload a trained model (adapter, config, tokenizer, model card) to the Hub")
    p.add_argument("model", help="run, export or checkpoint folder")
    p.add_argument("--repo", required=True, help="user/name on the Hub (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--license", default="apache-2.0", help="license in the model card (check the base models')")
    p.add_argument("--dataset", action="append", default=[], help="Hub dataset id for the card (repeatable)")
    p.add_argument("--message", help="commit message")
    p.add_argument("--dry-run", action="store_true", help="list the files and sizes that would be pushed; send nothing")
    p.set_defaults(func=_push)

    p = sub.add_parser("report", help="one HTML page: images, captions, scores, training curves")
    p.add_argument("predictions", help="predictions file of a run/eval, or a captions file of `memecap caption`")
    p.add_argument("--images", help="folder holding <uid>.<ext> images")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--log", help="training log.jsonl (default: the run's, when predictions are in a run)")
    p.add_argument("--title")
    p.add_argument("--scoring", choices=["memecap", "seed"], default="memecap")
    p.add_argument("--compare", help="an earlier predictions file of the same table: its captions shown beside these, "
                   "every score compared (as `memecap compare`), sortable by each meme's change")
    p.set_defaults(func=_report)

    p = sub.add_parser("export", help="merge a LoRA run into its base: one whole model, loadable without the adapter")
    p.add_argument("model", help="run, export or checkpoint folder")
    p.add_argument("--merge", action="store_true", required=True,
                   help="merge the LoRA adapter into the base, loaded again unquantized (the only export kind)")
    p.add_argument("--out", required=True, help="a new folder for the merged export")
    p.add_argument("--dtype", default="auto",
                   choices=["auto", "bfloat16", "float16", "float32", "bf16", "fp16", "fp32"],
                   help="the base's dtype for the merge (auto: bf16 on a bf16 GPU, else fp32)")
    p.add_argument("--images",
                   help="folder of images whose captions are compared before and after (default: 8 generated)")
    p.add_argument("--sample", type=_number(low=1), default=8, help="how many images are compared")
    p.add_argument("--device", help="cuda, mps or cpu for the comparison (default: the best available)")
    p.set_defaults(func=_export)

    p = sub.add_parser("serve", help="an HTTP server (and web page) captioning memes with a trained model")
    p.add_argument("model", help="run, export or checkpoint folder, or a baseline recipe (ocr_template)")
    p.add_argument("overrides", nargs="*", help="baseline recipes only: e.g. model.ocr.min_confidence=50")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; set a key)")
    p.add_argument("--port", type=_number(low=0, high=65535), default=8000, help="0 takes any free port")
    p.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
    p.add_argument("--max-batch", type=_number(low=1), default=8, help="images captioned together at most")
    p.add_argument("--max-wait-ms", type=_number(float, low=0), default=10.0,
                   help="how long a batch's first request waits for others")
    p.add_argument("--max-queue", type=_number(low=1), default=64, help="waiting requests beyond it get 503")
    p.add_argument("--max-body-mb", type=_number(float, above=0), default=10.0, help="largest upload")
    p.add_argument("--max-pixels", type=_number(low=1), default=40_000_000, help="largest image, in pixels")
    p.add_argument("--max-new-tokens", type=_number(low=1), default=256, help="the most a request may ask for")
    p.add_argument("--max-beams", type=_number(low=1), default=8,
                   help="the most beams or captions a request may ask for")
    p.add_argument("--api-key-env", default="MEMECAP_API_KEY",
                   help="environment variable holding the API key; when set, /caption and /metrics need it")
    p.add_argument("--allow-files", type=Path, help="a folder whose images requests may name by path")
    p.set_defaults(func=_serve)
    return parser


def _probe_out(args) -> None:
    """An --out whose folder cannot be written fails now, not after the model has run."""
    if getattr(args, "out", None):
        from memecap.outputs.os_errors import probe_writable

        probe_writable({"--out": str(Path(args.out).absolute().parent)})


def _written_places(args) -> dict:
    """Where a command writes, by the flag that sets it, for disk errors (train names its own)."""
    if args.command == "push":
        import tempfile

        return {"TMPDIR": tempfile.gettempdir()}  # the staging folder of the upload
    return {"--out": getattr(args, "out", None)}


def main(argv=None) -> int:
    from memecap.training.process_exit import run_stoppable

    args = build_parser().parse_args(argv)
    return run_stoppable(lambda: _run(args))


def _run(args) -> int:
    try:
        return args.func(args)
    except Exception as err:  # noqa: BLE001 - known failures become one line; the rest re-raise as they are
        from memecap.data.validation import DataError
        from memecap.outputs.os_errors import explain
        from memecap.outputs.redact import said

        message = explain(err, _written_places(args))
        if message is None and isinstance(err, (ConfigError, FileNotFoundError, ValueError)):
            message = str(err)  # FileNotFoundError includes OcrUnavailable
        if message is None:
            raise
        # One line (a data error lists one problem a line), no token a server echoed, names escaped.
        lines = message.split("\n") if isinstance(err, DataError) else [message]
        print("memecap: " + "\n".join(said(line) for line in lines), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
