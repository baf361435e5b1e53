"""The local Hub stand-in (tests/hub_standin.py) works with the real huggingface_hub client:
create, upload (regular + LFS, no Xet), model_info, and download back, with token checks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import get_session
from safetensors.torch import save_file

from tests.hub_standin import STANDIN_TOKEN, online

REPO = "tester/tiny-captioner"


def _make_folder(root: Path) -> dict[str, bytes]:
    (root / "tokenizer").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "clipcap", "prefix_length": 4}))
    (root / "README.md").write_text("# tiny captioner\n\nFor tests only.\n")
    (root / "tokenizer" / "tokenizer.json").write_text(json.dumps({"vocab": {"a": 0, "б": 1}}, ensure_ascii=False))
    generator = torch.Generator().manual_seed(0)
    save_file({"weight": torch.randn(768, 1024, generator=generator)}, str(root / "model.safetensors"))  # ~3 MiB
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


def test_upload_then_download_round_trip(standin_hub, tmp_path):
    hub = standin_hub
    api = HfApi(endpoint=hub.url, token=STANDIN_TOKEN)
    api.create_repo(REPO, repo_type="model", private=True, exist_ok=True)
    api.create_repo(REPO, repo_type="model", private=True, exist_ok=True)  # 409 swallowed by exist_ok
    assert hub.private[REPO] is True

    local = _make_folder(tmp_path / "export")
    assert len(local["model.safetensors"]) > 3_000_000
    commit = api.upload_folder(repo_id=REPO, folder_path=tmp_path / "export", commit_message="Upload tiny")

    assert hub.repos[REPO] == local  # byte-identical on the server
    assert len(hub.commits) == 1 and hub.commits[0]["message"] == "Upload tiny"
    assert hub.commits[0]["oid"] == commit.oid
    # The weights went through LFS (batch, presigned PUT, verify), not inline in the commit; no Xet.
    assert hub.commits[0]["files"] == {"config.json": "regular", "README.md": "regular",
                                       "tokenizer/tokenizer.json": "regular", "model.safetensors": "lfs"}
    paths = [(method, path.split("?")[0]) for method, path, _ in hub.requests]
    assert ("POST", f"/{REPO}.git/info/lfs/objects/batch") in paths
    assert ("POST", f"/{REPO}.git/info/lfs/objects/verify") in paths
    assert any(method == "PUT" and path.startswith("/lfs-upload/") for method, path in paths)
    assert not any("xet" in path for _, path in paths)
    assert hub.unrouted == [] and hub.errors == []
    # Every Hub call carried the token; only the presigned upload URL goes without it, as with S3.
    for method, path, headers in hub.requests:
        expected = None if path.startswith("/lfs-upload/") else f"Bearer {STANDIN_TOKEN}"
        assert headers.get("authorization") == expected, (method, path)

    info = api.model_info(REPO)
    assert info.sha == commit.oid and info.private is True
    assert sorted(s.rfilename for s in info.siblings) == sorted(local)
    detailed = api.model_info(REPO, revision=info.sha, files_metadata=True)
    lfs = {s.rfilename: s.lfs for s in detailed.siblings}
    assert lfs["model.safetensors"].size == len(local["model.safetensors"]) and lfs["config.json"] is None

    # Re-uploading unchanged files makes no new commit: the preupload oids match the local ones.
    again = api.upload_folder(repo_id=REPO, folder_path=tmp_path / "export", commit_message="Again")
    assert again.oid == commit.oid and len(hub.commits) == 1

    cache = tmp_path / "cache"
    folder = snapshot_download(REPO, endpoint=hub.url, token=STANDIN_TOKEN, cache_dir=cache)
    assert _read_tree(Path(folder)) == local
    assert Path(folder).name == commit.oid
    pinned = hf_hub_download(REPO, "model.safetensors", revision=info.sha, endpoint=hub.url,
                             token=STANDIN_TOKEN, cache_dir=tmp_path / "cache2")
    assert Path(pinned).read_bytes() == local["model.safetensors"]
    assert hub.unrouted == [] and hub.errors == []


def test_wrong_or_missing_token_is_refused(standin_hub, tmp_path):
    hub = standin_hub
    HfApi(endpoint=hub.url, token=STANDIN_TOKEN).create_repo(REPO)
    with pytest.raises(HfHubHTTPError) as wrong:
        HfApi(endpoint=hub.url, token="hf_wrong").create_repo("tester/other", exist_ok=True)
    assert wrong.value.response.status_code == 401
    assert "Invalid credentials" in str(wrong.value)
    assert "tester/other" not in hub.repos
    with pytest.raises(HfHubHTTPError) as missing:
        HfApi(endpoint=hub.url, token=False).model_info(REPO)
    assert missing.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as download:
        snapshot_download(REPO, endpoint=hub.url, token="hf_wrong", cache_dir=tmp_path / "cache")
    assert download.value.response.status_code == 401


def test_unknown_route_is_404_and_recorded(standin_hub):
    response = get_session().get(f"{standin_hub.url}/api/whoami-v2")
    assert response.status_code == 404 and "no route" in response.json()["error"]
    assert standin_hub.unrouted == [("GET", "/api/whoami-v2")]


def test_online_restores_offline_mode(monkeypatch):
    # conftest sets HF_HUB_OFFLINE=1; huggingface_hub caches it in constants at import time.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with online():
        assert not constants.is_offline_mode() and constants.HF_HUB_DISABLE_XET
    assert constants.is_offline_mode()
