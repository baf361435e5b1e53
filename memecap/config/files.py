"""Recipes (shipped names or YAML files, `extends:` chains), `key=value` overrides, and configs
saved with a run or an export."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

import yaml

from memecap.config.binding import bind
from memecap.config_checks import ConfigError
from memecap.config.families import FAMILY_SECTIONS, family_model_values, move_keys
from memecap.config.sections import Config, ModelConfig
from memecap.models import DEFAULT_FAMILY

RECIPES_DIR = Path(__file__).parent.parent / "recipes"


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolve_recipe_path(recipe: str) -> Path:
    """A recipe name shipped with memecap (`clipcap_lora`) or a path to a YAML file."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        return path
    shipped = RECIPES_DIR / f"{recipe}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"no recipe named {recipe!r}; shipped recipes: {', '.join(list_recipes())}")
    return shipped


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _recipe_layers(path: Path, seen: tuple = ()) -> list[dict]:
    """The recipe and the recipes it `extends`, the furthest ancestor first."""
    # Compared resolved: `../sub/a.yaml` written inside sub/a.yaml is the same file under a longer
    # name each time, a cycle that would otherwise grow until the name is too long to open.
    if path.resolve() in [p.resolve() for p in seen]:
        chain = " -> ".join(str(p.resolve()) for p in (*seen, path))
        raise ConfigError(f"recipe {path.resolve()} extends itself: {chain}")
    raw = _load_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping")
    parent = raw.pop("extends", None)
    if parent is None:
        return [raw]
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends={parent!r}: name one recipe (extends: clipcap_lora) or one YAML file")
    is_file = parent.endswith((".yaml", ".yml"))
    parent_path = resolve_recipe_path(str(path.parent / parent) if is_file else parent)
    return _recipe_layers(parent_path, seen + (path,)) + [raw]


def _load_yaml(path: Path):
    """A YAML file; a syntax error names the file, line and column instead of PyYAML's traceback."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def parse_overrides(overrides: list[str]) -> dict:
    """`a.b=c` strings -> nested dict; values are parsed as YAML (`1e-4`, `true`, `[a, b]`, `null`)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part}")
        node[parts[-1]] = value
    return tree


def config_from_dict(values: dict, *, saved: bool = False) -> Config:
    """`saved`: the values come from a file memecap wrote (a run's config, an export), possibly
    by an older version (see `family_model_values`)."""
    if isinstance(values, dict) and isinstance(values.get("model"), dict):
        values = {**values, "model": family_model_values(values["model"], saved=saved)}
    if saved and isinstance(values, dict):
        values = _older_scst_values(values)
    return bind(Config, values, "")


def _older_scst_values(values: dict) -> dict:
    """A saved scst run from before `scst.dropout` existed scored its samples with dropout: its config
    says so, so that resuming it with today's default (without) is refused as a change, not taken silently."""
    scst = values.get("scst")
    train, stages = values.get("train") or {}, values.get("stages") or []
    used = (isinstance(train, dict) and train.get("objective") == "scst"
            or any(isinstance(s, dict) and s.get("objective") == "scst" for s in stages))
    if not used or not isinstance(scst, dict) or "dropout" in scst:
        return values
    return {**values, "scst": {**scst, "dropout": True}}


def model_config_from_export(model: dict) -> "ModelConfig":
    """The model section of an export's memecap.yaml."""
    return config_from_dict({"model": model}, saved=True).model


def load_config(recipe: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Recipe (name or YAML path, may `extends:` another) + dotted overrides -> validated Config."""
    layers = (_recipe_layers(resolve_recipe_path(recipe)) if recipe else []) + [parse_overrides(overrides or [])]
    family = DEFAULT_FAMILY
    for layer in layers:
        model = layer.get("model")
        family = model.get("family", family) if isinstance(model, dict) else family
    # Keys move layer by layer (with the family the layers end on), so that a later layer's old key
    # overrides an earlier layer's new one, as any later setting does.
    values: dict = {}
    for layer in layers:
        model = layer.get("model")
        values = _merge(values, {**layer, "model": move_keys(model, family)} if isinstance(model, dict) else layer)
    return config_from_dict(values)


def to_dict(cfg) -> dict:
    """Plain values of a config (or any of its sections); a model section holds only what its family reads."""
    out = dataclasses.asdict(cfg)
    model = out if isinstance(cfg, ModelConfig) else out.get("model") if isinstance(cfg, Config) else None
    if model is not None:
        for section in set(model) - {"family"} - set(FAMILY_SECTIONS[model["family"]]):
            del model[section]
    return out


def flat_keys(tree: dict, prefix: str = "") -> dict:
    """A nested mapping by dotted key (`to_dict(cfg)` -> `{"optim.lr": 0.0003, ...}`); an empty
    mapping adds no key."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), allow_unicode=True, sort_keys=False)


def save_config(cfg: Config, path: Path) -> None:
    Path(path).write_text(to_yaml(cfg), encoding="utf-8")


def load_saved_config(path: Path, *, check: Optional[Callable[[dict, Path], None]] = None) -> Config:
    """A config saved with a run. `check(values, path)` sees the raw values first: for a file that
    may be someone else's (a checkpoint given to `memecap caption`), memecap/untrusted.py's check
    that it names no code to import."""
    values = _load_yaml(path) or {}
    if check is not None:
        check(values, Path(path))
    return config_from_dict(values, saved=True)
