"""What every config section builds on: the error type, range checks that name the key, and the
LoRA settings every family shares. Outside memecap/config and importing nothing of memecap, so a
family's settings (memecap/models/<family>/settings.py) use it without an import circle."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

WEIGHT_DTYPES = ("auto", "float32", "bfloat16", "float16")  # storage of frozen weights (memecap/models/dtypes.py)


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema."""


def one_of(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(str, allowed))}")


def at_least(key: str, value: Optional[float], low: float, *, optional: bool = False) -> None:
    """`value >= low` (None passes where the setting is optional: null means off)."""
    if value is None and optional:
        return
    if value is None or value < low:
        raise ConfigError(f"{key}={value!r}: must be >= {low}" + (" or null" if optional else ""))


def dropout_probability(key: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"{key}={value!r}: a dropout probability is in [0, 1)")


def above(key: str, value: Optional[float], low: float, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value <= low:
        raise ConfigError(f"{key}={value!r}: must be > {low}" + (" or null" if optional else ""))


KIND_NAMES = {str: "a string", int: "an integer", (int, float): "a number"}


def list_of(key: str, value: list, kind) -> None:
    """Every item of a list setting is a `kind`: YAML allows nested lists (a few aliases make one
    of billions of items), which would otherwise reach the code, or a saved copy of the config."""
    for i, item in enumerate(value):
        if not isinstance(item, kind) or isinstance(item, bool):
            shown = type(item).__name__ if isinstance(item, (list, dict)) else repr(item)[:80]
            raise ConfigError(f"{key}[{i}]={shown}: expected {KIND_NAMES.get(kind, kind)}")


DURATION_UNITS = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
DURATION_CLOCK = re.compile(r"(\d+):(\d{2}):(\d{2})")  # Slurm's --time=HH:MM:SS


def duration_seconds(key: str, text: str) -> int:
    """'3h50m', '90m', '45s', '1h30m15s' or '03:50:00' -> seconds; a ConfigError naming `key` otherwise."""
    text = str(text).strip()
    units, clock = DURATION_UNITS.fullmatch(text), DURATION_CLOCK.fullmatch(text)
    if clock:
        hours, minutes, seconds = (int(g) for g in clock.groups())
    elif units and text:
        hours, minutes, seconds = (int(g or 0) for g in units.groups())
    else:
        bare = (" (a bare number has no unit; YAML reads an unquoted 1:30:00 as 5400: quote it)"
                if text.isdigit() else "")
        raise ConfigError(f"{key}={text!r}: give a duration with units, e.g. 3h50m, 90m, 45s or 03:50:00{bare}")
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ConfigError(f"{key}={text!r}: the duration must be longer than 0 s")
    return total


def seed(key: str, value: int) -> None:
    """The generators seeded from it (Python's, NumPy's, torch's) take 0 .. 2**32 - 1."""
    if not 0 <= value < 2**32:
        raise ConfigError(f"{key}={value!r}: a seed is in 0 .. {2**32 - 1}")


# How a model (or one part of it) trains, in the same words for every family; `trainable` patterns
# (memecap/models/param_patterns.py, the grammar of a stage's `freeze` too) go with subset.
TRAIN_MODES = ("frozen", "full", "subset", "lora")


def check_train_mode(prefix: str, mode: str, trainable: list, *, allowed: tuple = TRAIN_MODES, example: str) -> None:
    one_of(f"{prefix}.mode", mode, allowed)
    list_of(f"{prefix}.trainable", trainable, str)
    if mode == "subset" and not trainable:
        raise ConfigError(f"{prefix}.mode=subset needs {prefix}.trainable: module or parameter name patterns, "
                          f"e.g. {example}")
    if mode != "subset" and trainable:
        raise ConfigError(f"{prefix}.trainable is only read with {prefix}.mode=subset")


def check_lora(prefix: str, lora) -> None:
    at_least(f"{prefix}.r", lora.r, 1)
    above(f"{prefix}.alpha", lora.alpha, 0)
    dropout_probability(f"{prefix}.dropout", lora.dropout)
    list_of(f"{prefix}.target_modules", lora.target_modules, str)
    if not lora.target_modules:
        raise ConfigError(f"{prefix}.target_modules is empty: name the modules that get adapters")


@dataclass
class LoraConfig:
    """PEFT LoRA adapters (memecap/models/lora.py), the same settings for every family; the
    section holding it gives the default targets and checks it under its own key."""

    r: int = 8  # rank
    alpha: int = 16  # scaling numerator
    dropout: float = 0.05  # dropout on the LoRA branch
    target_modules: list = field(default_factory=list)  # module names (or their last part) that get adapters
