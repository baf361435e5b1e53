"""A model someone else published never makes memecap import or call what its files name."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from memecap.untrusted import UntrustedCodeReference


def hostile_copy(run, tmp_path, edit) -> tuple:
    """The tiny run's export, copied, with `edit(meta)` applied to its memecap.yaml."""
    export = tmp_path / "export"
    shutil.copytree(run / "best", export)
    meta = yaml.safe_load((export / "memecap.yaml").read_text(encoding="utf-8"))
    edit(meta)
    (export / "memecap.yaml").write_text(yaml.safe_dump(meta, allow_unicode=True), encoding="utf-8")
    return export


def ocr_engine_runs_touch(marker):
    def edit(meta):
        meta["model"]["ocr"].update(enabled=True, engine="subprocess.run", languages=["touch", str(marker)])
    return edit


def test_captioner_refuses_an_export_naming_code(tiny_lora_run, tmp_path, synthetic_data):
    from memecap import Captioner

    marker = tmp_path / "pwned"
    export = hostile_copy(tiny_lora_run, tmp_path, ocr_engine_runs_touch(marker))
    with pytest.raises(UntrustedCodeReference, match=r"model\.ocr\.engine='subprocess\.run' is not a registered"):
        Captioner.from_pretrained(export, device="cpu")
    assert not marker.exists()


def test_caption_command_refuses_it_too(tiny_lora_run, tmp_path, synthetic_data):
    marker = tmp_path / "pwned"
    export = hostile_copy(tiny_lora_run, tmp_path, ocr_engine_runs_touch(marker))
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sorted((Path(synthetic_data["train"]).parent / "images").glob("*.jpg"))[:2]:
        shutil.copy(p, folder / p.name)
    proc = subprocess.run([sys.executable, "-m", "memecap", "caption", str(folder), "--model", str(export),
                           "--out", str(tmp_path / "captions.jsonl")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "may not name code to import" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "captions.jsonl").exists()


def test_a_checkpoint_config_from_elsewhere_is_checked(tmp_path):
    from memecap.config import load_config, load_saved_config, save_config

    path = tmp_path / "config.yaml"
    save_config(load_config("demo", ["optim.name=os.system"]), path)
    assert load_saved_config(path).optim.name == "os.system"  # the user's own run: their choice
    from memecap.untrusted import check_published_config

    with pytest.raises(UntrustedCodeReference, match=r"optim\.name='os\.system'"):
        load_saved_config(path, check=check_published_config)


def test_registered_names_still_load(tiny_lora_run, tmp_path):
    from memecap.models import load_model

    export = hostile_copy(tiny_lora_run, tmp_path, lambda meta: meta["model"]["ocr"].update(engine="tesseract"))
    assert load_model(export).cfg.ocr.engine == "tesseract"
