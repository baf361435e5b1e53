"""Two gloo ranks gather objects, then end the way `python -m memecap.train` ends.

The main thread keeps the GIL (huge switch interval) so gloo's worker threads are still holding
the last collective's tensors when the interpreter would finalize: the abort that a plain exit
then risks (see memecap/training/process_exit.py) shows up in about half of the runs.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/probes/gloo_exit.py [plain]
"""
from __future__ import annotations

import sys

import torch.distributed as dist

from memecap.training.process_exit import end_launched_process

dist.init_process_group("gloo")
sys.setswitchinterval(1000.0)
for _ in range(3):
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"rank": dist.get_rank()})
assert [g["rank"] for g in gathered] == list(range(dist.get_world_size()))
print(f"rank {dist.get_rank()} gathered {gathered}", flush=True)
if sys.argv[1:] != ["plain"]:
    end_launched_process(0)
