"""One detected text line as Tesseract reads it best: cut out along its box (which also
straightens a slanted line), scaled to a good text height, dark text on a light background."""
from __future__ import annotations

import numpy as np
from PIL import Image

LINE_HEIGHT = 48  # pixels of a line crop's height after scaling: Tesseract's LSTM reads best at ~30-50 px glyphs
MARGIN = 8  # white pixels around the crop: Tesseract misreads letters touching the edge


WHITE_LEVEL = 200  # darkest channel value of a "white" letter pixel (as engines.TesseractEngine)
WHITE_SPREAD = 40  # largest channel spread of a "white" letter pixel (unsaturated)


def crop_line(gray: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """The line inside `quad` of a grayscale or RGB image, warped to an upright rectangle LINE_HEIGHT tall."""
    import cv2

    tl, tr, br, bl = quad.astype(np.float32)
    width = max(np.linalg.norm(tr - tl), np.linalg.norm(br - bl))
    height = max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr))
    if width < 2 or height < 2:
        return np.zeros((0, 0), np.uint8)
    scale = LINE_HEIGHT / height
    w, h = max(int(round(width * scale)), 1), LINE_HEIGHT
    target = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    matrix = cv2.getPerspectiveTransform(np.stack([tl, tr, br, bl]), target)
    return cv2.warpPerspective(gray, matrix, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def white_mask(rgb_line: np.ndarray) -> np.ndarray:
    """The white, unsaturated pixels of an RGB crop drawn black on white: the classic meme caption
    (white letters, dark outline) over a busy picture, which neither polarity of the gray crop
    separates from the picture."""
    rgb = rgb_line.astype(np.int16)
    white = (rgb.min(axis=2) >= WHITE_LEVEL) & (np.ptp(rgb, axis=2) < WHITE_SPREAD)
    return np.where(white, 0, 255).astype(np.uint8)


def dark_on_light(line: np.ndarray) -> np.ndarray:
    """The crop with its text dark: a crop whose background (its border pixels, where the box's
    padding leaves no letters) is darker than its middle is inverted."""
    border = np.concatenate([line[0], line[-1], line[:, 0], line[:, -1]]).astype(np.float32)
    if np.median(border) < line.mean():
        return 255 - line
    return line


def for_tesseract(line: np.ndarray) -> Image.Image:
    """The crop as Tesseract is handed it: with a margin of its background's shade."""
    padded = np.pad(line, MARGIN, mode="constant", constant_values=int(np.percentile(line, 90)))
    return Image.fromarray(padded)
