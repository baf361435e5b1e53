"""The original meme project's CNN + LSTM baselines. The family's entry points
(memecap/models/__init__.py); no planner: a few million parameters fit any GPU."""
from __future__ import annotations

from memecap.outputs.run_layout import LSTM_VOCAB_FILE

EXPORT_VOCAB_FILE = "vocab.json"  # the word vocabulary in an export (LSTM_VOCAB_FILE in a run folder)
# A run started from an export keeps the vocabulary the weights were trained with, not one built
# from its own captions.
RUN_FILES_FROM_EXPORT = {LSTM_VOCAB_FILE: EXPORT_VOCAB_FILE}


def build(cfg, *, work_dir, train_texts):
    from memecap.models.lstm.model import build_lstm, materialize_tiny_encoder, run_vocab

    return build_lstm(materialize_tiny_encoder(cfg, work_dir), run_vocab(cfg, work_dir, train_texts))


def load(folder, with_encoder: bool = True):
    from memecap.models.lstm.model import LstmCaptioner

    return LstmCaptioner.from_pretrained(folder, with_encoder=with_encoder)
