"""Each scored position's log-probability of its label through a frozen output projection, a block of
positions at a time, without keeping the [positions, vocabulary] logits for the backward.

At a vocabulary of 150-260k words the logits of a batch's captions are its largest activation: 16
sampled captions of 30 tokens at Gemma 3's 262k words hold 0.5 GB of fp32 logits, and autograd keeps
the log-softmax of them for the backward and builds their gradient there, as large again. A label's
log-probability depends on its own position's hidden state only, and with the projection frozen (LoRA,
a frozen decoder) its gradient there is `W^T (onehot - softmax)`: a hidden-size vector, computed in the
forward from the block's logits while they exist, then scaled in the backward by the gradient that
reaches that log-probability. The multiply-adds are those the backward would have done; the memory is
one block's logits."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_ELEMENTS = 2 ** 24  # logits per block: 64 MiB in fp32, 64 positions at Gemma 3's vocabulary


def block_rows(vocab_size: int) -> int:
    """How many positions one block of the projection holds."""
    return max(1, BLOCK_ELEMENTS // vocab_size)


def frozen_linear(head: nn.Module) -> bool:
    """Whether `head` is a plain linear projection that trains nothing and whose weight is all here: a
    ZeRO-3 partitioned weight (`ds_id`) is gathered only by the module's own call, a PEFT or quantized
    layer computes more than `x W^T + b`."""
    if type(head) is not nn.Linear or hasattr(head.weight, "ds_id"):
        return False
    return not any(p.requires_grad for p in head.parameters())


class _LabelLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                labels: torch.Tensor, rows: int) -> torch.Tensor:
        wants_grad = ctx.needs_input_grad[0]
        n = hidden.shape[0]
        log_probs = torch.empty(n, dtype=torch.float32, device=hidden.device)
        directions = torch.empty_like(hidden) if wants_grad else None
        # One block's buffers, written in place by every block: a fresh 64 MiB tensor per block is
        # memory the allocator maps and the kernel zeroes anew each time.
        width = min(rows, n)
        product = hidden.new_empty(width, weight.shape[0])
        logits = product if product.dtype == torch.float32 else product.new_empty(product.shape, dtype=torch.float32)
        for start in range(0, n, rows):
            block = slice(start, start + rows)
            size = min(rows, n - start)
            torch.matmul(hidden[block], weight.t(), out=product[:size])
            block_logits = logits[:size]
            if block_logits is not product[:size]:
                block_logits.copy_(product[:size])
            if bias is not None:
                block_logits.add_(bias)
            picked = labels[block].unsqueeze(1)
            block_logits.sub_(block_logits.amax(dim=1, keepdim=True))
            label_logit = block_logits.gather(1, picked).squeeze(1)
            total = block_logits.exp_().sum(dim=1)  # the logits are exp(logit - max) from here on
            log_probs[block] = label_logit - total.log()
            if wants_grad:
                # d log p(label) / d logits = onehot(label) - softmax.
                grad_logits = block_logits.div_(total.unsqueeze(1)).neg_().scatter_add_(
                    1, picked, torch.ones_like(picked, dtype=block_logits.dtype))
                directions[block] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(directions)
        return log_probs

    @staticmethod
    def backward(ctx, grad_log_probs: torch.Tensor):
        (directions,) = ctx.saved_tensors
        grad_hidden = None
        if directions is not None:
            grad_hidden = (grad_log_probs.unsqueeze(1) * directions.float()).to(directions.dtype)
        return grad_hidden, None, None, None, None


def label_log_probs(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module,
                    rows: Optional[int] = None) -> torch.Tensor:
    """log p(labels[i] | hidden[i]) in fp32 for hidden [positions, width] and labels [positions]. Through a
    frozen plain projection this takes `rows` positions at a time (default: `block_rows`) and keeps no
    logits; through any other head its own call, all positions at once, with autograd's usual memory."""
    if not frozen_linear(head):
        return -F.cross_entropy(head(hidden).float(), labels, reduction="none")
    rows = rows or block_rows(head.weight.shape[0])
    return _LabelLogProbs.apply(hidden, head.weight, head.bias, labels, rows)
