"""Decisions every process of a run takes together: one process that stops alone would leave the
others waiting forever at the next collective call."""
from __future__ import annotations

from typing import Optional

from accelerate.utils import gather_object

from memecap.config import ConfigError


def agree(accelerator, problem: Optional[str]) -> Optional[str]:
    """Every process learns the first problem any process found, so all stop together instead
    of some waiting forever at the next collective call."""
    if accelerator.num_processes == 1:
        return problem
    found = [p for p in gather_object([problem]) if p]
    return found[0] if found else None


def same_everywhere(accelerator, value, what: str) -> None:
    """Every process must hold the same `value` (e.g. the checkpoint each machine resumes from)."""
    if accelerator.num_processes == 1:
        return
    values = gather_object([value])
    if len(set(values)) > 1:
        raise ConfigError(f"the processes disagree on {what}: {', '.join(sorted(set(map(str, values))))}; "
                          "each machine must hold the same checkpoints")
