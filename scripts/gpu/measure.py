"""One measurement of the GPU kit, in this process (run.py starts one per mode, under `accelerate
launch` for the DeepSpeed modes). Writes its result as JSON, a failure included.

    python scripts/gpu/measure.py MODE --work DIR --result FILE [--dry-run] [--set KEY=VALUE ...]

train: `memecap.train.main` on the mode's recipe; step time is the median over the logged steps
after the warm-up; peak memory is `torch.cuda.max_memory_allocated` / `max_memory_reserved`
(on a CPU, the process's peak RSS, which includes Python and torch); beside it `memecap plan`'s
estimate for the same config. generate: the model built as for training, images encoded once,
then `generate` timed over batches of the recipe's decoding settings (captions/s).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # scripts/: bench_memory
sys.path.insert(0, str(HERE))

from modes import MODES, Mode, tiny  # noqa: E402


def bases(mode: Mode, work: Path, texts: list[str]) -> list[str]:
    """Random-initialised models of the mode's shape in the published layouts; the overrides naming them."""
    from bench_memory import make_decoder, make_rudolph

    if mode.family == "rudolph":
        return make_rudolph(work / "rudolph", mode.shape, texts)
    if mode.family == "vlm":
        return vlm_base(mode, work, texts)
    make_decoder(work / "decoder", mode.shape, texts, every_id_a_word=mode.objective == "scst")
    return [f"model.decoder.name={work / 'decoder'}", f"data.max_caption_tokens={mode.tokens}"]


def recipe_vlm(mode: Mode):
    from memecap.config import load_config

    return load_config(mode.recipe).model.vlm


def vlm_base(mode: Mode, work: Path, texts: list[str]) -> list[str]:
    """The recipe's base at its published shape (random bf16 weights, a tiny tokenizer, the published
    vocabulary), or a tiny model of the same architecture for the dry run."""
    from memecap.models.vlm.known import known_config
    from memecap.models.vlm.tiny import save_shaped_vlm, save_tiny_vlm

    v = recipe_vlm(mode)
    shape = known_config(v.name)
    texts = [*texts, v.instruction]
    base = (save_tiny_vlm(work / "base", shape.model_type, texts) if mode.shape == "tiny"
            else save_shaped_vlm(work / "base", shape, texts))
    return [f"model.vlm.name={base}", "model.vlm.revision=null", f"data.max_caption_tokens={mode.tokens}"]


def image_tokens(mode: Mode) -> tuple[int, int]:
    """(image side in px, image tokens) of a VLM mode: images as large as the recipe's budget allows,
    so each costs its `max_pixels`; the other families read 64 px images (a cached or coded input)."""
    if mode.family != "vlm" or mode.shape == "tiny":
        return 64, 0
    from memecap.models.vlm.known import known_config

    v, vision = recipe_vlm(mode), known_config(recipe_vlm(mode).name).vision_config
    token_px = vision.patch_size * vision.spatial_merge_size
    side = int(v.max_pixels ** 0.5) // token_px * token_px
    return side, (side // token_px) ** 2


def config(mode: Mode, work: Path, user: list[str]):
    from bench_memory import synthetic_tables
    from memecap.config import load_config

    load_config(mode.recipe, [*mode.overrides, *user])  # a bad setting fails before any model is built
    images = mode.batch * (mode.steps + 1)
    tables, texts = synthetic_tables(work / "data", n_train=images, n_val=images if mode.kind == "generate" else 2,
                                     image_size=image_tokens(mode)[0])
    common = [f"data.train={tables['train']}", f"data.val={tables['val']}", f"train.batch_size={mode.batch}",
              f"train.max_steps={mode.steps}", "train.grad_accum=1", "train.log_every=1", "train.trackers=[]",
              "train.progress_bar=false", "eval.compare_constant=false", "train.save_every=1000000",
              f"train.output_dir={work / 'run'}", f"cache.dir={work / 'cache'}", f"eval.batch_size={mode.batch}"]
    decodes = mode.kind == "generate" or mode.objective == "scst"  # else only the loop's closing evaluation
    common += [f"train.objective={mode.objective}", f"generation.max_new_tokens={mode.tokens if decodes else 2}"]
    return load_config(mode.recipe, [*common, *bases(mode, work, texts), *mode.overrides, *user]), texts, tables


def peak_memory() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"allocated": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.max_memory_reserved(),
                "memory_kind": "cuda"}
    return {"allocated": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "reserved": None,
            "memory_kind": "peak RSS"}


def planned(mode: Mode, cfg) -> float:
    import torch

    from memecap.plan import plan_memory

    precision = cfg.train.mixed_precision
    if precision == "auto":  # as the loop resolves it (memecap.training.accelerate_setup)
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    zero = mode.zero_stage
    return plan_memory(cfg, zero_stage=zero, offload_optimizer=bool(zero), offload_params=zero == 3,
                       mixed_precision=precision).total()


def measure_train(mode: Mode, work: Path, user: list[str]) -> dict:
    from bench_memory import step_time
    from memecap import train

    cfg, _, _ = config(mode, work, user)
    train.main(cfg)
    step = step_time(work / "run" / "log.jsonl", warmup=mode.warmup)
    sequence = mode.tokens + image_tokens(mode)[1]  # a VLM's chat template and instruction not counted
    if mode.family == "rudolph":
        from memecap.models.rudolph.weights import model_params

        p = model_params(cfg.model.rudolph.name)
        sequence = p["l_text_seq_length"] + p["image_tokens_per_dim"] ** 2 + p["r_text_seq_length"]
    return {**peak_memory(), "step_s": step, "tokens": sequence, "tokens_per_s": mode.batch * sequence / step,
            "plan": planned(mode, cfg), "timed": mode.steps - mode.warmup}


def measure_generate(mode: Mode, work: Path, user: list[str]) -> dict:
    import torch
    from accelerate.utils import send_to_device

    from memecap.data.tables import load_split
    from memecap.inference.exported import default_device
    from memecap.models import build_model
    from memecap.data.datasets import CaptionEvalSet

    cfg, texts, tables = config(mode, work, user)
    device = default_device()
    model = build_model(cfg.model, work_dir=work, train_texts=texts).to(device).eval()
    examples = load_split(tables["val"], log=None)[0]
    images = CaptionEvalSet(model.image_inputs([e.image_path for e in examples], cache_dir=None, device=device,
                                               progress=False))
    precision = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    times = []
    for b in range(mode.steps):
        rows = range(b * mode.batch, (b + 1) * mode.batch)
        batch = send_to_device(model.collate([images[i % len(images)] for i in rows]), device)
        with torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None):
            t0 = time.perf_counter()
            model.generate(batch, cfg.generation)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    per_batch = statistics.median(times[mode.warmup:])
    captions = mode.batch * cfg.generation.num_return_sequences
    return {**peak_memory(), "step_s": per_batch, "captions_per_s": captions / per_batch,
            "precision": "bf16 autocast" if precision else "fp32", "timed": mode.steps - mode.warmup,
            "strategy": cfg.generation.strategy}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=[m.name for m in MODES])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes (CPU)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    mode = next(m for m in MODES if m.name == args.mode)
    mode = tiny(mode) if args.dry_run else mode
    result = {"mode": mode.name, "shape": mode.shape, "batch": mode.batch}
    try:
        measure = measure_train if mode.kind == "train" else measure_generate
        result.update(status="ok", **measure(mode, args.work, args.overrides))
    except Exception as error:  # recorded, so the other modes still run and the table says why
        result.update(status="failed", error=f"{type(error).__name__}: {error}"[:500])
        traceback.print_exc()
    args.result.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
