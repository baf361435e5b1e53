"""The counters a checkpoint keeps: each event of the loop returns new ones, and they survive the
trip through `trainer_state.json` unchanged."""
from __future__ import annotations

import dataclasses

import pytest

from memecap.training.train_state import TrainState


def test_micro_batches_steps_and_epochs_move_the_data_position():
    state = TrainState().after_micro_batch().after_micro_batch().after_optimizer_step().after_micro_batch()
    assert (state.micro_step, state.batches_in_epoch, state.optimizer_step, state.epoch) == (3, 3, 1, 0)
    state = state.after_epoch()
    assert (state.micro_step, state.batches_in_epoch, state.optimizer_step, state.epoch) == (3, 0, 1, 1)


def test_an_evaluation_keeps_the_best_and_counts_the_others():
    state = TrainState(optimizer_step=2).after_evaluation({"bleu4": 0.2}, 0.2, better=True)
    state = dataclasses.replace(state, optimizer_step=4).after_evaluation({"bleu4": 0.1}, 0.1, better=False)
    assert (state.best_score, state.best_step, state.evals_without_improvement) == (0.2, 2, 1)
    assert state.history == [{"step": 2, "bleu4": 0.2}, {"step": 4, "bleu4": 0.1}]
    state = dataclasses.replace(state, optimizer_step=6).after_evaluation({"bleu4": 0.3}, 0.3, better=True)
    assert (state.best_score, state.best_step, state.evals_without_improvement) == (0.3, 6, 0)


def test_the_next_stage_starts_its_own_count_and_keeps_the_history():
    state = TrainState(optimizer_step=5, epoch=2, batches_in_epoch=3, micro_step=40, loss_window=[1.0, 8],
                       history=[{"step": 5, "bleu4": 0.1}]).after_evaluation({"bleu4": 0.1}, 0.1, better=True)
    state = state.next_stage()
    assert ((state.stage, state.stage_start_step, state.stage_steps, state.epoch, state.batches_in_epoch)
            == (1, 5, 0, 0, 0))
    assert ((state.best_score, state.best_step, state.evals_without_improvement, state.loss_window)
            == (None, None, 0, None))
    assert (state.micro_step, len(state.history)) == (40, 2)


def test_a_state_is_a_value_and_its_json_reads_back_the_same():
    state = TrainState(optimizer_step=3, history=[{"step": 3, "val_loss": 1.5}], loss_window=[2.5, 10])
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.optimizer_step = 4
    assert TrainState.from_json(state.to_json()) == state
    with pytest.raises(TypeError):
        TrainState.from_json('{"no_such_counter": 1}')
