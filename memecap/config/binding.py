"""Plain mappings (YAML, overrides) bound to the config dataclasses, with errors that name the key."""
from __future__ import annotations

import dataclasses
import math
import types
import typing

from memecap.config_checks import ConfigError


def bind(cls, values: dict, prefix: str, base=None):
    """`values` onto the dataclass `cls`; unset fields keep `base`'s values (a section's default
    as its parent defines it, e.g. RuDOLPH's LoRA targets) or else the class defaults."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key(s) {', '.join(where + k for k in unknown)}; "
                          f"known in {prefix or 'the top level'}: {', '.join(sorted(names))}")
    defaults = base if base is not None else _default_instance(cls)
    kwargs = {name: _coerce(hints[name], value, f"{prefix}.{name}" if prefix else name,
                            getattr(defaults, name, None))
              for name, value in values.items()}
    if base is not None:
        kwargs = {**{f.name: getattr(base, f.name) for f in dataclasses.fields(cls) if f.init}, **kwargs}
    try:
        return cls(**kwargs)
    except TypeError as err:  # pragma: no cover - fields all have defaults
        raise ConfigError(f"{prefix}: {err}") from err


def _default_instance(cls):
    """The class's default field values without running its checks (a section such as LoraConfig
    is only valid with the defaults its parent gives it)."""
    obj = object.__new__(cls)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            setattr(obj, f.name, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            setattr(obj, f.name, f.default_factory())
    return obj


def _coerce(hint, value, key: str, default=None):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key, default)
    if dataclasses.is_dataclass(hint):
        return bind(hint, value or {}, key, default if dataclasses.is_dataclass(default) else None)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value!r}: expected a finite number")
        return float(value)
    if hint is str:
        if isinstance(value, bool):  # YAML reads yes/no/on/off/true/false as booleans
            raise ConfigError(f"{key}={value!r}: expected a string (YAML read a yes/no/on/off word as a boolean: "
                              f"quote it, e.g. {key}='no')")
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return str(value)
    if hint is list or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r}: expected a list, e.g. [a, b]")
        item = (typing.get_args(hint) or (None,))[0]
        if item is not None and dataclasses.is_dataclass(item):
            return [bind(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return list(value)
    return value
