"""A full disk or an unwritable folder is one line naming the setting to change (exit code 2),
never a traceback; other errors are left as they are."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest
from safetensors import SafetensorError

from memecap import cli, train
from memecap.outputs.os_errors import explain
from tests.helpers import TEST_TINY, reset_accelerate

REPO = Path(__file__).resolve().parents[1]


def tiny_train_args(out: Path, synthetic_data: dict, *overrides: str) -> list[str]:
    return ["demo", f"data.train={synthetic_data['train']}", f"data.val={synthetic_data['val']}",
            f"train.output_dir={out}", f"cache.dir={out / 'cache'}", "train.trackers=[]", "train.progress_bar=false",
            "train.batch_size=8", "eval.batch_size=4", "train.max_steps=1", "generation.max_new_tokens=4",
            "eval.compare_constant=false", *[f"model.tiny.{k}={v}" for k, v in vars(TEST_TINY).items()], *overrides]


def test_unwritable_folders_name_their_setting_in_the_first_second(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file, so nothing can be created under it")
    assert cli.main(["train", "demo", f"train.output_dir={blocker / 'run'}", f"cache.dir={tmp_path / 'cache'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"memecap: cannot write {blocker / 'run'}: a file stands where a folder is needed; "
                   f"train.output_dir is {blocker / 'run'}: "
                   "change train.output_dir to a folder you can write"]
    assert cli.main(["train", "demo", f"train.output_dir={tmp_path / 'run'}", f"cache.dir={blocker / 'cache'}"]) == 2
    err = capsys.readouterr().err
    assert "change cache.dir to a folder you can write, or set cache.enabled=false" in err and "Traceback" not in err
    # With the cache off, that folder is not needed: the same command gets past the check.
    assert explain(NotADirectoryError(errno.ENOTDIR, "Not a directory", str(blocker / "cache")),
                   {"train.output_dir": str(tmp_path / "run"), "cache.dir": None}) == \
        f"{blocker / 'cache'}: a file stands where a folder is needed"


def test_a_full_disk_mid_run_is_one_line(tmp_path, synthetic_data, monkeypatch, capsys):
    # Injected at the write (safetensors' own error type and words), as a real full disk raises it.
    import safetensors.torch

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "serialize_file", full)  # what every save_file writes through
    out = tmp_path / "run"
    try:
        assert train.cli(tiny_train_args(out, synthetic_data)) == 2
    finally:
        reset_accelerate()
    err = capsys.readouterr().err
    assert "memecap: no space left on device: free space, or point one of these at another disk: " \
           f"train.output_dir={out} (" in err and f"cache.dir={out / 'cache'} (" in err
    assert "Traceback" not in err


def test_no_space_names_the_full_place(tmp_path, capsys, monkeypatch):
    full = OSError(errno.ENOSPC, "No space left on device")
    places = {"train.output_dir": str(tmp_path / "run"), "cache.dir": str(tmp_path / "cache")}
    assert explain(full, places).startswith("no space left on device: free space, or point one of these")
    full.filename = str(tmp_path / "cache" / "features" / "x.safetensors")
    assert explain(full, places).startswith(f"no space left on device while writing {full.filename} in "
                                            f"cache.dir={tmp_path / 'cache'} (")
    assert explain(ValueError("something else"), places) is None
    assert explain(RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), places) is None

    # `memecap report` (any command) says the same when its write fails.
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"uid": "a", "references": ["x"], "prediction": "x"}\n', encoding="utf-8")

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    assert cli.main(["report", str(predictions), "--out", str(tmp_path / "r.html")]) == 2
    assert capsys.readouterr().err.startswith("memecap: no space left on device: free space, or point one of "
                                              f"these at another disk: --out={tmp_path / 'r.html'} (")
    assert not (tmp_path / "r.html").exists()


def test_other_errors_keep_their_traceback(tmp_path, monkeypatch):
    import memecap.publish.report

    monkeypatch.setattr(memecap.publish.report, "write_report", lambda *args, **kwargs: 1 / 0)  # a planted bug
    with pytest.raises(ZeroDivisionError):
        cli.main(["report", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "r.html")])


@pytest.mark.parametrize("command", ["caption", "eval", "report"])
def test_an_unwritable_out_fails_before_any_work(command, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "result"
    extra = ["--model", str(tmp_path / "no-model")] if command == "caption" else (
        ["--data", str(tmp_path / "no-table.tsv")] if command == "eval" else [])
    target = {"caption": str(tmp_path), "eval": str(tmp_path / "no-model"),
              "report": str(tmp_path / "no.jsonl")}[command]
    assert cli.main([command, target, *extra, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"memecap: cannot write {blocker}: a file stands where a folder is "
                                               f"needed; --out is {out}: change --out to a folder you can write")


def mount_namespace_tmpfs() -> list[str]:
    """The command prefix that runs a shell in a private mount namespace, where it may mount a
    small tmpfs that nobody else sees; skips where that is not allowed."""
    import shutil
    import subprocess

    prefix = ["unshare", "--mount", "--map-root-user", "sh", "-c"]
    if shutil.which("unshare") is None or subprocess.run(
            [*prefix, "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (unshare --mount --map-root-user)")
    return prefix


def test_a_real_full_disk_during_torch_save_is_one_line_and_the_last_checkpoint_survives(tmp_path, synthetic_data):
    """A real full file system (a 64 MiB tmpfs, filled until half of the optimizer state fits):
    torch.save then fails with `[enforce fail at inline_container.cc:672] . unexpected pos` after
    `basic_ios::clear: iostream error`, which said nothing of a disk."""
    import os
    import shlex
    import subprocess
    import sys

    prefix = mount_namespace_tmpfs()
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "run"
    python = f"PYTHONPATH={shlex.quote(str(REPO))} OMP_NUM_THREADS=1 {shlex.quote(sys.executable)}"
    train_args = tiny_train_args(out, synthetic_data, f"cache.dir={tmp_path / 'cache'}", "train.save_every=1",
                                 "train.eval_every=100", "train.keep_checkpoints=5")
    step_one = " ".join(shlex.quote(a) for a in train_args)
    step_two = " ".join(shlex.quote(a) for a in [*train_args, "train.max_steps=3", "train.resume=auto"])
    # Leave room for step 2's model weights and half its optimizer state, as measured at step 1.
    fill = ("import os, shutil; c = {c!r}; need = os.path.getsize(c + '/model.safetensors') + "
            "os.path.getsize(c + '/optimizer.bin') // 2; free = shutil.disk_usage({d!r}).free; "
            "open({d!r} + '/ballast', 'wb').write(bytes(free - need))").format(
                c=str(out / "checkpoints" / "step_0000001"), d=str(disk))
    check = ("from memecap.training.checkpoint import list_checkpoints, verify_checkpoint; "
             f"done = list_checkpoints({str(out)!r}); [verify_checkpoint(p) for p in done]; "
             "print('complete:', [p.name for p in done])")
    script = (f"mount -t tmpfs -o size=64m tmpfs {shlex.quote(str(disk))} && "
              f"{python} -m memecap train {step_one} >/dev/null 2>&1 && {python} -c {shlex.quote(fill)} && "
              f"{{ {python} -m memecap train {step_two} >/dev/null 2>{shlex.quote(str(tmp_path / 'err'))}; "
              f"echo exit $?; }} && {python} -c {shlex.quote(check)}")
    proc = subprocess.run([*prefix, script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    err = (tmp_path / "err").read_text()
    assert proc.stdout.splitlines() == ["exit 2", "complete: ['step_0000001']"], proc.stdout + err[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"memecap: no space left on device in train.output_dir={out} (")
    assert err.strip().splitlines()[-1].endswith("free): free space there, or point train.output_dir at another disk")
    assert "Traceback" not in err and "enforce fail" not in err
