"""Building, exporting, checkpointing and reloading a model prints nothing of transformers' or
Accelerate's own: no "Writing model shards" / "Loading weights" bars, no "Removed shared tensor"
for GPT-2's tied output layer (a shared tensor that is not that one is still reported)."""
from __future__ import annotations

import logging

import torch

from memecap import train
from memecap.inference.captioner import Captioner
from memecap.inference.exported import export_checkpoint
from memecap.quiet import quiet_weights
from tests.helpers import reset_accelerate, tiny_run_config

THEIRS = ("Writing model shards", "Loading weights", "Removed shared tensor")


def test_a_run_and_its_exports_print_nothing_of_theirs(synthetic_data, tmp_path, capfd, caplog):
    out = tmp_path / "run"
    # The demo trains the whole decoder, whose lm_head is tied to the embeddings: the case that warned.
    train.main(tiny_run_config(out, synthetic_data, "train.max_steps=2", "eval.compare_constant=false",
                               "generation.max_new_tokens=4"))
    reset_accelerate()
    checkpoint = sorted((out / "checkpoints").iterdir())[-1]
    export_checkpoint(checkpoint)
    Captioner.from_pretrained(out / "best", device="cpu")
    printed = capfd.readouterr()
    assert (out / "best" / "memecap.yaml").is_file() and (checkpoint / "export" / "memecap.yaml").is_file()
    for text in THEIRS:
        assert text not in printed.out + printed.err + caplog.text, text


def test_other_shared_tensors_are_still_reported(caplog):
    from accelerate import PartialState
    from accelerate.utils.other import clean_state_dict_for_safetensors

    PartialState()  # Accelerate's logger needs its state, as in a run
    weight = torch.zeros(2, 2)
    try:
        with quiet_weights(), caplog.at_level(logging.WARNING):
            # In state-dict order, as a GPT-2 has them: the embedding first, its tied output layer after.
            clean_state_dict_for_safetensors({"decoder.transformer.wte.weight": weight,
                                              "decoder.lm_head.weight": weight})
            assert "Removed shared tensor" not in caplog.text
            clean_state_dict_for_safetensors({"mapper.a.weight": weight, "mapper.b.weight": weight})
    finally:
        reset_accelerate()
    assert "Removed shared tensor {'mapper.b.weight'}" in caplog.text
