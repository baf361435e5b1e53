"""The real loop in two real CPU processes (DDP over gloo), launched the way users launch it."""
from __future__ import annotations

import json
import os

from memecap.config import save_config
from memecap.evaluation import read_predictions
from tests.helpers import log_rows, tiny_run_config
from tests.launching import accelerate_launch, launch_failure


def test_two_process_ddp_run(tmp_path, synthetic_data):
    out = tmp_path / "run"
    # 13 validation images over 2 ranks with batch 4: the last batch is uneven and padded by Accelerate.
    cfg = tiny_run_config(out, synthetic_data, "train.epochs=2", "optim.lr=3e-3")
    recipe = tmp_path / "run.yaml"
    save_config(cfg, recipe)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = accelerate_launch("cpu_ddp.yaml", ["-m", "memecap.train", str(recipe)], env)
    assert proc.returncode == 0, launch_failure(proc)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["distributed_type"] == "DistributedType.MULTI_CPU"  # gloo DDP, not one process
    assert summary["replicas_in_sync"] is True  # gradients were all-reduced: both ranks hold the same weights
    # 48 captions, batch 8 per rank, 2 ranks -> 3 optimizer steps an epoch.
    assert summary["optimizer_steps"] == 6
    for path in sorted((out / "predictions").glob("*.jsonl")):
        rows = read_predictions(path)
        uids = [r["uid"] for r in rows]
        assert len(uids) == 13 and len(set(uids)) == 13  # both ranks' captions, none twice
    losses = [r["loss"] for r in log_rows(out)]
    assert losses[-1] < losses[0]
