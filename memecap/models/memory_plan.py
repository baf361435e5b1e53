"""The shape of a memory estimate: rows of (what, bytes, where), shared by every family's planner."""
from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024 ** 3
OPTIMIZER_BYTES = {"8bit": 2, "32bit": 8}  # Adam moments per trainable parameter
# Bytes per logit at the caption loss's peak, whatever the logits' dtype: in its backward, the fp32
# log-softmax output, its gradient and the logits' fp32 gradient (the logits themselves are freed
# once the forward returns the loss). Measured on memecap's loss: 12.0-13.9 (tests/test_plan.py).
LOSS_PEAK_BYTES = 13


def sixteen_bit(precision: str, act_bytes: int) -> bool:
    """Whether a run with `train.mixed_precision=precision` trains in bf16/fp16 (`auto`: as the
    planner resolved its activations' width)."""
    return precision in ("bf16", "fp16") or (precision == "auto" and act_bytes == 2)


@dataclass
class Plan:
    rows: list = field(default_factory=list)  # (what, bytes, where)
    trainable: int = 0  # parameters that receive gradients
    notes: list = field(default_factory=list)

    def add(self, what: str, nbytes: float, where: str = "accelerator") -> None:
        self.rows.append((what, float(nbytes), where))

    def add_training_state(self, trainable: int, *, optimizer: str, processes: int, zero_stage: int,
                           offload_optimizer: bool, where_params: str, detail: str = "",
                           half_precision: bool = False) -> None:
        """The rows every trained parameter costs: its fp32 weight, gradient and optimizer states,
        sharded by ZeRO (weights at stage 3, gradients from 2, optimizer states from 1).
        `half_precision`: the run's mixed precision is bf16 or fp16."""
        self.trainable = trainable
        shard = processes if zero_stage == 3 else 1
        # ZeRO-Offload moves the fp32 gradients to CPU RAM with the optimizer (a bucket stays behind).
        offloaded = "CPU" if offload_optimizer and zero_stage else "accelerator"
        if zero_stage and half_precision:
            # DeepSpeed casts the model itself to bf16/fp16; the fp32 weights become the optimizer's
            # master copy, partitioned (and offloaded) with its states.
            self.add(f"trained weights, 16-bit under DeepSpeed ({trainable:,} parameters{detail})",
                     trainable * 2.0 / shard, where_params)
            self.add("fp32 master weights (DeepSpeed's optimizer copy)", trainable * 4.0 / processes, offloaded)
        else:
            self.add(f"trained weights, fp32 ({trainable:,} parameters{detail})", trainable * 4.0 / shard,
                     where_params)
        self.add("gradients, fp32", trainable * 4.0 / (processes if zero_stage >= 2 else 1), offloaded)
        opt_bytes = OPTIMIZER_BYTES["8bit" if "8bit" in optimizer.lower() else "32bit"]
        self.add(f"optimizer states ({optimizer.rsplit('.', 1)[-1]})",
                 trainable * opt_bytes / (processes if zero_stage else 1), offloaded)

    def total(self, where: str = "accelerator") -> float:
        return sum(b for _, b, w in self.rows if w == where)

    def format(self) -> str:
        lines = [f"{'component':<56} {'GiB':>8}  where"]
        lines += [f"{what:<56} {b / GIB:>8.3f}  {where}" for what, b, where in self.rows]
        lines.append(f"{'total on each accelerator':<56} {self.total() / GIB:>8.3f}")
        if self.total("CPU"):
            lines.append(f"{'total offloaded to CPU RAM (each process)':<56} {self.total('CPU') / GIB:>8.3f}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])
