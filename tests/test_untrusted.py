"""A model someone else published never makes memecap import or call what its files name."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from memecap.untrusted import UntrustedCodeReference
from tests.helpers import one_image_folder


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


# -- code a model's own files name (`auto_map`) -------------------------------------------------------

# Per Auto class, the settings that make transformers look for the folder's own code: the class
# transformers knows is replaced by one only the planted module defines.
PLANTED = {"AutoTokenizer": ("tokenizer_class", "HostileTokenizer", ["hostile.HostileTokenizer", None]),
           "AutoImageProcessor": ("image_processor_type", "HostileImageProcessor", "hostile.HostileImageProcessor"),
           "AutoConfig": ("model_type", "hostile", "hostile.HostileConfig")}


def plant_code(settings: Path, auto_class: str, marker: Path) -> None:
    """An `auto_map` in the JSON file `settings` naming `hostile.py` beside it, which touches `marker`
    when it is imported."""
    values = json.loads(settings.read_text(encoding="utf-8"))
    key, value, reference = PLANTED[auto_class]
    values.update({key: value, "auto_map": {auto_class: reference}})
    settings.write_text(json.dumps(values), encoding="utf-8")
    (settings.parent / "hostile.py").write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")


@pytest.mark.parametrize("family, settings, auto_class", [
    ("vlm:lora", "processor/tokenizer_config.json", "AutoTokenizer"),
    ("vlm:lora", "processor/preprocessor_config.json", "AutoImageProcessor"),
    ("vlm:full", "model/config.json", "AutoConfig"),
    ("clipcap", "tokenizer/tokenizer_config.json", "AutoTokenizer"),
])
def test_an_export_naming_its_own_code_is_refused_without_a_prompt(family, settings, auto_class, vlm_exports,
                                                                   tiny_lora_run, synthetic_data, tmp_path):
    """transformers would ask on stdin whether to run the export's .py, and a `yes` would run it:
    memecap refuses the export in one line, never asks, and the .py never runs."""
    source = tiny_lora_run / "best" if family == "clipcap" else vlm_exports[family.split(":")[1]]
    export = tmp_path / "export"
    shutil.copytree(source, export)
    marker = tmp_path / "pwned"
    plant_code(export / settings, auto_class, marker)
    proc = subprocess.run([sys.executable, "-m", "memecap", "caption", str(one_image_folder(synthetic_data, tmp_path)),
                           "--model", str(export), "--out", str(tmp_path / "captions.jsonl")],
                          input="yes\n" * 5, capture_output=True, text=True, timeout=300)
    assert not marker.exists(), "the export's own Python ran"
    assert proc.returncode == 2, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("memecap:")]
    assert len(said) == 1 and f"{export / settings}: auto_map names Python code" in said[0], proc.stderr
    assert "Traceback" not in proc.stderr and "Do you wish to run" not in proc.stdout + proc.stderr


def test_transformers_is_never_asked_to_trust_code(vlm_exports, tmp_path, monkeypatch):
    """Behind the refusal, every load passes trust_remote_code=False: with the check skipped,
    transformers refuses the code itself instead of prompting, and nothing runs."""
    import memecap.untrusted
    from memecap.models import load_model

    export = tmp_path / "export"
    shutil.copytree(vlm_exports["full"], export)
    marker = tmp_path / "pwned"
    plant_code(export / "model" / "config.json", "AutoConfig", marker)
    monkeypatch.setattr(memecap.untrusted, "_auto_map_key", lambda path: None)
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("transformers prompted for trust"))
    with pytest.raises(ValueError, match="contains custom code"):
        load_model(export)
    assert not marker.exists()


def test_a_local_base_naming_its_own_code_is_refused(vlm_exports, tmp_path):
    from memecap.config import load_config
    from memecap.models import build_model

    base = tmp_path / "base"
    shutil.copytree(vlm_exports["base"], base)
    marker = tmp_path / "pwned"
    plant_code(base / "preprocessor_config.json", "AutoImageProcessor", marker)
    cfg = load_config("vlm_tiny", [f"model.vlm.name={base}", "model.vlm.mode=lora"]).model
    with pytest.raises(UntrustedCodeReference, match=r"preprocessor_config\.json: auto_map names Python code"):
        build_model(cfg, work_dir=tmp_path)
    assert not marker.exists()


def test_auto_map_is_found_nested_or_spelled_with_escapes(tmp_path):
    from memecap.untrusted import refuse_auto_map

    nested, escaped, clean = (tmp_path / name for name in ("nested", "escaped", "clean"))
    for folder in (nested, escaped, clean):
        (folder / "sub").mkdir(parents=True)
    (nested / "sub" / "processor_config.json").write_text(json.dumps({"image_processor": {"auto_map": {}}}))
    (escaped / "config.json").write_text('{"auto\\u005fmap": {"AutoConfig": "x.Y"}}')
    (clean / "adapter_config.json").write_text(json.dumps({"auto_mapping": None, "note": "\u00e9"}))
    with pytest.raises(UntrustedCodeReference, match=r"processor_config\.json: image_processor\.auto_map"):
        refuse_auto_map(nested)
    with pytest.raises(UntrustedCodeReference, match=r"config\.json: auto_map"):
        refuse_auto_map(escaped)
    refuse_auto_map(clean)


def test_a_hub_base_naming_its_own_code_is_refused_before_transformers_reads_it(tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants

    from memecap.config import load_config
    from memecap.models.vlm.loading import load_base
    from tests.hub_standin import STANDIN_TOKEN, StandinHub, online

    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "hostile", "auto_map": {"AutoConfig": "h.C"}}))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with StandinHub(token=STANDIN_TOKEN) as hub, online(endpoint=hub.url, token=STANDIN_TOKEN):
        api = HfApi(endpoint=hub.url, token=STANDIN_TOKEN)
        api.create_repo("tester/hostile-base")
        api.upload_folder(repo_id="tester/hostile-base", folder_path=folder)
        cfg = load_config("vlm_tiny", ["model.vlm.name=tester/hostile-base", "model.vlm.mode=lora"]).model
        with pytest.raises(UntrustedCodeReference,
                           match=r"tester/hostile-base \(revision main\) config\.json: auto_map"):
            load_base(cfg)


def test_training_on_a_base_naming_its_own_code_stops_in_one_line(vlm_exports, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(vlm_exports["base"], base)
    marker = tmp_path / "pwned"
    plant_code(base / "config.json", "AutoConfig", marker)
    proc = subprocess.run([sys.executable, "-m", "memecap", "train", "vlm_tiny", f"model.vlm.name={base}",
                           "model.vlm.revision=null", f"train.output_dir={tmp_path / 'run'}", "train.trackers=[]",
                           "data.synthetic.n_train=8", "data.synthetic.n_val=4", f"cache.dir={tmp_path / 'cache'}"],
                          input="yes\n" * 5, capture_output=True, text=True, timeout=300)
    assert not marker.exists(), "the base's own Python ran"
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"memecap: {base / 'config.json'}: auto_map names Python code shipped with the model, which memecap never "
        "runs; refused. If the model's architecture is one transformers knows, remove the auto_map key from a copy "
        "and load that"), proc.stderr
    assert "Traceback" not in proc.stderr
