"""ClipCap: image encoder -> mapping network -> prefix embeddings for a causal LM decoder (GPT-2/ruGPT-3,
Llama, Qwen2, Gemma 3, ...: any `AutoModelForCausalLM`).

The decoder is frozen, fully trained, or adapted with LoRA. When the encoder is frozen (the
usual case) it is not part of the trained module at all: its embeddings come from the feature
cache, so it costs no GPU memory during training and runs once per image.

With `model.ocr.enabled` the decoder also reads the meme's text: after the image prefix come
the OCR text's tokens inside `model.ocr.template` (cut to `model.ocr.max_tokens`, the line break
that ends it always kept), then the caption. Only the caption's tokens are scored.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

from memecap.config import GenerationConfig, ModelConfig, model_config_from_export, to_dict
from memecap.data.datasets import LazyPixels
from memecap.data.images import ImageTransform
from memecap.generation import hf_generate_drawing_kwargs, hf_generate_kwargs
from memecap.models.dtypes import weights_dtype
from memecap.models.encoders import build_image_encoder, encoder_transform
from memecap.models.family_parts import (QuoteCopying, body_and_head, caption_loss, ended_caption,
                                         parameters_that_train, per_image, scored_positions_loss, scored_tail,
                                         takes_logits_to_keep, without_unscored)
from memecap.models.frozen import FrozenEncoder
from memecap.models.train_modes import apply_train_mode
from memecap.models.export import base_entry, read_export_config, record_local_base, write_export_config
from memecap.models.kbit import bitsandbytes_loading, keep_4bit_layers_on_generic_cpu_path, prepare_base
from memecap.models.clipcap.architectures import decoder_width, lora_targets, transposed_weights
from memecap.models.clipcap.gguf import gguf_decoder_folder
from memecap.quiet import no_padding_advice
from memecap.models.clipcap.mapping import build_mapper
from memecap.models.prompted import require_ocr_text, with_ocr_prompts
from memecap.models.tiny import TINY, save_tiny_clip_vision, save_tiny_gpt2
from memecap.quiet import quiet_weights
from memecap.untrusted import refuse_model_code
from memecap.models.lora import ADAPTER_ONLY, load_adapter

logger = logging.getLogger(__name__)

MAPPER_FILE = "mapper.safetensors"
ENCODER_FILE = "encoder.safetensors"


def load_decoder(cfg: ModelConfig, export: Optional[Path] = None):
    """The causal LM and its tokenizer from the Hub id / folder in the config, or from an export
    (its `decoder/` when the decoder was trained, its `tokenizer/` always)."""
    name, revision = cfg.decoder.name, cfg.decoder.revision
    tokenizer_dir = export / "tokenizer" if export is not None and (export / "tokenizer").is_dir() else None
    decoder_dir = export / "decoder" if export is not None and (export / "decoder").is_dir() else None
    for source in (tokenizer_dir, decoder_dir):  # an export's parts (read_export_config checked them too)
        if source is not None:
            refuse_model_code(str(source))
    from_base = tokenizer_dir is None or decoder_dir is None
    if from_base:
        refuse_model_code(name, revision)
    base, at = base_source(cfg) if from_base else (name, {})
    tokenizer = (AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False) if tokenizer_dir
                 else named(AutoTokenizer.from_pretrained(base, trust_remote_code=False, **at), name))
    dtype = weights_dtype(cfg.decoder.dtype, trains=cfg.decoder.mode in ("full", "subset"))
    decoder = (AutoModelForCausalLM.from_pretrained(decoder_dir, dtype=dtype, trust_remote_code=False) if decoder_dir
               else named(AutoModelForCausalLM.from_pretrained(base, dtype=dtype, trust_remote_code=False, **at,
                                                               **bitsandbytes_loading(cfg.decoder.quantization)),
                          name))
    use_trained_eos(tokenizer, decoder, name)
    if cfg.decoder.quantization == "4bit":
        keep_4bit_layers_on_generic_cpu_path(decoder)
    return decoder, tokenizer


def base_source(cfg: ModelConfig) -> tuple[str, dict]:
    """Where the base decoder loads from, and at which revision: the Hub id or folder in the
    config, or for a GGUF file its conversion in memecap's cache (made on the first load)."""
    dec = cfg.decoder
    if dec.gguf_file:
        return str(gguf_decoder_folder(dec.name, dec.gguf_file)), {}
    return dec.name, {"revision": dec.revision}


def named(loaded, name: str):
    """A base tokenizer or model named by the config's name even when it came from memecap's cache:
    PEFT's adapter config and transformers' saved files record `name_or_path`."""
    loaded.name_or_path = name
    if hasattr(loaded, "config"):
        loaded.config.name_or_path = name
    return loaded


def use_trained_eos(tokenizer, decoder, name: str) -> None:
    """Make the end-of-text token one the model was trained with.

    ruGPT-3 tokenizers older than their 2023-12 revision ship no special-token files; transformers
    then names `<|endoftext|>` the end token and adds it as a new id after the vocabulary: past
    the embedding table on medium/large (an index error at the first step), on an untrained
    padding row on small (every caption ends on noise). An end token must be a token of the
    vocabulary itself, inside the embedding table; otherwise the model's own end token (its
    config's, or `</s>`) is used, or loading stops."""
    trained = min(tokenizer.vocab_size, decoder.get_input_embeddings().num_embeddings)

    def usable(i) -> bool:
        return isinstance(i, int) and 0 <= i < trained

    if usable(tokenizer.eos_token_id):
        return
    vocab = tokenizer.get_vocab()
    for candidate in (decoder.config.eos_token_id, vocab.get("</s>")):
        if usable(candidate):
            was = tokenizer.eos_token
            tokenizer.eos_token = tokenizer.convert_ids_to_tokens(candidate)
            if tokenizer.pad_token_id is not None and not usable(tokenizer.pad_token_id):
                tokenizer.pad_token = tokenizer.eos_token  # an added pad id would index past the table too
            logger.warning("the tokenizer of %s has no usable end-of-text token (%r is not one the model was "
                           "trained with); using the model's own %r (id %d)", name, was, tokenizer.eos_token, candidate)
            return
    raise ValueError(f"the tokenizer of {name} has no end-of-text token the model was trained with "
                     f"({tokenizer.eos_token!r} has id {tokenizer.eos_token_id}, the trained vocabulary is ids "
                     f"0-{trained - 1}), and the model names none: captions could never end; use a revision "
                     "of the model whose tokenizer has its special-token files")


def apply_decoder_mode(decoder: nn.Module, cfg: ModelConfig) -> nn.Module:
    dec = cfg.decoder
    decoder = prepare_base(decoder, quantized=dec.quantization != "none", checkpointing=dec.gradient_checkpointing)
    targets = lora_targets(decoder, dec.lora.target_modules)  # the GPT-2 default becomes the architecture's own
    lora = replace(dec.lora, target_modules=targets)
    return apply_train_mode(decoder, dec.mode, trainable=dec.trainable, lora=lora, key="model.decoder",
                            what="the decoder", task_type="CAUSAL_LM",
                            fan_in_fan_out=transposed_weights(decoder, targets))  # GPT-2's Conv1D


def pad_left(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's padding (mask 0, at its right end) to its left end: generation continues
    from the last position of every row, which must be the row's last real token."""
    length = mask.shape[1]
    shift = length - mask.sum(dim=1, keepdim=True)
    index = (torch.arange(length, device=mask.device)[None] - shift) % length
    return embeds.gather(1, index[..., None].expand(-1, -1, embeds.shape[-1])), mask.gather(1, index)


class ClipCap(nn.Module):
    def __init__(self, cfg: ModelConfig, mapper: nn.Module, decoder: nn.Module, tokenizer,
                 encoder: Optional[nn.Module], image_dim: int, transform: ImageTransform,
                 feature_encoder: Optional[nn.Module] = None):
        super().__init__()
        self.cfg = cfg
        self.mapper = mapper
        self.decoder = decoder
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.image_dim = image_dim
        self.transform = transform
        frozen = None if cfg.encoder.trainable else (encoder if encoder is not None else feature_encoder)
        # A CNN's pooled vector and grid come from the same weights: the output is part of the cache key.
        self.frozen_encoder = (FrozenEncoder(frozen, transform, variant=frozen.output_key)
                               if frozen is not None else None)
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._quotes = QuoteCopying()

    @property
    def config(self):
        """The decoder's config: DeepSpeed's "auto" bucket sizes are derived from its hidden size."""
        return self.decoder.config

    # -- data -------------------------------------------------------------------------------
    def encode_caption(self, text: str, max_tokens: int, truncate: bool = True) -> list[int]:
        """Token ids of a caption, cut to `max_tokens` with the end-of-text token always last
        (or CaptionTooLong when `truncate` is false and it does not fit)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ended_caption(ids, self.eos_id, max_tokens, truncate)

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of the OCR prompt: the template around the text, the text cut to `max_tokens`.
        The template's parts are tokenised apart, so a cut never removes the separator."""
        before, after = self.cfg.ocr.template.split("{text}")
        text_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.cfg.ocr.max_tokens]
        return (self.tokenizer(before, add_special_tokens=False)["input_ids"] + text_ids
                + self.tokenizer(after, add_special_tokens=False)["input_ids"])

    def image_inputs(self, paths: Sequence, *, cache_dir: Optional[str], device, progress: bool,
                     desc: str = "encoding images"):
        """What the model reads per image (a path or a PIL image): cached embeddings for a frozen
        encoder, lazy pixels otherwise; with OCR conditioning, each with the token ids of its OCR prompt."""
        images = self._visual_inputs(paths, cache_dir=cache_dir, device=device, progress=progress, desc=desc)
        return with_ocr_prompts(images, paths, self.cfg.ocr, self.encode_prompt, cache_dir=cache_dir,
                                progress=progress, desc=desc)

    def _visual_inputs(self, paths: Sequence, *, cache_dir: Optional[str], device, progress: bool, desc: str):
        if self.frozen_encoder is None:
            return LazyPixels(paths, self.transform)
        return self.frozen_encoder.encode(paths, cache_dir=cache_dir, device=device, progress=progress, desc=desc)

    def collate(self, items: list[dict]) -> dict:
        images = [it["image"] for it in items]
        prompts = None
        texts = None
        if isinstance(images[0], dict):  # OCR conditioning: PromptedImages items
            prompts, texts = [im["prompt_ids"] for im in images], [im["ocr_text"] for im in images]
            images = [im["image"] for im in images]
        batch = {"image": torch.stack(images)}
        if "index" in items[0]:
            batch["index"] = torch.tensor([it["index"] for it in items])
        if "input_ids" in items[0]:
            # The decoder reads prompt + caption; only the caption is scored.
            prompts = prompts or [[] for _ in items]
            ids, mask = self._pad_right([p + it["input_ids"] for p, it in zip(prompts, items)])
            labels = torch.full_like(ids, -100)
            for row, (p, it) in enumerate(zip(prompts, items)):
                labels[row, len(p):len(p) + len(it["input_ids"])] = torch.tensor(it["input_ids"])
            batch.update(input_ids=ids, labels=labels, attention_mask=mask)  # padding stays -100, whatever its id
        elif prompts is not None:
            batch["prompt_ids"], batch["prompt_mask"] = self._pad_right(prompts)
            batch["ocr_text"] = texts
        return batch

    def _pad_right(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, r in enumerate(rows):
            ids[row, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[row, :len(r)] = 1
        return ids, mask

    # -- model ------------------------------------------------------------------------------
    def prefix(self, image: torch.Tensor) -> torch.Tensor:
        """Decoder input embeddings [B, prefix_length, width] from features or pixels."""
        if image.dim() == 4:  # pixels [B, 3, H, W]; features are [B, D] (pooled) or [B, N, D] (patches)
            if self.encoder is None:
                raise ValueError("this ClipCap was built without its image encoder; "
                                 "load it with with_encoder=True to caption raw images")
            image = self.encoder(image)
        return self.mapper(image.to(next(self.mapper.parameters()).dtype))

    def forward(self, batch: dict) -> dict:
        return self.loss(batch)

    def loss(self, batch: dict) -> dict:
        """Cross-entropy of the caption tokens given the image prefix (and the OCR prompt, which is
        part of `input_ids` with label -100), averaged over caption tokens."""
        prefix = self.prefix(batch["image"])
        embed = self.decoder.get_input_embeddings()
        tokens = embed(batch["input_ids"])
        inputs = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=batch["attention_mask"].dtype,
                                     device=inputs.device), batch["attention_mask"]], dim=1)
        labels = without_unscored(batch["labels"], batch.get("unscored"))
        split = body_and_head(self.decoder)
        if split is not None:
            body, head = split
            hidden = body(inputs_embeds=inputs, attention_mask=mask, use_cache=False).last_hidden_state
            # Position P-1+t predicts caption token t: the last prefix slot predicts the first word.
            return scored_positions_loss(hidden[:, prefix.shape[1] - 1:-1], labels, head)
        keep = scored_tail(labels)  # <= the caption tokens + the prompt + 1 < the prefix + those
        extra = {"logits_to_keep": keep} if takes_logits_to_keep(self.decoder) else {}
        logits = self.decoder(inputs_embeds=inputs, attention_mask=mask, **extra).logits[:, -keep:]
        # Position P-1+t predicts caption token t: the last prefix slot predicts the first word.
        return caption_loss(logits[:, :-1], labels[:, labels.shape[1] - keep + 1:])

    @torch.no_grad()
    def generate(self, batch: dict, generation: GenerationConfig, synced_gpus: bool = False) -> list[list[str]]:
        """`num_return_sequences` captions for each image of the batch."""
        embed = self.decoder.get_input_embeddings()
        inputs = self.prefix(batch["image"]).to(embed.weight.dtype)
        mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
        if "prompt_ids" in batch:  # OCR conditioning: the prompt follows the image prefix
            inputs = torch.cat([inputs, embed(batch["prompt_ids"]).to(inputs.dtype)], dim=1)
            inputs, mask = pad_left(inputs, torch.cat([mask, batch["prompt_mask"].to(mask.dtype)], dim=1))
        processors = [self.quote_processor(require_ocr_text(batch))] if generation.quote == "copy" else []
        special = dict(eos_token_id=self.eos_id, pad_token_id=self.pad_id)
        if generation.strategy == "sample":  # each image's rows side by side, as the quote processor reads them
            rows = generation.num_return_sequences
            inputs, mask = inputs.repeat_interleave(rows, dim=0), mask.repeat_interleave(rows, dim=0)
            kwargs = hf_generate_drawing_kwargs(generation, processors, **special)
        else:
            kwargs = hf_generate_kwargs(generation, **special)
            if processors:
                kwargs["logits_processor"] = LogitsProcessorList(processors)
        with warnings.catch_warnings(), no_padding_advice():
            # The prompt is image and OCR embeddings, never words: n-gram bans apply to the caption only, as meant.
            warnings.filterwarnings("ignore", message="Passing `no_repeat_ngram_size` with `inputs_embeds`")
            ids = self.decoder.generate(inputs_embeds=inputs, attention_mask=mask, synced_gpus=synced_gpus, **kwargs)
        texts = [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return per_image(texts, generation.num_return_sequences)

    def quote_processor(self, texts: Sequence[str]):
        """generation.quote=copy: each text's tokens forced after an opening quote mark (memecap/quote_copy.py)."""
        return self._quotes.with_tokenizer(self.tokenizer, texts)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return parameters_that_train(self)

    # -- save / load ------------------------------------------------------------------------
    @quiet_weights()
    def save_pretrained(self, out_dir: Path, generation: Optional[GenerationConfig] = None,
                        state_dict: Optional[dict] = None) -> None:
        """Only what training changed: mapper, LoRA adapter or full decoder, trained encoder; plus the
        config that names the frozen bases and the tokenizer.

        `state_dict` is this module's full state dict when the live parameters are not whole, as
        under ZeRO-3 (`accelerator.get_state_dict` gathers it); otherwise it is read from the module.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state_dict = self.state_dict() if state_dict is None else state_dict

        def part(prefix: str) -> dict:
            return {k[len(prefix):]: v.detach().cpu().contiguous() for k, v in state_dict.items()
                    if k.startswith(prefix)}

        save_file(part("mapper."), str(out_dir / MAPPER_FILE))
        if self.cfg.encoder.trainable and self.encoder is not None:
            save_file(part("encoder."), str(out_dir / ENCODER_FILE))
        if self.cfg.decoder.mode == "lora":
            self.decoder.save_pretrained(out_dir / "adapter", state_dict=part("decoder."), **ADAPTER_ONLY)
        elif self.cfg.decoder.mode in ("full", "subset"):  # a partly trained decoder is exported whole too
            self.decoder.save_pretrained(out_dir / "decoder", state_dict=part("decoder."))
        self.tokenizer.save_pretrained(out_dir / "tokenizer")
        enc, dec = self.cfg.encoder, self.cfg.decoder
        whole = dec.mode in ("full", "subset")  # exported whole: its base only says where it started
        bases = {"encoder": base_entry("encoder", enc.name, enc.revision, needed_to_load=True),
                 "decoder": base_entry("decoder", dec.name, dec.revision, needed_to_load=not whole,
                                       in_export=("decoder", "tokenizer") if whole else ())}
        write_export_config(out_dir, {"family": "clipcap", "model": to_dict(self.cfg), "bases": bases,
                                      "generation": to_dict(generation) if generation else None,
                                      "image_dim": self.image_dim,
                                      "architecture": [f"mapping network: `{self.cfg.mapper.type}`, prefix of "
                                                       f"{self.cfg.mapper.prefix_length} embeddings"]})

    @classmethod
    def from_pretrained(cls, folder: Path, with_encoder: bool = True, cfg: Optional[ModelConfig] = None) -> "ClipCap":
        folder = Path(folder)
        cfg = cfg or model_config_from_export(read_export_config(folder)["model"])  # a merge passes its own
        model = build_clipcap(cfg, with_encoder=with_encoder or cfg.encoder.trainable, export=folder,
                              apply_mode=False)
        model.mapper.load_state_dict(load_file(str(folder / MAPPER_FILE)))
        if (folder / ENCODER_FILE).is_file() and model.encoder is not None:
            model.encoder.load_state_dict(load_file(str(folder / ENCODER_FILE)))
        if (folder / "adapter").is_dir():
            model.decoder = load_adapter(model.decoder, folder / "adapter")
        model.requires_grad_(False)
        return model.eval()


def materialize_tiny_bases(cfg: ModelConfig, work_dir: Path, train_texts: Sequence[str]) -> ModelConfig:
    """Replace "tiny-random" base names with folders holding freshly made tiny models of the real
    classes, so they load through the same path as the Hub weights."""
    base = Path(work_dir) / "base_models"
    if cfg.encoder.name == TINY:
        target = base / "encoder"
        if not (target / "config.json").is_file():
            save_tiny_clip_vision(target, cfg.tiny)
            record_local_base(target)
        cfg.encoder.kind, cfg.encoder.name = "clip", str(target.resolve())
    if cfg.decoder.name == TINY:
        target = base / "decoder"
        if not (target / "config.json").is_file():
            if not train_texts:
                raise ValueError("a tiny-random decoder needs training captions to fit its tokenizer")
            save_tiny_gpt2(target, cfg.tiny, train_texts)
            record_local_base(target)
        cfg.decoder.name = str(target.resolve())
    return cfg


def build_clipcap(cfg: ModelConfig, *, with_encoder: Optional[bool] = None, export: Optional[Path] = None,
                  apply_mode: bool = True) -> ClipCap:
    """Load the bases named in `cfg` and put a fresh mapping network between them.

    The encoder is kept in the module only when it trains (or `with_encoder` asks for it, for
    captioning raw images); a frozen one is loaded for the feature cache when data is prepared.
    """
    if TINY in (cfg.encoder.name, cfg.decoder.name):
        raise ValueError("call materialize_tiny_bases() before building a model with tiny-random bases")
    encoder = build_image_encoder(cfg.encoder.kind, cfg.encoder.name, cfg.encoder.revision,
                                  dtype=weights_dtype(cfg.encoder.dtype, trains=cfg.encoder.trainable),
                                  features=cfg.encoder.features)
    image_dim = encoder.embed_dim
    transform = encoder_transform(encoder, cfg.encoder)
    encoder.requires_grad_(cfg.encoder.trainable)
    keep_encoder = cfg.encoder.trainable or bool(with_encoder)
    decoder, tokenizer = load_decoder(cfg, export)
    mapper = build_mapper(cfg.mapper, image_dim, decoder_width(decoder.config),
                          patches=cfg.encoder.features == "patches")
    if apply_mode:
        decoder = apply_decoder_mode(decoder, cfg)
    return ClipCap(cfg, mapper, decoder, tokenizer, encoder if keep_encoder else None, image_dim, transform,
                   feature_encoder=None if keep_encoder else encoder)
