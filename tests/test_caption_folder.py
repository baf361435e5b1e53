"""`memecap caption FOLDER --out captions.jsonl`: progress, bad files reported not fatal, resumable."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from memecap.inference.captioner import Captioner
from memecap.cli import main as cli
from tests.launching import REPO, quiet_env, stopped_holding_lock


def make_folder(root: Path, images: list[Path]) -> Path:
    folder = root / "memes"
    (folder / "nested").mkdir(parents=True)
    for image in images[:3]:
        shutil.copy(image, folder / image.name)
    shutil.copy(images[3], folder / "nested" / "deep.jpg")
    (folder / "corrupt.jpg").write_bytes(images[0].read_bytes()[:200])  # a truncated JPEG
    data = images[0].read_bytes()
    (folder / "half.jpg").write_bytes(data[:len(data) // 2])  # its header is whole, its pixels are not
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
    assert "corrupt.jpg" in report and "half.jpg" in report and "2 unreadable" in report and "notes.txt" in report
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


def test_file_names_that_are_not_utf8_are_captioned_and_written_losslessly(tiny_lora_run, synthetic_data, tmp_path,
                                                                            capsys):
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


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="reads the kernel's list of locks (Linux)")
def test_a_second_caption_process_on_one_out_is_refused(tiny_lora_run, synthetic_data, tmp_path):
    """Two real `memecap caption` processes on one --out: the second is refused at once with one line
    naming the file (before, both wrote every row); the lock dies with its holder (SIGKILL), so
    the next run goes ahead and the file holds each image once."""
    images = sorted((synthetic_data["val"].parent / "images").glob("5*.jpg"))[:6]
    folder = tmp_path / "memes"
    folder.mkdir()
    for image in images:
        shutil.copy(image, folder / image.name)
    out = tmp_path / "captions.jsonl"
    cmd = [sys.executable, "-m", "memecap", "caption", str(folder), "--model", str(tiny_lora_run), "--out", str(out),
           "--quiet"]
    env = quiet_env()
    with stopped_holding_lock(cmd, out):
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert second.stderr.strip() == (f"memecap: {out}: another memecap process is writing it; wait for that one "
                                          "to finish (a rerun then continues where it stopped), or pass another --out")
    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert sorted(r["image"] for r in lines(out)) == sorted(p.name for p in images)


def test_symlink_loops_and_broken_links_are_named_and_the_rest_captioned(tiny_lora_run, synthetic_data, tmp_path,
                                                                         capsys):
    images = sorted((synthetic_data["val"].parent / "images").glob("5*.jpg"))[:2]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(images[1], outside / "linked.jpg")
    folder = tmp_path / "memes"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(images[0], folder / "real.jpg")
    (folder / "self.jpg").symlink_to("self.jpg")              # a loop of one
    (folder / "a.jpg").symlink_to("b.jpg")                    # a loop of two
    (folder / "b.jpg").symlink_to("a.jpg")
    (folder / "gone.jpg").symlink_to("deleted.jpg")           # a broken link
    (folder / "sub" / "up").symlink_to("..")                  # a folder link back up: a walk without end
    (folder / "more").symlink_to(outside)                     # a folder link elsewhere: followed
    (folder / ".#real.jpg").symlink_to("user@host.1234:1")    # an editor's lock link: hidden, not news
    out = tmp_path / "captions.jsonl"
    assert cli(["caption", str(folder), "--model", str(tiny_lora_run), "--out", str(out), "--quiet"]) == 0
    report = capsys.readouterr().err.splitlines()
    assert report[0] == f"captioned 2 image(s) into {out}"
    assert report[1] == ("5 link(s) or folder(s) could not be followed, skipped: "
                         "a.jpg (a symbolic link loop (-> b.jpg)), b.jpg (a symbolic link loop (-> a.jpg)), "
                         "gone.jpg (a broken symbolic link (-> deleted.jpg: no such file)), "
                         "self.jpg (a symbolic link loop (-> self.jpg)), "
                         "sub/up (a symbolic link loop (-> ..: a folder that contains it))")
    assert sorted(r["image"] for r in lines(out)) == ["more/linked.jpg", "real.jpg"]
    # A broken link named as the target says what it is.
    assert cli(["caption", str(folder / "self.jpg"), "--model", str(tiny_lora_run), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == f"memecap: {folder / 'self.jpg'}: a symbolic link loop (-> self.jpg)"


def test_an_ocr_model_skips_an_image_whose_pixels_are_cut(text_images, tmp_path, capsys):
    """The OCR workers decode the images: one that fails there is named and the others captioned."""
    folder = tmp_path / "memes"
    folder.mkdir()
    for path in text_images["paths"][:2]:
        shutil.copy(path, folder / path.name)
    data = text_images["paths"][0].read_bytes()
    (folder / "half.jpg").write_bytes(data[:len(data) // 2])
    out = tmp_path / "captions.jsonl"
    assert cli(["caption", str(folder), "--model", "ocr_template", "--out", str(out), "--quiet"]) == 0
    report = capsys.readouterr().err
    assert "captioned 2 image(s)" in report and "1 unreadable image(s)" in report and "half.jpg" in report
    assert sorted(r["image"] for r in lines(out)) == sorted(p.name for p in text_images["paths"][:2])


PEAK_PROBE = """
import resource, sys
from pathlib import Path
import numpy as np
from PIL import Image
from memecap.inference.captioner import Captioner
from memecap.inference.caption_folder import caption_folder

folder, side = Path(sys.argv[2]), 1500
ramp = np.linspace(0, 255, side, dtype=np.uint8)
for i in range(32):  # smooth pictures: small files, 6.4 MiB each decoded
    pixels = np.stack([np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side)),
                       np.full((side, side), 7 * i, np.uint8)], -1)
    Image.fromarray(pixels).save(folder / f"{i:02d}.jpg", quality=80)
captioner = Captioner.from_pretrained(sys.argv[1], device="cpu")
captioner([folder / "00.jpg"])  # the model's own first-call allocations, before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = caption_folder(captioner.model, folder, captioner.generation, device=captioner.device, batch_size=32,
                        progress=False)
print(report.captioned, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_a_folder_batch_is_not_held_decoded(tiny_lora_run, tmp_path):
    """Captioning a folder holds no decoded batch beside the model's inputs: 32 memes of
    1500 x 1500 px (206 MiB decoded) raise the peak RSS by less than half of that (the model
    decodes each image as it prepares it). Before, the folder's batch was decoded first: +278 MiB."""
    (tmp_path / "memes").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(tiny_lora_run), str(tmp_path / "memes")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    captioned, growth_mib = proc.stdout.split()
    assert captioned == "32" and float(growth_mib) < 32 * 1500 * 1500 * 3 / 2**20 / 2, growth_mib
