"""Reading meme images as RGB and turning them into normalised tensors."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps

RESIZE_MODES = ("pad", "crop", "squash")


class ImageReadError(ValueError):
    """An image file is missing, unreadable or not an image."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {path}: {reason}")

    def __reduce__(self):  # raised in an OCR worker process, it comes back to the parent whole
        return type(self), (self.path, self.reason)


# Decoded images are bounded: a 12000 x 12000 meme would take 430 MB as RGB (and Pillow's
# bomb warning) for a model that reads 224-384 px and OCR that reads 40 px letters. JPEGs are
# decoded at a reduced scale directly (libjpeg's DCT scaling: 1/2, 1/4, 1/8); other formats
# must be decoded whole first, so above FULL_DECODE_PIXELS they are refused.
MAX_SIDE = 4096
FULL_DECODE_PIXELS = 64_000_000
REDUCED_FROM = "memecap_reduced_from"  # key in `img.info`: the original (width, height)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file, apply its EXIF orientation and return it as RGB, at most `MAX_SIDE`
    pixels on a side (a reduced image carries its original size in `info[REDUCED_FROM]`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is bounded below
            with Image.open(path) as img:
                size = img.size
                _bound_decode(img)
                img.load()  # decode now, so truncated files fail here and not mid-training
                rgb = to_rgb(_oriented(img))
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(path, f"{type(e).__name__}: {e}") from None
    if max(rgb.size) > MAX_SIDE:  # not a JPEG, or beyond libjpeg's 1/8
        rgb.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    if max(size) > MAX_SIDE:
        rgb.info[REDUCED_FROM] = size
    return rgb


def stored_size(path: str | os.PathLike) -> tuple[int, int]:
    """An image file's (width, height) from its header, nothing decoded: a cheap first check
    (a missing file, or one that is not an image, fails here as in `load_rgb`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.size
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(path, f"{type(e).__name__}: {e}") from None


def _bound_decode(img: Image.Image) -> None:
    w, h = img.size
    if max(w, h) <= MAX_SIDE:
        return
    if img.format == "JPEG":
        # draft() picks the strongest reduction that stays at or above the size asked for; asking
        # for half of MAX_SIDE lands the longest side in [MAX_SIDE / 2, MAX_SIDE).
        scale = MAX_SIDE / 2 / max(w, h)
        img.draft(img.mode, (max(1, int(w * scale)), max(1, int(h * scale))))
    elif w * h > FULL_DECODE_PIXELS:
        raise ValueError(f"{w} x {h} pixels is too large to decode ({FULL_DECODE_PIXELS // 1_000_000} Mpx at most "
                         f"for {img.format or 'this format'}; JPEGs of any size are read reduced): downscale it")


def read_image(source: "str | os.PathLike | Image.Image") -> Image.Image:
    """An image file (see `load_rgb`) or an in-memory PIL image, as RGB."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    return load_rgb(source)


def _oriented(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not make the pixels unreadable
        return img.copy()


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited over white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if (mode == "P" and "transparency" in img.info) or mode in ("PA", "La"):
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "RGBa", "LA"):
        # Memes with transparent backgrounds are drawn for light pages; over black their
        # (usually black) text would vanish.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode.startswith("I") or mode == "F":
        return _wide_gray_to_rgb(img)
    return img.convert("RGB")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    # Pillow decodes every CMYK JPEG with Adobe's inverted polarity; files without the
    # Adobe APP14 marker store plain CMYK, so undo the inversion for those.
    if img.format == "JPEG" and "adobe" not in img.info:
        img = Image.merge("CMYK", [ImageOps.invert(c) for c in img.split()])
    icc = img.info.get("icc_profile")
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: the naive conversion below is still a usable picture
    return img.convert("RGB")


def _wide_gray_to_rgb(img: Image.Image) -> Image.Image:
    # Pillow's own I/F -> L conversion clips at 255, which turns 16-bit scans white.
    a = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        a = a / 257.0
    elif img.mode == "F" and a.size and a.min() >= 0.0 and a.max() <= 1.0:
        a = a * 255.0
    elif a.size and a.max() > 255.0:
        lo, hi = a.min(), a.max()
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    gray = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    return gray.convert("RGB")


class ImageTransform:
    """Deterministic resize + normalise to a `[3, size, size]` float tensor.

    `pad` keeps the whole meme (its text included) by letterboxing onto the mean colour,
    `crop` resizes the short side and centre-crops like CLIP, `squash` ignores aspect ratio.
    There is no flip or random crop on purpose: flipping mirrors the meme's text.
    """

    VERSION = 1  # bump when the pixels this produces change, so feature caches are rebuilt

    def __init__(
        self,
        size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        resize_mode: str = "pad",
    ):
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.resize_mode = resize_mode
        self._mean_t = torch.tensor(self.mean).view(3, 1, 1)
        self._std_t = torch.tensor(self.std).view(3, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = to_rgb(img)
        w, h = img.size
        s = self.size
        if self.resize_mode == "squash":
            return self._normalise(img.resize((s, s), Image.Resampling.BICUBIC))
        if self.resize_mode == "crop":
            scale = s / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - s) // 2, (nh - s) // 2
            return self._normalise(img.crop((left, top, left + s, top + s)))
        scale = s / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        inner = self._normalise(img.resize((nw, nh), Image.Resampling.BICUBIC))
        # The mean colour normalises to exactly 0, so letterboxing in tensor space is exact.
        out = torch.zeros(3, s, s)
        left, top = (s - nw) // 2, (s - nh) // 2
        out[:, top : top + nh, left : left + nw] = inner
        return out

    def _normalise(self, img: Image.Image) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        return (x - self._mean_t) / self._std_t

    def signature(self) -> str:
        """A stable string of every setting that changes the output, for cache keys."""
        mean = ",".join(f"{m:.6g}" for m in self.mean)
        std = ",".join(f"{v:.6g}" for v in self.std)
        return (
            f"ImageTransform-v{self.VERSION}(size={self.size},mode={self.resize_mode},"
            f"resample=bicubic,mean=({mean}),std=({std}))"
        )

    def __repr__(self) -> str:
        return self.signature()
