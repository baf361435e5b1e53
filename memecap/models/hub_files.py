"""One file of a pretrained model: from a local folder, or downloaded (and cached) from the Hub."""
from __future__ import annotations

import os
from typing import Optional

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError


def resolve_file(name: str, filename: str, revision: Optional[str] = None, what: str = "model") -> str:
    """Path of `filename` in the folder `name`, else in the Hub repo `name` at `revision`.
    Raises FileNotFoundError naming the folder/repo and the file when it is absent."""
    if os.path.isdir(name):
        path = os.path.join(name, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} folder {name!r} has no {filename!r}")
        return path
    try:
        return hf_hub_download(name, filename, revision=revision)
    except (EntryNotFoundError, RemoteEntryNotFoundError) as err:
        raise FileNotFoundError(f"{what} repo {name!r} (revision {revision or 'main'}) has no {filename!r}") from err
