"""Nothing lost: one run per folder, verified checkpoints, non-finite losses stop the run, a
resume with other settings is refused, and each step is in the log once."""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from memecap import train
from memecap.training.checkpoint import DamagedCheckpoint, list_checkpoints
from memecap.config import ConfigError
from memecap.training.nonfinite import NonFiniteTraining
from memecap.training.run_folder import record_entries
from tests.helpers import QUICK_CHECKPOINTS, checkpointed_run, log_rows
from tests.launching import stopped_holding_lock

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")


@pytest.fixture()
def four_steps(tmp_path, synthetic_data):
    out = tmp_path / "run"
    checkpointed_run(out, synthetic_data, "train.max_steps=4")
    return out


def test_a_second_run_into_the_same_folder_is_refused(four_steps, synthetic_data):
    before = (four_steps / "log.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"holds an earlier run.*train\.resume=auto.*train\.overwrite=true"):
        checkpointed_run(four_steps, synthetic_data, "train.max_steps=2")
    assert (four_steps / "log.jsonl").read_text() == before  # nothing of the old run was touched


def test_overwrite_starts_afresh_with_new_tiny_bases(four_steps, synthetic_data):
    old_width = json.loads((four_steps / "base_models" / "decoder" / "config.json").read_text())["n_embd"]
    checkpointed_run(four_steps, synthetic_data, "train.max_steps=2", "train.overwrite=true",
                     "model.tiny.gpt_width=48", "model.tiny.gpt_heads=2")
    assert [r["step"] for r in log_rows(four_steps)] == [1, 2]
    assert [p.name for p in list_checkpoints(four_steps)] == ["step_0000002"]
    new_width = json.loads((four_steps / "base_models" / "decoder" / "config.json").read_text())["n_embd"]
    assert (old_width, new_width) == (32, 48)


def test_resume_auto_without_a_checkpoint_starts_over(tmp_path, synthetic_data):
    out = tmp_path / "run"
    out.mkdir()
    record_entries(out)  # an attempt killed early: it had recorded its files, and logged a step
    (out / "log.jsonl").write_text('{"kind": "train", "step": 1, "loss": 9.0}\n')
    summary = checkpointed_run(out, synthetic_data, "train.max_steps=2", "train.resume=auto")
    assert summary["optimizer_steps"] == 2
    assert [r["loss"] != 9.0 for r in log_rows(out)] == [True, True]


def tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def test_overwrite_deletes_only_what_the_run_recorded(four_steps, synthetic_data):
    (four_steps / "notes.txt").write_text("mine")
    (four_steps / "mine").mkdir()
    (four_steps / "mine" / "data.tsv").write_text("a\tb\n")
    checkpointed_run(four_steps, synthetic_data, "train.max_steps=2", "train.overwrite=true")
    assert (four_steps / "notes.txt").read_text() == "mine"
    assert (four_steps / "mine" / "data.tsv").read_text() == "a\tb\n"
    assert [p.name for p in list_checkpoints(four_steps)] == ["step_0000002"]


@pytest.mark.parametrize("how", ["train.overwrite=true", "train.resume=auto"])
def test_a_folder_no_run_recorded_loses_nothing(tmp_path, synthetic_data, how):
    """A user's folder with a stray config.yaml beside their own memecap/ and predictions/ folders
    (before: all three deleted by name)."""
    out = tmp_path / "mine"
    (out / "memecap").mkdir(parents=True)
    (out / "memecap" / "code.py").write_text("x = 1\n")
    (out / "predictions").mkdir()
    (out / "predictions" / "keep.jsonl").write_text("{}\n")
    (out / "config.yaml").write_text("mine: true\n")
    before = tree(out)
    with pytest.raises(ConfigError, match=r"has config\.yaml but no record of a memecap run's files .*deletes nothing"):
        checkpointed_run(out, synthetic_data, "train.max_steps=2", how)
    assert tree(out) == before


def test_a_run_does_not_write_into_entries_that_are_not_a_runs(tmp_path, synthetic_data):
    out = tmp_path / "mine"
    (out / "predictions").mkdir(parents=True)
    (out / "predictions" / "keep.jsonl").write_text("{}\n")
    before = tree(out)
    with pytest.raises(ConfigError, match=r"already has predictions, which no memecap run there recorded"):
        checkpointed_run(out, synthetic_data, "train.max_steps=2")
    assert tree(out) == before


def test_non_finite_loss_stops_the_run_and_saves_nothing_more(tmp_path, synthetic_data):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteTraining, match=r"optimizer step 2: .*not finite.*step_0000001"):
        checkpointed_run(out, synthetic_data, "train.max_steps=8", "train.save_every=1", "optim.lr=1e6",
                         "optim.warmup_steps=0")
    assert [p.name for p in list_checkpoints(out)] == ["step_0000001"]
    weights = load_file(list_checkpoints(out)[0] / "model.safetensors")
    assert all(t.isfinite().all() for t in weights.values())
    assert not (out / "best").exists() and not (out / "final").exists()


def test_a_few_bad_steps_may_be_skipped(tmp_path, synthetic_data):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteTraining, match="4 bad steps"):
        checkpointed_run(out, synthetic_data, "train.max_steps=8", "optim.lr=1e6", "optim.warmup_steps=0",
                         "train.max_bad_steps=3")
    assert [r["step"] for r in log_rows(out, "skipped")] == [2, 3, 4]


def test_a_nan_score_is_never_the_best():
    assert not train.is_better("bleu4", math.nan, None)
    assert not train.is_better("val_loss", math.nan, 2.0)
    assert train.is_better("val_loss", 1.0, 2.0)


def damage(path, how):
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "delete":
        path.unlink()


@pytest.mark.parametrize("name,how", [("model.safetensors", "truncate"), ("optimizer.bin", "empty"),
                                      ("trainer_state.json", "truncate"), ("random_states_0.pkl", "delete")])
def test_resume_auto_skips_a_damaged_checkpoint_and_says_so(four_steps, synthetic_data, name, how, capsys):
    damage(four_steps / "checkpoints" / "step_0000004" / name, how)
    summary = checkpointed_run(four_steps, synthetic_data, "train.max_steps=4", "train.resume=auto")
    assert summary["optimizer_steps"] == 4
    err = capsys.readouterr().err
    assert "skipping a damaged checkpoint" in err and f"step_0000004/{name}" in err
    assert "resumed from" in err and "step_0000002" in err
    # The check at start reads the model as built: not to be taken for the checkpoint's captions.
    assert "caption of the model as built, before its checkpoint is loaded" in err and "before training" not in err


@pytest.mark.parametrize("entry", ["../outside.bin", "/etc/hostname"])
def test_resume_auto_skips_a_checkpoint_without_a_manifest_or_one_naming_files_outside(four_steps, synthetic_data,
                                                                                        capsys, entry):
    newest, older = four_steps / "checkpoints" / "step_0000004", four_steps / "checkpoints" / "step_0000003"
    shutil.copytree(newest, older)  # the fallback the resume should take
    (older / "manifest.json").unlink()
    damage(older / "model.safetensors", "truncate")  # unverifiable and truncated: before, a crash in the load
    manifest = json.loads((newest / "manifest.json").read_text())
    manifest["files"][entry] = {"bytes": 1, "sha256": "0" * 64}
    (newest / "manifest.json").write_text(json.dumps(manifest))
    summary = checkpointed_run(four_steps, synthetic_data, "train.max_steps=4", "train.resume=auto")
    err = capsys.readouterr().err
    assert "step_0000004/manifest.json: " in err and "is not a path inside" in err
    assert "step_0000003/manifest.json: missing, so the checkpoint's files cannot be verified" in err
    assert "resumed from" in err and "step_0000002" in err and summary["optimizer_steps"] == 4


def test_an_explicit_damaged_checkpoint_is_an_error_naming_the_file(four_steps, synthetic_data):
    checkpoint = four_steps / "checkpoints" / "step_0000004"
    damage(checkpoint / "model.safetensors", "truncate")
    with pytest.raises(DamagedCheckpoint, match=r"step_0000004/model\.safetensors"):
        checkpointed_run(four_steps, synthetic_data, "train.max_steps=6", f"train.resume={checkpoint}")


def test_resume_refuses_settings_that_change_the_math(four_steps, synthetic_data):
    with pytest.raises(ConfigError, match=r"model\.decoder\.mode: .full. -> .lora.; train\.batch_size: 8 -> 4"):
        checkpointed_run(four_steps, synthetic_data, "train.max_steps=6", "train.resume=auto", "train.batch_size=4",
                         "model.decoder.mode=lora")


def test_resume_may_extend_the_run_and_says_what_changes(four_steps, synthetic_data, capsys):
    summary = checkpointed_run(four_steps, synthetic_data, "train.max_steps=6", "train.resume=auto")
    assert summary["optimizer_steps"] == 6
    assert "train.max_steps: 4 -> 6" in capsys.readouterr().err


def test_replayed_steps_are_logged_once(four_steps, synthetic_data):
    # A kill after step 4 was logged, before its checkpoint was written.
    shutil.rmtree(four_steps / "checkpoints" / "step_0000004")
    before = {r["step"]: r["loss"] for r in log_rows(four_steps)}
    checkpointed_run(four_steps, synthetic_data, "train.max_steps=4", "train.resume=auto")
    rows = log_rows(four_steps)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {r["step"]: r["loss"] for r in rows} == pytest.approx(before, abs=1e-6)  # the replay is exact


def test_the_loss_log_after_a_resume_equals_the_uninterrupted_runs(tmp_path, synthetic_data):
    """A log window (steps 1-3) straddles the checkpoint at step 2: the resumed run's line at step 3
    averages the same steps (before: only step 3, 5.330 vs 5.171 in the report)."""
    out = tmp_path / "run"
    checkpointed_run(out, synthetic_data, "train.max_steps=6", "train.log_every=3")
    straight = {r["step"]: r["loss"] for r in log_rows(out)}
    for step in (4, 6):
        shutil.rmtree(out / "checkpoints" / f"step_{step:07d}")
    checkpointed_run(out, synthetic_data, "train.max_steps=6", "train.log_every=3", "train.resume=auto")
    resumed = {r["step"]: r["loss"] for r in log_rows(out)}
    assert list(straight) == [3, 6]
    assert resumed == pytest.approx(straight, abs=1e-6)


def test_a_familys_own_run_files_are_deleted_by_overwrite_too():
    from memecap.models import FAMILIES
    from memecap.models.lstm.model import RUN_VOCAB
    from memecap.training.run_folder import RUN_ENTRIES

    assert RUN_VOCAB in FAMILIES["lstm"].run_files  # the file the LSTM writes beside the run
    assert {name for family in FAMILIES.values() for name in family.run_files} <= set(RUN_ENTRIES)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="reads the kernel's list of locks (Linux)")
def test_a_second_training_on_one_run_folder_is_refused(tmp_path, synthetic_data):
    """Two real trainings with train.resume=auto on one folder (before: both ran). The lock dies
    with its holder (SIGKILL), so the next resume goes ahead."""
    out = tmp_path / "run"
    script = ("import sys; from pathlib import Path; from memecap import train; "
              "from tests.helpers import tiny_run_config; "
              "train.main(tiny_run_config(Path(sys.argv[1]), {'train': Path(sys.argv[2]), 'val': Path(sys.argv[3])}, "
              "*sys.argv[4:]))")
    first = [sys.executable, "-c", script, str(out), str(synthetic_data["train"]), str(synthetic_data["val"]),
             *QUICK_CHECKPOINTS, "train.max_steps=1000", "train.resume=auto"]
    with stopped_holding_lock(first, out):
        with pytest.raises(ConfigError, match=r"is in use by another memecap training; wait for it to end"):
            checkpointed_run(out, synthetic_data, "train.max_steps=2", "train.resume=auto")
    summary = checkpointed_run(out, synthetic_data, "train.max_steps=2", "train.resume=auto")
    assert summary["optimizer_steps"] == 2
