"""CPU step time and peak RSS of a reduced Qwen2.5-VL through the real loop, per memory mode.

    .venv/bin/python scripts/bench_vlm.py --steps 6

A random Qwen2.5-VL (the real class; width 256, 4 layers, vision tower of 4 blocks, patch 14 and
merge 2 as published, so one image token is 28 x 28 px) saved in the published layout, trained by
`memecap.train` with the `vlm_qwen2_5_3b_qlora` recipe at 64 image tokens per meme (224 x 224 px
synthetic images), batch 4, one process and one thread, each mode in its own process under `/usr/bin/time -v`.
Prints a Markdown table: median optimizer-step time (from the run log), peak RSS, and what
`memecap plan` estimates for the same shape.
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
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    from memecap.config import load_config
    from memecap.memory_plan import GIB
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
        times = [r["time"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]
        step = statistics.median(b - a for a, b in zip(times[1:], times[2:]))  # the first step warms up
        plan = plan_memory(load_config("vlm_qwen2_5_3b_qlora", settings))
        rows.append((mode, step, rss_kib / 2**20, plan.total() / GIB, plan.trainable))
    print("| mode | step | peak RSS | `plan` (accelerator) | trained parameters |")
    print("| --- | --- | --- | --- | --- |")
    for mode, step, rss, planned, trainable in rows:
        print(f"| {mode} | {step * 1000:.0f} ms | {rss:.2f} GiB | {planned:.3f} GiB | {trainable:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
