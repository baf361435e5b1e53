"""Two machines (two launches on 127.0.0.1, one process each), with a shared run folder and with
a folder of their own each, as cloud machines with local disks have."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from memecap.training.checkpoint import list_checkpoints
from memecap.config import save_config
from tests.helpers import tiny_run_config
from tests.launching import REPO, launch_failure

pytestmark = pytest.mark.timeout(900)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_machines(recipes: list[Path], timeout: int = 400) -> list[subprocess.CompletedProcess]:
    """`accelerate launch --num_machines 2 --machine_rank R` once per machine, at the same time."""
    port = free_port()
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs = []
    for rank, recipe in enumerate(recipes):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
               "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "memecap.train", str(recipe)]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    done = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def both_failures(procs) -> str:
    return "\n\n".join(f"=== machine {rank} ===\n{launch_failure(p)}" for rank, p in enumerate(procs))


def recipe_for(tmp_path: Path, machine: int, out: Path, data: dict, *overrides: str) -> Path:
    path = tmp_path / f"machine{machine}-{len(list(tmp_path.glob('machine*')))}.yaml"
    save_config(tiny_run_config(out, data, "train.max_steps=4", "train.save_every=2", "train.eval_every=100",
                                "eval.compare_constant=false", *overrides), path)
    return path


def test_shared_run_folder(tmp_path, synthetic_data):
    out = tmp_path / "shared"
    recipe = recipe_for(tmp_path, 0, out, synthetic_data)
    procs = launch_two_machines([recipe, recipe])
    assert all(p.returncode == 0 for p in procs), both_failures(procs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["optimizer_steps"] == 4
    newest = list_checkpoints(out)[-1]
    assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors"} <= {p.name for p in newest.iterdir()}


def test_local_folders_are_refused_in_seconds_without_save_on_each_node(tmp_path, synthetic_data):
    recipes = [recipe_for(tmp_path, m, tmp_path / f"local{m}", synthetic_data, f"cache.dir={tmp_path}/cache{m}")
               for m in (0, 1)]
    procs = launch_two_machines(recipes)
    for proc in procs:
        assert proc.returncode != 0
        assert "is not shared between the machines" in proc.stderr and "train.save_on_each_node=true" in proc.stderr
    assert not list_checkpoints(tmp_path / "local0") and not list_checkpoints(tmp_path / "local1")


def test_local_folders_with_save_on_each_node_train_and_resume(tmp_path, synthetic_data):
    def recipes(*overrides):
        return [recipe_for(tmp_path, m, tmp_path / f"local{m}", synthetic_data, f"cache.dir={tmp_path}/cache{m}",
                           "train.save_on_each_node=true", "model.encoder.trainable=false",  # cached features
                           *overrides) for m in (0, 1)]

    procs = launch_two_machines(recipes())
    assert all(p.returncode == 0 for p in procs), both_failures(procs)
    for m in (0, 1):
        folder = tmp_path / f"local{m}"
        newest = list_checkpoints(folder)[-1]
        assert newest.name == "step_0000004"
        names = {p.name for p in newest.iterdir()}
        assert {"model.safetensors", "optimizer.bin", f"random_states_{m}.pkl", "manifest.json"} <= names
        assert (folder / "base_models" / "decoder" / "config.json").is_file()  # each machine made its own
        assert [p for p in (tmp_path / f"cache{m}").rglob("shards/*.idx") if p.stat().st_size]  # its own features
    procs = launch_two_machines(recipes("train.max_steps=6", "train.resume=auto"))
    assert all(p.returncode == 0 for p in procs), both_failures(procs)
    summary = json.loads((tmp_path / "local0" / "summary.json").read_text())
    assert summary["optimizer_steps"] == 6
    assert [p.name for p in list_checkpoints(tmp_path / "local1")][-1] == "step_0000006"
