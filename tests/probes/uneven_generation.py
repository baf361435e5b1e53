"""Run the real training loop, but make the two ranks generate captions of different lengths.

Under ZeRO-3 every forward pass gathers parameter shards from all ranks, so a rank that stops
generating early while the other still decodes deadlocks unless generation is synced. Memes
naturally give captions of different lengths; this probe makes it certain: rank 0 stops after
2 new tokens, the others decode up to the configured length. Each rank writes the lengths it
generated to `<output_dir>/generated_lengths.rank<N>.json`, so the test can check that the
ranks really diverged.

    accelerate launch ... tests/probes/uneven_generation.py RECIPE [key=value ...]
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from memecap.models.clipcap.model import ClipCap
from memecap.training.process_exit import end_launched_process
from memecap.train import cli

RANK = int(os.environ.get("RANK", "0"))
lengths: list[int] = []
real_generate = ClipCap.generate


def uneven_generate(self, batch, generation, synced_gpus=False):
    if RANK == 0:
        generation = replace(generation, max_new_tokens=2)
    captions = real_generate(self, batch, generation, synced_gpus=synced_gpus)
    lengths.extend(len(self.tokenizer(c[0])["input_ids"]) for c in captions)
    return captions


if __name__ == "__main__":
    ClipCap.generate = uneven_generate
    out_dir = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("train.output_dir="))
    code = cli(sys.argv[1:])
    Path(out_dir, f"generated_lengths.rank{RANK}.json").write_text(json.dumps(lengths))
    sys.exit(end_launched_process(code))
    sys.exit(code)
