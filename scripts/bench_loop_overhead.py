"""Time per optimizer step of memecap's loop against a bare PyTorch loop on the same model, data and batch.

    .venv/bin/python scripts/bench_loop_overhead.py [--steps 200] [--batch-size 32]
    .venv/bin/python scripts/bench_loop_overhead.py --recipe clipcap_effnet_gemma_ocr --steps 40 \
        --batch-size 4 --log-every 5 data.train=memes/train.tsv data.val=memes/val.tsv model.decoder.name=...

Both run in this process on the same model (by default the demo's tiny ClipCap, the shape where
fixed per-step costs show the most; or any recipe with its overrides) with a frozen encoder's
features cached, no evaluation inside the timed window, and the same optimizer and schedule.
Prints a Markdown row for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from accelerate.state import AcceleratorState, GradientState, PartialState

from memecap import train
from memecap.config import load_config
from memecap.data.sources import load_train_val
from memecap.models import build_model
from memecap.data.datasets import CaptionTrainSet
from memecap.training.optim import build_optimizer, build_scheduler


def loop_step_time(cfg, out_dir: Path) -> float:
    train.main(cfg)
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    times = [(r["step"], r["time"]) for r in records if r["kind"] == "train"]
    return window_median(times[1:])  # the first window holds the warm-up


def window_median(stamps: list) -> float:
    """Median seconds per step over consecutive logging windows: robust to a stray hiccup of a
    shared machine, which a plain mean over the run is not."""
    return statistics.median((t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(stamps, stamps[1:]))


def bare_step_time(cfg, out_dir: Path, steps: int) -> float:
    torch.manual_seed(cfg.train.seed)
    train_examples, _ = load_train_val(cfg.data, work_dir=out_dir, log=lambda s: None)
    model = build_model(cfg.model, work_dir=out_dir, train_texts=[c for e in train_examples for c in e.captions])
    images = model.image_inputs([e.image_path for e in train_examples], cache_dir=cfg.cache.dir, device="cpu",
                                progress=False)
    ids = [model.encode_caption(e.captions[0], cfg.data.max_caption_tokens) for e in train_examples]
    dataset = CaptionTrainSet(images, ids, list(range(len(ids))))
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True,
                                         collate_fn=model.collate)
    optimizer = build_optimizer(cfg.optim, model.trainable_parameters())
    scheduler = build_scheduler(cfg.optim, optimizer, steps, 1)
    model.train()
    stamps = []
    done = 0
    while done < steps:
        for batch in loader:
            loss = model(batch)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()  # the loop reads the loss every step for logging; so does this one
            done += 1
            if done % cfg.train.log_every == 0:
                stamps.append((done, time.time()))
            if done >= steps:
                break
    return window_median(stamps[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recipe", default="demo")
    parser.add_argument("--log-every", type=int, default=10, help="steps per timing window")
    parser.add_argument("overrides", nargs="*", help="key=value for the recipe (data, model names)")
    args = parser.parse_args()
    # The demo's own data is synthetic: more of it, so no epoch ends inside the timed window.
    demo = ["data.synthetic.n_train=8000", "model.encoder.trainable=false"] if args.recipe == "demo" else []
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for r in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            out = Path(tmp) / f"loop{r}"
            cfg = load_config(args.recipe, [*args.overrides, f"train.output_dir={out}", f"train.max_steps={args.steps}",
                                            f"train.batch_size={args.batch_size}", "train.trackers=[]",
                                            "train.progress_bar=false", f"train.log_every={args.log_every}",
                                            "eval.compare_constant=false", "train.save_every=1000000", *demo,
                                            f"cache.dir={Path(tmp) / 'cache'}", "generation.max_new_tokens=4"])
            loop = loop_step_time(cfg, out)
            AcceleratorState._reset_state(True)  # the loop's Accelerator is a process-wide singleton
            GradientState._reset_state()
            PartialState._reset_state()
            bare = bare_step_time(cfg, out, args.steps)
            results.append((loop, bare))
            print(f"run {r}: memecap loop {loop * 1000:.1f} ms/step, bare PyTorch {bare * 1000:.1f} ms/step")
        loop = statistics.median(r[0] for r in results)
        bare = statistics.median(r[1] for r in results)
        print(f"| loop overhead ({args.recipe}, batch {args.batch_size}, {args.steps} steps, "
              f"CPU x{torch.get_num_threads()}) "
              f"| {loop * 1000:.1f} ms/step | {bare * 1000:.1f} ms/step | {100 * (loop / bare - 1):+.1f}% |")


if __name__ == "__main__":
    main()
