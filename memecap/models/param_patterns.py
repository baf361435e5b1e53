"""The one way memecap matches parameter names against patterns (RuDOLPH's `trainable`, a
stage's `freeze`): a glob matches a parameter's full name or the name of any module holding it,
case-sensitively. A pattern that matches nothing is an error listing near names, because a typo
must never silently train (or freeze) something else."""
from __future__ import annotations

import difflib
from fnmatch import fnmatchcase
from typing import Sequence

from torch import nn

from memecap.config import ConfigError


def _holders(name: str) -> list[str]:
    """`a.b.c` -> `a`, `a.b`, `a.b.c`: the modules holding a parameter, and the parameter itself."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def matches(pattern: str, parameter_name: str) -> bool:
    return any(fnmatchcase(holder, pattern) for holder in _holders(parameter_name))


def select_parameters(model: nn.Module, patterns: Sequence[str], *, key: str, what: str) -> set[str]:
    """Names of the parameters of `model` matched by any of `patterns`; `key` (the setting) and
    `what` (the model's name) appear in the error for a pattern matching nothing."""
    names = [n for n, _ in model.named_parameters()]
    chosen: set[str] = set()
    for pattern in patterns:
        hits = {n for n in names if matches(pattern, n)}
        if not hits:
            modules = [n for n, _ in model.named_modules() if n]
            near = difflib.get_close_matches(pattern, modules + names, n=5, cutoff=0.4)
            raise ConfigError(f"{key}: {pattern!r} matches no module or parameter of {what}; near names: "
                              f"{', '.join(near or modules[:5])} (patterns are globs over names such as "
                              f"{modules[0] if modules else 'layer'} or {modules[0] if modules else 'layer'}.*)")
        chosen |= hits
    return chosen
