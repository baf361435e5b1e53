"""RuDOLPH decoding: memecap's `generate` against a bare loop that projects only the last position.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_rudolph_decoding.py [--steps 32] [--repeats 4]

A random RuDOLPH with RuDOLPH-350M's sequence (64 + 16x16 + 64 positions) and vocabularies
(24,640 ids) at a reduced depth and width (4 layers x 256, scripts/bench_memory.py's `small`),
saved fp16 in the published layout and loaded through memecap; batch 4 of random image codes,
greedy, a fixed number of new tokens (random weights rarely choose <EOS>). Three decoders in this
process: memecap and bare alternate in 2 x `--repeats` pairs, the old path runs 3 times after them
(medians):
  memecap          RuDolph.generate
  every position   the package's forward with its cache, logits of every position, the last kept
                   (what memecap did before it projected only the last position)
  bare             a hand-written loop: the package's embeddings and transformer with its cache,
                   `to_logits` on the last position only
All three must produce the same captions; the script stops if they do not.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import make_rudolph  # noqa: E402

from memecap.config import GenerationConfig, load_config  # noqa: E402
from memecap.data.synthetic import make_synthetic_dataset  # noqa: E402
from memecap.models import build_model  # noqa: E402
from memecap.models.rudolph.model import BOS, EOS, PAD, UNK, base_model  # noqa: E402

BANNED = [PAD, UNK, BOS]  # memecap never generates these; the hand-written loops ban them too


def embed(base, ids: torch.Tensor) -> torch.Tensor:
    """ruDolphModel's input embeddings of every position, as its forward computes them."""
    l_len, i_len = base.l_text_seq_length, base.image_seq_length
    left = ids[:, :l_len]
    left = torch.where(left == 0, torch.arange(l_len) + base.vocab_size - l_len, left)
    parts = [base.text_embeddings(left) + base.l_text_pos_embeddings(torch.arange(l_len))]
    image = ids[:, l_len:l_len + i_len]
    parts.append(base.image_embeddings(image) + base.get_image_pos_embeddings(image, device=ids.device))
    right = ids[:, l_len + i_len:]
    parts.append(base.text_embeddings(right) + base.r_text_pos_embeddings(torch.arange(right.shape[1])))
    x = torch.cat(parts, dim=1)
    return x * 0.1 + x.detach() * 0.9  # the package's gradient-shrink trick, kept for identical numbers


def bare_loop(model, prefix_ids: torch.Tensor, steps: int, every_position: bool) -> list[list[int]]:
    base = base_model(model.rudolph)
    total = model.l_len + model.image_len + model.r_len
    mask = torch.tril(torch.ones((1, 1, total, total)))
    out, cache, start = prefix_ids, None, prefix_ids.shape[1]
    for _ in range(steps):
        if every_position:
            logits, cache = base(out, mask, cache=cache, use_cache=True, return_loss=False)
            last = logits[:, -1]
        else:
            n = out.shape[1]
            hidden, cache, _ = base.transformer(embed(base, out), mask[:, :, :n, :n], cache=cache, use_cache=True)
            last = base.to_logits(hidden[:, -1])
        scores = last[:, :model.bpe_vocab].float()
        scores[:, BANNED] = float("-inf")
        out = torch.cat([out, scores.argmax(-1, keepdim=True)], dim=1)
    return out[:, start:].tolist()


def as_text(model, rows: list[list[int]]) -> list[list[str]]:
    texts = []
    for row in rows:
        row = row[: row.index(EOS)] if EOS in row else row
        texts.append([model.tokenizer.decode_text(torch.tensor(row, dtype=torch.long)).strip() if row else ""])
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32, help="new tokens per caption")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=4, help="pairs of each order")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tables = make_synthetic_dataset(tmp / "data", n_train=32, n_val=4, image_size=64)
        texts = [line.split("\t", 1)[1] for line in tables["train"].read_text(encoding="utf-8").splitlines()[1:]]
        overrides = make_rudolph(tmp / "rudolph", "small", texts)
        model = build_model(load_config("rudolph_350m", overrides).model, work_dir=tmp).eval()
        base = base_model(model.rudolph)
        codes = torch.randint(0, base.image_embeddings.num_embeddings - base.image_special_tokens,
                              (args.batch_size, model.image_len))
        prefix = model._inputs(codes, torch.tensor(model.right_prefix).expand(args.batch_size, -1))
        generation = GenerationConfig(strategy="greedy", max_new_tokens=args.steps)
        steps = min(args.steps, model.caption_limit)
        decoders = {
            "memecap": lambda: model.generate({"image": codes}, generation),
            "every position": lambda: as_text(model, bare_loop(model, prefix, steps, every_position=True)),
            "bare": lambda: as_text(model, bare_loop(model, prefix, steps, every_position=False)),
        }
        times = {name: [] for name in decoders}
        captions = {}
        with torch.no_grad():
            # memecap and bare alternate, each first in half the pairs; the slow old path runs in a
            # block of its own after them, so its large logits never sit between the two compared.
            order = [("memecap", "bare"), ("bare", "memecap")] * args.repeats + [("every position",)] * 3
            for names in order:
                for name in names:
                    t0 = time.perf_counter()
                    captions[name] = decoders[name]()
                    times[name].append(time.perf_counter() - t0)
        if len({repr(c) for c in captions.values()}) != 1:
            raise SystemExit(f"the decoders disagree: {captions}")
        median = {name: statistics.median(t) for name, t in times.items()}
        print(f"{args.batch_size} captions x {steps} tokens, {torch.get_num_threads()} thread(s), "
              f"{2 * args.repeats} alternating pairs; identical captions from all three")
        print("| decoder | median per batch | ratio to bare |\n| --- | --- | --- |")
        for name, t in median.items():
            print(f"| {name} | {t * 1000:.0f} ms | {t / median['bare']:.2f}x |")


if __name__ == "__main__":
    main()
