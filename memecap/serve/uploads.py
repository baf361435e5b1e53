"""A request's image: an uploaded body or, where the server allows it, a local file by path.
Every refusal is an `ImageRefused` with the HTTP status and a sentence the client can act on."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

from PIL import Image

from memecap.data.images import ImageReadError, load_rgb, stored_size


class ImageRefused(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def image_from_body(body: bytes, *, max_pixels: int) -> Image.Image:
    """The uploaded bytes as RGB. They go through the same reader as a training image (EXIF
    orientation, transparency over white, bounded decoding), which reads files: a private
    temporary file holds them for the moment it takes."""
    if not body:
        raise ImageRefused(400, "the request has no body: send the image's bytes "
                                "(curl --data-binary @meme.jpg -H 'Content-Type: image/jpeg' ...)")
    fd, tmp = tempfile.mkstemp(prefix="memecap-upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        return _read(Path(tmp), max_pixels=max_pixels, name="the uploaded file")
    finally:
        os.unlink(tmp)


def image_from_path(path: str, *, allowed: Optional[Path], max_pixels: int) -> Image.Image:
    """A file inside the `--allow-files` folder (links followed, then checked to stay inside)."""
    if allowed is None:
        raise ImageRefused(403, "this server takes uploads only (start it with --allow-files DIR to caption "
                                "files by path)")
    root = Path(allowed).resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root):
        raise ImageRefused(403, f"{path}: outside the folder this server may read")
    if not target.is_file():
        raise ImageRefused(404, f"{path}: no such file in the folder this server may read")
    return _read(target, max_pixels=max_pixels, name=path)


def _read(path: Path, *, max_pixels: int, name: str) -> Image.Image:
    try:
        width, height = stored_size(path)  # the header alone: a huge image is refused before decoding
        if width * height > max_pixels:
            raise ImageRefused(413, f"{name}: {width} x {height} pixels is more than this server takes "
                                    f"({max_pixels:,} pixels): downscale it")
        return load_rgb(path)
    except ImageReadError as err:
        # A temporary name means nothing to the client.
        reason = err.reason.replace(f"'{path}'", "it").replace(str(path), "it")
        raise ImageRefused(415, f"{name} is not an image memecap can read ({reason})") from None
