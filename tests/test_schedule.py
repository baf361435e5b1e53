"""The evaluate/save policy of the loop, driven step by step."""
from __future__ import annotations

from memecap.training.schedule import Due, EvalSaveSchedule


def drive(schedule: EvalSaveSchedule, steps_per_epoch: int, epochs: int) -> list[tuple]:
    """What a loop of `epochs` epochs asks for: (step, moment, evaluate, save) when anything is due."""
    seen, step = [], 0
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            step += 1
            due = schedule.after_step(step)
            if due != Due():
                seen.append((step, "step", due.evaluate, due.save))
        due = schedule.at_epoch_end(step)
        if due != Due():
            seen.append((step, "epoch", due.evaluate, due.save))
    due = schedule.at_stage_end(step)
    if due != Due():
        seen.append((step, "stage", due.evaluate, due.save))
    return seen


def test_default_evaluates_and_saves_each_epoch():
    assert drive(EvalSaveSchedule(None, None, 0), 3, 2) == [(3, "epoch", True, True), (6, "epoch", True, True)]


def test_eval_every_saves_after_each_evaluation_and_ends_evaluated():
    assert drive(EvalSaveSchedule(2, None, 0), 3, 2) == [
        (2, "step", True, True), (4, "step", True, True), (6, "step", True, True)]
    assert drive(EvalSaveSchedule(4, None, 0), 3, 2) == [(4, "step", True, True), (6, "stage", True, True)]


def test_save_every_is_independent_of_evaluations():
    assert drive(EvalSaveSchedule(100, 2, 0), 3, 2) == [
        (2, "step", False, True), (4, "step", False, True), (6, "step", False, True), (6, "stage", True, False)]
    assert drive(EvalSaveSchedule(None, 4, 0), 3, 2) == [
        (3, "epoch", True, False), (4, "step", False, True), (6, "epoch", True, False), (6, "stage", False, True)]


def test_a_resumed_stage_does_not_redo_its_starting_step():
    schedule = EvalSaveSchedule(None, None, 6)  # resumed from the checkpoint written at step 6
    assert schedule.at_stage_end(6) == Due()
    assert schedule.after_step(7) == Due() and schedule.at_epoch_end(7) == Due(True, True)
