"""Settings read from files someone else wrote never name code to run.

A few settings name code by dotted path (`model.ocr.engine`, `optim.name`), which memecap imports
and calls. That is the user's choice in their own recipe or command line. An export's
`memecap.yaml` (a Hub repo's, say) or a checkpoint's `config.yaml` passed to `memecap caption`,
`eval` or `Captioner` is someone else's file: there these settings may only hold registered names,
and anything else stops the load before a module is imported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable


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
