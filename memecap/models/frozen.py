"""The one path for a frozen image encoder (ClipCap's CLIP, the LSTM's ResNet, RuDOLPH's VQGAN).

A frozen encoder gives the same output for the same image every epoch, so it runs once per
image through the feature cache (memecap/features.py) and the model trains on what it gave.
`FrozenEncoder` is a plain object, not an `nn.Module`: a model holding one as an attribute does
not register the encoder as a submodule, so its weights stay out of the optimizer, the state
dict, DDP/DeepSpeed wrapping and `model.to(device)`. It visits the accelerator only while it
encodes, then goes back where it was, so it holds no accelerator memory during training.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from memecap.features import FeatureCache, encode_images, module_fingerprint


class FrozenEncoder:
    def __init__(self, module: nn.Module, transform: Callable, variant: str = ""):
        """`transform` turns an image into the encoder's input and has a `signature()`; `variant`
        names what the module returns when the same weights can give different outputs (the
        ResNet's pooled vector or grid), so each output has its own cache entries."""
        self.module = module
        self.transform = transform
        self.variant = variant
        self._fingerprint: Optional[str] = None
        self.last_cache: Optional[FeatureCache] = None  # the cache of the latest `encode` (hit/miss counts)
        # Opened once per folder: opening reads the store's whole index, and a streamed run encodes batch by batch.
        self._caches: dict[str, FeatureCache] = {}

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def fingerprint(self) -> str:
        """Hash of the weights (and the variant), computed once: frozen weights never change."""
        if self._fingerprint is None:
            digest = module_fingerprint(self.module)
            self._fingerprint = f"{digest}|{self.variant}" if self.variant else digest
        return self._fingerprint

    def encode(self, paths: Sequence, *, cache_dir: Optional[str], device, progress: bool,
               desc: str = "encoding images") -> torch.Tensor:
        """Outputs [N, ...] for the images at `paths` (paths or PIL images), cached where `cache_dir` is set."""
        cache = self._cache(cache_dir)
        out = encode_images(self.module, self.transform, paths, cache=cache, device=device, progress=progress,
                            desc=desc, placed=lambda: self._placed(device))
        self.last_cache = cache
        return out

    def _cache(self, cache_dir: Optional[str]) -> Optional[FeatureCache]:
        if not cache_dir:
            return None
        if cache_dir not in self._caches:
            self._caches[cache_dir] = FeatureCache(Path(cache_dir), self.fingerprint(), self.transform.signature())
        cache = self._caches[cache_dir]
        cache.new_pass()
        return cache

    @contextmanager
    def _placed(self, device):
        """The encoder on `device` while it computes (only when something is not in the cache), then back."""
        home = next(self.module.parameters()).device
        self.module.to(device)
        try:
            yield
        finally:
            self.module.to(home)
