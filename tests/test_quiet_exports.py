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


def test_generate_after_a_finished_caption_gives_no_padding_advice(capfd, caplog):
    """transformers drops the all-ones mask memecap passes, then advises a mask once a finished row is
    padded with the end token; the advice is not shown, and other messages of that logger still are."""
    from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessor, LogitsProcessorList
    from transformers.utils.logging import warning_once

    from memecap.quiet import MODELING_LOGGER, PADDING_ADVICE, no_padding_advice

    class EndFirstRowAtOnce(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores[0] = -float("inf")
            scores[0, 0] = 0.0  # row 0 writes the end token (also the padding) first
            return scores

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, bos_token_id=0,
                                       eos_token_id=0, pad_token_id=0)).eval()

    def generate():
        warning_once.cache_clear()  # the advice is said once a process: let each call say it afresh
        model.generate(inputs_embeds=torch.randn(2, 3, 16), attention_mask=torch.ones(2, 3, dtype=torch.long),
                       max_new_tokens=4, min_new_tokens=4, pad_token_id=0, eos_token_id=0, do_sample=False,
                       logits_processor=LogitsProcessorList([EndFirstRowAtOnce()]))
        printed = capfd.readouterr()
        shown = printed.out + printed.err + caplog.text
        caplog.clear()
        return shown

    with caplog.at_level(logging.WARNING):
        assert PADDING_ADVICE in generate()  # the case happens without the filter
        with no_padding_advice():
            assert PADDING_ADVICE not in generate()
            logging.getLogger(MODELING_LOGGER).warning("another warning")
            assert "another warning" in caplog.text
