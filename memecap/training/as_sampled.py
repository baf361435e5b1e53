"""A step's forward (and the backward that may run parts of the forward again under gradient
checkpointing) made to compute what sampling computed, while the model stays in training mode.

scst samples its captions with the model in eval mode, then scores them with the training forward;
the log-probability it pushes up must be that of the policy that chose them. What differs between
the two modes is dropout and batch norm (batch statistics, and their running averages updated,
where sampling used the running averages): the LSTM baseline's projection is batch-normed. So
every dropout probability is set to 0 (torch's recurrent layers, `nn.LSTM(dropout=...)` between
the baseline's layers, hold theirs in an attribute, not a module) and every batch norm runs as in
eval mode; everything else stays in training mode.

`model.eval()` would do both, but also switch off what a module does only while training:
transformers' gradient checkpointing among them, which a model that fits only with it needs in
every forward that builds a graph. Dropout that a module applies from a float of its own config
(some attention implementations' `attention_dropout`) is not a module and stays: 0 in the
decoders memecap ships.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd


@contextmanager
def as_sampled(model: nn.Module) -> Iterator[None]:
    # (module, the attribute holding its dropout probability)
    drops = [(m, "p") for m in model.modules() if isinstance(m, _DropoutNd) and m.p > 0]
    drops += [(m, "dropout") for m in model.modules() if isinstance(m, nn.RNNBase) and m.dropout > 0]
    kept = [getattr(m, name) for m, name in drops]
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training]
    for m, name in drops:
        setattr(m, name, 0.0)
    for norm in norms:
        norm.train(False)  # a batch norm has no children: only itself changes
    try:
        yield
    finally:
        for (m, name), p in zip(drops, kept):
            setattr(m, name, p)
        for norm in norms:
            norm.train(True)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """`model.eval()` for a while, then every module's own mode back: `model.train(was_training)`
    would put back one mode for all, undoing `as_sampled`'s batch norms in eval mode inside a
    training model (scst samples and computes its KL reference in eval mode within a step)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
