"""A trained captioner leaves the training folder: the pushed file set, the model card, the push
itself (through huggingface_hub's real upload code against tests/hub_standin.py, a LOCAL
STAND-IN for the Hugging Face Hub, not the Hub), loading back with `Captioner`, and pushing at
the end of training."""
from __future__ import annotations

import hashlib
import re
import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from memecap.inference.captioner import Captioner
from memecap.publish.hub import PushError, push, stage_export
from memecap.models import load_model
from memecap.train import cli as train_cli
from memecap.train import main as train_main
from tests.helpers import LORA_RUN, tiny_run_config
from tests.hub_standin import STANDIN_TOKEN, StandinHub, online

# A LoRA export names two local tiny bases, which a push must bundle; the rest is what training wrote.
EXPECTED_FILES = {"README.md", "memecap.yaml", "mapper.safetensors", "adapter/adapter_config.json",
                  "adapter/adapter_model.safetensors", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"}


@pytest.fixture(scope="module")
def lora_run(tiny_lora_run) -> Path:
    return tiny_lora_run


@pytest.fixture(scope="module")
def val_images(synthetic_data) -> list[Path]:
    return sorted((synthetic_data["val"].parent / "images").glob("5*.jpg"))[:4]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


def digest(root: Path) -> str:
    files = {k: hashlib.sha256(v).hexdigest() for k, v in sorted(tree(root).items())}
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def test_staged_upload_is_exactly_the_model_and_loads_anywhere(lora_run, val_images, tmp_path):
    export = Path(shutil.copytree(lora_run / "best", tmp_path / "best"))
    (export / "predictions-extra.jsonl").write_text("{}\n")  # a stray artefact must not be uploaded
    staging = tmp_path / "staging"
    files = dict(stage_export(export, staging, repo_id="alice/memes-lora", license="mit", log=lambda _: None))

    names = set(files)
    assert EXPECTED_FILES <= names
    extra = names - EXPECTED_FILES
    assert extra and all(n.startswith("bases/encoder/") or n.startswith("bases/decoder/") for n in extra), extra
    assert {n.split("/")[1] for n in extra} == {"encoder", "decoder"}  # both local bases bundled, nothing else
    assert files == {k: len(v) for k, v in tree(staging).items()}
    assert "eval.json" not in names and "adapter/README.md" not in names

    card = (staging / "README.md").read_text(encoding="utf-8")
    header = yaml.safe_load(card.split("---")[1])
    assert header["language"] == ["ru"] and header["license"] == "mit" and header["pipeline_tag"] == "image-to-text"
    assert "lora" in header["tags"] and "base_model" not in header  # local bases are no Hub ids
    evaluation = json.loads((export / "eval.json").read_text())
    assert f"{evaluation['metrics']['bleu4']:.4f}" in card and evaluation["samples"][0]["prediction"] in card
    assert 'Captioner.from_pretrained("alice/memes-lora")' in card

    # Moved elsewhere (as after a download), the staged folder gives the trained model's captions.
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(staging, moved)
    shutil.rmtree(staging)
    loaded = Captioner.from_pretrained(moved, device="cpu")
    reference = Captioner(load_model(export), loaded.generation, device="cpu")
    expected = reference(val_images)
    assert loaded(val_images) == expected and all(isinstance(c, str) and c for c in expected)
    assert loaded(Image.open(val_images[0])) == expected[0]  # a PIL image captions like its file
    beams = loaded(val_images[:2], num_beams=3, num_return_sequences=2)
    assert len(beams) == 2 and all(len(c) == 2 for c in beams)
    with pytest.raises(TypeError, match="num_beam"):
        loaded(val_images[0], num_beam=3)


def test_push_through_the_hub_api_and_load_back(lora_run, val_images, standin_hub, tmp_path):
    hub = standin_hub
    export = lora_run / "best"
    before = digest(export)
    url = push(lora_run, "alice/memes-lora", private=True, log=lambda _: None)
    assert "alice/memes-lora" in url and hub.private["alice/memes-lora"] is True

    arrived = hub.repos["alice/memes-lora"]
    staged = dict(stage_export(export, tmp_path / "staged", repo_id="alice/memes-lora", license="apache-2.0",
                               log=lambda _: None))
    assert {n for n in arrived if n != ".gitattributes"} == set(staged)
    for name in ("mapper.safetensors", "adapter/adapter_model.safetensors", "tokenizer/tokenizer.json"):
        assert arrived[name] == (export / name).read_bytes()
    assert any("/info/lfs/objects/batch" in path for _, path, _ in hub.requests)  # weights went through LFS
    sent = [h.get("authorization") for _, path, h in hub.requests if path.startswith("/api/")]
    assert sent and all(a == f"Bearer {STANDIN_TOKEN}" for a in sent)  # the token came from HF_TOKEN
    assert not any(STANDIN_TOKEN.encode() in content for content in arrived.values())
    assert digest(export) == before  # pushing never touches the local export

    captioner = Captioner.from_pretrained("alice/memes-lora", cache_dir=str(tmp_path / "hf-cache"), device="cpu")
    assert captioner(val_images) == Captioner(load_model(export), captioner.generation, device="cpu")(val_images)


def test_failed_push_keeps_the_model_and_says_how_to_retry(lora_run, tmp_path, monkeypatch):
    export = lora_run / "best"
    before = digest(export)
    with StandinHub(token="the-right-token") as hub, online(endpoint=hub.url, token="a-wrong-token"):
        with pytest.raises(PushError) as err:
            push(export, "alice/memes-lora", log=lambda _: None)
    message = str(err.value)
    assert f"Retry with: memecap push {export} --repo alice/memes-lora" in message
    assert "a-wrong-token" not in message and "the-right-token" not in message
    assert digest(export) == before

    with StandinHub() as hub, online(endpoint=hub.url):
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))  # no stored login either
        with pytest.raises(PushError, match="no Hugging Face token"):
            push(export, "alice/memes-lora", log=lambda _: None)
        assert not hub.requests  # refused before any request


def test_training_pushes_at_the_end(synthetic_data, standin_hub, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = tiny_run_config(out, synthetic_data, *LORA_RUN, "train.push_to_hub=true", "train.hub_repo=bob/memes")
    summary = train_main(cfg)
    assert summary["push"]["ok"] is True and summary["push"]["repo"] == "bob/memes"
    assert standin_hub.repos["bob/memes"]["mapper.safetensors"] == (out / "best" / "mapper.safetensors").read_bytes()
    assert json.loads((out / "summary.json").read_text())["push"]["ok"] is True

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    rc = train_cli(["demo", f"train.output_dir={tmp_path / 'never'}", "train.push_to_hub=true",
                    "train.hub_repo=bob/memes"])
    assert rc == 2 and not (tmp_path / "never").exists()  # refused before any training


def test_push_dry_run_lists_the_files_and_sends_nothing(lora_run, capsys):
    from memecap.cli import main as cli

    assert cli(["push", str(lora_run), "--repo", "alice/memes-lora", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in EXPECTED_FILES:
        assert re.search(rf"^{re.escape(name)}\s+[\d,]+ bytes$", out, re.M), name
    assert "would be pushed" in out


def _probe_export(lora_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(lora_run / "best", tmp_path / "export"))


def _edit_config(export: Path, change) -> None:
    meta = yaml.safe_load((export / "memecap.yaml").read_text(encoding="utf-8"))
    change(meta)
    (export / "memecap.yaml").write_text(yaml.safe_dump(meta, allow_unicode=True, sort_keys=False), encoding="utf-8")


def _name_base(export: Path, role: str, folder) -> None:
    from memecap.models.export import set_base

    def change(meta):
        meta["bases"][role]["needed_to_load"] = True
        set_base(meta, meta["bases"][role], name=str(folder))
    _edit_config(export, change)


def _secrets(folder: Path) -> Path:
    (folder / ".ssh").mkdir(parents=True)
    (folder / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY----- secret\n")
    (folder / "token").write_text("hf_secrettoken\n")
    (folder / "config.json").write_text("{}\n")
    return folder


def test_push_never_uploads_a_base_folder_memecap_did_not_write(lora_run, standin_hub, tmp_path, capsys):
    from memecap.cli import main as cli

    export = _probe_export(lora_run, tmp_path)
    home = _secrets(tmp_path / "home")
    _name_base(export, "decoder", home)

    assert cli(["push", str(export), "--repo", "alice/probe"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "bases.decoder" in err and str(home) in err
    assert "push that base to the Hub first" in err and "Traceback" not in err
    assert "alice/probe" not in standin_hub.repos and not any("upload" in p for _, p, _ in standin_hub.requests)
    assert cli(["push", str(export), "--repo", "alice/probe", "--dry-run"]) == 2
    with pytest.raises(ValueError, match="bases.decoder"):
        stage_export(export, tmp_path / "staged", repo_id="alice/probe", license="mit", log=lambda _: None)
    staged = [p.read_bytes() for p in (tmp_path / "staged").rglob("*") if p.is_file()]
    assert not any(b"secret" in content for content in staged)


@pytest.mark.parametrize("listed", ["../.ssh/id_rsa", "/abs", ".ssh/id_rsa"])
def test_a_forged_or_edited_base_manifest_uploads_nothing(lora_run, tmp_path, listed):
    export = _probe_export(lora_run, tmp_path)
    home = _secrets(tmp_path / "home")
    base = tmp_path / "home" / "base"
    shutil.copytree(lora_run / "base_models" / "decoder", base)
    manifest = json.loads((base / "memecap-base.json").read_text())
    listed = str(home / ".ssh" / "id_rsa") if listed == "/abs" else listed
    if listed == ".ssh/id_rsa":  # a file recorded, then swapped for another
        (base / ".ssh").symlink_to(home / ".ssh")
        manifest["files"][listed] = {"bytes": 5, "sha256": "0" * 64}
    else:
        manifest["files"][listed] = manifest["files"]["config.json"]
    (base / "memecap-base.json").write_text(json.dumps(manifest))
    _name_base(export, "decoder", base)
    with pytest.raises(ValueError, match=re.escape(repr(listed))):
        stage_export(export, tmp_path / "staged", repo_id="alice/probe", license="mit", log=lambda _: None)
    assert not any(b"secret" in p.read_bytes() for p in (tmp_path / "staged").rglob("*") if p.is_file())

    # A recorded file changed since memecap wrote it is refused too.
    shutil.rmtree(base)
    shutil.copytree(lora_run / "base_models" / "decoder", base)
    with open(base / "config.json", "a") as f:
        f.write(" ")
    with pytest.raises(ValueError, match="'config.json' changed since memecap wrote it"):
        stage_export(export, tmp_path / "staged2", repo_id="alice/probe", license="mit", log=lambda _: None)


@pytest.mark.parametrize("entry", ["../outside_src", "/abs", "link", "adapter/../../outside_src"])
def test_push_refuses_a_manifest_path_outside_the_export(lora_run, tmp_path, monkeypatch, capsys, entry):
    import tempfile

    from memecap.cli import main as cli

    export = _probe_export(lora_run, tmp_path)
    (tmp_path / "outside_src").write_text("secret\n")
    (export / "link").symlink_to(tmp_path / "outside_src")
    entry = str(tmp_path / "outside_src") if entry == "/abs" else entry
    _edit_config(export, lambda meta: meta["files"].append(entry))
    temp = tmp_path / "temp" / "deeper"
    temp.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # the staging folder's parent

    assert cli(["push", str(export), "--repo", "alice/probe", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert repr(entry) in err and "Traceback" not in err
    assert [p.name for p in (tmp_path / "temp").rglob("*")] == ["deeper"]  # nothing left outside staging


def test_a_bundled_base_path_must_stay_inside_the_export(lora_run, tmp_path):
    export = _probe_export(lora_run, tmp_path)
    shutil.copytree(lora_run / "base_models" / "decoder", tmp_path / "elsewhere")
    _name_base(export, "decoder", "bases/../../elsewhere")
    with pytest.raises(ValueError, match=re.escape("bases: 'bases/../../elsewhere'")):
        load_model(export)


@pytest.mark.parametrize("entry", ["memecap.yaml", "README.md"])
def test_a_manifest_naming_the_files_a_push_writes_leaves_the_export_unchanged(lora_run, tmp_path, capsys, entry):
    from memecap.cli import main as cli

    export = _probe_export(lora_run, tmp_path)
    (export / "README.md").write_text("the user's own notes\n")
    _edit_config(export, lambda meta: meta["files"].append(entry))
    before = digest(export)
    assert cli(["push", str(export), "--repo", "alice/probe", "--dry-run"]) == 2
    assert repr(entry) in capsys.readouterr().err
    assert digest(export) == before  # staged as a hard link, the card or config would have overwritten it
