"""The bases a run's model is built on when the run started from an export (`train.init_from`).

An export's trained weights belong to the bases it names, not to those a recipe would make (a
"tiny-random" name makes new random ones). So a run started from an export records, in its run
folder, the export's bases: a Hub id or a folder of the user's own by its name, a base bundled in the
export or written by memecap (the tiny ones) by a copy inside the run folder. Every build from that
run folder (training, resuming, exporting a checkpoint) is on those bases; the run's config keeps
what was asked, as it does for "tiny-random".
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

BASES_RECORD = "base_models/export_bases.json"  # inside base_models/, so it travels with the tiny bases


def record_bases(work_dir: Path, bases: dict) -> None:
    """Write `{role: {section, name_key, revision_key, name, revision, in_run}}`: `in_run` names are
    relative to the run folder."""
    path = Path(work_dir) / BASES_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(bases, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def recorded_bases(work_dir: Path) -> dict:
    path = Path(work_dir) / BASES_RECORD
    if not path.is_file():
        return {}
    try:
        bases = json.loads(path.read_text(encoding="utf-8"))
        return {role: {**base, "name": str((Path(work_dir) / base["name"]).resolve()) if base["in_run"]
                       else base["name"]} for role, base in bases.items()}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a record of the bases this run was built on ({err}); the run folder "
                         f"was changed by hand") from None


def on_recorded_bases(cfg, work_dir: Path):
    """`cfg` (a ModelConfig) with the bases the run folder recorded, if it recorded any."""
    bases = recorded_bases(work_dir)
    if not bases:
        return cfg
    cfg = copy.deepcopy(cfg)
    for base in bases.values():
        section = getattr(cfg, base["section"])
        setattr(section, base["name_key"], base["name"])
        setattr(section, base["revision_key"], base["revision"])
    return cfg
