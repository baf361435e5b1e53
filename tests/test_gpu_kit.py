"""The GPU evidence kit (scripts/gpu/) through its CPU dry run: every mode of the real list runs in
its own process with tiny shapes, a failing mode is recorded with its error and the rest go on,
and the JSON + Markdown results are written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "gpu"))

from environment import distribution, install  # noqa: E402
from modes import MODES  # noqa: E402

BROKEN = "rudolph-350m"  # made to fail with a config error the mode cannot start with


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("gpu_kit")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(REPO / ".torch_extensions")}
    # The timeout is inside pytest-timeout's 600 s, so the output is reported.
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu" / "run.py"), "--cpu-dry-run", "--out", str(out),
                           "--jobs", "2", "--set", BROKEN, "train.batch_size=0"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "results.json").read_text(encoding="utf-8")), out


def test_every_mode_starts_and_ends_in_priority_order(dry_run):
    summary, out = dry_run
    assert summary["dry_run"] is True
    assert [r["mode"] for r in summary["modes"]] == [m.name for m in MODES]
    for record in summary["modes"]:
        assert record["started"] <= record["ended"], record
        assert (out / "logs" / f"{record['mode']}.log").is_file()


def test_a_failing_mode_is_recorded_with_its_error_and_the_others_run(dry_run):
    summary, out = dry_run
    records = {r["mode"]: r for r in summary["modes"]}
    broken = records.pop(BROKEN)
    assert broken["status"] == "failed" and "train.batch_size" in broken["error"], broken
    assert MODES[-1].name != BROKEN and records[MODES[-1].name]["status"] == "ok"  # modes after it still ran
    for name, record in records.items():
        assert record["status"] == "ok", (record, (out / "logs" / f"{name}.log").read_text(encoding="utf-8")[-3000:])
        assert record["step_s"] > 0 and record["allocated"] > 0, record
        if record["kind"] == "train":
            assert record["plan"] > 0 and record["tokens_per_s"] > 0 and record["timed"] >= 1, record
        else:
            assert record["captions_per_s"] > 0, record


def test_the_environment_is_checked(dry_run):
    env = dry_run[0]["environment"]
    assert env["device"] == "cpu" and env["torch"]
    assert env["packages"]["memecap"] == "importable"
    assert not any(v.startswith("missing") for v in env["packages"].values()), env["packages"]
    assert env["bitsandbytes_kernels"].startswith("ok"), env["bitsandbytes_kernels"]


def test_the_markdown_table_has_a_row_per_mode_with_its_status(dry_run):
    summary, out = dry_run
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "CPU dry run" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and ": " in line.split("|")[1]]
    assert [row.split("|")[1].split(":")[0].strip() for row in rows] == [m.name for m in MODES]
    broken = next(row for row in rows if row.startswith(f"| {BROKEN}:"))
    assert "**failed**" in broken and "train.batch_size" in broken


def test_install_adds_only_absent_distributions(tmp_path):
    present = tmp_path / "pytest-0.0.0-py3-none-any.whl"  # pytest is installed: never reinstalled
    with zipfile.ZipFile(present, "w"):
        pass
    assert distribution(present) == ("pytest", "0.0.0")
    assert distribution(Path("youtokentome-1.0.6.tar.gz")) == ("youtokentome", "1.0.6")
    assert install(tmp_path) == {present.name: f"present ({__import__('pytest').__version__})"}


def test_gpu_modes_never_share_the_machine():
    from run import parse_args

    assert parse_args(["--cpu-dry-run", "--jobs", "2"]).jobs == 2
    with pytest.raises(SystemExit):
        parse_args(["--jobs", "2"])
    with pytest.raises(SystemExit):  # a --set naming no mode is an error, not a silently ignored setting
        parse_args(["--set", "no-such-mode", "train.batch_size=1"])


def test_a_multi_line_error_keeps_the_table_one_row():
    from report import status

    cuda = "AcceleratorError: CUDA error: device-side assert triggered\nSearch for `cudaErrorAssert' in |docs|\n"
    cell = status({"status": "failed", "error": cuda})
    assert cell == "**failed**: AcceleratorError: CUDA error: device-side assert triggered"
    assert status({"status": "ok"}) == "ok"


def test_only_runs_the_named_modes_in_the_order_given():
    from run import selected

    assert selected(None) == MODES
    names = [m.name for m in selected(["scst-clipcap-small", "qlora-large", "scst-clipcap-small"])]
    assert names == ["scst-clipcap-small", "qlora-large"]


def test_the_scst_mode_tokeniser_has_a_word_for_every_id(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_memory import make_decoder
    from transformers import AutoTokenizer

    make_decoder(tmp_path, "tiny", ["кот сидит на столе", "подпись под фото"], every_id_a_word=True)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    sampled = [7, 1500, 50256, 30000, 999, 1000]  # below, at and above the fitted BPE's own 1,000
    assert len(tok) == 50257
    assert tok(tok.decode(sampled), add_special_tokens=False)["input_ids"] == sampled
