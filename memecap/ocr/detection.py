"""Text line detection: PP-OCR's detector (the ONNX model inside the `rapidocr` wheel, run with
`onnxruntime`), which finds line boxes on photos, in speech bubbles and in comic panels where a
whole-page Tesseract reading finds nothing. Nothing is downloaded: the model ships in the wheel."""
from __future__ import annotations

import numpy as np

RAPIDOCR_INSTALL = "pip install 'rapidocr==3.10.0' 'onnxruntime==1.31.1'"


class LineDetector:
    """Quadrilaterals of the text lines of an RGB image, each [4, 2] (x, y), clockwise from top left."""

    # the detector sees the image with its longer side at most this (smaller: faster, misses small print)
    LIMIT_SIDE = 960
    BOX_THRESHOLD = 0.5  # mean text probability inside a box to keep it

    def __init__(self):
        self._engine = None

    @staticmethod
    def version() -> str:
        from importlib.metadata import version

        # The wheel's version names the model it ships; the settings change the boxes.
        return (f"rapidocr-{version('rapidocr')}|onnxruntime-{version('onnxruntime')}|"
                f"side={LineDetector.LIMIT_SIDE}|box={LineDetector.BOX_THRESHOLD}")

    def _load(self):
        if self._engine is None:
            from rapidocr import RapidOCR

            # One thread: the OCR pool runs one process per core already.
            self._engine = RapidOCR(params={
                "Global.use_rec": False, "Global.use_cls": False, "Global.log_level": "critical",
                "Det.limit_type": "max", "Det.limit_side_len": self.LIMIT_SIDE, "Det.box_thresh": self.BOX_THRESHOLD,
                "EngineConfig.onnxruntime.intra_op_num_threads": 1,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1})
        return self._engine

    def boxes(self, rgb: np.ndarray) -> list[np.ndarray]:
        out = self._load()(rgb, use_det=True, use_cls=False, use_rec=False)
        if out.boxes is None:
            return []
        return [np.asarray(b, dtype=np.float32) for b in out.boxes]
