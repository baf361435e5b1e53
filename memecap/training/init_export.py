"""`train.init_from=EXPORT`: a new run that starts from an exported model (a run's `best/` or
`final/`, a folder a push staged, or a Hub repo id, downloaded), e.g. a self-critical stage on a
model someone published.

The run is built on the export's bases (memecap/models/run_bases.py): Hub ids and folders of the
user's own by name, bases bundled in the export or written by memecap (the tiny ones) copied into
the run folder, so the run never depends on the export staying where it is. The family's files an
export keeps for building (the LSTM's vocabulary) come along too. Then every parameter the run
trains is taken from the export's model, loaded through the family's own loader.

As for a checkpoint, the model settings must be the export's, the bases and the dtype frozen
weights are stored in aside: other settings build another model, which the weights would not fit.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from memecap.config import Config, ConfigError, model_config_from_export
from memecap.models.export import (CONFIG_FILE, HUB_ID, member, read_export_config, record_local_base,
                                   recorded_base_files)
from memecap.models.run_bases import record_bases
from memecap.outputs.run_layout import STATE_FILE
from memecap.training.checkpoint import resume_changes
from memecap.training.init_weights import copy_trained, frozen_dtype_key


def find_export(init_from: str) -> Optional[Path]:
    """The export folder `init_from` names (a Hub id is downloaded), or None when it names none."""
    path = Path(init_from).expanduser()
    if (path / CONFIG_FILE).is_file() and not (path / STATE_FILE).is_file():
        return path
    if path.exists() or not HUB_ID.match(init_from):
        return None
    from memecap.inference.captioner import download

    try:
        folder = download(init_from)
    except FileNotFoundError as err:
        raise ConfigError(f"train.init_from={init_from}: {err}") from None
    if not (folder / CONFIG_FILE).is_file():
        raise ConfigError(f"train.init_from={init_from}: the Hub repo holds no exported memecap model "
                          f"({CONFIG_FILE} missing)")
    return folder


def base_keys(meta: dict) -> set[str]:
    """`model.section.key` of each base's name and revision."""
    keys = set()
    for base in (meta.get("bases") or {}).values():
        keys |= {f"model.{base['section']}.{base.get('name_key', 'name')}",
                 f"model.{base['section']}.{base.get('revision_key', 'revision')}"}
    return keys


def export_model_changes(meta: dict, cfg: Config) -> list[str]:
    """`model.key: theirs -> ours` for each model setting other than a base or a frozen dtype."""
    theirs = replace(cfg, model=model_config_from_export(meta.get("model") or {}))
    exact, _ = resume_changes(theirs, cfg)
    bases = base_keys(meta)
    return [c for c in exact if c.startswith("model.") and not frozen_dtype_key(c) and c.split(":")[0] not in bases]


@dataclass(frozen=True)
class ExportStart:
    """Starting weights from an exported model."""

    path: Path
    meta: dict

    @classmethod
    def open(cls, export: Path, cfg: Config) -> "ExportStart":
        """The export, checked to fit the run's model settings and to have its bases at hand."""
        try:
            meta = read_export_config(export)
        except (OSError, ValueError) as err:
            raise ConfigError(f"train.init_from={export}: {err}") from None
        changed = export_model_changes(meta, cfg)
        if changed:
            raise ConfigError(f"train.init_from={export}: the exported model was built with other settings, so its "
                              f"weights do not belong to this one: {'; '.join(changed)}. Give the model settings "
                              f"of the export (its {CONFIG_FILE}, under model)")
        start = cls(Path(export), meta)
        for role, base in (meta.get("bases") or {}).items():
            name = str(base["name"])
            if base.get("in_export"):  # trained whole: the export's own folders stand in for the base
                try:
                    start.copied_from(base)
                except (OSError, ValueError) as err:
                    raise ConfigError(f"train.init_from={export}: its {role} base: {err}") from None
            elif name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_dir():
                raise ConfigError(f"train.init_from={export}: its {role} base is the folder {name}, which is not "
                                  f"on this machine, and a run is built on the bases its export was")
        return start

    def take_files(self, out_dir: Path) -> list[str]:
        """Record the bases the run is built on, copying those bundled in the export or written by
        memecap; copy the family's run files from the export. Returns what was copied."""
        from memecap.models import DEFAULT_FAMILY, family_module

        out_dir = Path(out_dir)
        copied: dict[tuple[Path, ...], str] = {}  # one copy of a folder two roles name (RuDOLPH's VQGAN and tokenizer)
        record = {}
        for role, base in (self.meta.get("bases") or {}).items():
            entry = {"section": base["section"], "name_key": base.get("name_key", "name"),
                     "revision_key": base.get("revision_key", "revision"), "name": str(base["name"]),
                     "revision": base.get("revision"), "in_run": False}
            sources = self.copied_from(base)
            if sources:
                key = tuple(source.resolve() for source in sources)
                if key not in copied:
                    copied[key] = f"base_models/export-{role}"
                    copy_base(sources, out_dir / copied[key])
                entry.update(name=copied[key], revision=None, in_run=True)
            record[role] = entry
        record_bases(out_dir, record)
        run_files = getattr(family_module(self.meta.get("family", DEFAULT_FAMILY)), "RUN_FILES_FROM_EXPORT", {})
        for run_name, export_name in run_files.items():
            source = member(self.path, export_name, f"{self.path}/{CONFIG_FILE}")
            copy_file(source, out_dir / run_name)
        return [*copied.values(), *run_files]

    def copied_from(self, base: dict) -> list[Path]:
        """The folders the run copies this base from: the export's own whole trained model of the base's
        kind (`in_export`: no download, nor the folder it started from, needed), a base bundled in the
        export, or one written by memecap; none for a base the run names (a Hub id, the user's folder)."""
        if base.get("in_export"):
            where = f"{self.path}/{CONFIG_FILE}"
            return [member(self.path, name, where, is_dir=True) for name in base["in_export"]]
        source = Path(str(base["name"]))
        if source.is_dir() and (is_inside(source, self.path) or recorded_base_files(source) is not None):
            return [source]
        return []

    def describe(self) -> str:
        bases = [f"{role} {'(copied into base_models/)' if self.copied_from(b) else b['name']}"
                 for role, b in (self.meta.get("bases") or {}).items()]
        return f"the export {self.path}, built on its bases: {', '.join(bases)}"

    def load_into(self, model: torch.nn.Module) -> int:
        from memecap.models import load_model

        exported = load_model(self.path, with_encoder=False)
        state = exported.state_dict()
        return copy_trained(model, set(state), state.__getitem__, f"train.init_from={self.path}: its model")


def is_inside(path: Path, folder: Path) -> bool:
    root = Path(folder).resolve()
    return root in Path(path).resolve().parents


def base_files(source: Path) -> list[tuple[str, Path]]:
    """(name, path) of a base folder's files: those memecap recorded in it, or all of an export's part."""
    recorded = recorded_base_files(source)
    return recorded if recorded is not None else [
        (p.relative_to(source).as_posix(), p) for p in sorted(source.rglob("*")) if p.is_file()]


def copy_base(sources: list[Path], target: Path) -> None:
    """Copy the files of one or more folders (a decoder and its tokenizer) into one base folder, so
    that it appears whole or not at all, recorded as written by memecap (a push can bundle it). A
    name two folders hold is taken from the first: the model's own config over a processor's."""
    files = {}
    for source in sources:
        for name, path in base_files(source):
            files.setdefault(name, path)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted copy
    for name, path in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, tmp / name)  # a downloaded export's files are links into the Hub cache
    record_local_base(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def copy_file(source: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)
