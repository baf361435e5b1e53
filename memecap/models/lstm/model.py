"""The original meme project's CNN + LSTM baselines: frozen ResNet -> projection with batch norm
-> 2-layer LSTM over words, optionally with soft attention over the ResNet's spatial grid
(Show, Attend and Tell) and word embeddings initialised from navec.

Fixed against the originals: padding is excluded from the loss, every caption ends with an end
token (so generation stops), and the vocabulary comes from the training captions with `<unk>`
while evaluation scores the generated text against the original reference strings.
"""
from __future__ import annotations

import logging
import types
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from memecap.config import GenerationConfig, ModelConfig, model_config_from_export, to_dict
from memecap.models.frozen import FrozenEncoder
from memecap.data.datasets import LazyPixels
from memecap.models.dtypes import weights_dtype
from memecap.models.encoders import build_image_encoder, encoder_transform
from memecap.models.family_parts import caption_loss, ended_caption, parameters_that_train, without_unscored
from memecap.models.export import base_entry, read_export_config, record_local_base, write_export_config
from memecap.models.lstm.navec import read_navec
from memecap.models.lstm.step_decoding import decode
from memecap.models.tiny import TINY, save_tiny_resnet
from memecap.models.lstm.vocab import WordVocab
from memecap.models.lstm import EXPORT_VOCAB_FILE
from memecap.outputs.run_layout import LSTM_VOCAB_FILE

logger = logging.getLogger(__name__)
WEIGHTS_FILE = "lstm.safetensors"
ENCODER_FILE = "encoder.safetensors"
VOCAB_FILE = EXPORT_VOCAB_FILE
RUN_VOCAB = LSTM_VOCAB_FILE  # in the run folder, so a checkpoint can be exported without the data


class ProjectionNorm(nn.BatchNorm1d):
    """Batch norm that falls back to its running statistics for a one-item training batch
    (the last, short batch of an epoch), where batch statistics do not exist."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class LstmCaptioner(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab: WordVocab, image_dim: int, transform,
                 encoder: Optional[nn.Module] = None, feature_encoder: Optional[nn.Module] = None):
        super().__init__()
        self.cfg, self.vocab, self.image_dim, self.transform = cfg, vocab, image_dim, transform
        self.encoder = encoder
        frozen = None if cfg.encoder.trainable else (encoder if encoder is not None else feature_encoder)
        # The ResNet's pooled vector and grid come from the same weights: the output is part of the cache key.
        self.frozen_encoder = (FrozenEncoder(frozen, transform, variant=frozen.output_key)
                               if frozen is not None else None)
        c = cfg.lstm
        self.project = nn.Linear(image_dim, c.embed_dim)
        self.norm = ProjectionNorm(c.embed_dim)
        self.embed = nn.Embedding(len(vocab), c.embed_dim, padding_idx=vocab.pad_id)
        self.embed.weight.requires_grad_(c.train_embeddings)
        context = c.embed_dim if c.attention else 0
        self.lstm = nn.LSTM(c.embed_dim + context, c.hidden_dim, c.num_layers, batch_first=True,
                            dropout=c.dropout if c.num_layers > 1 else 0.0)
        if c.attention:
            self.att_image = nn.Linear(c.embed_dim, c.attention_dim)
            self.att_hidden = nn.Linear(c.hidden_dim, c.attention_dim)
            self.att_score = nn.Linear(c.attention_dim, 1)
            self.init_h = nn.Linear(c.embed_dim, c.hidden_dim * c.num_layers)
            self.init_c = nn.Linear(c.embed_dim, c.hidden_dim * c.num_layers)
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.hidden_dim, len(vocab))
        self.eos_id, self.pad_id = vocab.eos_id, vocab.pad_id

    @property
    def config(self):
        """DeepSpeed's "auto" bucket sizes are derived from the hidden size."""
        return types.SimpleNamespace(hidden_size=self.cfg.lstm.hidden_dim)

    # -- data -------------------------------------------------------------------------------
    def encode_caption(self, text: str, max_tokens: int, truncate: bool = True) -> list[int]:
        """Word ids, cut to `max_tokens` with the end token always last (or CaptionTooLong when
        `truncate` is false and the caption does not fit)."""
        return ended_caption(self.vocab.encode(text), self.eos_id, max_tokens, truncate)

    def image_inputs(self, paths: Sequence, *, cache_dir: Optional[str], device, progress: bool,
                     desc: str = "encoding images"):
        """Cached ResNet features (pooled [N, C] or grid [N, H*W, C]) for a frozen encoder, lazy pixels otherwise."""
        if self.frozen_encoder is None:
            return LazyPixels(paths, self.transform)
        return self.frozen_encoder.encode(paths, cache_dir=cache_dir, device=device, progress=progress, desc=desc)

    def collate(self, items: list[dict]) -> dict:
        batch = {"image": torch.stack([it["image"] for it in items])}
        if "index" in items[0]:
            batch["index"] = torch.tensor([it["index"] for it in items])
        if "input_ids" in items[0]:
            width = max(len(it["input_ids"]) for it in items)
            ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
            labels = torch.full((len(items), width), -100, dtype=torch.long)
            for row, it in enumerate(items):
                n = len(it["input_ids"])
                ids[row, :n] = torch.tensor(it["input_ids"])
                labels[row, :n] = ids[row, :n]  # padding stays -100: never scored
            batch.update(input_ids=ids, labels=labels)
        return batch

    # -- model ------------------------------------------------------------------------------
    def image_grid(self, image: torch.Tensor) -> torch.Tensor:
        """Projected, batch-normed image vectors [B, N, E] (N = 1 for pooled features)."""
        if image.dim() == 4:  # pixels
            if self.encoder is None:
                raise ValueError("this model was built without its image encoder; load it with with_encoder=True "
                                 "to caption raw images")
            image = self.encoder(image)
        if image.dim() == 2:
            image = image[:, None]
        b, n, d = image.shape
        x = self.project(image.reshape(b * n, d).to(self.project.weight.dtype))
        return self.norm(x).view(b, n, -1)

    def _attend(self, grid: torch.Tensor, keys: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        scores = self.att_score(torch.tanh(keys + self.att_hidden(hidden)[:, None])).squeeze(-1)  # [B, N]
        return (scores.softmax(-1)[..., None] * grid).sum(1)

    def _start(self, grid: torch.Tensor):
        """(state, first input): attention starts from states made from the mean image vector and
        the <bos> word; the plain LSTM reads the image vector as its first input (Show and Tell)."""
        c = self.cfg.lstm
        if not c.attention:
            return None, grid.mean(1)
        mean = grid.mean(1)
        shape = (grid.shape[0], c.num_layers, c.hidden_dim)
        h = torch.tanh(self.init_h(mean)).view(shape).transpose(0, 1).contiguous()
        cell = torch.tanh(self.init_c(mean)).view(shape).transpose(0, 1).contiguous()
        bos = torch.full((grid.shape[0],), self.vocab.bos_id, dtype=torch.long, device=grid.device)
        return (h, cell), self.embed(bos)

    def _run(self, x: torch.Tensor, state, grid, keys):
        """One step with attention ([B, E] in) or any length without ([B, T, E] in); logits out."""
        if self.cfg.lstm.attention:
            x = torch.cat([x, self._attend(grid, keys, state[0][-1])], dim=-1)[:, None]
        out, state = self.lstm(x if x.dim() == 3 else x[:, None], state)
        return self.out(self.drop(out)), state

    def forward(self, batch: dict) -> dict:
        return self.loss(batch)

    def loss(self, batch: dict) -> dict:
        """Cross-entropy of the caption words and end token given the image, averaged over them."""
        grid = self.image_grid(batch["image"])
        state, first = self._start(grid)
        words = self.embed(batch["input_ids"][:, :-1])  # the last target is never an input
        if not self.cfg.lstm.attention:
            logits, _ = self._run(torch.cat([first[:, None], words], dim=1), None, grid, None)
        else:
            keys, steps = self.att_image(grid), []
            inputs = torch.cat([first[:, None], words], dim=1)
            for t in range(inputs.shape[1]):
                step_logits, state = self._run(inputs[:, t], state, grid, keys)
                steps.append(step_logits)
            logits = torch.cat(steps, dim=1)
        return caption_loss(logits, without_unscored(batch["labels"], batch.get("unscored")))

    @torch.no_grad()
    def generate(self, batch: dict, generation: GenerationConfig, synced_gpus: bool = False) -> list[list[str]]:
        """`num_return_sequences` captions for each image (greedy, beam or sampling)."""
        was_training = self.training
        self.eval()  # batch norm needs its running statistics for one-image batches
        try:
            grid = self.image_grid(batch["image"])
            keys = self.att_image(grid) if self.cfg.lstm.attention else None
            carry = {"grid": grid, "keys": keys}

            # <pad>, <bos> and <unk> are never output: a caption is made of real words and the end token.
            never = [self.vocab.pad_id, self.vocab.bos_id, self.vocab.unk_id]

            def begin():
                state, first = self._start(grid)
                logits, state = self._run(first, state, grid, keys)
                return logits[:, -1].index_fill(1, torch.tensor(never, device=grid.device), float("-inf")), \
                    {"lstm": state, **carry}

            def step(tokens, st):
                logits, state = self._run(self.embed(tokens), st["lstm"], st["grid"], st["keys"])
                return logits[:, -1].index_fill(1, torch.tensor(never, device=grid.device), float("-inf")), \
                    {**st, "lstm": state}

            def reorder(st, rows):
                h, c = st["lstm"]
                return {"lstm": (h[:, rows], c[:, rows]), "grid": st["grid"][rows],
                        "keys": st["keys"][rows] if st["keys"] is not None else None}

            ids = decode(begin, step, reorder, grid.shape[0], generation, self.eos_id, synced_gpus=synced_gpus)
        finally:
            self.train(was_training)
        return [[self.vocab.decode(seq) for seq in per_image] for per_image in ids]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return parameters_that_train(self)

    # -- save / load ------------------------------------------------------------------------
    def save_pretrained(self, out_dir: Path, generation: Optional[GenerationConfig] = None,
                        state_dict: Optional[dict] = None) -> None:
        """Projection, embeddings, LSTM and output layer (and a trained encoder), the vocabulary as
        JSON, and the config naming the ResNet base."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state_dict = self.state_dict() if state_dict is None else state_dict
        own = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if not k.startswith("encoder.")}
        save_file(own, str(out_dir / WEIGHTS_FILE))
        if self.cfg.encoder.trainable and self.encoder is not None:
            save_file({k[len("encoder."):]: v.detach().cpu().contiguous() for k, v in state_dict.items()
                       if k.startswith("encoder.")}, str(out_dir / ENCODER_FILE))
        self.vocab.save(out_dir / VOCAB_FILE)
        enc = self.cfg.encoder
        write_export_config(out_dir, {"family": "lstm", "model": to_dict(self.cfg),
                                      "bases": {"encoder": base_entry("encoder", enc.name, enc.revision,
                                                                      needed_to_load=True)},
                                      "generation": to_dict(generation) if generation else None,
                                      "image_dim": self.image_dim})

    @classmethod
    def from_pretrained(cls, folder: Path, with_encoder: bool = True) -> "LstmCaptioner":
        folder = Path(folder)
        meta = read_export_config(folder)
        cfg = model_config_from_export(meta["model"])
        cfg.lstm.navec = None  # the trained embeddings are in the weights; the vectors file is not needed
        model = build_lstm(cfg, WordVocab.load(folder / VOCAB_FILE), with_encoder=with_encoder or cfg.encoder.trainable)
        missing, unexpected = model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=False)
        missing = [k for k in missing if not k.startswith("encoder.")]  # the encoder comes from its base
        if missing or unexpected:
            raise ValueError(f"{folder / WEIGHTS_FILE} does not fit its memecap.yaml: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        if (folder / ENCODER_FILE).is_file() and model.encoder is not None:
            model.encoder.load_state_dict(load_file(str(folder / ENCODER_FILE)))
        model.requires_grad_(False)
        return model.eval()


def run_vocab(cfg: ModelConfig, work_dir: Path, train_texts: Sequence[str]) -> WordVocab:
    """The vocabulary of the training captions, kept in the run folder for later exports."""
    path = Path(work_dir) / RUN_VOCAB
    if train_texts:
        vocab = WordVocab.build(train_texts, cfg.lstm.min_word_count, cfg.lstm.max_vocab)
        path.parent.mkdir(parents=True, exist_ok=True)
        vocab.save(path)
        return vocab
    if path.is_file():
        return WordVocab.load(path)
    raise ValueError(f"the LSTM's vocabulary is built from the training captions, and none were given "
                     f"(nor is there a {path} from an earlier run)")


def materialize_tiny_encoder(cfg: ModelConfig, work_dir: Path) -> ModelConfig:
    """Replace a "tiny-random" ResNet name with a folder holding a freshly made tiny ResNet."""
    if cfg.encoder.name == TINY:
        target = Path(work_dir) / "base_models" / "encoder"
        if not (target / "config.json").is_file():
            save_tiny_resnet(target, cfg.tiny)
            record_local_base(target)
        cfg.encoder.kind, cfg.encoder.name = "resnet", str(target.resolve())
    return cfg


def init_from_navec(embed: nn.Embedding, vocab: WordVocab, path: str) -> float:
    """Copy navec vectors into the embedding rows of the words navec knows; the rest keep their
    random init. Returns the share of vocabulary words covered."""
    words, vectors = read_navec(path)
    if vectors.shape[1] != embed.embedding_dim:
        raise ValueError(f"model.lstm.navec={path!r} holds {vectors.shape[1]}-d vectors but "
                         f"model.lstm.embed_dim={embed.embedding_dim}; set embed_dim to {vectors.shape[1]}")
    index = {w: i for i, w in enumerate(words)}
    rows = [(i, index[w]) for i, w in enumerate(vocab.words) if w in index and i >= 4]
    with torch.no_grad():
        for mine, theirs in rows:
            embed.weight[mine] = torch.from_numpy(vectors[theirs])
    covered = len(rows) / max(1, len(vocab) - 4)
    logger.info("navec %s: %d of %d vocabulary words initialised (%.0f%%)", path, len(rows), len(vocab) - 4,
                100 * covered)
    return covered


def build_lstm(cfg: ModelConfig, vocab: WordVocab, *, with_encoder: Optional[bool] = None) -> LstmCaptioner:
    if cfg.encoder.name == TINY:
        raise ValueError("call materialize_tiny_encoder() before building a model with a tiny-random encoder")
    encoder = build_image_encoder(cfg.encoder.kind, cfg.encoder.name, cfg.encoder.revision,
                                  dtype=weights_dtype(cfg.encoder.dtype, trains=cfg.encoder.trainable),
                                  features=cfg.encoder.features)
    encoder.requires_grad_(cfg.encoder.trainable)
    keep = cfg.encoder.trainable or bool(with_encoder)
    model = LstmCaptioner(cfg, vocab, encoder.embed_dim, encoder_transform(encoder, cfg.encoder),
                          encoder if keep else None, None if keep else encoder)
    if cfg.lstm.navec:
        model.navec_coverage = init_from_navec(model.embed, vocab, cfg.lstm.navec)
    return model
