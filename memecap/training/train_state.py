"""The counters a checkpoint keeps (`trainer_state.json`), and how the loop moves them on.

`TrainState` is a value: each event of the loop (a micro-batch, an optimizer step, the end of an
epoch, an evaluation, the next stage) returns a new one, so what a checkpoint records is exactly
what the loop has done, whichever function did it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Optional


@dataclass(frozen=True)
class TrainState:
    stage: int = 0  # index into cfg.stages of the stage in progress (0 for a run without stages)
    stage_start_step: int = 0  # optimizer_step at which that stage began
    epoch: int = 0  # epochs of the current stage fully done
    batches_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    micro_step: int = 0  # micro-batches seen in total
    optimizer_step: int = 0  # optimizer updates done
    best_score: Optional[float] = None
    best_step: Optional[int] = None
    evals_without_improvement: int = 0
    data_fingerprint: Optional[list] = None  # per stage, its rows and images as read (training/stages.data_fingerprint)
    history: list = field(default_factory=list)  # evaluation records
    # The training-loss log's open window ([token-weighted loss sum, tokens]) at the save, so the
    # first log line after a resume averages the same steps as an uninterrupted run's.
    loss_window: Optional[list] = None
    world_size: Optional[int] = None  # processes that wrote it (a resume with another count is not exact)
    # A streamed train split: where each process stands in it (a list of data.streaming.StreamPosition dicts).
    stream_positions: Optional[list] = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "TrainState":
        """Raises ValueError (not JSON) or TypeError (unknown fields)."""
        return cls(**json.loads(text))

    @property
    def stage_steps(self) -> int:
        """Optimizer steps done in the current stage."""
        return self.optimizer_step - self.stage_start_step

    def after_micro_batch(self) -> "TrainState":
        return replace(self, micro_step=self.micro_step + 1, batches_in_epoch=self.batches_in_epoch + 1)

    def after_optimizer_step(self) -> "TrainState":
        return replace(self, optimizer_step=self.optimizer_step + 1)

    def after_epoch(self) -> "TrainState":
        return replace(self, epoch=self.epoch + 1, batches_in_epoch=0, stream_positions=None)

    def after_evaluation(self, metrics: dict, score: float, better: bool) -> "TrainState":
        """The evaluation in the history; a `better` score is the best so far, any other one brings
        early stopping an evaluation closer."""
        history = [*self.history, {"step": self.optimizer_step, **metrics}]
        if better:
            return replace(self, history=history, best_score=score, best_step=self.optimizer_step,
                           evals_without_improvement=0)
        return replace(self, history=history, evals_without_improvement=self.evals_without_improvement + 1)

    def next_stage(self) -> "TrainState":
        # The next stage has its own data: its best checkpoint is chosen on its own validation set,
        # and its training-loss log starts its own window.
        return replace(self, stage=self.stage + 1, stage_start_step=self.optimizer_step, epoch=0, batches_in_epoch=0,
                       best_score=None, best_step=None, evals_without_improvement=0, loss_window=None,
                       stream_positions=None)
