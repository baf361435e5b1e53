"""Which sections of `model` a family reads, the keys that moved into a family's own section (both
as memecap/models/__init__.py's FAMILIES says), and the old configs that still read."""
from __future__ import annotations

from memecap.config_checks import ConfigError
from memecap.models import DEFAULT_FAMILY, FAMILIES

# The sections of `model` each family reads. Setting any other is an error naming the key, and
# the resolved, saved and exported configs hold only these (`family` itself is always there).
FAMILY_SECTIONS = {name: family.sections for name, family in FAMILIES.items()}
_ANY_FAMILYS = set().union(*FAMILY_SECTIONS.values())  # other keys are typos, which binding names
# What to do instead, for a section a family does not read that users reach for.
FOREIGN_SECTION_HINTS = {(name, section): hint for name, family in FAMILIES.items()
                         for section, hint in family.foreign_section_hints.items()}

# Keys that moved into a family's own section: family -> {old key under model: new key under model}.
MOVED_KEYS = {name: family.moved_keys for name, family in FAMILIES.items() if family.moved_keys}


def move_keys(model: dict, family: str, *, strict: bool = False) -> dict:
    """`model` with the family's MOVED_KEYS at their new place (a copy). `strict`: an old and a new
    key both set to different values is an error; otherwise the new key's value is kept."""
    model = {k: (dict(v) if isinstance(v, dict) else v) for k, v in model.items()}
    for old, new in MOVED_KEYS.get(family, {}).items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section, target = model.get(old_section), model.get(new_section, {})
        if not (isinstance(section, dict) and old_key in section and isinstance(target, dict)):
            continue  # nothing to move (or a wrong type, which binding names)
        value = section.pop(old_key)
        if strict and new_key in target and target[new_key] != value:
            raise ConfigError(f"model.{old} and model.{new} are the same setting for model.family={family}; "
                              f"set only model.{new}")
        model[new_section] = {new_key: value, **target}
        if not section:
            del model[old_section]
    return model


def _keys_set(section, where: str) -> list[str]:
    """The dotted keys a section sets (the section's own name when it is empty or not a mapping)."""
    return [f"{where}.{k}" for k in section] if isinstance(section, dict) and section else [where]


def family_model_values(model: dict, *, saved: bool = False, where: str = "model") -> dict:
    """A `model` mapping as its family reads it: moved keys at their new place, and other families'
    sections refused (a recipe, an override) or dropped (`saved`: a config or export written by a
    memecap that saved every family's sections, none of which the family ever read)."""
    family = model.get("family", DEFAULT_FAMILY)
    if family not in FAMILY_SECTIONS:
        raise ConfigError(f"{where}.family={family!r}: must be one of {', '.join(FAMILY_SECTIONS)}")
    model = move_keys(model, family, strict=not saved)
    allowed = FAMILY_SECTIONS[family]
    foreign = [k for k in model if k != "family" and k not in allowed and k in _ANY_FAMILYS]
    if saved:
        return {k: v for k, v in model.items() if k not in foreign}
    if foreign:
        keys = [key for k in foreign for key in _keys_set(model[k], f"{where}.{k}")]
        hints = "".join(f"; {FOREIGN_SECTION_HINTS[family, k]}"
                        for k in foreign if (family, k) in FOREIGN_SECTION_HINTS)
        raise ConfigError(f"{', '.join(keys)}: not read by model.family={family} "
                          f"(its settings: {', '.join(f'{where}.{k}' for k in allowed)}){hints}")
    return model
