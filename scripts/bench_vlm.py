"""CPU step time and peak RSS of a reduced Qwen2.5-VL through the real loop, per memory mode.

    .venv/bin/python scripts/bench_vlm.py --steps 6

A random Qwen2.5-VL (the real class; width 256, 4 layers, vision tower of 4 blocks, patch 14 and
merge 2 as published, so one image token is 28 x 28 px) saved in the published layout, trained by
`memecap.train` with the `vlm_qwen2_5_3b_qlora` recipe at 64 image tokens per meme (224 x 224 px
synthetic images), batch 4, one process and one thread, each mode in its own process under `/usr/bin/time -v`.
Prints a Markdown table: median optimizer-step time (from the run log), peak RSS, and what
`memecap plan` estimates for the same shape.

    python scripts/bench_vlm.py --real vlm_qwen2_5_3b_qlora --steps 4      # on a GPU machine, no network
    python scripts/bench_vlm.py --real vlm_qwen2_5_3b_qlora --layers 1 --steps 2   # a CPU dry run of the same

`--real RECIPE`: the recipe's base at its published shape (memecap/models/vlm/known.py) with random
bf16 weights and a tiny tokenizer, saved in the published layout (the GPU machines cannot download
the real weights), trained in this process by the recipe at its image budget (synthetic images
whose side fills `max_pixels`); prints `torch.cuda.max_memory_allocated` against `memecap plan`
for the same batch and sequence. `--layers N` cuts the language model and vision tower to N layers.

    python scripts/bench_vlm.py --caption 100 --rounds 3

`--caption N`: CPU seconds and peak RSS of captioning N synthetic memes (1000 x 800 px JPEGs) with
the tiny Qwen2-VL of `vlm_tiny` (exported, greedy, 40 new tokens, batches of 32), each in its own
one-thread process, rounds interleaved: `memecap caption` on the folder, the `Captioner` on the
paths, and a bare batched loop over the same export (transformers' classes, one image-processor
and one tokenizer call per batch). `MEMECAP_REPO=/other/checkout` measures another checkout's memecap.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = {
    "LoRA r=16, fp32 base": ["model.vlm.quantization=none", "model.vlm.gradient_checkpointing=false",
                             "optim.name=torch.optim.AdamW"],
    "LoRA r=16, fp32 base, checkpointing": ["model.vlm.quantization=none", "optim.name=torch.optim.AdamW"],
    "QLoRA: 4-bit NF4 base, checkpointing, 8-bit AdamW (the recipe)": [],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--real", metavar="RECIPE", help="measure a shipped recipe at its published shape (see above)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--caption", type=int, metavar="N", help="measure captioning N memes (see above)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", nargs=3, metavar=("KIND", "EXPORT", "FOLDER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return caption_child(*args.child)
    if args.caption:
        return measure_captioning(args)
    if args.real:
        return measure_real(args)
    sys.path.insert(0, str(REPO))
    from memecap.config import load_config
    from memecap.models.memory_plan import GIB
    from memecap.models.vlm.tiny import save_tiny_vlm
    from memecap.plan import plan_memory

    work = Path(tempfile.mkdtemp(prefix="bench-vlm-"))
    base = save_tiny_vlm(work / "base", "qwen2_5_vl", ["На фото кот. Подпись: \"привет\"", "Опиши мем подробно"],
                         width=args.width, layers=args.layers, patch=14)
    common = [f"model.vlm.name={base}", "model.vlm.revision=null", "data.train=synthetic", "data.val=synthetic",
              "data.synthetic.n_train=64", "data.synthetic.n_val=4", "data.synthetic.image_size=224",
              "data.max_caption_tokens=48", "model.vlm.min_pixels=50176", "model.vlm.max_pixels=50176",
              f"train.max_steps={args.steps}", "train.batch_size=4", "train.grad_accum=1", "train.log_every=1",
              "train.trackers=[]", "train.progress_bar=false", "eval.compare_constant=false", "eval.batch_size=4",
              "generation.max_new_tokens=8", "train.mixed_precision='no'"]
    rows = []
    for i, (mode, overrides) in enumerate(MODES.items()):
        out = work / f"run{i}"
        settings = [*common, f"train.output_dir={out}", f"cache.dir={out / 'cache'}", *overrides]
        # One thread: on a shared 2-core machine two threads waiting for each other make small ops 5-10x slower.
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "memecap.train", "vlm_qwen2_5_3b_qlora",
                               *settings], capture_output=True, text=True, env=env, cwd=REPO)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
        rows = map(json.loads, (out / "log.jsonl").read_text().splitlines())
        times = [r["time"] for r in rows if r["kind"] == "train"]
        step = statistics.median(b - a for a, b in zip(times[1:], times[2:]))  # the first step warms up
        plan = plan_memory(load_config("vlm_qwen2_5_3b_qlora", settings))
        rows.append((mode, step, rss_kib / 2**20, plan.total() / GIB, plan.trainable))
    print("| mode | step | peak RSS | `plan` (accelerator) | trained parameters |")
    print("| --- | --- | --- | --- | --- |")
    for mode, step, rss, planned, trainable in rows:
        print(f"| {mode} | {step * 1000:.0f} ms | {rss:.2f} GiB | {planned:.3f} GiB | {trainable:,} |")
    return 0


def measure_real(args) -> int:
    sys.path.insert(0, str(REPO))
    import torch

    from memecap.config import load_config
    from memecap.models.memory_plan import GIB
    from memecap.models.vlm.known import known_config
    from memecap.models.vlm.tiny import save_shaped_vlm
    from memecap.plan import plan_memory
    from memecap.train import main as train_main

    recipe = load_config(args.real)
    v = recipe.model.vlm
    config = known_config(v.name)
    if args.real != recipe.model.vlm.name and config is None:
        raise SystemExit(f"{args.real}: its base {v.name} has no published shape in memecap/models/vlm/known.py")
    layers_given = "--layers" in sys.argv
    if layers_given:
        text = config.get_text_config()
        text.num_hidden_layers = args.layers
        if getattr(text, "layer_types", None):
            text.layer_types = text.layer_types[: args.layers]
        vc = config.vision_config
        for key in ("depth", "num_hidden_layers"):
            if hasattr(vc, key):
                setattr(vc, key, args.layers)
        if hasattr(vc, "fullatt_block_indexes"):
            vc.fullatt_block_indexes = [args.layers - 1]
        if hasattr(vc, "deepstack_visual_indexes"):
            vc.deepstack_visual_indexes = [0]
    work = Path(tempfile.mkdtemp(prefix="bench-vlm-real-"))
    base = save_shaped_vlm(work / "base", config, ["На фото кот. Подпись: \"привет\"", v.instruction])
    vision = config.vision_config
    if config.model_type == "smolvlm":
        side = v.longest_edge or vision.image_size
    else:
        token_px = vision.patch_size * vision.spatial_merge_size
        side = int((v.max_pixels or 401408) ** 0.5) // token_px * token_px
    settings = [f"model.vlm.name={base}", "model.vlm.revision=null", "data.train=synthetic", "data.val=synthetic",
                f"data.synthetic.n_train={args.batch_size * args.steps}", "data.synthetic.n_val=2",
                f"data.synthetic.image_size={side}", f"train.max_steps={args.steps}",
                f"train.batch_size={args.batch_size}",
                "train.grad_accum=1", "train.log_every=1", "train.trackers=[]", "train.progress_bar=false",
                "eval.compare_constant=false", "eval.batch_size=2", "generation.max_new_tokens=4",
                f"train.output_dir={work / 'run'}", f"cache.dir={work / 'cache'}"]
    cfg = load_config(args.real, settings)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train_main(cfg)
    from memecap.models import load_model

    model = load_model(work / "run" / "final")
    images = sorted((work / "run" / "data").glob("*/images/*.jpg"))[: args.batch_size]
    prompt = len(model.prepare(images[0])["prompt_ids"])
    rows = map(json.loads, (work / "run" / "log.jsonl").read_text().splitlines())
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    seq = prompt + 32  # the synthetic captions are short: the plan is taken at the measured sequence
    plan = plan_memory(cfg, batch_size=args.batch_size, seq_len=seq,
                       mixed_precision=cfg.train.mixed_precision if cfg.train.mixed_precision != "auto" else None)
    peak = torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else float("nan")
    print(f"{args.real}: batch {args.batch_size}, {side} x {side} px images, prompt {prompt} tokens, "
          f"{len(losses)} steps; peak allocated {peak:.2f} GiB, plan {plan.total() / GIB:.2f} GiB at {seq} tokens"
          f"{' (reduced to ' + str(args.layers) + ' layers)' if layers_given else ''}")
    return 0


def measure_captioning(args) -> int:
    import numpy as np
    from PIL import Image

    sys.path.insert(0, os.environ.get("MEMECAP_REPO", str(REPO)))
    from memecap.config import load_config
    from memecap.models import build_model

    work = Path(tempfile.mkdtemp(prefix="bench-vlm-caption-"))
    memes = work / "memes"
    memes.mkdir()
    rng = np.random.default_rng(0)
    for i in range(args.caption):  # a smooth picture with noise: JPEG sizes of real memes
        base = np.linspace(0, 255, 1000, dtype=np.float32)[None, :, None] * rng.random(3, dtype=np.float32)
        pixels = np.clip(base + rng.normal(0, 20, (800, 1000, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(memes / f"{i:04d}.jpg", quality=90)
    cfg = load_config("vlm_tiny", ["model.vlm.mode=full"])
    model = build_model(cfg.model, work_dir=work, train_texts=["На фото кот. Подпись: \"привет\"", "Опиши мем"])
    model.save_pretrained(work / "export", generation=cfg.generation)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.environ.get("MEMECAP_REPO", str(REPO))}
    kinds = {"memecap caption": [sys.executable, "-m", "memecap", "caption", str(memes), "--model",
                                 str(work / "export"), "--out", "OUT", "--quiet"],
             "Captioner": [sys.executable, __file__, "--child", "captioner", str(work / "export"), str(memes)],
             "bare loop": [sys.executable, __file__, "--child", "bare", str(work / "export"), str(memes)]}
    results = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind, cmd in kinds.items():
            cmd = [str(work / f"out{r}-{len(results[kind])}.jsonl") if c == "OUT" else c for c in cmd]
            proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(kind, proc.stderr[-3000:], file=sys.stderr)
                return 1
            field = lambda name: re.search(rf"{name}: ([\d.]+)", proc.stderr).group(1)  # noqa: E731
            cpu = float(field(r"User time \(seconds\)")) + float(field(r"System time \(seconds\)"))
            results[kind].append((cpu, int(field(r"Maximum resident set size \(kbytes\)")) / 1024))
    bare_cpu = statistics.median(c for c, _ in results["bare loop"])
    bare_rss = statistics.median(m for _, m in results["bare loop"])
    print(f"| {args.caption} memes, {args.rounds} rounds "
          "| CPU (median) | CPU / bare | peak RSS (median) | RSS / bare |")
    print("| --- | --- | --- | --- | --- |")
    for kind, runs in results.items():
        cpu, rss = statistics.median(c for c, _ in runs), statistics.median(m for _, m in runs)
        print(f"| {kind} | {cpu:.2f} s | {cpu / bare_cpu:.2f}x | {rss:.0f} MiB | {rss / bare_rss:.2f}x |")
    return 0


def caption_child(kind: str, export: str, folder: str) -> int:
    paths = sorted(Path(folder).glob("*.jpg"))
    if kind == "captioner":
        from memecap import Captioner

        Captioner.from_pretrained(export, device="cpu", batch_size=32)(paths)
        return 0
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(Path(export) / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(Path(export) / "processor", padding_side="left")
    image_processor = AutoImageProcessor.from_pretrained(Path(export) / "processor", backend="pil")
    template = (Path(export) / "processor" / "chat_template.jinja").read_text(encoding="utf-8")
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Опиши мем"}]}]
    prompt = tokenizer.apply_chat_template(user, chat_template=template, tokenize=False, add_generation_prompt=True)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        for start in range(0, len(paths), 32):
            images = [Image.open(p).convert("RGB") for p in paths[start:start + 32]]
            vision = image_processor(images=images, return_tensors="pt")
            texts = [prompt.replace("<|image_pad|>", "<|image_pad|>" * (int(g.prod()) // 4))
                     for g in vision["image_grid_thw"]]
            text = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
            types = (text["input_ids"] == model.config.image_token_id).long()
            ids = model.generate(**text, **vision, mm_token_type_ids=types, do_sample=False, max_new_tokens=40,
                                 eos_token_id=end, pad_token_id=tokenizer.pad_token_id)
            tokenizer.batch_decode(ids[:, text["input_ids"].shape[1]:], skip_special_tokens=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
