"""The datasets the loop and inference read, whatever the family: captions paired with their
image's inputs (features or pixels), images with their index, and pixels read on demand."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from memecap.data.images import ImageReadError, ImageTransform, read_image


class CaptionTrainSet(Dataset):
    """One item per (image, reference caption): image features or pixels, caption token ids, and the
    index of its example (`owner`). With `late_errors`, an image that cannot be read now (lazy pixels)
    gives an item carrying the error instead, for the loader's collate to name its row
    (training/image_reads.RowCollate); without, the error is raised."""

    def __init__(self, images, token_ids: list[list[int]], owners: list[int], late_errors: bool = False):
        self.images, self.token_ids, self.owners, self.late_errors = images, token_ids, owners, late_errors

    def __len__(self) -> int:
        return len(self.token_ids)

    def __getitem__(self, i: int) -> dict:
        owner = self.owners[i]
        try:
            return {"image": self.images[owner], "input_ids": self.token_ids[i], "owner": owner}
        except ImageReadError as err:
            if not self.late_errors:
                raise
            return {"unreadable": err, "owner": owner}


class CaptionEvalSet(Dataset):
    """One item per image, carrying its index so gathered predictions find their references (and
    `late_errors` as in CaptionTrainSet)."""

    def __init__(self, images, late_errors: bool = False):
        self.images, self.late_errors = images, late_errors

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        try:
            return {"image": self.images[i], "index": i}
        except ImageReadError as err:
            if not self.late_errors:
                raise
            return {"unreadable": err, "index": i}


class LazyPixels:
    """Pixels loaded when an item is read: used when the encoder trains and cannot be cached."""

    def __init__(self, sources: Sequence, transform: ImageTransform):
        self.sources, self.transform = list(sources), transform

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(read_image(self.sources[i]))
