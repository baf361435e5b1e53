"""ruGPT-3 tokenizers without special-token files (before their 2023-12 revision): the end token
must be one the model was trained with, never `<|endoftext|>` appended past the vocabulary."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel

from memecap.data.tables import load_split
from memecap.models import build_model
from tests.helpers import clipcap_batch, recipe_with_tiny_bases

RUGPT3_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]  # ids 0-4, as in ruGPT-3's vocab.json


def save_old_rugpt3_layout(folder: Path, texts: list[str], specials: list[str], extra_rows: int,
                           eos_token_id) -> dict:
    """A tiny GPT-2 with only vocab.json + merges.txt beside it, as the old ruGPT-3 revisions ship."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    folder.mkdir(parents=True)
    tok.model.save(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    # ruGPT-3 small's table has spare rows after its vocabulary (50264 for 50257 tokens); medium/large do not.
    config = GPT2Config(vocab_size=len(vocab) + extra_rows, n_positions=128, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=None, eos_token_id=eos_token_id, pad_token_id=None)
    GPT2LMHeadModel(config).save_pretrained(folder)
    written = {p.name for p in folder.iterdir()}
    assert not {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} & written
    return vocab


@pytest.fixture()
def texts(synthetic_data):
    return [c for ex in load_split(synthetic_data["train"], log=None)[0] for c in ex.captions]


@pytest.mark.parametrize("extra_rows, config_eos", [(0, None), (8, None), (0, 2)],
                         ids=["medium-large-like", "small-like", "config-names-eos"])
def test_the_models_own_end_token_replaces_an_appended_one(extra_rows, config_eos, texts, tiny_ruclip_dir,
                                                          synthetic_data, tmp_path, caplog):
    vocab = save_old_rugpt3_layout(tmp_path / "rugpt3-old", texts, RUGPT3_SPECIALS, extra_rows, config_eos)
    cfg = recipe_with_tiny_bases("clipcap_mlp_finetune", tiny_ruclip_dir, tmp_path / "rugpt3-old")
    model = build_model(cfg.model, work_dir=tmp_path / "work")
    assert model.eos_id == vocab["</s>"] == 2 and model.pad_id < len(vocab)
    assert "using the model's own '</s>' (id 2)" in caplog.text
    examples = load_split(synthetic_data["train"], log=None)[0]
    batch = clipcap_batch(model, examples)
    assert int(batch["input_ids"].max()) < len(vocab)  # every id, padding included, is a trained row
    model(batch)["loss"].backward()  # the first step that used to raise an index error


def test_no_trained_end_token_is_refused(texts, tiny_ruclip_dir, tmp_path):
    save_old_rugpt3_layout(tmp_path / "no-eos", texts, ["<pad>", "<unk>"], 0, None)
    cfg = recipe_with_tiny_bases("clipcap_mlp_frozen", tiny_ruclip_dir, tmp_path / "no-eos")
    with pytest.raises(ValueError, match="has no end-of-text token the model was trained with"):
        build_model(cfg.model, work_dir=tmp_path / "work")
