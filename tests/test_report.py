"""`memecap report`: one self-contained HTML page, checked as text and rendered in a real
headless Chromium (Debian's `chromium`, which .ci/run and scripts/setup.sh install)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memecap.cli import main as cli
from memecap.evaluation import compute_metrics, write_predictions
from memecap.publish.report import write_report

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
ROWS = [  # predictions of different quality, so sorting has something to do
    {"uid": "red", "references": ["на фото красный квадрат. подпись: \"жиза\""],
     "prediction": "на фото красный квадрат. подпись: \"жиза\""},
    {"uid": "green", "references": ["на фото зелёный круг на белом фоне"], "prediction": "на фото синий круг"},
    {"uid": "blue", "references": ["на фото синее кольцо", "синее кольцо на картинке"], "prediction": "кот"},
    {"uid": "lost", "references": ["на фото ничего"], "prediction": "на фото что-то"},
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "headless Chromium is needed: apt-get install chromium (scripts/setup.sh and .ci/run do)"
    return path


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # Flags for a closed network, as root, with no display: see the machine notes in README's Development.
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=3000"]
    return subprocess.run([chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture()
def predictions(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    for name, colour in COLOURS.items():
        Image.new("RGB", (200, 200), colour).save(images / f"{name}.jpg", quality=95)
    path = tmp_path / "predictions.jsonl"
    write_predictions(path, ROWS)
    return path, images


def test_report_html_is_self_contained_and_complete(predictions, tiny_lora_run, tmp_path):
    path, images = predictions
    out = tmp_path / "report.html"
    summary = write_report(path, out, images_dir=images, log_path=tiny_lora_run / "log.jsonl")
    html = out.read_text(encoding="utf-8")
    assert summary["examples"] == 4 and summary["images_missing"] == 1
    assert html.count('src="data:image/jpeg;base64,') == 3 and html.count("image not found") == 1
    assert not re.search(r'(src|href)="(https?:|file:|/)', html)  # nothing fetched from anywhere
    corpus = compute_metrics([r["prediction"] for r in ROWS], [r["references"] for r in ROWS])
    assert f"<td>{corpus['bleu4']:.4f}</td>" in html and f"<td>{corpus['meteor']:.4f}</td>" in html
    assert html.count("<svg") == 2 and "train loss" in html and "validation metrics" in html
    assert "жиза" in html and "синее кольцо на картинке" in html  # every reference is shown
    assert html.count("quote CER <b>") == 1 and "quote CER <b>0.000</b>" in html  # only "red" quotes a text
    assert f"<td>{corpus['quote']:.4f}</td>" in html


def test_report_renders_in_headless_chromium(predictions, tmp_path):
    path, images = predictions
    out = tmp_path / "report.html"
    assert cli(["report", str(path), "--images", str(images), "--out", str(out), "--title", "Отчёт"]) == 0

    dom = run_chromium(tmp_path, "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "4 of 4 shown" in dom.stdout  # the page's script ran
    order = re.findall(r'class="example" data-uid="(\w+)"', dom.stdout)
    assert order[0] == "red" and order.index("blue") > order.index("green")  # best BLEU-4 first

    shot = tmp_path / "report.png"
    rendered = run_chromium(tmp_path, "--window-size=1280,1600", f"--screenshot={shot}", out.as_uri())
    assert rendered.returncode == 0 and shot.is_file(), rendered.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    counts = {name: int((np.abs(pixels - colour).sum(axis=-1) < 60).sum()) for name, colour in COLOURS.items()}
    # Each 200 px image is shown as a 240 px thumbnail: tens of thousands of its pixels must be on screen.
    assert all(n > 20_000 for n in counts.values()), counts
    # Text: dark glyph pixels in the caption column beside the thumbnails, where nothing else is dark.
    glyphs = int((pixels[250:1300, 290:1000].sum(axis=-1) < 200).sum())
    assert glyphs > 2_000, glyphs


def test_report_reads_images_only_inside_the_images_folder(predictions, tmp_path, capsys):
    path, images = predictions
    secret = tmp_path / "private" / "secret.jpg"
    secret.parent.mkdir()
    Image.new("RGB", (50, 50), (1, 2, 3)).save(secret)
    hostile = tmp_path / "hostile.jsonl"
    rows = [{"image": str(secret), "caption": "absolute"},
            {"image": "../private/secret.jpg", "caption": "climbs out"},
            {"image": "red.jpg", "caption": "inside"}]
    hostile.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "report.html"
    assert cli(["report", str(hostile), "--images", str(images), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert html.count('src="data:image/jpeg;base64,') == 1 and html.count("image not found") == 2
    assert "2 named a path outside" in capsys.readouterr().out
    # A uid is a file name inside --images too.
    (tmp_path / "up.jsonl").write_text(json.dumps({"uid": "../private/secret", "references": ["x"],
                                                   "prediction": "x"}) + "\n", encoding="utf-8")
    summary = write_report(tmp_path / "up.jsonl", out, images_dir=images)
    assert (summary["images_missing"], summary["images_refused"]) == (1, 1)


def test_report_out_replaces_only_its_own_pages(predictions, tmp_path, capsys):
    path, images = predictions
    out = tmp_path / "report.html"
    assert cli(["report", str(path), "--images", str(images), "--out", str(out)]) == 0
    assert cli(["report", str(path), "--images", str(images), "--out", str(out)]) == 0  # its own page: replaced
    capsys.readouterr()
    for victim in (path, images / "red.jpg"):  # the predictions themselves, an image: refused
        before = victim.read_bytes()
        assert cli(["report", str(path), "--images", str(images), "--out", str(victim)]) == 2
        assert "is not a page of `memecap report`; it was left unchanged" in capsys.readouterr().err
        assert victim.read_bytes() == before


def test_report_reads_captions_of_file_names_that_are_not_utf8(tmp_path):
    import os

    from memecap.outputs.file_names import json_line

    raw = b"\xcf\xf0\xe8\xe2\xe5\xf2.jpg"  # cp1251, not UTF-8
    name = os.fsdecode(raw)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 40), (9, 9, 9)).save(tmp_path / "images" / name, "JPEG")
    captions = tmp_path / "captions.jsonl"
    captions.write_bytes(json_line({"image": name, "caption": "на фото темнота"}))
    out = tmp_path / "report.html"
    summary = write_report(captions, out, images_dir=tmp_path / "images")
    html = out.read_text(encoding="utf-8")
    assert summary["images_missing"] == 0 and html.count('src="data:image/jpeg;base64,') == 1
    assert "\\xcf\\xf0\\xe8\\xe2\\xe5\\xf2.jpg" in html and "на фото темнота" in html


def test_report_compares_with_earlier_predictions_meme_by_meme(predictions, tmp_path, capsys):
    path, images = predictions
    earlier = [dict(row) for row in ROWS]
    earlier[0]["prediction"] = "на фото кот"  # "red" was worse before; "green" was better
    earlier[1]["prediction"] = "на фото зелёный круг на белом фоне"
    before = tmp_path / "before.jsonl"
    write_predictions(before, earlier)
    out = tmp_path / "report.html"
    assert cli(["report", str(path), "--images", str(images), "--out", str(out), "--compare", str(before)]) == 0
    html = out.read_text(encoding="utf-8")
    assert "paired over 4 memes" in html and html.count("within chance") + html.count("better") >= 8
    assert html.count('<div class="label">before (before.jsonl)</div>') == 4
    assert '<div class="before">на фото кот</div>' in html
    assert "CIDEr-D change, most improved first" in html and "&rarr;" in html

    dom = run_chromium(tmp_path, "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    order = re.findall(r'class="example" data-uid="(\w+)"', dom.stdout)
    assert order[0] == "red" and order[-1] == "green"  # most improved first, most worsened last

    write_predictions(before, earlier[:3])  # not the same memes: refused, naming the files
    assert cli(["report", str(path), "--images", str(images), "--out", str(out), "--compare", str(before)]) == 2
    assert "before.jsonl lacks 1 of the memes" in capsys.readouterr().err
