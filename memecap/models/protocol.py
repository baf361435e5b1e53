"""What every model family offers: the one interface the loop, inference, plan and publishing use.

A family is a folder under memecap/models/ whose model class satisfies `CaptioningModel` (what
inference, evaluation and publishing use) and, unless it is a baseline with nothing to train,
`TrainableModel` (what the loop adds), and one line in `FAMILIES` (memecap/models/__init__.py).
Nothing outside the family asks which family it is; tests/test_protocol.py holds every family to
both, names and parameters.

The loss contract: `forward(batch)` returns `{"loss": scalar, "num_tokens": scalar}`, where `loss`
is a mean per scored caption token and `num_tokens` is how many caption tokens were scored in the
batch (padding and prompts are not counted). The loop weights each micro-batch's loss by
`num_tokens`, so logged losses and the validation loss are means per caption token across
batches and processes, whatever the batch composition. A family whose loss mixes several terms
(RuDOLPH: left text, image codes, caption) still counts only the caption tokens.
It also returns `token_log_probs` [batch, positions], the log-probability of each caption token
(0 elsewhere), and `token_scored` [batch, positions], True where a caption token is scored, in the
caption's order: self-critical training (training/objectives.py) weighs each caption's sum by its
reward. A batch may carry `unscored` [batch, caption tokens], True at caption tokens (in each
caption's order) that the loss must leave unscored, as padding (`family_parts.without_unscored`):
self-critical training marks the tokens quote copying forced, and a family that projects to its
vocabulary only where it scores (ClipCap) saves that work there too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import torch

from memecap.config import GenerationConfig


@runtime_checkable
class CaptioningModel(Protocol):
    """What captioning, scoring and exporting use on a model (an export loaded back, a baseline)."""

    def image_inputs(self, paths: Sequence, *, cache_dir: Optional[str], device, progress: bool,
                     desc: str = "images") -> Sequence:
        """What the model reads for each image (cached features or pixels), indexable per image."""

    def collate(self, items: list[dict]) -> dict:
        """Items `{"image": ..., "input_ids": [...]}` (or `{"image": ..., "index": i}`) -> a batch.
        A model that reads the meme's text puts it in the batch as `ocr_text`, one string per image
        (the server shows it beside the caption)."""

    def generate(self, batch: dict, generation: GenerationConfig, synced_gpus: bool = False) -> list[list[str]]:
        """`generation.num_return_sequences` captions per image of the batch, best first.
        `synced_gpus`: under ZeRO-3 every rank keeps running forward passes until all are done."""

    def save_pretrained(self, out_dir: Path, generation: Optional[GenerationConfig] = None,
                        state_dict: Optional[dict] = None) -> None:
        """Write an export: the trained parts as safetensors and `memecap.yaml` (family, model
        config, generation, bases, file manifest). `state_dict`: consolidated weights under ZeRO-3."""


@runtime_checkable
class TrainableModel(CaptioningModel, Protocol):
    """What the training loop adds: captions as token ids, the loss, the parameters to update."""

    eos_id: int  # the end-of-caption token id (captions are cut there)
    pad_id: int  # the id collate pads caption ids with (never scored)

    @property
    def config(self) -> Any:
        """An object with `hidden_size`: DeepSpeed derives its "auto" bucket sizes from it."""

    def encode_caption(self, text: str, max_tokens: int, truncate: bool = True) -> list[int]:
        """Caption token ids, the end token last, at most `max_tokens` (and the family's own
        limit); `truncate=False` raises `CaptionTooLong` instead of cutting."""

    def forward(self, batch: dict) -> dict:
        """`{"loss", "num_tokens"}` as in the module docstring."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer updates."""
