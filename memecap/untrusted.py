"""Settings read from files someone else wrote never name code to run.

A few settings name code by dotted path (`model.ocr.engine`, `optim.name`), which memecap imports
and calls. That is the user's choice in their own recipe or command line. An export's
`memecap.yaml` (a Hub repo's, say) or a checkpoint's `config.yaml` passed to `memecap caption`,
`eval` or `Captioner` is someone else's file: there these settings may only hold registered names,
and anything else stops the load before a module is imported.

Model folders hold settings files too: an `auto_map` in any of their JSON files names the folder's
own Python, which transformers' Auto classes would import (after asking on stdin). memecap passes
`trust_remote_code=False` to every load and refuses such a folder (an export, a local or Hub base)
before transformers reads it.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Callable, Optional


# Optimizers an exported or published config may name; a recipe or the command line may name any
# class by dotted path.
REGISTERED_OPTIMIZERS = (
    "torch.optim.AdamW", "torch.optim.Adam", "torch.optim.SGD", "torch.optim.Adafactor",
    "bitsandbytes.optim.AdamW8bit", "bitsandbytes.optim.Adam8bit", "bitsandbytes.optim.PagedAdamW8bit",
    "bitsandbytes.optim.PagedAdamW", "bitsandbytes.optim.Lion8bit", "bitsandbytes.optim.PagedLion8bit",
)


def _ocr_engines() -> set[str]:
    from memecap.ocr.engines import ENGINES

    return set(ENGINES)


# dotted config key -> the names it may hold in a file memecap did not get from the user
CODE_NAMING_KEYS: dict[str, Callable[[], set[str]]] = {
    "model.ocr.engine": _ocr_engines,
    "optim.name": lambda: set(REGISTERED_OPTIMIZERS),
}


class UntrustedCodeReference(ValueError):
    """A published file names code to import."""


def _lookup(values: dict, dotted: str):
    node = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check_published_config(values: dict, source: Path) -> None:
    """Refuse a config dict read from `source` (an export or checkpoint file) whose code-naming
    settings hold anything but a registered name. `values` is the whole config's shape
    (`{"model": {...}, "optim": {...}}`); absent keys take their safe defaults."""
    for key, registered in CODE_NAMING_KEYS.items():
        value = _lookup(values, key)
        if value is None:
            continue
        allowed = registered()
        if not isinstance(value, str) or value not in allowed:
            raise UntrustedCodeReference(
                f"{source}: {key}={value!r} is not a registered name ({', '.join(sorted(allowed))}). "
                "A model someone else published may not name code to import; memecap refuses to load it. "
                f"If you trust it, set {key} in your own recipe or on the command line instead.")


# The settings files transformers' Auto classes read from a model folder or Hub repo; any of them
# may hold an `auto_map`, which makes them import the folder's own .py files (after asking on stdin).
SETTINGS_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
                  "video_preprocessor_config.json")


def _auto_map_key(path: Path) -> Optional[str]:
    """Where the JSON file `path` holds an `auto_map` key: at its top, or inside one of its sections
    (processor_config.json nests its image processor's settings); None when it holds none."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None  # unreadable: transformers reports it when it reads the file
    if b"auto_map" not in raw and b"\\u" not in raw:  # a key spelled with \u escapes has a backslash-u
        return None
    try:
        values = json.loads(raw)
    except ValueError:
        return None  # not JSON: transformers reports it when it reads the file
    if not isinstance(values, dict):
        return None
    if "auto_map" in values:
        return "auto_map"
    return next((f"{key}.auto_map" for key, section in values.items()
                 if isinstance(section, dict) and "auto_map" in section), None)


def _refuse(path, key: str) -> None:
    raise UntrustedCodeReference(
        f"{path}: {key} names Python code shipped with the model, which memecap never runs; refused. "
        "If the model's architecture is one transformers knows, remove the auto_map key from a copy and load that")


def refuse_auto_map(folder) -> None:
    """Refuse a model folder (an export, a local base, a downloaded snapshot) any of whose JSON
    files, at any depth, names code of its own (`auto_map`): transformers would import it, or
    prompt on stdin for leave to. Nothing is imported; a name that is not a folder is left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for root, dirs, files in os.walk(folder):  # links to folders are not followed
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".json"):
                key = _auto_map_key(Path(root) / name)
                if key is not None:
                    _refuse(Path(root) / name, key)


def refuse_model_code(name: str, revision: Optional[str] = None) -> None:
    """`refuse_auto_map` for a base model by folder or Hub id: a Hub repo's settings files are
    fetched (into the cache transformers reads them from) and checked before transformers reads them."""
    if os.path.isdir(name):
        refuse_auto_map(name)
        return
    for path in _hub_settings_files(name, revision):
        key = _auto_map_key(path)
        if key is not None:
            _refuse(f"{name} (revision {revision or 'main'}) {path.name}", key)


@functools.lru_cache(maxsize=64)
def _hub_settings_files(name: str, revision: Optional[str]) -> tuple[Path, ...]:
    from memecap.models.hub_files import resolve_file

    found = []
    for filename in SETTINGS_FILES:
        try:
            found.append(Path(resolve_file(name, filename, revision)))
        except Exception:  # noqa: BLE001 - absent, offline, not a repo: transformers reports what it needs
            continue
    return tuple(found)
