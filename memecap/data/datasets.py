"""The datasets the loop and inference read, whatever the family: captions paired with their
image's inputs (features or pixels), images with their index, and pixels read on demand."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from memecap.data.images import ImageTransform, read_image


class CaptionTrainSet(Dataset):
    """One item per (image, reference caption): image features or pixels, caption token ids."""

    def __init__(self, images, token_ids: list[list[int]], owners: list[int]):
        self.images, self.token_ids, self.owners = images, token_ids, owners

    def __len__(self) -> int:
        return len(self.token_ids)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[self.owners[i]], "input_ids": self.token_ids[i]}


class CaptionEvalSet(Dataset):
    """One item per image, carrying its index so gathered predictions find their references."""

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "index": i}


class LazyPixels:
    """Pixels loaded when an item is read: used when the encoder trains and cannot be cached."""

    def __init__(self, sources: Sequence, transform: ImageTransform):
        self.sources, self.transform = list(sources), transform

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(read_image(self.sources[i]))
