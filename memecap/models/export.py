"""The exported-model folder every family writes: its `memecap.yaml` and the base models it needs.

`memecap.yaml` holds the family, the model config, the generation settings, a manifest of the
files the family wrote (so a push uploads exactly those) and `bases`: the pretrained models the
export is applied to, each by Hub id + revision or, once bundled for a push, by a path inside
the export (`bases/<role>`), which loaders resolve against the folder.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import yaml

from memecap.untrusted import check_published_config

CONFIG_FILE = "memecap.yaml"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # user/name; folders and bundled paths do not match
BUNDLED_DIR = "bases"
# PEFT writes a generic model card beside every adapter; an export's card is memecap's own, at the top.
NOT_EXPORTED = {"README.md"}


def base_entry(section: str, name: str, revision: Optional[str], needed_to_load: bool,
               name_key: str = "name", revision_key: str = "revision") -> dict:
    """One base model: the model config's `section` holds its name and revision under these keys."""
    return {"section": section, "name": name, "revision": revision, "needed_to_load": needed_to_load,
            "name_key": name_key, "revision_key": revision_key}


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
    for base in (meta.get("bases") or {}).values():
        if str(base["name"]).startswith(BUNDLED_DIR + "/"):
            set_base(meta, base, name=str((folder / base["name"]).resolve()))
    return meta


def export_files(folder: Path) -> list[str]:
    """The files of an export, by its manifest (every file but `memecap.yaml` and stray artefacts)."""
    meta = yaml.safe_load((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    if "files" not in meta:
        raise ValueError(f"{folder}/{CONFIG_FILE} has no file manifest: re-export it with this memecap version")
    missing = [f for f in meta["files"] if not (Path(folder) / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: files of the export are missing: {', '.join(missing)}")
    return [CONFIG_FILE, *meta["files"]]
