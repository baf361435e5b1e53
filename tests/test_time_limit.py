"""Stopping a run to resume it later (memecap/training/time_limit.py): `train.time_limit` and SIGUSR1
checkpoint at a step's end and exit 0 without a summary; `train.resume=auto` then continues exactly.
The real loop, in one process, under the real CLI, and in two real CPU processes."""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from memecap.config import ConfigError, save_config
from memecap.config_checks import duration_seconds
from memecap.training.time_limit import StopForResume
from tests.helpers import assert_resumed_exactly, log_rows, reset_accelerate, tiny_run_config
from tests.launching import launch_failure, quiet_env

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, seconds", [("3h50m", 13800), ("90m", 5400), ("45s", 45), ("1h0m15s", 3615),
                                           ("03:50:00", 13800), ("100:00:01", 360001)])
def test_durations(text, seconds):
    assert duration_seconds("train.time_limit", text) == seconds


@pytest.mark.parametrize("text, says", [("90", "a bare number has no unit"), ("5400", "quote it"), ("3h5", "units"),
                                        ("", "units"), ("0m", "longer than 0"), ("1:30", "units"), ("-5m", "units")])
def test_bad_durations_name_the_key(text, says):
    with pytest.raises(ConfigError, match=r"train\.time_limit=.*" ) as err:
        tiny_run_config(Path("unused"), {"train": "t.tsv", "val": "v.tsv"}, f"train.time_limit={text}")
    assert says in str(err.value)


def test_the_stop_comes_when_two_of_the_longest_step_intervals_no_longer_fit():
    now = time.monotonic()
    roomy = StopForResume("1h", started=now)
    roomy.restart_interval()
    assert not roomy.wants_stop() and roomy.reason == ""
    # 100 s of a 110 s limit are gone, all of it in one step interval: another step and a save do not fit.
    tight = StopForResume("110s", started=now - 100)
    assert tight.wants_stop()
    assert re.fullmatch(r"train\.time_limit: (9|10)s of 1m50s left, and a step took up to 1m4[01]s", tight.reason)
    # The same 100 s spent before the first step (building the model) is not a step interval.
    built = StopForResume("110s", started=now - 100)
    built.restart_interval()
    assert not built.wants_stop()


def test_sigusr1_asks_for_a_stop_only_while_training(monkeypatch):
    before = signal.getsignal(signal.SIGUSR1)
    with StopForResume(None) as stopper:
        assert not stopper.wants_stop()  # no limit: never for time
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stopper.wants_stop() and stopper.reason == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_a_time_limit_checkpoints_stops_and_resumes_exactly(tmp_path, synthetic_data, monkeypatch):
    from memecap import train
    from memecap.training import time_limit

    common = ("train.max_steps=5", "train.eval_every=100", "eval.compare_constant=false", "train.keep_checkpoints=5")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    try:
        train.main(tiny_run_config(straight, synthetic_data, *common))
        reset_accelerate()
        # Each reading of the clock 10 s after the last: the run starts at 0, its first step at 10, and
        # every step takes 10 s; with a minute, 10 s are left after step 4, less than two steps.
        readings = itertools.count(0, 10)
        monkeypatch.setattr(time_limit, "clock", lambda: float(next(readings)))
        stopped = train.main(tiny_run_config(resumed, synthetic_data, *common, "train.time_limit=1m"))["stopped"]
        monkeypatch.undo()
        reset_accelerate()
        assert stopped["optimizer_step"] == 4
        assert stopped["reason"] == "train.time_limit: 10s of 1m00s left, and a step took up to 10s"
        assert Path(stopped["checkpoint"]) == resumed / "checkpoints" / "step_0000004"
        assert not (resumed / "summary.json").exists() and not (resumed / "final").exists()
        assert [r["step"] for r in log_rows(resumed)] == [1, 2, 3, 4]
        assert log_rows(resumed, "eval") == []  # a stop evaluates nothing: it only checkpoints
        train.main(tiny_run_config(resumed, synthetic_data, *common, "train.resume=auto"))
    finally:
        reset_accelerate()
    assert json.loads((resumed / "summary.json").read_text())["optimizer_steps"] == 5
    assert_resumed_exactly(straight, resumed, list(range(1, 6)), ("mapper.safetensors",))


def wait_for_first_step(out: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ((out / "log.jsonl").exists() and log_rows(out)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no training step logged"
        time.sleep(0.2)


def test_sigusr1_stops_the_cli_with_a_checkpoint_and_exit_0(tmp_path, synthetic_data):
    out = tmp_path / "run"
    recipe = tmp_path / "run.yaml"
    save_config(tiny_run_config(out, synthetic_data, "train.max_steps=100000", "train.eval_every=100000",
                                "eval.compare_constant=false"), recipe)
    proc = subprocess.Popen([sys.executable, "-m", "memecap", "train", str(recipe)], cwd=REPO, env=quiet_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_first_step(out, proc)
        proc.send_signal(signal.SIGUSR1)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    step = log_rows(out)[-1]["step"]
    assert f"stopped at optimizer step {step} (SIGUSR1)" in stdout + stderr
    assert (out / "checkpoints" / f"step_{step:07d}").is_dir()
    assert not (out / "summary.json").exists()


def rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "memecap.train" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    raise AssertionError(f"no process of rank {rank}")


def test_two_processes_stop_together_when_one_is_asked(tmp_path, synthetic_data):
    """SIGUSR1 to rank 1 alone: rank 0 must stop at the same step, or both would hang in DDP."""
    out = tmp_path / "run"
    recipe = tmp_path / "run.yaml"
    save_config(tiny_run_config(out, synthetic_data, "train.max_steps=100000", "train.eval_every=100000",
                                "eval.compare_constant=false", "optim.lr=3e-3"), recipe)
    env = {**quiet_env(), "ACCELERATE_USE_CPU": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "accelerate_configs" / "cpu_ddp.yaml"), "-m", "memecap.train"]
    proc = subprocess.Popen([*launch, str(recipe)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_first_step(out, proc)
        rank_process(proc, 1).send_signal(signal.SIGUSR1)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    finished = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert proc.returncode == 0, launch_failure(finished)
    step = log_rows(out)[-1]["step"]
    assert f"stopped at optimizer step {step} (another process was asked to stop)" in stdout + stderr
    assert not (out / "summary.json").exists()

    # The checkpoint both processes wrote resumes in two processes, to the run's (new) end.
    save_config(tiny_run_config(out, synthetic_data, f"train.max_steps={step + 2}", "train.eval_every=100000",
                                "eval.compare_constant=false", "optim.lr=3e-3", "train.resume=auto"), recipe)
    resumed = subprocess.run([*launch, str(recipe)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, launch_failure(resumed)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["optimizer_steps"] == step + 2 and summary["replicas_in_sync"] is True
