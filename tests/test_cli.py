"""The `memecap` command: train, eval and caption on a tiny run, and bad data stopping a run early."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from memecap import cli, train
from memecap.data.validation import DataError
from memecap.evaluation import read_predictions
from tests.helpers import reset_accelerate, tiny_run_config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synthetic_data):
    out = tmp_path_factory.mktemp("cli") / "run"
    train.main(tiny_run_config(out, synthetic_data, "train.max_steps=3", "eval.compare_constant=false"))
    reset_accelerate()
    return out


def test_caption_folder_writes_jsonl(trained_run, synthetic_data, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    src = synthetic_data["val"].parent / "images"
    for name in ("48.jpg", "49.jpg", "50.jpg"):
        shutil.copy(src / name, images / name)
    out = tmp_path / "captions.jsonl"
    assert cli.main(["caption", str(images), "--model", str(trained_run), "--out", str(out),
                     "--num-beams", "2", "--num-return-sequences", "2", "--max-new-tokens", "6"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["image"] for r in rows] == ["48.jpg", "49.jpg", "50.jpg"]
    assert all(r["caption"] and len(r["alternatives"]) == 1 for r in rows)


def test_eval_scores_a_table_and_writes_predictions(trained_run, synthetic_data, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    assert cli.main(["eval", str(trained_run), "--data", str(synthetic_data["val"]), "--out", str(out),
                     "--scoring", "seed", "--strategy", "greedy", "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out
    assert "bleu4" in printed and "meteor" in printed
    rows = read_predictions(out)
    assert len(rows) == 13 and all(r["references"] for r in rows)


def test_eval_accepts_a_training_checkpoint(trained_run, synthetic_data, tmp_path, capsys):
    checkpoint = sorted((trained_run / "checkpoints").iterdir())[-1]
    out = tmp_path / "preds.jsonl"
    assert cli.main(["eval", str(checkpoint), "--data", str(synthetic_data["val"]), "--out", str(out),
                     "--strategy", "greedy", "--max-new-tokens", "6"]) == 0
    from_checkpoint = [r["prediction"] for r in read_predictions(out)]
    # The run's final export holds the same weights as its last checkpoint: same captions.
    assert cli.main(["eval", str(trained_run / "final"), "--data", str(synthetic_data["val"]), "--out",
                     str(tmp_path / "final.jsonl"), "--strategy", "greedy", "--max-new-tokens", "6"]) == 0
    assert from_checkpoint == [r["prediction"] for r in read_predictions(tmp_path / "final.jsonl")]


def test_eval_out_never_replaces_a_file_that_is_not_predictions(trained_run, synthetic_data, tmp_path, capsys):
    table = tmp_path / "val.tsv"
    shutil.copy(synthetic_data["val"], table)
    before = table.read_bytes()
    assert cli.main(["eval", str(trained_run), "--data", str(synthetic_data["val"]), "--out", str(table),
                     "--strategy", "greedy", "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert f"{table}: not a predictions file (line 1 is not a predictions line); it was left unchanged" in err
    assert table.read_bytes() == before


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", "0", "argument --batch-size: must be >= 1, got 0"),
    ("--num-beams", "-1", "argument --num-beams: must be >= 1, got -1"),
    ("--top-p", "nan", "argument --top-p: must be a finite number, got nan"),
    ("--temperature", "0", "argument --temperature: must be > 0.0, got 0"),
])
def test_caption_numbers_are_checked_before_anything_runs(flag, value, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["caption", str(tmp_path), "--model", str(tmp_path), flag, value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["caption", str(tmp_path), "--model", str(tmp_path / "nope")]) == 2
    assert "no exported model" in capsys.readouterr().err


def test_console_script_prints_resolved_config():
    proc = subprocess.run([sys.executable, "-m", "memecap", "config", "clipcap_lora", "optim.lr=1e-4"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "mode: lora" in proc.stdout and "lr: 0.0001" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "memecap", "train", "demo", "optim.lrr=1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "optim.lrr" in bad.stderr


def test_bad_rows_stop_the_run_before_training(tmp_path, synthetic_data, capsys):
    table = tmp_path / "train.tsv"
    lines = synthetic_data["train"].read_text(encoding="utf-8").splitlines()
    lines[3] = "9999\tна картинке ничего"  # line 4: an image that does not exist
    lines[5] = lines[5].split("\t")[0] + "\t   "  # line 6: an empty caption
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copytree(synthetic_data["train"].parent / "images", tmp_path / "images")
    cfg = tiny_run_config(tmp_path / "run", {"train": table, "val": synthetic_data["val"]})
    with pytest.raises(DataError) as err:
        train.main(cfg)
    reset_accelerate()
    message = str(err.value)
    assert f"{table}:4" in message and f"{table}:6" in message
    assert not (tmp_path / "run" / "checkpoints").exists()

    skipped = tiny_run_config(tmp_path / "run2", {"train": table, "val": synthetic_data["val"]},
                              "data.on_bad_row=skip", "train.max_steps=1", "eval.compare_constant=false")
    summary = train.main(skipped)
    reset_accelerate()
    assert summary["optimizer_steps"] == 1
    err_text = capsys.readouterr().err
    assert "skipped 2 of 48 rows" in err_text, err_text[-2000:]
    assert f"{table}:4" in err_text and f"{table}:6" in err_text  # each skipped row is logged, never silent
