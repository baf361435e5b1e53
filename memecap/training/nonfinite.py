"""A non-finite loss or gradient norm stops the run (or skips up to `train.max_bad_steps` steps, as
large-model trainers do), and weights holding NaN or inf are never checkpointed or exported.

Clipping does not help: the norm of a NaN gradient is NaN, and clipping by it makes every
weight NaN. Every process takes the same decision: a flag is summed over processes at each
optimizer step, so no process waits forever for one that stopped.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from memecap.training.agreement import agree


class NonFiniteTraining(RuntimeError):
    """The loss, the gradient norm or the weights stopped being finite numbers."""


class BadStepGuard:
    """Watches the losses of the micro-steps of one optimizer step and the gradient norm."""

    def __init__(self, accelerator, max_bad_steps: int):
        self.accelerator = accelerator
        self.max_bad_steps = max_bad_steps
        # DeepSpeed's engine updates the weights inside backward: a bad step cannot be skipped.
        self.can_skip = accelerator.state.deepspeed_plugin is None
        # With fp16 loss scaling an infinite gradient norm is the scaler's business (it skips the step).
        self.watch_grad_norm = accelerator.scaler is None
        self.bad_losses = 0
        self.bad_steps = 0

    def see_loss(self, value: float) -> bool:
        """Record one micro-step's loss; returns whether it is finite."""
        finite = math.isfinite(value)
        self.bad_losses += not finite
        return finite

    def step_is_bad(self, grad_norm: Optional[torch.Tensor]) -> bool:
        """At an optimizer step, after clipping: whether this step must not update the weights.
        Every process gets the same answer."""
        bad = self.bad_losses > 0
        if grad_norm is not None and self.watch_grad_norm:
            bad = bad or not math.isfinite(float(grad_norm))
        self.bad_losses = 0
        if self.accelerator.num_processes > 1:
            flag = torch.tensor([float(bad)], device=self.accelerator.device)
            bad = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        return bad

    def after_bad_step(self, step: int, last_checkpoint: Optional[str]) -> None:
        """Count a skipped step; stop the run once more than `max_bad_steps` were skipped."""
        self.bad_steps += 1
        if self.can_skip and self.bad_steps <= self.max_bad_steps:
            return
        where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
        raise NonFiniteTraining(
            f"optimizer step {step}: the loss or the gradient norm is not finite (NaN or inf)"
            f"{f', {self.bad_steps} bad steps so far' if self.bad_steps > 1 else ''}; the run stops and saves "
            f"nothing more ({where}). Lower optim.lr, check the data, or allow a few skipped steps with "
            f"train.max_bad_steps=N" + ("" if self.can_skip else " (not under DeepSpeed, whose engine has "
                                        "already applied the step)"))


def ensure_finite_weights(accelerator, model, what: str) -> None:
    """Refuse to save weights holding NaN or inf (each process checks its own copy or shard)."""
    net = accelerator.unwrap_model(model)
    bad = next((name for name, p in net.named_parameters()
                if p.requires_grad and p.numel() and not torch.isfinite(p.detach()).all()), None)
    problem = agree(accelerator, f"{what}: the trained weight {bad} holds NaN or inf; nothing was written"
                    if bad else None)
    if problem:
        raise NonFiniteTraining(problem)
