"""Reading order of detected lines as a person reads a meme: rows top to bottom, and within a row
of side-by-side columns or panels, each one whole, left to right (a recursive XY cut).

The set of boxes is cut at its widest empty band: a horizontal band (nothing crosses it from left
to right) separates rows or stacked panels, a vertical band separates columns or side-by-side
panels. A horizontal cut wins unless the vertical band is clearly wider, so a grid of panels
reads row by row; the lines of two columns are read column by column because the gap between
the columns is wider than the gap between lines."""
from __future__ import annotations

from typing import Sequence

import numpy as np

VERTICAL_PREFERENCE = 1.5  # a vertical band must be this many times wider than the horizontal one to cut first
MIN_GAP = 0.25  # of the median line height: narrower bands are not gaps (touching boxes of one line)


def rectangles(quads: Sequence[np.ndarray]) -> np.ndarray:
    """[N, 4] (x0, y0, x1, y1) around each quadrilateral."""
    if not len(quads):
        return np.zeros((0, 4), np.float32)
    pts = np.asarray(quads, dtype=np.float32)
    return np.concatenate([pts.min(axis=1), pts.max(axis=1)], axis=1)


def _widest_gap(lo: np.ndarray, hi: np.ndarray) -> tuple[float, float]:
    """(width, position) of the widest empty band between intervals [lo, hi] on one axis."""
    order = np.argsort(lo)
    reach, best, where = hi[order[0]], 0.0, 0.0
    for i in order[1:]:
        if lo[i] - reach > best:
            best, where = lo[i] - reach, (lo[i] + reach) / 2
        reach = max(reach, hi[i])
    return best, where


def reading_order(quads: Sequence[np.ndarray]) -> list[int]:
    """Indices of `quads` in reading order."""
    rects = rectangles(quads)
    if len(rects) == 0:
        return []
    line_height = float(np.median(rects[:, 3] - rects[:, 1])) or 1.0
    return _order(rects, np.arange(len(rects)), line_height * MIN_GAP)


def _order(rects: np.ndarray, idx: np.ndarray, min_gap: float) -> list[int]:
    if len(idx) == 1:
        return [int(idx[0])]
    r = rects[idx]
    h_gap, h_at = _widest_gap(r[:, 1], r[:, 3])  # an empty horizontal band: rows
    v_gap, v_at = _widest_gap(r[:, 0], r[:, 2])  # an empty vertical band: columns
    if h_gap >= min_gap and not v_gap > VERTICAL_PREFERENCE * h_gap:
        first = (r[:, 1] + r[:, 3]) / 2 < h_at
    elif v_gap >= min_gap:
        first = (r[:, 0] + r[:, 2]) / 2 < v_at
    else:  # overlapping boxes with no gap either way: top to bottom, then left to right
        return [int(i) for i in idx[np.lexsort((r[:, 0], r[:, 1]))]]
    return _order(rects, idx[first], min_gap) + _order(rects, idx[~first], min_gap)
