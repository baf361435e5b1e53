"""A full disk or a folder memecap may not write, said in one line that names the setting to
change, instead of a traceback from deep inside a save. Commands pass the places they write to
(`{"train.output_dir": "runs/x", "cache.dir": ...}`); anything not recognised is re-raised as is."""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

# safetensors and torch.save report a full disk in their own exception types, without an errno.
NO_SPACE_TEXT = re.compile(r"No space left on device|os error 28|Disk quota exceeded")
# torch.save's words for a failed write: its zip writer checks each write ("file write failed"), or
# its stream fails ("basic_ios::clear: iostream error") and closing the archive then finds the file
# shorter than written ("[enforce fail at inline_container.cc:672] . unexpected pos 3531328 vs 3531216").
WRITE_FAILED_TEXT = re.compile(r"file write failed|failed writing file|iostream error|unexpected pos \d+ vs \d+")
NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}
HINTS = {"cache.dir": ", or set cache.enabled=false"}
LOW_SPACE = 64 * 2**20  # bytes free below which a bare "file write failed" is taken for a full disk


def probe_writable(places: dict[str, Optional[str]]) -> None:
    """Create each folder and a file in it, so a folder that cannot be written fails in the
    first second (as an OSError that `explain` names) rather than after the data and models load."""
    for folder in places.values():
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".memecap-write-probe-")
            os.close(fd)
            os.unlink(probe)


def explain(err: BaseException, places: dict[str, Optional[str]]) -> Optional[str]:
    """One line for a known disk failure, or None. A full disk may also be the cause of the error
    that reached the command (a write fails, then closing the file raises another error about it)."""
    places = {k: v for k, v in places.items() if v}
    seen, first = set(), True
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        message = _explain_one(err, places, space_only=not first)
        if message:
            return message
        err, first = err.__cause__ or err.__context__, False
    return None


def _explain_one(err: BaseException, places: dict[str, str], space_only: bool) -> Optional[str]:
    code = getattr(err, "errno", None)
    text = str(err)
    filename = getattr(err, "filename", None)
    setting = _setting_of(filename, places) if filename else None
    if code in (errno.ENOSPC, errno.EDQUOT) or NO_SPACE_TEXT.search(text) or (
            WRITE_FAILED_TEXT.search(text) and any(_free(p) < LOW_SPACE for p in places.values())):
        where = f" while writing {filename}" if filename else ""
        full = [k for k, v in places.items() if _free(v) < LOW_SPACE]
        setting = setting or (full[0] if len(full) == 1 else None)  # the write's own error may not say where
        if setting:
            return (f"no space left on device{where} in {setting}={places[setting]} ({_size(_free(places[setting]))} "
                    f"free): free space there, or point {setting} at another disk{HINTS.get(setting, '')}")
        free = ", ".join(f"{k}={v} ({_size(_free(v))} free)" for k, v in places.items())
        return f"no space left on device{where}: free space, or point one of these at another disk: {free}"
    if isinstance(err, OSError) and code in NOT_WRITABLE and filename and not space_only:
        # mkdir under a file says "Not a directory" or "File exists", neither of which says what to fix.
        reason = ("a file stands where a folder is needed" if code in (errno.ENOTDIR, errno.EEXIST)
                  else err.strerror or text)
        if setting:
            return (f"cannot write {filename}: {reason}; {setting} is {places[setting]}: "
                    f"change {setting} to a folder you can write{HINTS.get(setting, '')}")
        return f"{filename}: {reason}"  # not a place this command writes: perhaps a file it reads
    return None


def _setting_of(filename, places: dict[str, str]) -> Optional[str]:
    target = os.path.abspath(os.fsdecode(filename))
    for setting, folder in places.items():
        folder = os.path.abspath(folder)
        if target == folder or target.startswith(folder.rstrip(os.sep) + os.sep) or folder.startswith(target + os.sep):
            return setting  # inside it, or one of its parents that had to be created
    return None


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _free(folder: str) -> int:
    path = Path(os.path.abspath(folder))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0
