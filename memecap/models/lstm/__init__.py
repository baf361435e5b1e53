"""The original meme project's CNN + LSTM baselines. The family's entry points
(memecap/models/__init__.py); no planner: a few million parameters fit any GPU."""
from __future__ import annotations


def build(cfg, *, work_dir, train_texts):
    from memecap.models.lstm.model import build_lstm, materialize_tiny_encoder, run_vocab

    return build_lstm(materialize_tiny_encoder(cfg, work_dir), run_vocab(cfg, work_dir, train_texts))


def load(folder, with_encoder: bool = True):
    from memecap.models.lstm.model import LstmCaptioner

    return LstmCaptioner.from_pretrained(folder, with_encoder=with_encoder)
