"""`memecap caption FOLDER --out captions.jsonl`: progress, bad files reported not fatal, resumable."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from memecap.captioner import Captioner
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
