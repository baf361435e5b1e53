"""Two gloo ranks decode with the LSTM's step decoding and `synced_gpus`: rank 0's captions end at
once (the end token is always likeliest), rank 1's never do. Each rank writes how many `step`
calls (forward passes) it made and the captions it got, per strategy, to OUT_DIR/rank<N>.json.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/probes/synced_step_decoding.py OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from memecap.config import GenerationConfig
from memecap.models.lstm.step_decoding import decode
from memecap.training.process_exit import end_launched_process

EOS, VOCAB, BATCH = 0, 6, 2

dist.init_process_group("gloo")
rank = dist.get_rank()
likeliest = EOS if rank == 0 else 1
steps = 0


def logits(rows: int) -> torch.Tensor:
    out = torch.zeros(rows, VOCAB)
    out[:, likeliest] = 10.0
    return out


def begin():
    return logits(BATCH), torch.zeros(BATCH)


def step(tokens, state):
    global steps
    steps += 1
    return logits(tokens.shape[0]), state


results = {}
for strategy in ("greedy", "beam", "sample"):
    steps = 0
    cfg = GenerationConfig(strategy=strategy, max_new_tokens=6, num_beams=2, top_k=1,
                           num_return_sequences=1 if strategy == "greedy" else 2)
    captions = decode(begin, step, lambda state, rows: state[rows], BATCH, cfg, EOS, synced_gpus=True)
    results[strategy] = {"steps": steps, "captions": captions}
Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(results))
end_launched_process(0)
