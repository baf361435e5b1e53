"""Dropout switched off for a step (its forward, and the backward that may run parts of the forward
again under gradient checkpointing) while the model stays in training mode.

`model.eval()` would switch it off too, but also what a module does only while training:
transformers' gradient checkpointing among them, which a model that fits only with it needs in
every forward that builds a graph. Setting each dropout module's probability to 0 leaves the rest
as it was. Dropout that a module applies from a float of its own config (some attention
implementations' `attention_dropout`) is not a module and stays: 0 in the decoders memecap ships.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn
from torch.nn.modules.dropout import _DropoutNd


@contextmanager
def without_dropout(model: nn.Module) -> Iterator[None]:
    layers = [m for m in model.modules() if isinstance(m, _DropoutNd) and m.p > 0]
    kept = [m.p for m in layers]
    for layer in layers:
        layer.p = 0.0
    try:
        yield
    finally:
        for layer, p in zip(layers, kept):
            layer.p = p
