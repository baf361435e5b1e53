"""The LSTM baselines' own section of `model`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from memecap.config_checks import ConfigError, at_least, dropout_probability


@dataclass
class LstmConfig:
    """The CNN + LSTM baselines (family: lstm): projection with batch norm, a word-level LSTM decoder."""

    embed_dim: int = 300  # word embeddings (and the projected image vector); navec vectors are 300-d
    hidden_dim: int = 512  # LSTM state
    num_layers: int = 2  # stacked LSTM layers
    dropout: float = 0.3  # between LSTM layers and before the output layer
    attention: bool = False  # soft attention over the encoder's spatial grid (Show, Attend and Tell)
    attention_dim: int = 256  # attention MLP width
    min_word_count: int = 1  # training-caption words seen fewer times become <unk>
    max_vocab: Optional[int] = None  # keep only the most frequent words (null: all)
    # navec file (navec_hudlit_v1_12B_500K_300d_100q.tar) to initialise embeddings; natasha: the news vectors
    # inside the installed natasha package
    navec: Optional[str] = None
    train_embeddings: bool = True  # false keeps the (navec) word vectors fixed

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.hidden_dim < 1 or self.embed_dim < 1:
            raise ConfigError("model.lstm.num_layers, hidden_dim and embed_dim must be >= 1")
        if self.min_word_count < 1:
            raise ConfigError("model.lstm.min_word_count must be >= 1")
        dropout_probability("model.lstm.dropout", self.dropout)
        at_least("model.lstm.attention_dim", self.attention_dim, 1)
        at_least("model.lstm.max_vocab", self.max_vocab, 1, optional=True)


SECTIONS = {"lstm": LstmConfig}  # the LSTM baselines' own section of `model` (FAMILIES)
FOREIGN_SECTION_HINTS = {"ocr": "the LSTM baselines do not read OCR text; use a ClipCap or RuDOLPH recipe "
                                "(e.g. clipcap_ocr_lora)"}


def check_model(model) -> None:
    """Rules between the LSTM's section and the shared encoder (`model`: the whole ModelConfig)."""
    if model.lstm.attention and model.encoder.features != "patches":
        raise ConfigError("model.lstm.attention=true attends over the spatial grid: "
                          "set model.encoder.features=patches")
