"""When the loop evaluates and when it saves a checkpoint: one policy, asked at three moments.

- after an optimizer step: evaluate every `eval_every` steps; save every `save_every` steps, or,
  without `save_every`, after each evaluation;
- at the end of an epoch: without `eval_every`, evaluate (and, without `save_every`, save);
- at the end of a stage: evaluate and save unless this step already was, so every stage ends
  evaluated and checkpointed and a resume from that checkpoint moves straight on;
- before a stop for a later resume (a time limit, SIGUSR1): save unless this step already was.

The policy remembers what it asked for, so nothing is evaluated or saved twice at one step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Due:
    evaluate: bool = False
    save: bool = False


class EvalSaveSchedule:
    def __init__(self, eval_every: Optional[int], save_every: Optional[int], step: int):
        self.eval_every, self.save_every = eval_every, save_every
        self.last_evaluated = self.last_saved = step  # a (resumed) stage starts evaluated and saved

    def _ask(self, step: int, evaluate: bool, save: bool) -> Due:
        evaluate = evaluate and self.last_evaluated != step
        save = save and self.last_saved != step
        if evaluate:
            self.last_evaluated = step
        if save:
            self.last_saved = step
        return Due(evaluate, save)

    def after_step(self, step: int) -> Due:
        evaluate = bool(self.eval_every) and step % self.eval_every == 0
        save = step % self.save_every == 0 if self.save_every else evaluate
        return self._ask(step, evaluate, save)

    def at_epoch_end(self, step: int) -> Due:
        evaluate = not self.eval_every and self.last_evaluated != step
        return self._ask(step, evaluate, evaluate and not self.save_every)

    def at_stage_end(self, step: int) -> Due:
        return self._ask(step, True, True)

    def before_stop(self, step: int) -> Due:
        """The run stops here to be resumed: a checkpoint (unless this step has one), no evaluation."""
        return self._ask(step, False, True)
