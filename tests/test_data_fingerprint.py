"""A resume on changed data is refused (the checkpoint records each stage's rows and image bytes),
and the image check runs once per image: a second start reads its results from the cache."""
from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from memecap.config import ConfigError
from memecap.data import validation
from memecap.data.synthetic import make_synthetic_dataset
from memecap.data.tables import load_split
from memecap.outputs.run_layout import STATE_FILE
from memecap.training.checkpoint import write_manifest
from tests.helpers import checkpointed_run, reset_accelerate

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run on its own copy of the data; each test restores the data and copies the run."""
    root = tmp_path_factory.mktemp("fingerprint")
    data = make_synthetic_dataset(root / "data", n_train=30, n_val=8, image_size=32, seed=3)
    shutil.copytree(root / "data", root / "pristine")
    checkpointed_run(root / "run", data, "train.max_steps=4")
    reset_accelerate()
    return {"root": root, "data": data}


@pytest.fixture()
def four_steps(trained, tmp_path):
    root = trained["root"]
    shutil.rmtree(root / "data")
    shutil.copytree(root / "pristine", root / "data")
    shutil.copytree(root / "run", tmp_path / "run")
    return tmp_path / "run", trained["data"]


def rewrite_table(path, change):
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text(lines[0] + "".join(change(lines[1:])), encoding="utf-8")


@pytest.mark.parametrize("edit,message", [
    ("captions", r"data\.train: captions differ\."),
    ("cut", r"data\.train: 30 -> 10 rows, 30 -> 10 images\."),
    ("image", r"data\.train: image bytes differ\."),
])
def test_resume_on_changed_data_is_refused_naming_what_changed(four_steps, edit, message):
    out, data = four_steps
    if edit == "captions":
        rewrite_table(data["train"], lambda rows: [r.rstrip("\n") + " ещё\n" for r in rows])
    elif edit == "cut":
        rewrite_table(data["train"], lambda rows: rows[:10])
    else:  # the same path, the same size class, other pixels
        Image.new("RGB", (32, 32), (200, 10, 10)).save(data["train"].parent / "images" / "0.jpg", quality=92)
    with pytest.raises(ConfigError, match=r"^train\.resume: the data changed since .*step_0000004 was written.*"
                                          + message) as err:
        checkpointed_run(out, data, "train.max_steps=6", "train.resume=auto")
    assert "\n" not in str(err.value)


def test_resume_on_the_same_data_continues_and_records_the_fingerprint(four_steps):
    out, data = four_steps
    summary = checkpointed_run(out, data, "train.max_steps=6", "train.resume=auto")
    assert summary["optimizer_steps"] == 6
    state = json.loads((out / "checkpoints" / "step_0000006" / STATE_FILE).read_text())
    assert state["data_fingerprint"][0]["train"]["rows"] == 30


def test_a_checkpoint_without_a_fingerprint_resumes_and_says_so_once(four_steps, capsys):
    out, data = four_steps
    checkpoint = out / "checkpoints" / "step_0000004"
    state = json.loads((checkpoint / STATE_FILE).read_text())
    del state["data_fingerprint"]  # as written before fingerprints
    (checkpoint / STATE_FILE).write_text(json.dumps(state))
    write_manifest(checkpoint)
    summary = checkpointed_run(out, data, "train.max_steps=6", "train.resume=auto")
    assert summary["optimizer_steps"] == 6
    assert capsys.readouterr().err.count("no data fingerprint recorded") == 1
    # The checkpoints written after the resume record it.
    later = json.loads((out / "checkpoints" / "step_0000006" / STATE_FILE).read_text())
    assert later["data_fingerprint"][0]["train"]["images"] == 30


@pytest.fixture()
def decodes(monkeypatch):
    """How many images the check decodes (the real reader, counted)."""
    calls = []
    real = validation.load_rgb

    def counted(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(validation, "load_rgb", counted)
    return calls


def test_the_image_check_runs_once_per_image_and_again_for_an_edited_one(tmp_path, decodes):
    tables = make_synthetic_dataset(tmp_path / "data", n_train=6, n_val=2, image_size=16, seed=0)
    (tmp_path / "data" / "images" / "1.jpg").write_bytes(b"not an image")
    cache = tmp_path / "cache"
    logged = []

    def start():
        decodes.clear()
        logged.clear()
        examples, report = load_split(tables["train"], check_cache=cache, on_bad_row="skip", log=logged.append)
        return len(examples), report.counts()

    assert start() == (5, {"unreadable image": 1}) and len(decodes) == 6
    assert start() == (5, {"unreadable image": 1}) and decodes == []  # the second start decodes nothing
    assert any("1.jpg" in line for line in logged)  # and still reports the bad image

    Image.new("RGB", (16, 16), (0, 0, 0)).save(tmp_path / "data" / "images" / "1.jpg")  # fixed in place
    assert start() == (6, {}) and [p.name for p in decodes] == ["1.jpg"]

    rewrite_table(tables["train"], lambda rows: [r.rstrip("\n") + "!\n" for r in rows])  # captions only
    assert start() == (6, {}) and decodes == []

    record, = cache.glob("table-*.record")
    record.unlink()  # the table's own record would skip the images (tests/test_data_check.py); here: each image's
    cache_file, = (cache).glob("*.json")
    cache_file.write_text(cache_file.read_text().replace('null', '["unreadable image", "edited"]', 1))
    assert start() == (6, {}) and len(decodes) == 6  # an edited cache is not trusted
    assert sum("damaged image-check cache" in line for line in logged) == 1



def test_a_changed_stage_split_is_named_by_its_config_key():
    from memecap.config import OptimConfig
    from memecap.training.stages import Stage, data_changes

    stages = [Stage(0, "general", ["a.tsv"], "a_val.tsv", 1, None, OptimConfig(), []),
              Stage(1, "memes", ["m.tsv"], "m_val.tsv", 1, None, OptimConfig(), [])]
    same = {"rows": 5, "images": 5, "captions_sha256": "c", "images_sha256": "i"}
    saved = [{"train": same, "val": same}, {"train": same, "val": same}]
    now = [{"train": same, "val": same}, {"train": same, "val": {**same, "images_sha256": "j"}}]
    assert data_changes(stages, saved, now) == ["stages[1].val: image bytes differ"]
