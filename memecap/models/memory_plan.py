"""The shape of a memory estimate: rows of (what, bytes, where), shared by every family's planner."""
from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024 ** 3
OPTIMIZER_BYTES = {"8bit": 2, "32bit": 8}  # Adam moments per trainable parameter


@dataclass
class Plan:
    rows: list = field(default_factory=list)  # (what, bytes, where)
    trainable: int = 0  # parameters that receive gradients
    notes: list = field(default_factory=list)

    def add(self, what: str, nbytes: float, where: str = "accelerator") -> None:
        self.rows.append((what, float(nbytes), where))

    def total(self, where: str = "accelerator") -> float:
        return sum(b for _, b, w in self.rows if w == where)

    def format(self) -> str:
        lines = [f"{'component':<56} {'GiB':>8}  where"]
        lines += [f"{what:<56} {b / GIB:>8.3f}  {where}" for what, b, where in self.rows]
        lines.append(f"{'total on each accelerator':<56} {self.total() / GIB:>8.3f}")
        if self.total("CPU"):
            lines.append(f"{'total offloaded to CPU RAM (each process)':<56} {self.total('CPU') / GIB:>8.3f}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])
