"""scripts/bench_scst_memes.py: several scst runs at once share the CPU's cores instead of each taking all."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_scst_memes.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_scst_memes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_at_once_each_get_a_share_of_the_cores_unless_the_user_set_it(monkeypatch):
    bench = load_bench()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert bench.run_env(2)["OMP_NUM_THREADS"] == "4"
    assert bench.run_env(3)["OMP_NUM_THREADS"] == "2"
    assert "OMP_NUM_THREADS" not in bench.run_env(1)  # one run: torch's own choice, all the cores
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert bench.run_env(4)["OMP_NUM_THREADS"] == "1"  # never 0
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert bench.run_env(2)["OMP_NUM_THREADS"] == "3"
