"""The exported-model folder every family writes: its `memecap.yaml` and the base models it needs.

`memecap.yaml` holds the family, the model config, the generation settings, a manifest of the
files the family wrote (so a push uploads exactly those) and `bases`: the pretrained models the
export is applied to, each by Hub id + revision or, once bundled for a push, by a path inside
the export (`bases/<role>`), which loaders resolve against the folder.

A file may name paths someone else wrote (a downloaded export): every such path must stay inside
its folder, as a regular file, or the file is refused naming it. A local base folder is bundled
into a push only when memecap wrote it and recorded its files (`BASE_MANIFEST`, the demo's tiny
bases): a folder a config merely names may hold anything, keys included.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

import yaml

from memecap.untrusted import check_published_config, refuse_auto_map

CONFIG_FILE = "memecap.yaml"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # user/name; folders and bundled paths do not match
BUNDLED_DIR = "bases"
# PEFT writes a generic model card beside every adapter; an export's card is memecap's own, at the top.
NOT_EXPORTED = {"README.md"}
BASE_MANIFEST = "memecap-base.json"  # the files memecap wrote into a local base folder, with sizes and digests


class UnsafePath(ValueError):
    """A path a file names leaves its folder, is a link, or is not the file recorded."""


def member(folder: Path, name, source: str, *, is_dir: bool = False) -> Path:
    """`folder/name` for a relative `name` that `source` (a file and key, for the message) lists:
    no absolute path, no `..`, no link, and it resolves inside `folder`."""
    folder = Path(folder)
    parts = PurePosixPath(name).parts if isinstance(name, str) else ()
    if not parts or "\\" in name or PurePosixPath(name).is_absolute() or any(p in ("..", ".") for p in parts):
        raise UnsafePath(f"{source}: {name!r} is not a path inside {folder}; refused")
    path = folder.joinpath(*parts)
    root = folder.resolve()
    if path.is_symlink() or not (path.resolve() == root or root in path.resolve().parents):
        raise UnsafePath(f"{source}: {name!r} is a link or leads outside {folder}; refused")
    if not (path.is_dir() if is_dir else path.is_file()):
        raise FileNotFoundError(f"{source}: {name!r} is missing from {folder}")
    return path


def base_entry(section: str, name: str, revision: Optional[str], needed_to_load: bool,
               name_key: str = "name", revision_key: str = "revision", in_export: Sequence[str] = ()) -> dict:
    """One base model: the model config's `section` holds its name and revision under these keys.
    `in_export`: the export's folders that together hold a whole model of the base's kind, trained
    (a decoder trained whole and its tokenizer), so that a run can start from the export without the
    base it started from."""
    entry = {"section": section, "name": name, "revision": revision, "needed_to_load": needed_to_load,
             "name_key": name_key, "revision_key": revision_key}
    if in_export:
        entry["in_export"] = list(in_export)
    return entry


def set_base(meta: dict, base: dict, *, name: Optional[str] = None, revision: Optional[str] = None) -> None:
    """Change a base's name or revision in the entry and in the model config it mirrors."""
    section = meta["model"][base["section"]]
    if name is not None:
        base["name"] = section[base.get("name_key", "name")] = name
    if revision is not None:
        base["revision"] = section[base.get("revision_key", "revision")] = revision


def write_export_config(out_dir: Path, meta: dict) -> None:
    """Write `memecap.yaml` last, listing every file the family wrote before it."""
    out_dir = Path(out_dir)
    files = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*")
                   if p.is_file() and p.name not in NOT_EXPORTED and p.name != CONFIG_FILE)
    meta = {**meta, "files": files}
    (out_dir / CONFIG_FILE).write_text(yaml.safe_dump(meta, allow_unicode=True, sort_keys=False), encoding="utf-8")


def note_merge(out_dir: Path, line: str, merged_from: dict) -> None:
    """Say in a merged export's config (and so its model card) what was merged into what."""
    meta = yaml.safe_load((Path(out_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    meta["architecture"] = [*(meta.get("architecture") or []), line]
    meta["merged_from"] = merged_from
    write_export_config(out_dir, meta)


def read_export_config(folder: Path) -> dict:
    """The export's metadata, with bundled base paths made absolute (so the folder can move)."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no exported memecap model ({CONFIG_FILE} missing)")
    meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or not isinstance(meta.get("model", {}), dict):
        raise ValueError(f"{path}: not a memecap export config (expected a mapping with a model section)")
    check_published_config(meta, path)
    refuse_auto_map(folder)  # its processor/, model/, tokenizer/, bundled bases/: code of their own is refused
    for base in (meta.get("bases") or {}).values():
        if str(base["name"]).startswith(BUNDLED_DIR + "/"):
            bundled = member(folder, base["name"], f"{path}: bases", is_dir=True)
            set_base(meta, base, name=str(bundled.resolve()))
    return meta


def export_files(folder: Path) -> list[str]:
    """The files of an export, by its manifest (every file but `memecap.yaml` and stray artefacts)."""
    meta = yaml.safe_load((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    if "files" not in meta:
        raise ValueError(f"{folder}/{CONFIG_FILE} has no file manifest: re-export it with this memecap version")
    if not isinstance(meta["files"], list):
        raise UnsafePath(f"{folder}/{CONFIG_FILE}: files must be a list of paths inside the export")
    missing = []
    for name in meta["files"]:
        if name in NOT_EXPORTED or name == CONFIG_FILE:
            # A push writes these itself; staged as hard links, the export's own would be overwritten.
            raise UnsafePath(f"{folder}/{CONFIG_FILE}: files: {name!r} is written by memecap, not listed; refused")
        try:
            member(folder, name, f"{folder}/{CONFIG_FILE}: files")
        except FileNotFoundError:
            missing.append(name)
    if missing:
        raise FileNotFoundError(f"{folder}: files of the export are missing: {', '.join(missing)}")
    return [CONFIG_FILE, *meta["files"]]


def record_local_base(folder: Path) -> None:
    """List the files memecap just wrote into a local base folder, so that a push may bundle
    exactly those (and notice any changed since)."""
    from memecap.data.fingerprint import file_digest

    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink() and p.name != BASE_MANIFEST}
    tmp = folder / f"{BASE_MANIFEST}.tmp"
    tmp.write_text(json.dumps({"files": files}, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, folder / BASE_MANIFEST)


def recorded_base_files(folder: Path) -> Optional[list[tuple[str, Path]]]:
    """(name, path) of each file memecap recorded in a local base folder, each checked to be the
    regular file inside it that was recorded; None for a folder memecap did not write."""
    from memecap.data.fingerprint import file_digest

    folder = Path(folder)
    manifest = folder / BASE_MANIFEST
    if not manifest.is_file() or manifest.is_symlink():
        return None
    source = str(manifest)
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        entries = [(name, int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UnsafePath(f"{source}: not a memecap base manifest") from None
    out = []
    for name, size, digest in sorted(entries):
        path = member(folder, name, source)
        if path.stat().st_size != size or file_digest(path) != digest:
            raise UnsafePath(f"{source}: {name!r} changed since memecap wrote it; refused")
        out.append((name, path))
    return out
