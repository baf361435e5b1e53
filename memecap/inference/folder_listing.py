"""The files of a folder to caption, with what could not be followed said rather than dropped.

Symbolic links are followed, to files and to folders. A link that points nowhere (its target is
missing, or it leads back to itself: a loop), a link to a folder that contains it (following it
would never end), and a folder that cannot be listed are returned as skipped, with the reason, so
the command names them instead of captioning fewer images in silence.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

LOOP = "a symbolic link loop"


def list_files(target: Path) -> tuple[Path, list[str], list[tuple[str, str]]]:
    """(root, files, skipped): file paths relative to root (hidden files left out), and
    (relative path, reason) for each link or folder that could not be followed; both sorted."""
    target = Path(target)
    if target.is_file():
        return target.parent, [target.name], []
    if target.is_dir():
        files: list[str] = []
        skipped: list[tuple[str, str]] = []
        _walk(target, "", frozenset({_identity(os.stat(target))}), files, skipped)
        return target, sorted(files), sorted(skipped)
    if target.is_symlink():
        raise FileNotFoundError(f"{target}: {_broken_link(target)}")
    raise FileNotFoundError(f"{target}: no such image or folder")


def _walk(folder: Path, prefix: str, above: frozenset, files: list, skipped: list) -> None:
    """Collect `folder`'s files; `above` holds the identities of the folders on the way down."""
    try:
        entries = list(os.scandir(folder))
    except OSError as err:
        skipped.append((prefix.rstrip("/") or ".", f"a folder that cannot be listed ({err.strerror or err})"))
        return
    for entry in entries:
        rel = prefix + entry.name
        try:
            info = os.stat(entry.path)  # follows links
        except OSError as err:
            if not entry.name.startswith("."):  # hidden: an editor's lock link (.#name) points nowhere by design
                skipped.append((rel, _broken_link(Path(entry.path), err) if entry.is_symlink() else str(err)))
            continue
        if stat.S_ISDIR(info.st_mode):
            if _identity(info) in above:
                skipped.append((rel, f"{LOOP} (-> {os.readlink(entry.path)}: a folder that contains it)"
                                if entry.is_symlink() else LOOP))
            else:
                _walk(Path(entry.path), rel + "/", above | {_identity(info)}, files, skipped)
        elif stat.S_ISREG(info.st_mode) and not entry.name.startswith("."):
            files.append(rel)


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _broken_link(path: Path, err: OSError | None = None) -> str:
    if err is None:
        try:
            os.stat(path)
            return "no such image or folder"
        except OSError as found:
            err = found
    if err.errno == errno.ELOOP:
        return f"{LOOP} (-> {os.readlink(path)})"
    if err.errno == errno.ENOENT:
        return f"a broken symbolic link (-> {os.readlink(path)}: no such file)"
    return f"a symbolic link that cannot be followed (-> {os.readlink(path)}: {err.strerror or err})"
