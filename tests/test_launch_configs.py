"""Every shipped Accelerate and DeepSpeed config loads, and every one that can run on this
machine launches a tiny run of the real loop, so no shipped config can rot.

cpu_ddp.yaml and both DeepSpeed configs are launched with two processes in test_distributed.py
and test_deepspeed.py; single_gpu.yaml and multi_gpu.yaml are launched here on the CPU;
multi_node.yaml needs two machines and is only loaded and checked."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from memecap.config import save_config
from tests.helpers import tiny_run_config
from tests.launching import accelerate_launch, launch_failure

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = sorted((REPO / "accelerate_configs").glob("*.yaml"))
DEEPSPEED_CONFIGS = sorted((REPO / "deepspeed_configs").glob("*.json"))


def test_the_documented_configs_ship():
    names = {p.name for p in ACCELERATE_CONFIGS}
    assert {"cpu_ddp.yaml", "single_gpu.yaml", "multi_gpu.yaml", "multi_node.yaml", "deepspeed_zero2_offload.yaml",
            "deepspeed_zero3_offload.yaml"} <= names
    assert {p.name for p in DEEPSPEED_CONFIGS} == {"zero2_offload_optimizer.json",
                                                    "zero3_offload_optimizer_and_params.json"}


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_loads(path):
    config = load_config_from_file(str(path))
    assert config.num_processes >= 1
    ds_file = (config.deepspeed_config or {}).get("deepspeed_config_file")
    if ds_file:
        assert (REPO / ds_file).is_file(), ds_file
        # See memecap.training.accelerate_setup.whole_weights.
        assert config.deepspeed_config.get("zero3_init_flag") is False
    assert path.read_text().lstrip().startswith("#")  # each file opens with what it does and how to run it


@pytest.mark.parametrize("path", DEEPSPEED_CONFIGS, ids=lambda p: p.name)
def test_deepspeed_config_defers_to_the_recipe(path):
    config = json.loads(path.read_text())
    zero = config["zero_optimization"]
    stage = 3 if "zero3" in path.name else 2
    assert zero["stage"] == stage and zero["offload_optimizer"]["device"] == "cpu"
    assert ("offload_param" in zero) == (stage == 3)
    # Batch size, accumulation, clipping and precision come from the recipe through Accelerate.
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto", key
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"


@pytest.mark.parametrize("name, use_cpu, processes", [("single_gpu.yaml", False, 1), ("multi_gpu.yaml", True, 2)])
def test_gpu_configs_launch_a_tiny_run_on_cpu(name, use_cpu, processes, tmp_path, synthetic_data):
    out = tmp_path / "run"
    recipe = tmp_path / "run.yaml"
    save_config(tiny_run_config(out, synthetic_data, "train.max_steps=2", "eval.compare_constant=false"), recipe)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    proc = accelerate_launch(name, ["-m", "memecap.train", str(recipe)], env)
    assert proc.returncode == 0, launch_failure(proc)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == processes and summary["optimizer_steps"] == 2


def test_multi_node_example_is_consistent():
    config = load_config_from_file(str(REPO / "accelerate_configs" / "multi_node.yaml"))
    assert config.num_machines == 2 and config.num_processes % config.num_machines == 0
    assert config.main_process_ip and config.main_process_port
