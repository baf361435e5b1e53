"""`memecap caption FOLDER --out captions.jsonl`: progress, bad files reported not fatal, resumable."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from memecap.inference.captioner import Captioner
from memecap.cli import main as cli


def make_folder(root: Path, images: list[Path]) -> Path:
    folder = root / "memes"
    (folder / "nested").mkdir(parents=True)
    for image in images[:3]:
        shutil.copy(image, folder / image.name)
    shutil.copy(images[3], folder / "nested" / "deep.jpg")
    (folder / "corrupt.jpg").write_bytes(images[0].read_bytes()[:200])  # a truncated JPEG
    (folder / "notes.txt").write_text("not a meme")
    return folder


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_caption_folder_reports_bad_files_and_resumes(tiny_lora_run, synthetic_data, tmp_path, capsys):
    images = sorted((synthetic_data["val"].parent / "images").glob("5*.jpg"))[:4]
    folder = make_folder(tmp_path, images)
    out = tmp_path / "captions.jsonl"
    assert cli(["caption", str(folder), "--model", str(tiny_lora_run), "--out", str(out), "--quiet"]) == 0
    report = capsys.readouterr().err
    assert "captioned 4 image(s)" in report
    assert "corrupt.jpg" in report and "1 unreadable" in report and "notes.txt" in report
    rows = lines(out)
    assert sorted(r["image"] for r in rows) == sorted([p.name for p in images[:3]] + ["nested/deep.jpg"])
    expected = Captioner.from_pretrained(tiny_lora_run, device="cpu")([folder / r["image"] for r in rows])
    assert [r["caption"] for r in rows] == expected

    # A crash mid-write left a torn line and one image not done: the rerun repairs and does only that one.
    kept = out.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(kept[:2]) + kept[2][:10], encoding="utf-8")
    assert cli(["caption", str(folder), "--model", str(tiny_lora_run), "--out", str(out), "--quiet"]) == 0
    report = capsys.readouterr().err
    assert "captioned 2 image(s)" in report and "2 were already there" in report
    assert sorted(r["image"] for r in lines(out)) == sorted(r["image"] for r in rows)

    # Nothing left: a third run captions nothing and changes nothing.
    before = out.read_bytes()
    assert cli(["caption", str(folder), "--model", str(tiny_lora_run), "--out", str(out), "--quiet"]) == 0
    assert "captioned 0 image(s)" in capsys.readouterr().err and out.read_bytes() == before


def test_caption_prints_without_out_and_fails_on_an_empty_folder(tiny_lora_run, synthetic_data, tmp_path, capsys):
    image = sorted((synthetic_data["val"].parent / "images").glob("5*.jpg"))[0]
    assert cli(["caption", str(image), "--model", str(tiny_lora_run), "--quiet"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(image.name + "\t") and len(printed) > len(image.name) + 1
    (tmp_path / "empty").mkdir()
    assert cli(["caption", str(tmp_path / "empty"), "--model", str(tiny_lora_run), "--quiet"]) == 1


def test_out_that_is_not_a_captions_file_is_refused_and_left_unchanged(tiny_lora_run, synthetic_data, tmp_path, capsys):
    image = sorted((synthetic_data["val"].parent / "images").glob("5*.jpg"))[0]
    others = {"notes.txt": "first line\nsecond line without an end",  # the old code cut its tail
              "one-line.txt": "a single line",                          # the old code emptied it
              "meme.jpg": image.read_bytes(),                           # a JPEG passed by mistake
              "other.jsonl": '{"image": "a.jpg", "label": 3}\n'}        # JSON Lines, but not captions
    for name, content in others.items():
        out = tmp_path / name
        (out.write_bytes if isinstance(content, bytes) else out.write_text)(content)
        before = out.read_bytes()
        assert cli(["caption", str(image), "--model", str(tiny_lora_run), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{out}: not a captions file of `memecap caption`" in err and "left unchanged" in err, name
        assert out.read_bytes() == before, name
    assert cli(["caption", str(image), "--model", str(tiny_lora_run), "--out", str(tmp_path), "--quiet"]) == 2
    assert "not a file" in capsys.readouterr().err


def test_file_names_that_are_not_utf8_are_captioned_and_written_losslessly(tiny_lora_run, synthetic_data, tmp_path, capsys):
    images = sorted((synthetic_data["val"].parent / "images").glob("5*.jpg"))[:2]
    folder = tmp_path / "memes"
    folder.mkdir()
    raw = b"\xcf\xf0\xe8\xe2\xe5\xf2.jpg"  # "Привет" in cp1251: not UTF-8
    (folder / os.fsdecode(raw)).write_bytes(images[0].read_bytes())
    shutil.copy(images[1], folder / "plain.jpg")
    out = tmp_path / "captions.jsonl"
    assert cli(["caption", str(folder), "--model", str(tiny_lora_run), "--out", str(out), "--quiet"]) == 0
    assert "captioned 2 image(s)" in capsys.readouterr().err
    names = [r["image"] for r in lines(out)]
    assert sorted(os.fsencode(n) for n in names) == sorted([raw, b"plain.jpg"])
    # A rerun reads the names back as the same files: nothing is captioned twice.
    assert cli(["caption", str(folder), "--model", str(tiny_lora_run), "--out", str(out), "--quiet"]) == 0
    assert "2 were already there" in capsys.readouterr().err
    # Printed to a terminal, the undecodable bytes are shown escaped.
    assert cli(["caption", str(folder), "--model", str(tiny_lora_run), "--quiet"]) == 0
    assert "\\xcf\\xf0\\xe8\\xe2\\xe5\\xf2.jpg\t" in capsys.readouterr().out
