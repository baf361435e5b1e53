"""models/vocab_log_probs.py: through a frozen projection the labels' log-probabilities and their
gradients are those of the full logits' log-softmax, block by block, and the backward keeps no logits."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn

from memecap.models.memory_plan import LOSS_PEAK_BYTES
from memecap.models.vocab_log_probs import block_rows, frozen_linear, label_log_probs

VOCAB, WIDTH, POSITIONS = 50, 8, 10


def frozen_head(bias: bool = True, dtype=torch.float32) -> nn.Linear:
    torch.manual_seed(0)
    head = nn.Linear(WIDTH, VOCAB, bias=bias).to(dtype)
    head.requires_grad_(False)
    return head


def reference(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module) -> torch.Tensor:
    return -F.cross_entropy(head(hidden).float(), labels, reduction="none")


@pytest.mark.parametrize("rows", [1, 3, 64])  # a block per position, a partial last block, one block
@pytest.mark.parametrize("bias", [True, False])
def test_log_probs_and_gradients_equal_the_full_log_softmax(rows, bias):
    head = frozen_head(bias)
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(POSITIONS, WIDTH, generator=generator)
    labels = torch.randint(0, VOCAB, (POSITIONS,), generator=generator)
    weights = torch.randn(POSITIONS, generator=generator)  # advantages of either sign, as scst gives

    ours_in, ref_in = hidden.clone().requires_grad_(True), hidden.clone().requires_grad_(True)
    ours, ref = label_log_probs(ours_in, labels, head, rows=rows), reference(ref_in, labels, head)
    (weights * ours).sum().backward()
    (weights * ref).sum().backward()
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-6)
    assert ours_in.grad.abs().sum() > 0


def test_bf16_hidden_and_weights_match_the_full_path():
    head = frozen_head(dtype=torch.bfloat16)
    hidden = torch.randn(POSITIONS, WIDTH).to(torch.bfloat16)
    labels = torch.randint(0, VOCAB, (POSITIONS,))
    ours_in, ref_in = hidden.clone().requires_grad_(True), hidden.clone().requires_grad_(True)
    label_log_probs(ours_in, labels, head, rows=4).sum().backward()
    reference(ref_in, labels, head).sum().backward()
    assert ours_in.grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours_in.grad.float(), ref_in.grad.float(), rtol=2e-2, atol=2e-2)


def saved_sizes(fn) -> list[int]:
    """The element count of every tensor autograd saves for the backward while `fn` runs."""
    sizes: list[int] = []

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sizes


def test_the_backward_keeps_a_vector_per_position_not_the_logits():
    head = frozen_head()
    hidden = torch.randn(POSITIONS, WIDTH, requires_grad=True)
    labels = torch.randint(0, VOCAB, (POSITIONS,))
    ours = saved_sizes(lambda: label_log_probs(hidden, labels, head, rows=3))
    full = saved_sizes(lambda: reference(hidden, labels, head))
    assert max(ours) == POSITIONS * WIDTH
    assert max(full) >= POSITIONS * VOCAB  # what the plain path keeps, so the check above can fail


def test_without_a_gradient_nothing_is_kept_and_the_values_agree():
    head = frozen_head()
    hidden = torch.randn(POSITIONS, WIDTH)
    labels = torch.randint(0, VOCAB, (POSITIONS,))
    with torch.no_grad():
        ours = label_log_probs(hidden, labels, head, rows=3)
    torch.testing.assert_close(ours, reference(hidden, labels, head), rtol=1e-5, atol=1e-5)
    assert not ours.requires_grad


def test_only_a_frozen_plain_projection_takes_the_blocks():
    head = frozen_head()
    assert frozen_linear(head)
    trainable = nn.Linear(WIDTH, VOCAB)
    assert not frozen_linear(trainable)  # its weight's gradient needs the logits: the usual path
    partitioned = frozen_head()
    partitioned.weight.ds_id = 7  # ZeRO-3: the weight is a shard until the module's own call gathers it
    assert not frozen_linear(partitioned)
    wrapped = get_peft_model(nn.Sequential(frozen_head()), LoraConfig(r=2, target_modules=["0"]))
    assert not frozen_linear(wrapped.base_model.model[0])  # LoRA on the head computes more than x W^T + b


def test_a_trainable_head_still_gets_its_gradient():
    head = nn.Linear(WIDTH, VOCAB)
    hidden = torch.randn(POSITIONS, WIDTH)
    labels = torch.randint(0, VOCAB, (POSITIONS,))
    label_log_probs(hidden, labels, head, rows=3).sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_a_block_holds_about_sixteen_million_logits():
    assert block_rows(262_144) == 64
    assert block_rows(10 ** 9) == 1


BLOCK_PEAK = """
import sys, torch
from memecap.models.vocab_log_probs import block_rows, label_log_probs
positions, vocab, width = 2048, 50264, 64
head = torch.nn.Linear(width, vocab, bias=False).requires_grad_(False)
hidden = torch.randn(positions, width, requires_grad=True)
labels = torch.randint(0, vocab, (positions,))
label_log_probs(hidden[:2], labels[:2], head).sum().backward()  # autograd's one-off set-up
def resident(): return int(open("/proc/self/statm").read().split()[1]) * 4096
before = resident()
open("/proc/self/clear_refs", "w").write("5")  # the high-water mark starts again from here
label_log_probs(hidden, labels, head).sum().backward()
peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
print(peak - before, block_rows(vocab) * vocab, positions * width * 4, positions * vocab)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak from /proc")
def test_the_measured_peak_is_one_block_as_the_plan_counts():
    """2048 positions of a 50k vocabulary: the forward and backward's resident peak is what the plan
    counts (one block's logits at LOSS_PEAK_BYTES each, and the vectors), far below the full logits."""
    out = subprocess.run([sys.executable, "-c", BLOCK_PEAK], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""} | {k: v for k, v in os.environ.items()
                                                                     if k in ("PYTHONPATH", "HOME")})
    peak, block_logits, vectors, all_logits = map(int, out.stdout.split())
    planned = block_logits * LOSS_PEAK_BYTES + vectors
    assert peak <= planned * 1.1, (peak, planned)
    assert peak < all_logits * LOSS_PEAK_BYTES / 4
