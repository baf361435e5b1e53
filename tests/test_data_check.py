"""`data.check`: full (every image decoded at start), sample (a seeded share), none; an image left
unchecked that cannot be read is met when the run reads it, and `data.on_bad_row` decides then.
A table's whole check is kept (data/table_checks.py): the next start on it decodes and hashes nothing."""
from __future__ import annotations

import os
import shutil

import pytest
from PIL import Image

from memecap import train
from memecap.config import ConfigError, load_config
from memecap.data.fingerprint import IMAGE_WORK, forget_digests, split_fingerprint
from memecap.data.synthetic import make_synthetic_dataset
from memecap.data.tables import load_split
from memecap.data.validation import DataError, images_to_check
from tests.helpers import reset_accelerate, tiny_run_config

FROZEN = ("model.encoder.trainable=false",)  # its features are read once, at the start of the stage


def table_with_a_broken_image(synthetic_data, tmp_path, line: int = 5):
    """A copy of the synthetic train table whose row at `line` points at a file that is not an image."""
    shutil.copytree(synthetic_data["train"].parent / "images", tmp_path / "images")
    table = tmp_path / "train.tsv"
    lines = synthetic_data["train"].read_text(encoding="utf-8").splitlines()
    uid = lines[line - 1].split("\t")[0]
    broken = next((tmp_path / "images").glob(f"{uid}.*"))
    broken.write_bytes(b"not an image at all")
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return table, broken


@pytest.mark.parametrize("override,message", [
    ("data.check=some", "data.check"), ("data.check_sample=0", "data.check_sample"),
    ("data.check=off", "data.check=False: expected a string .* quote it"),  # YAML's boolean words
])
def test_bad_settings_name_their_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", [override])


def test_a_sample_is_the_same_share_at_every_start(tmp_path):
    paths = [tmp_path / f"{i:03d}.jpg" for i in range(50)]
    said = []
    pick = images_to_check("sample", 7, said.append)
    first = pick(paths)
    assert len(first) == 7 and set(first) <= set(paths) and pick(list(reversed(paths))) == first
    assert said[0].startswith("data.check=sample: 7 of 50 images checked at start")
    assert images_to_check("none", 7)(paths) == [] and images_to_check("full", 7) is None


def test_only_a_full_check_finds_the_broken_image_at_start(synthetic_data, tmp_path):
    table, broken = table_with_a_broken_image(synthetic_data, tmp_path)
    with pytest.raises(DataError, match=f"{table}:5"):
        load_split(table, log=None)
    examples, report = load_split(table, log=None, check="none")
    assert report.ok and any(ex.image_path == broken for ex in examples)
    with pytest.raises(DataError, match=f"{table}:5"):  # a sample as large as the table is the full check
        load_split(table, log=None, check="sample", check_sample=10_000)
    kept, _ = load_split(table, log=None, check="sample", check_sample=10_000, on_bad_row="skip")
    assert len(kept) == len(examples) - 1


def test_an_unchecked_broken_image_met_in_training_follows_on_bad_row(synthetic_data, tmp_path, capsys):
    table, broken = table_with_a_broken_image(synthetic_data, tmp_path)
    data = {"train": table, "val": synthetic_data["val"]}
    stopped = tiny_run_config(tmp_path / "run", data, "data.check=none", "train.max_steps=1", *FROZEN)
    with pytest.raises(DataError) as err:
        train.main(stopped)
    reset_accelerate()
    assert f"{table}:5" in str(err.value) and "met while reading the train images" in str(err.value)

    skipped = tiny_run_config(tmp_path / "run2", data, "data.check=none", "data.on_bad_row=skip", "train.max_steps=1",
                              "eval.compare_constant=false", *FROZEN)
    summary = train.main(skipped)
    reset_accelerate()
    assert summary["optimizer_steps"] == 1
    log = capsys.readouterr().err
    assert f"{table}:5" in log and "skipped" in log and str(broken) in log
    assert "47 train images" in log  # the 48 of the table but the one that cannot be read


def test_an_unchecked_broken_image_read_lazily_names_its_row_or_is_dropped(synthetic_data, tmp_path, capsys):
    """A trained encoder reads pixels when a batch is made: the row is named there too."""
    table, broken = table_with_a_broken_image(synthetic_data, tmp_path)
    data = {"train": table, "val": synthetic_data["val"]}
    lazy = ("data.check=none", "model.encoder.trainable=true", "eval.compare_constant=false", "train.eval_every=100")
    with pytest.raises(DataError) as err:
        train.main(tiny_run_config(tmp_path / "run", data, *lazy, "train.epochs=1"))
    reset_accelerate()
    assert f"{table}:5" in str(err.value) and "met while reading the train images" in str(err.value)

    summary = train.main(tiny_run_config(tmp_path / "run2", data, *lazy, "data.on_bad_row=skip", "train.epochs=2"))
    reset_accelerate()
    assert summary["optimizer_steps"] == 2 * 6  # the batch holding it is one item short, no batch is lost
    log = capsys.readouterr().err
    assert log.count(f"{table}:5") == 1 and str(broken) in log  # said once, though met in both epochs


@pytest.fixture()
def kept_check(tmp_path):
    """A 10-image table whose uid 1 image is not an image, and a start on it as a fresh process would
    make one (no digest known): the table loaded and fingerprinted, with the image files it decoded
    and hashed counted by the real hook (`IMAGE_WORK`) and what it logged."""
    tables = make_synthetic_dataset(tmp_path / "data", n_train=10, n_val=2, image_size=16, seed=0)
    (tmp_path / "data" / "images" / "1.jpg").write_bytes(b"not an image")
    logged = []

    def start(**settings):
        forget_digests()
        logged.clear()
        decoded, hashed = IMAGE_WORK.decoded, IMAGE_WORK.hashed
        examples, report = load_split(tables["train"], check_cache=tmp_path / "cache", log=logged.append,
                                      **{"on_bad_row": "skip", **settings})
        split_fingerprint(examples)
        return len(examples), report.counts(), IMAGE_WORK.decoded - decoded, IMAGE_WORK.hashed - hashed

    return tables, start, logged, tmp_path / "cache"


def test_an_unchanged_table_is_not_checked_again_nor_its_images_read(kept_check):
    tables, start, logged, _ = kept_check
    assert start() == (9, {"unreadable image": 1}, 10, 10)
    assert start() == (9, {"unreadable image": 1}, 0, 0)  # nothing decoded, no image byte read
    bad_row = next(line for line in logged if "1.jpg" in line)
    assert bad_row.startswith(f"{tables['train']}:") and "unreadable image" in bad_row  # still said, with its row
    assert logged[-1].endswith("(checked at an earlier start; the table and its images are unchanged)")


def test_a_touched_image_alone_is_checked_again(kept_check):
    tables, start, logged, _ = kept_check
    start()
    image = tables["train"].parent / "images" / "4.jpg"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert start() == (9, {"unreadable image": 1}, 1, 1)  # that image decoded and hashed, the others' results kept
    assert start()[2:] == (0, 0)
    Image.new("RGB", (16, 16)).save(tables["train"].parent / "images" / "1.jpg")  # the bad one fixed in place
    assert start() == (10, {}, 1, 1)


def test_changed_settings_or_table_are_checked_again(kept_check):
    tables, start, logged, _ = kept_check
    start()
    assert start(check_sample=5)[2:] == (0, 0) and "earlier start" in logged[-1]  # a full check has no sample size
    with pytest.raises(DataError, match=r"train\.tsv:\d+ uid=1: unreadable image"):
        start(on_bad_row="error")  # the recorded "skip" verdict is not reused
    assert start(check="none")[:2] == (10, {})  # not decoded at start: the bad image is met later
    assert start(check="sample", check_sample=3)[2] == 0  # checked again, each image's result kept per image
    assert not any("earlier start" in line for line in logged)
    lines = tables["train"].read_text(encoding="utf-8").splitlines(keepends=True)
    tables["train"].write_text("".join(lines[:-1]), encoding="utf-8")  # a row less
    assert start() == (8, {"unreadable image": 1}, 0, 0)
    assert start()[:2] == (8, {"unreadable image": 1}) and "earlier start" in logged[-1]
    assert start(max_rows=4)[:2] == (3, {"unreadable image": 1})


def test_a_damaged_record_is_said_once_and_the_table_checked_again(kept_check):
    tables, start, logged, cache = kept_check
    start()
    record, = cache.glob("table-*.record")
    record.write_bytes(record.read_bytes().replace(b'"skipped_rows": 1', b'"skipped_rows": 0'))
    for per_image in cache.glob("*.json"):
        per_image.unlink()  # so that checking the table again shows in the counts
    assert start() == (9, {"unreadable image": 1}, 10, 10)
    assert sum("damaged table-check record" in line for line in logged) == 1
    assert start() == (9, {"unreadable image": 1}, 0, 0)  # written again, whole
    assert not any("damaged table-check record" in line for line in logged)


def test_a_failed_check_is_not_recorded(kept_check):
    _, start, _, cache = kept_check
    for _ in range(2):
        with pytest.raises(DataError):
            start(on_bad_row="error")
    assert list(cache.glob("table-*.record")) == []
