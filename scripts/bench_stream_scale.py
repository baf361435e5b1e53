"""A streamed train split end to end at N images: prepare (fill the feature cache), prepare again
(everything cached: the reload), and one epoch's data loading as the training loop reads it, with 1
and 2 processes. Time per image and peak RSS of each phase, files created.

    .venv/bin/python scripts/bench_stream_scale.py --images 10000 100000 1000000 --processes 1 2

Images are distinct synthetic 32 px JPEGs with Russian captions, written as WebDataset-style tar
shards of 10,000 samples. The model is a tiny ClipCap with a frozen one-layer encoder (pooled
features, the feature cache on): what is measured is memecap's data path, not a model's compute.
Every phase runs in its own processes (`accelerate launch --cpu` for 2). Prints Markdown rows.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PER_SHARD = 10_000
TINY = ("model.tiny.image_size=32", "model.tiny.patch_size=8", "model.tiny.vision_width=32",
        "model.tiny.vision_layers=1", "model.tiny.embed_dim=32", "model.tiny.gpt_width=32", "model.tiny.gpt_layers=1",
        "model.tiny.gpt_heads=2", "model.tiny.vocab_size=300")


def jpeg(rng: random.Random) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = rng.randrange(28), rng.randrange(28)
        draw.rectangle([x, y, x + rng.randrange(2, 12), y + rng.randrange(2, 12)],
                       fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def make_data(root: Path, n: int) -> str:
    """N samples in tar shards (made once per N), and a 64-image val table beside them."""
    done = root / ".complete"
    shards = (n + PER_SHARD - 1) // PER_SHARD
    spec = str(root / f"train-{{000000..{shards - 1:06d}}}.tar")
    if done.exists():
        return spec
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(n)
    for s in range(shards):
        with tarfile.open(root / f"train-{s:06d}.tar", "w") as tar:
            for i in range(s * PER_SHARD, min(n, (s + 1) * PER_SHARD)):
                for name, data in ((f"{i:08d}.jpg", jpeg(rng)), (f"{i:08d}.txt", f"картинка номер {i}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (root / "images").mkdir(exist_ok=True)
    with (root / "val.jsonl").open("w", encoding="utf-8") as f:
        for i in range(64):
            (root / "images" / f"v{i}.jpg").write_bytes(jpeg(rng))
            f.write(json.dumps({"uid": f"v{i}", "text": f"проверка {i}"}, ensure_ascii=False) + "\n")
    done.touch()
    return spec


def overrides(root: Path, spec: str, work: Path) -> list[str]:
    return [f"data.train={spec}", f"data.val={root / 'val.jsonl'}", "data.streaming=true",
            "model.encoder.trainable=false", "model.encoder.features=pooled", "model.decoder.mode=lora",
            f"train.output_dir={work / 'run'}", f"cache.dir={work / 'cache'}", "train.batch_size=64",
            "train.progress_bar=false", *TINY]


def launched(processes: int, args: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args]


# Runs the command and reports the peak RSS of the largest process under it (this phase's alone).
PEAK = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(code)")


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and the peak RSS (MiB) of the largest process `cmd` started."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK, *cmd], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    peak = int(proc.stderr.rsplit("PEAK_RSS_KIB", 1)[1].split()[0])
    return seconds, peak / 1024


def epoch_worker(argv: list[str]) -> None:
    """Under the launcher: read one epoch of the streamed split as the loop does, nothing trained."""
    import copy

    from accelerate import Accelerator

    from memecap.config import load_config
    from memecap.models import build_model
    from memecap.train import image_reader
    from memecap.training.stages import load_stage_examples, plan_stages, train_captions
    from memecap.training.train_batches import StreamBatches

    cfg = load_config("demo", argv)
    accelerator = Accelerator(cpu=True)
    stage = plan_stages(cfg)[0]
    train, _ = load_stage_examples(cfg, stage, work_dir=Path(cfg.train.output_dir), log=lambda _: None)
    net = build_model(copy.deepcopy(cfg.model), work_dir=Path(cfg.cache.dir) / "prepare",
                      train_texts=train_captions(train))

    class Reading:  # what train.image_reader needs of a run
        pass

    run = Reading()
    run.cfg, run.accelerator = cfg, accelerator
    batches = StreamBatches(train, accelerator=accelerator, read=image_reader(run, net, None),
                            encode_caption=lambda t: net.encode_caption(t, cfg.data.max_caption_tokens),
                            collate=net.collate, batch_size=cfg.train.batch_size, grad_accum=1, seed=0,
                            log=print)
    rows = sum(len(batch["input_ids"]) for batch in batches.epoch(0, 0, None))
    batches.close()
    print(json.dumps({"rank": accelerator.process_index, "rows": rows}))


def files_under(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--epoch-worker":
        epoch_worker(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[10_000])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--root", type=Path, default=Path("/tmp/memecap-stream-scale"))
    parser.add_argument("--phases", nargs="+", choices=("fill", "reload", "epoch"), default=["fill", "reload", "epoch"],
                        help="fill: prepare into an empty cache; reload: prepare again; epoch: one epoch's batches")
    args = parser.parse_args()
    print("| images | processes | phase | s | us/image | peak RSS MiB | cache files |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in args.images:
        data = args.root / f"data-{n}"
        spec = make_data(data, n)
        for processes in args.processes:
            work = args.root / f"work-{n}-{processes}"
            subprocess.run(["rm", "-rf", str(work)], check=True)
            common = overrides(data, spec, work)
            phases = (("fill", "prepare (fill)", ["-m", "memecap.prepare", "demo", *common]),
                      ("reload", "prepare again (reload)", ["-m", "memecap.prepare", "demo", *common]),
                      ("epoch", "one epoch's batches", [str(Path(__file__).resolve()), "--epoch-worker", *common]))
            for _, phase, cmd in (p for p in phases if p[0] in args.phases):
                seconds, rss = timed(launched(processes, cmd))
                print(f"| {n:,} | {processes} | {phase} | {seconds:.1f} | {seconds / n * 1e6:.0f} | {rss:.0f} | "
                      f"{files_under(work / 'cache')} |", flush=True)


if __name__ == "__main__":
    main()
