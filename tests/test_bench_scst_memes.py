"""scripts/bench_scst_memes.py: several scst runs at once share the CPU's cores instead of each taking all."""
from __future__ import annotations

import importlib.util
import os
import sys
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


def test_a_failed_run_is_named_and_the_others_are_waited_for(tmp_path):
    """Two real processes at once: the first fails at once, the second is still running then; both are
    waited for (none left going alone), the failure names its run folder, the third is never started."""
    bench = load_bench()
    slow_done = tmp_path / "slow_done"
    python = sys.executable
    pending = [
        ([python, "-c", "raise SystemExit(3)"], tmp_path / "seed0"),
        ([python, "-c", f"import time, pathlib; time.sleep(1.5); pathlib.Path({str(slow_done)!r}).write_text('x')"],
         tmp_path / "seed1"),
        ([python, "-c", f"import pathlib; pathlib.Path({str(tmp_path / 'third')!r}).write_text('x')"],
         tmp_path / "seed2"),
    ]
    failed = bench.run_all(pending, jobs=2, poll_s=0.1)
    assert failed == [f"scst run {tmp_path / 'seed0'} failed with exit code 3 (its error is above)"]
    assert slow_done.is_file()  # waited for, not orphaned
    assert not (tmp_path / "third").exists()


def test_a_killed_run_says_so():
    bench = load_bench()
    assert "killed by signal 9" in bench.failure(Path("runs/seed0"), -9)
    assert "--jobs" in bench.failure(Path("runs/seed0"), -9)
    assert "signal 15" in bench.failure(Path("runs/seed0"), -15)


def test_the_checkpoint_and_the_seeds_are_compared_meme_by_meme(tmp_path):
    from memecap.evaluation import write_predictions

    bench = load_bench()
    references = [["на фото кот. подпись: \"я устал\""], ["на фото собака спит на диване"],
                  ["надпись: \"понедельник опять\""]]
    before = ["на фото кот. подпись: \"я устал\"", "на фото кот", "надпись: \"вторник\""]
    after = ["на фото кот. подпись: \"я устал\"", "на фото собака спит", "надпись: \"понедельник опять\""]
    for name, captions in (("before", before), ("seed0", after), ("seed1", before)):
        write_predictions(tmp_path / f"{name}.jsonl", [{"uid": str(i), "references": refs, "prediction": caption}
                                                      for i, (refs, caption) in enumerate(zip(references, captions))])
    report = bench.paired(tmp_path / "before.jsonl", [tmp_path / "seed0.jsonl", tmp_path / "seed1.jsonl"])
    assert "(mean of 2 runs)" in report and "3 memes paired" in report
    meteor = next(line for line in report.splitlines() if line.startswith("METEOR"))
    assert "+" in meteor.split()[3]  # half the seeds' captions got better: the mean gains
    assert "the memes whose CIDEr-D improved most" in report and "  2  " in report
