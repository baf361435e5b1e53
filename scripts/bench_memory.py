r"""Peak memory and step time of every memory mode, through the real loop, beside `memecap plan`.

    .venv/bin/python scripts/bench_memory.py --decoder small            # CPU: peak RSS
    .venv/bin/python scripts/bench_memory.py --decoder large --batch-size 8 --caption-tokens 128   # on a GPU
    .venv/bin/python scripts/bench_memory.py --rudolph small --steps 4   # RuDOLPH, 350M's sequence, reduced depth/width
    .venv/bin/python scripts/bench_memory.py --rudolph 350M_v1 \
        --modes "full fine-tune" "full + 8-bit AdamW"   # on a GPU
    .venv/bin/python scripts/bench_memory.py --rudolph 2.7B --batch-size 1 \
        --modes "LoRA, bf16 base" "full + ZeRO-3 offload"

With --rudolph SHAPE the model is a random-initialised RuDOLPH of that shape (a key of the
rudolph package's MODELS table, or `small`), saved fp16 in the published layout beside a tiny
random VQGAN with the real 8192 codes (it only runs once per image: codes are cached) and a BPE
fit on the synthetic captions; every sample fills the whole fixed-length sequence, so caption
length does not matter. Modes are RUDOLPH_MODES.

Each mode is one `memecap.train` run in its own process (DeepSpeed modes under `accelerate
launch` with the shipped ZeRO configs) on a random-initialised decoder of ruGPT-3's real shape
(small 125M, medium 355M, large 760M), a tiny frozen CLIP tower (cached, so it does not count)
and synthetic captions padded to the requested length. Peak memory is CUDA
`max_memory_allocated` on a GPU, else the process's peak RSS (which includes Python and torch
themselves, about 0.5 GiB). Step time is the median over logging windows after the first.
Prints a Markdown table for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"small": dict(n_embd=768, n_layer=12, n_head=12), "medium": dict(n_embd=1024, n_layer=24, n_head=16),
          "large": dict(n_embd=1536, n_layer=24, n_head=16),
          "tiny": dict(n_embd=128, n_layer=2, n_head=2)}  # scripts/gpu/run.py --cpu-dry-run
MODES = {  # name -> (overrides, accelerate config or None)
    "plain (full fine-tune)": (["model.decoder.mode=full"], None),
    "LoRA": (["model.decoder.mode=lora"], None),
    "LoRA + 8-bit base": (["model.decoder.mode=lora", "model.decoder.quantization=8bit"], None),
    "LoRA + 4-bit base": (["model.decoder.mode=lora", "model.decoder.quantization=4bit"], None),
    "full + 8-bit AdamW": (["model.decoder.mode=full", "optim.name=bitsandbytes.optim.AdamW8bit"], None),
    "full + ZeRO-2 offload": (["model.decoder.mode=full"], "deepspeed_zero2_offload.yaml"),
    "full + ZeRO-3 offload": (["model.decoder.mode=full"], "deepspeed_zero3_offload.yaml"),
}

RUDOLPH_MODES = {  # name -> (overrides, accelerate config or None)
    "full fine-tune": (["model.rudolph.mode=full", "optim.name=torch.optim.AdamW"], None),
    "full + 8-bit AdamW": (["model.rudolph.mode=full", "optim.name=bitsandbytes.optim.AdamW8bit"], None),
    "LoRA, fp32 base": (["model.rudolph.mode=lora", "optim.name=torch.optim.AdamW"], None),
    "LoRA, bf16 base": (["model.rudolph.mode=lora", "model.rudolph.base_dtype=bfloat16",
                         "optim.name=torch.optim.AdamW"], None),
    "full + ZeRO-3 offload": (["model.rudolph.mode=full", "optim.name=torch.optim.AdamW"],
                              "deepspeed_zero3_offload.yaml"),
}
# RuDOLPH-350M's sequence and vocabularies (64 + 16x16 + 64 tokens) at a depth and width a CPU trains.
RUDOLPH_SMALL = dict(num_layers=4, hidden_size=256, num_attention_heads=4)
# The fewest layers that hold every mask kind, a short sequence: scripts/gpu/run.py --cpu-dry-run.
RUDOLPH_TINY = dict(num_layers=3, hidden_size=32, num_attention_heads=2, l_text_seq_length=8, image_tokens_per_dim=4,
                    r_text_seq_length=16, kernel_size=3, last_kernel_size=3, image_vocab_size=64)

CHILD = r"""
import json, resource, sys, torch
from memecap import train
from memecap.config import load_config
cfg = load_config(sys.argv[1], sys.argv[2:])
summary = train.main(cfg)
if torch.cuda.is_available():
    peak = torch.cuda.max_memory_allocated()
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
json.dump({"peak": peak, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"},
          open(cfg.train.output_dir + f"/peak{int(__import__('os').environ.get('RANK', 0))}.json", "w"))
"""


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def make_decoder(folder: Path, shape: str, texts: list[str], every_id_a_word: bool = False) -> None:
    """A random GPT-2 of ruGPT-3's vocabulary size and `shape`, with a BPE of 1,000 fitted on `texts`.
    `every_id_a_word`: the tokenizer also gets a word for each id above its own, so that sampled ids
    decode to text that tokenises back to as many tokens (an scst step scores what it sampled, at full
    length, as a real vocabulary would; otherwise most sampled ids decode to nothing)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from memecap.models.tiny import train_tokenizer

    vocab_size = 50257
    tok = train_tokenizer(texts, 1000)
    if every_id_a_word:
        tok.add_tokens([f"<{i}>" for i in range(len(tok), vocab_size)])
    config = GPT2Config(vocab_size=vocab_size, n_positions=2048, eos_token_id=tok.eos_token_id,
                        bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **SHAPES[shape])
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)


def make_rudolph(folder: Path, shape: str, texts: list[str]) -> list[str]:
    """Random RuDOLPH of `shape` + tiny VQGAN + BPE in the published layouts; returns the overrides naming them."""
    import torch

    from memecap.models.rudolph.tiny import save_tiny_rudolph, save_tiny_tokenizer, save_tiny_vqgan
    from memecap.models.rudolph.weights import shape_params

    reduced = {"small": RUDOLPH_SMALL, "tiny": RUDOLPH_TINY}
    params = shape_params("350M_v1" if shape in reduced else shape)
    params.update(reduced.get(shape, {}))
    utils = folder / "rudalle-utils"
    save_tiny_tokenizer(utils, texts, 1000)
    save_tiny_vqgan(utils, params["image_tokens_per_dim"] * 8, params["image_vocab_size"])
    save_tiny_rudolph(folder / "rudolph", params, dtype=torch.float16)
    return [f"model.rudolph.name={folder / 'rudolph'}", f"model.rudolph.vqgan={utils}",
            f"model.rudolph.tokenizer={utils}"]


def run_mode(overrides, accel_config, base: list[str], out: Path, recipe: str = "demo") -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    script = out.parent / "child.py"
    script.write_text(CHILD)
    cmd = [sys.executable, str(script)]
    if accel_config:
        env.pop("ACCELERATE_USE_CPU", None)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "accelerate_configs" / accel_config), "--num_processes", "1", str(script)]
    proc = subprocess.run(cmd + [recipe, *base, *overrides, f"train.output_dir={out}"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return {**json.loads((out / "peak0.json").read_text()), "step_s": step_time(out / "log.jsonl")}


def step_time(log: Path, warmup: int = 1) -> float:
    """Median seconds per optimizer step over the logging windows after the first `warmup`."""
    records = [json.loads(line) for line in log.read_text().splitlines()]
    stamps = [(r["step"], r["time"]) for r in records if r["kind"] == "train"][warmup:]
    return statistics.median((t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(stamps, stamps[1:]))


def synthetic_tables(folder: Path, n_train: int = 64, n_val: int = 4, image_size: int = 64) -> tuple[dict, list[str]]:
    """Synthetic train/val tables whose captions are repeated past any cap, so a caption limit
    makes every sample exactly that long; and the training captions."""
    from memecap.data.synthetic import make_synthetic_dataset

    tables = make_synthetic_dataset(folder, n_train=n_train, n_val=n_val, image_size=image_size)
    for table in tables.values():
        lines = table.read_text(encoding="utf-8").splitlines()
        table.write_text("\n".join([lines[0]] + [f"{uid}\t{' '.join([text] * 12)}" for uid, text in
                                                    (line.split("\t", 1) for line in lines[1:])]) + "\n",
                         encoding="utf-8")
    texts = [line.split("\t", 1)[1] for line in tables["train"].read_text(encoding="utf-8").splitlines()[1:]]
    return tables, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", choices=list(SHAPES), default="small")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--caption-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rudolph", help="benchmark RuDOLPH of this shape (350M_v1, 1.3B, 2.7B, ... or small)")
    parser.add_argument("--modes", nargs="*", help="subset of mode names")
    args = parser.parse_args()
    modes = RUDOLPH_MODES if args.rudolph else MODES
    args.modes = args.modes or list(modes)

    from memecap.config import load_config
    from memecap.plan import GIB, plan_memory

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tables, texts = synthetic_tables(tmp / "data")
        common = [f"data.train={tables['train']}", f"data.val={tables['val']}", f"train.batch_size={args.batch_size}",
                  f"train.max_steps={args.steps}", "train.grad_accum=1", "train.log_every=1", "train.trackers=[]",
                  "train.progress_bar=false", "eval.compare_constant=false", "train.save_every=1000000",
                  "generation.max_new_tokens=2", f"cache.dir={tmp / 'cache'}"]
        if args.rudolph:
            recipe, ckpt_key = "rudolph_350m", "model.rudolph.gradient_checkpointing"
            base = [*common, *make_rudolph(tmp / "rudolph", args.rudolph, texts)]
        else:
            recipe, ckpt_key = "demo", "model.decoder.gradient_checkpointing"
            make_decoder(tmp / "decoder", args.decoder, texts)
            base = [*common, f"model.decoder.name={tmp / 'decoder'}", "model.encoder.trainable=false",
                    "model.encoder.features=pooled", "model.mapper.prefix_length=10",
                    f"data.max_caption_tokens={args.caption_tokens}"]
        print("| mode | checkpointing | peak | plan | step | samples/s |\n| --- | --- | --- | --- | --- | --- |")
        for name in args.modes:
            overrides, accel = modes[name]
            for ckpt in (False, True):
                extra = [*overrides, f"{ckpt_key}={str(ckpt).lower()}"]
                result = run_mode(extra, accel, base, tmp / f"run-{len(os.listdir(tmp))}", recipe)
                cfg = load_config(recipe, base + extra)
                zero = {"deepspeed_zero2_offload.yaml": 2, "deepspeed_zero3_offload.yaml": 3}.get(accel, 0)
                planned = plan_memory(cfg, zero_stage=zero, offload_optimizer=bool(zero), offload_params=zero == 3,
                                      mixed_precision=None if torch_cuda() else "no").total()
                if "error" in result:
                    print(f"| {name} | {ckpt} | failed: {result['error']} | {planned / GIB:.2f} GiB | | |")
                    continue
                print(f"| {name} | {'yes' if ckpt else 'no'} | {result['peak'] / GIB:.2f} GiB ({result['device']}) "
                      f"| {planned / GIB:.2f} GiB | {result['step_s'] * 1000:.0f} ms | "
                      f"{args.batch_size / result['step_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
