"""RuDOLPH for image captioning: [left text | image as VQGAN codes | right text = the caption].

The transformer is the `rudolph` package's ruDolphModel and its loss (weights of the three parts
are recipe settings); images become codes with rudalle's VQGAN, text tokens with the YouTokenToMe
BPE RuDOLPH was trained with. The VQGAN is frozen: like ClipCap's frozen encoder it runs once
per image (codes are cached) and is not part of the trained module. What trains is everything,
a checked subset of modules, or LoRA adapters; decoding is memecap's loop over the package's
model with its key/value cache.

Sequence layout, as in rudolph.api's captioning:
    left  = <BOS> [<LT_I2T>] <EOS> then zeros, which the model turns into left-text position tokens
    image = image_tokens_per_dim**2 VQGAN codes
    right = <BOS> [<RT_I2T>] caption tokens <EOS> then zeros (ignored by the loss)
The bracketed special tokens exist in models published with text_special_tokens > 0.

With `model.ocr.enabled` the left text carries the meme's OCR text, lower-cased and cut to
`model.ocr.max_tokens` and to what the left part holds: <BOS> [<LT_I2T>] OCR tokens <EOS> zeros.
The left text is RuDOLPH's own slot for text that comes before the image, so no prompt template
is needed; the caption attends to it like to the image.
"""
from __future__ import annotations

import shutil
import types
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from memecap.config import GenerationConfig, ModelConfig, model_config_from_export, to_dict
from memecap.data.images import ImageTransform
from memecap.models.frozen import FrozenEncoder
from memecap.models.train_modes import apply_train_mode
from memecap.models.param_patterns import select_parameters
from memecap.generation import logits_processors
from memecap.sampling import draw_tokens
from memecap.models.family_parts import (IGNORED, QuoteCopying, caption_loss, ended_caption, parameters_that_train,
                                         per_image, without_unscored)
from memecap.models.export import base_entry, read_export_config, record_local_base, write_export_config
from memecap.models.prompted import require_ocr_text, with_ocr_prompts
from memecap.models.rudolph.compat import checkpoint_layers, follow_device, last_position_logits
from memecap.models.rudolph.weights import load_rudolph, load_tokenizer, load_vqgan, model_params, rudolph_of_shape
from memecap.models.tiny import TINY
from memecap.quiet import quiet_weights
from memecap.models.lora import ADAPTER_ONLY, base_model, load_adapter

WEIGHTS_FILE = "model.safetensors"  # mode=full: every RuDOLPH weight
SUBSET_FILE = "trained.safetensors"  # mode=subset: only the trained parameters
ADAPTER_DIR = "adapter"  # mode=lora: the PEFT adapter
TOKENIZER_DIR = "tokenizer"
# rudolph.api's DEFAULT_SPC_TOKENS give absolute ids for the published 16384-token BPE; these are
# the same tokens as offsets past the BPE vocabulary (checked against rudolph/api.py in the tests).
SPECIAL_OFFSETS = {"<LT_I2T>": 3, "<RT_I2T>": 5}
PAD, UNK, BOS, EOS = 0, 1, 2, 3  # YouTokenToMe's ids, as rudalle's YTTMTokenizerWrapper names them


class AsIds:
    """Cached codes (stored as floats, like every cached output) read as token ids, item by item."""

    def __init__(self, codes):
        self.codes = codes

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.codes[i].long()


class VQGANCodes(nn.Module):
    """Pixels normalised to [-1, 1] -> codebook ids [B, tokens] (the VQGAN's argmax, no Gumbel noise)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.get_codebook_indices(pixels * 0.5 + 0.5, disable_gumbel_softmax=True)


class RuDolph(nn.Module):
    def __init__(self, cfg: ModelConfig, rudolph: nn.Module, tokenizer, tokenizer_file: str, vqgan: VQGANCodes,
                 transform: ImageTransform):
        super().__init__()
        self.cfg = cfg
        self.rudolph = rudolph
        self.frozen_encoder = FrozenEncoder(vqgan, transform)
        self.tokenizer = tokenizer
        self.tokenizer_file = tokenizer_file
        self.transform = transform
        base = base_model(rudolph)
        self.l_len, self.r_len, self.image_len = base.l_text_seq_length, base.r_text_seq_length, base.image_seq_length
        # Text ids: BPE vocabulary, then text special tokens, then one id per left-text position.
        self.text_vocab = base.vocab_size - base.l_text_seq_length - base.text_special_tokens
        self.bpe_vocab = tokenizer.vocab_size()  # decoding chooses among these (the published BPE fills text_vocab)
        if self.bpe_vocab > self.text_vocab:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size()} tokens but this RuDOLPH only "
                             f"{self.text_vocab} text ids: "
                             "model.rudolph.tokenizer does not belong to model.rudolph.name")
        special = base.text_special_tokens > 0
        self.left = [BOS] + ([self.text_vocab + SPECIAL_OFFSETS["<LT_I2T>"]] if special else []) + [EOS]
        self.left += [PAD] * (self.l_len - len(self.left))
        self.right_prefix = [BOS] + ([self.text_vocab + SPECIAL_OFFSETS["<RT_I2T>"]] if special else [])
        self.caption_limit = self.r_len - len(self.right_prefix)  # caption tokens + <EOS>
        self.eos_id, self.pad_id = EOS, PAD
        self._quotes = QuoteCopying()

    @property
    def config(self):
        """DeepSpeed's "auto" bucket sizes are derived from the hidden size."""
        return types.SimpleNamespace(hidden_size=base_model(self.rudolph).to_logits[1].in_features)

    # -- data -------------------------------------------------------------------------------
    def encode_caption(self, text: str, max_tokens: int, truncate: bool = True) -> list[int]:
        """Caption token ids ending with <EOS>, at most min(max_tokens, what the right text holds).
        Lower-cased, as rudolph.api encodes text for the published models."""
        ids = self.tokenizer.tokenizer.encode([text.lower().strip()])[0]
        return ended_caption(ids, EOS, min(max_tokens, self.caption_limit), truncate)

    def encode_left(self, text: str) -> list[int]:
        """The left text holding a meme's OCR text (see the module docstring), `l_len` ids."""
        head = self.left[: self.left.index(EOS)]  # <BOS> [<LT_I2T>]
        room = min(self.l_len - len(head) - 1, self.cfg.ocr.max_tokens)
        ids = self.tokenizer.tokenizer.encode([text.lower().strip()])[0][:room] if text.strip() else []
        row = head + ids + [EOS]
        return row + [PAD] * (self.l_len - len(row))

    def image_inputs(self, paths: Sequence, *, cache_dir: Optional[str], device, progress: bool,
                     desc: str = "encoding images"):
        """What the model reads per image (a path or a PIL image): its VQGAN codes, from the cache
        where present; with OCR conditioning, each with the left text holding its OCR text."""
        codes = self._codes(paths, cache_dir=cache_dir, device=device, progress=progress, desc=desc)
        return with_ocr_prompts(codes, paths, self.cfg.ocr, self.encode_left, cache_dir=cache_dir,
                                progress=progress, desc=desc)

    def _codes(self, paths: Sequence, *, cache_dir: Optional[str], device, progress: bool, desc: str):
        """VQGAN codes (image tokens, as ids) of each image, from the cache where present."""
        codes = self.frozen_encoder.encode(paths, cache_dir=cache_dir, device=device, progress=progress, desc=desc)
        if len(codes) and len(codes[0]) != self.image_len:
            raise ValueError(f"the VQGAN gives {len(codes[0])} codes per image but RuDOLPH reads {self.image_len}")
        return codes.long() if isinstance(codes, torch.Tensor) else AsIds(codes)

    def collate(self, items: list[dict]) -> dict:
        images = [it["image"] for it in items]
        left = None
        if isinstance(images[0], dict):  # OCR conditioning: PromptedImages items carry their left text
            left = torch.tensor([im["prompt_ids"] for im in images], dtype=torch.long)
            texts = [im["ocr_text"] for im in images]
            images = [im["image"] for im in images]
        batch = {"image": torch.stack(images).long()}
        if left is not None:
            batch["left"], batch["ocr_text"] = left, texts
        if "index" in items[0]:
            batch["index"] = torch.tensor([it["index"] for it in items])
        if "input_ids" in items[0]:
            right = torch.full((len(items), self.r_len), PAD, dtype=torch.long)  # the model reads full-length parts
            for row, it in enumerate(items):
                ids = self.right_prefix + list(it["input_ids"])
                right[row, :len(ids)] = torch.tensor(ids)
            batch["input_ids"] = right
        return batch

    # -- model ------------------------------------------------------------------------------
    def _inputs(self, codes: torch.Tensor, right: torch.Tensor, left: Optional[torch.Tensor] = None) -> torch.Tensor:
        if left is None:
            left = torch.tensor(self.left, device=codes.device).expand(codes.shape[0], -1)
        return torch.cat([left.to(codes.device), codes, right], dim=1)

    def _causal_mask(self, length: int, device) -> torch.Tensor:
        """One [1, 1, S, S] mask broadcast over the batch; ruDolphModel multiplies in its sparse masks.
        In the weights' dtype, so that a bf16/fp16 base (model.rudolph.base_dtype) computes
        attention in that dtype even without autocast."""
        dtype = base_model(self.rudolph).text_embeddings.weight.dtype
        return torch.tril(torch.ones((1, 1, length, length), device=device, dtype=dtype))

    def forward(self, batch: dict) -> dict:
        return self.loss(batch)

    def loss(self, batch: dict) -> dict:
        """ruDolphModel's loss: the weighted mean of the left-text, image and caption cross-entropies
        (the caption's averaged over its real tokens, padding ignored)."""
        inputs = self._inputs(batch["image"], batch["input_ids"], batch.get("left"))
        follow_device(base_model(self.rudolph), inputs)
        w = self.cfg.rudolph.loss_weights
        base = base_model(self.rudolph)
        seen = []  # the logits ruDolphModel computes its loss from, for each caption token's log-probability
        hook = base.to_logits.register_forward_hook(lambda _module, _inputs, logits: seen.append(logits))
        try:
            loss, _ = self.rudolph(inputs, self._causal_mask(inputs.shape[1], inputs.device), return_loss=True,
                                   lt_loss_weight=w.left_text, img_loss_weight=w.image, rt_loss_weight=w.right_text)
        finally:
            hook.remove()
        num_tokens = (batch["input_ids"][:, 1:] != PAD).sum()
        right_logits = seen[-1][:, -self.r_len:-1, :base.vocab_size]
        scored = caption_loss(right_logits, without_unscored(self.caption_labels(batch["input_ids"]),
                                                             batch.get("unscored")))
        return {"loss": loss, "num_tokens": num_tokens, "token_log_probs": scored["token_log_probs"],
                "token_scored": scored["token_scored"]}

    def caption_labels(self, right: torch.Tensor) -> torch.Tensor:
        """What each right-text position predicts, IGNORED where it is not a caption token (the
        prefix's special token, padding): position t of the right text predicts id t + 1."""
        labels = right[:, 1:].clone()
        labels[labels == PAD] = IGNORED
        labels[:, : len(self.right_prefix) - 1] = IGNORED
        return labels

    @torch.no_grad()
    def generate(self, batch: dict, generation: GenerationConfig, synced_gpus: bool = False) -> list[list[str]]:
        """`num_return_sequences` captions per image: greedy or sampled (temperature, top-k, top-p),
        token by token with the model's key/value cache, each stopping at <EOS>. Only the last
        position is projected to logits (rudolph_compat shim 7): the package projects every one."""
        if generation.strategy == "beam":
            raise ValueError("RuDOLPH decodes with strategy greedy or sample (top-k/top-p), not beam search")
        k = generation.num_return_sequences
        codes = batch["image"].repeat_interleave(k, dim=0)
        n, device = codes.shape[0], codes.device
        prefix = torch.tensor(self.right_prefix, device=device).expand(n, -1)
        left = batch.get("left")
        out = self._inputs(codes, prefix, None if left is None else left.repeat_interleave(k, dim=0))
        base = base_model(self.rudolph)
        follow_device(base, out)
        mask = self._causal_mask(self.l_len + self.image_len + self.r_len, device)
        processors = logits_processors(generation)
        if generation.quote == "copy":
            processors.append(self.quote_processor(require_ocr_text(batch)))
        steps = min(generation.max_new_tokens, self.caption_limit)
        finished = torch.zeros(n, dtype=torch.bool, device=device)
        cache = None
        start = out.shape[1]
        for _ in range(steps):
            with last_position_logits(base):
                logits, cache = self.rudolph(out, mask, cache=cache, use_cache=True, return_loss=False)
            scores = logits[:, -1, :self.bpe_vocab].float()
            scores[:, [PAD, UNK, BOS]] = float("-inf")  # only words or the end of the caption
            # The prefix's special token lies beyond the scored ids: as PAD (never chosen) it is penalised
            # in no transformers version (older ones index the scores with it and fail).
            seen = out[:, start - len(self.right_prefix):]
            scores = processors(seen.masked_fill(seen >= self.bpe_vocab, PAD), scores)
            if generation.strategy == "sample":
                token = draw_tokens(scores)
            else:
                token = scores.argmax(dim=-1)
            token = torch.where(finished, torch.full_like(token, PAD), token)
            out = torch.cat([out, token[:, None]], dim=1)
            finished |= token == EOS
            if synced_gpus:  # ZeRO-3: every rank runs the same number of forwards (they gather weights)
                pending = (~finished).any().float()
                torch.distributed.all_reduce(pending)
                if pending.item() == 0:
                    break
            elif finished.all():
                break
        texts = []
        for row in out[:, start:].tolist():
            row = row[: row.index(EOS)] if EOS in row else row
            texts.append(self.tokenizer.decode_text(torch.tensor(row, dtype=torch.long)).strip() if row else "")
        return per_image(texts, k)

    def quote_processor(self, texts: Sequence[str]):
        """generation.quote=copy: each text's tokens forced after an opening quote mark (memecap/quote_copy.py),
        lower-cased as the captions are."""
        bpe = self.tokenizer.tokenizer
        return self._quotes.processor(texts, vocab_size=self.bpe_vocab, token_text=bpe.id_to_subword,
                                      encode=lambda t: bpe.encode([t.lower()])[0], start=len(self.right_prefix))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return parameters_that_train(self)

    # -- save / load ------------------------------------------------------------------------
    @quiet_weights()
    def save_pretrained(self, out_dir: Path, generation: Optional[GenerationConfig] = None,
                        state_dict: Optional[dict] = None) -> None:
        """Only what training changed (every weight, the trained subset, or the LoRA adapter) as
        safetensors, the tokenizer, and the config naming the base model, VQGAN and tokenizer by
        Hub id and revision. `state_dict` is the whole module's when the live parameters are
        partitioned (ZeRO-3)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state_dict = self.state_dict() if state_dict is None else state_dict
        weights = {k[len("rudolph."):]: v.detach().cpu().contiguous() for k, v in state_dict.items()
                   if k.startswith("rudolph.")}
        mode = self.cfg.rudolph.mode
        if mode == "full":
            save_file(weights, str(out_dir / WEIGHTS_FILE))
        elif mode == "subset":
            trained = {n[len("rudolph."):] for n, p in self.named_parameters() if p.requires_grad}
            save_file({k: v for k, v in weights.items() if k in trained}, str(out_dir / SUBSET_FILE))
        else:
            self.rudolph.save_pretrained(out_dir / ADAPTER_DIR, state_dict=weights, **ADAPTER_ONLY)
        (out_dir / TOKENIZER_DIR).mkdir(exist_ok=True)
        shutil.copyfile(self.tokenizer_file, out_dir / TOKENIZER_DIR / "bpe.model")
        r = self.cfg.rudolph
        bases = {"rudolph": base_entry("rudolph", r.name, r.revision, needed_to_load=True),
                 "vqgan": base_entry("rudolph", r.vqgan, r.vqgan_revision, needed_to_load=True,
                                     name_key="vqgan", revision_key="vqgan_revision"),
                 # the export carries its own copy of the BPE
                 "tokenizer": base_entry("rudolph", r.tokenizer, r.tokenizer_revision, needed_to_load=False,
                                         name_key="tokenizer", revision_key="tokenizer_revision")}
        write_export_config(out_dir, {"family": "rudolph", "model": to_dict(self.cfg), "bases": bases,
                                      "generation": to_dict(generation) if generation else None})

    @classmethod
    def from_pretrained(cls, folder: Path, with_encoder: bool = True, cfg: Optional[ModelConfig] = None) -> "RuDolph":
        """Base model + VQGAN from the Hub ids in the export's config, then its trained weights.
        (`with_encoder` is accepted for the protocol: the VQGAN is always loaded, it turns images into codes.)"""
        folder = Path(folder)
        cfg = cfg or model_config_from_export(read_export_config(folder)["model"])  # a merge passes its own
        whole = (folder / WEIGHTS_FILE).is_file()  # every weight is here: the base checkpoint is not downloaded
        model = build_rudolph(cfg, export=folder, apply_mode=False, base_weights=not whole)
        base = model.rudolph
        if whole:
            base.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        elif (folder / SUBSET_FILE).is_file():
            missing, unexpected = base.load_state_dict(load_file(str(folder / SUBSET_FILE)), strict=False)
            if unexpected:
                raise KeyError(f"{folder / SUBSET_FILE} holds tensors RuDOLPH does not have: {unexpected[:5]}")
        elif (folder / ADAPTER_DIR).is_dir():
            model.rudolph = load_adapter(base, folder / ADAPTER_DIR)
        model.requires_grad_(False)
        return model.eval()


# -- building ----------------------------------------------------------------------------------

def select_trainable(model: nn.Module, patterns: Sequence[str]) -> set[str]:
    """Names of the parameters `model.rudolph.trainable` selects (memecap/models/param_patterns.py)."""
    return select_parameters(model, patterns, key="model.rudolph.trainable", what="RuDOLPH")


def apply_training_mode(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    r = cfg.rudolph
    if r.mode == "lora" and r.base_dtype != "float32":
        model.to(getattr(torch, r.base_dtype))  # the frozen base only: PEFT keeps the adapters in fp32
    return apply_train_mode(model, r.mode, trainable=r.trainable, lora=r.lora, key="model.rudolph", what="RuDOLPH")


def build_rudolph(cfg: ModelConfig, *, export: Optional[Path] = None, apply_mode: bool = True,
                  base_weights: bool = True) -> RuDolph:
    """Load RuDOLPH, its VQGAN and tokenizer as named in `cfg` (the tokenizer from an export when
    given), and set what trains. `base_weights=False` builds the shape only, for an export that
    holds every weight itself."""
    r = cfg.rudolph
    if TINY in (r.name, r.vqgan, r.tokenizer):
        raise ValueError("call materialize_tiny_rudolph() before building a RuDOLPH with tiny-random bases")
    if base_weights:
        model, params = load_rudolph(r.name, r.revision, r.shape)
    else:
        params = model_params(r.name, r.shape, r.revision)
        model = rudolph_of_shape(params)
    vae = load_vqgan(r.vqgan, r.vqgan_revision)
    if vae.num_tokens != params["image_vocab_size"]:
        raise ValueError(f"the VQGAN at {r.vqgan!r} has {vae.num_tokens} codes but RuDOLPH reads "
                         f"{params['image_vocab_size']}: model.rudolph.vqgan does not belong to model.rudolph.name")
    exported = export is not None and (Path(export) / TOKENIZER_DIR / "bpe.model").is_file()
    tokenizer, tokenizer_file = (load_tokenizer(str(Path(export) / TOKENIZER_DIR)) if exported
                                 else load_tokenizer(r.tokenizer, r.tokenizer_revision))
    side = params["image_tokens_per_dim"] * vae.downsampling
    # Letterboxed by default (model.rudolph.resize_mode=pad): the whole meme, its text included, is seen.
    transform = ImageTransform(side, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), resize_mode=r.resize_mode)
    if r.gradient_checkpointing:
        checkpoint_layers(model.transformer)
    if apply_mode:
        model = apply_training_mode(model, cfg)
    return RuDolph(cfg, model, tokenizer, tokenizer_file, VQGANCodes(vae), transform)


def materialize_tiny_rudolph(cfg: ModelConfig, work_dir: Path, train_texts: Sequence[str]) -> ModelConfig:
    """Replace "tiny-random" names with folders holding a freshly made tiny RuDOLPH, VQGAN and BPE."""
    from memecap.models.rudolph.tiny import save_tiny_rudolph_bases

    r = cfg.rudolph
    if TINY not in (r.name, r.vqgan, r.tokenizer):
        return cfg
    base = Path(work_dir) / "base_models" / "rudolph-tiny"
    model_dir, utils = base / "rudolph", base / "rudalle-utils"
    if not (model_dir / "config.json").is_file():
        if not train_texts:
            raise ValueError("a tiny-random RuDOLPH needs training captions to fit its tokenizer")
        save_tiny_rudolph_bases(base, cfg.tiny, train_texts)
        record_local_base(model_dir)
        record_local_base(utils)
    r.name, r.vqgan, r.tokenizer = str(model_dir.resolve()), str(utils.resolve()), str(utils.resolve())
    return cfg
