"""Every setting of a run: nested dataclasses, filled from a YAML recipe plus `key=value` overrides.

    cfg = load_config("clipcap_lora", ["optim.lr=3e-4", "model.decoder.lora.r=16"])

Unknown keys and values of the wrong type raise with the dotted key's name, so a typo in a
recipe never silently trains the default. Cross-field rules live in `__post_init__`.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

RECIPES_DIR = Path(__file__).parent / "recipes"
WEIGHT_DTYPES = ("auto", "float32", "bfloat16", "float16")  # storage of frozen weights (memecap/models/dtypes.py)


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema."""


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(str, allowed))}")


def _at_least(key: str, value: Optional[float], low: float, *, optional: bool = False) -> None:
    """`value >= low` (None passes where the setting is optional: null means off)."""
    if value is None and optional:
        return
    if value is None or value < low:
        raise ConfigError(f"{key}={value!r}: must be >= {low}" + (" or null" if optional else ""))


def _dropout(key: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"{key}={value!r}: a dropout probability is in [0, 1)")


def _above(key: str, value: Optional[float], low: float, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value <= low:
        raise ConfigError(f"{key}={value!r}: must be > {low}" + (" or null" if optional else ""))


@dataclass
class SyntheticConfig:
    """The built-in demo set: coloured shapes with Cyrillic captions, generated on first use."""

    n_train: int = 2000  # training images
    n_val: int = 200  # held-out images
    image_size: int = 64  # side of the generated square images
    seed: int = 0  # generator seed (independent of the training seed)

    def __post_init__(self) -> None:
        _at_least("data.synthetic.n_train", self.n_train, 1)
        _at_least("data.synthetic.n_val", self.n_val, 1)
        _at_least("data.synthetic.image_size", self.image_size, 16)


@dataclass
class DataConfig:
    train: str = ""  # table (.tsv meme format, .csv, .jsonl), "hf:imagefolder:DIR", "hf:user/name", or "synthetic"
    val: str = ""  # same forms; "synthetic" pairs with a synthetic train set
    image_dir: Optional[str] = None  # where images live when not next to the table in images/
    on_bad_row: str = "error"  # error: stop and list every bad row; skip: drop them, count and log each
    max_train_rows: Optional[int] = None  # cap for quick experiments
    max_val_rows: Optional[int] = None  # cap on evaluated examples
    max_caption_tokens: int = 128  # caption length cap in tokens, end-of-text token included (a model may allow fewer)
    long_captions: str = "truncate"  # truncate: cut, keeping the end-of-text token; reject: stop and say how many are too long
    num_workers: int = 0  # DataLoader workers
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        _one_of("data.on_bad_row", self.on_bad_row, ("error", "skip"))
        _one_of("data.long_captions", self.long_captions, ("truncate", "reject"))
        if self.max_caption_tokens < 2:
            raise ConfigError("data.max_caption_tokens must be >= 2 (one word and the end token)")
        _at_least("data.max_train_rows", self.max_train_rows, 1, optional=True)
        _at_least("data.max_val_rows", self.max_val_rows, 1, optional=True)
        _at_least("data.num_workers", self.num_workers, 0)


@dataclass
class EncoderConfig:
    kind: str = "ruclip"  # ruclip | clip | siglip | resnet (a transformers ResNetModel, for the LSTM baselines)
    name: str = "ai-forever/ruclip-vit-base-patch32-384"  # Hub id or local folder; "tiny-random" builds one
    revision: Optional[str] = None  # Hub revision (commit, tag or branch)
    trainable: bool = False  # frozen encoders are run once per image and cached
    resize_mode: str = "pad"  # pad keeps the whole meme (its text); crop is CLIP's centre crop; squash
    features: str = "pooled"  # pooled: one vector per image (ClipCap); patches: every last-layer token
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16: frozen weights; auto = bf16 on a bf16 GPU

    def __post_init__(self) -> None:
        _one_of("model.encoder.kind", self.kind, ("ruclip", "clip", "siglip", "resnet"))
        _one_of("model.encoder.dtype", self.dtype, WEIGHT_DTYPES)
        if self.trainable and self.dtype not in ("auto", "float32"):
            raise ConfigError("model.encoder.dtype: a trainable encoder keeps float32 weights "
                              "(use train.mixed_precision=bf16 for 16-bit compute)")
        _one_of("model.encoder.features", self.features, ("pooled", "patches"))
        _one_of("model.encoder.resize_mode", self.resize_mode, ("pad", "crop", "squash"))


@dataclass
class MapperConfig:
    type: str = "mlp"  # mlp | transformer
    prefix_length: int = 10  # GPT input embeddings made from one image (patches + mlp: one per patch)
    clip_length: int = 10  # transformer mapper: tokens the image vector is first expanded to
    num_layers: int = 8  # transformer mapper: encoder layers
    num_heads: int = 8  # transformer mapper: attention heads
    dropout: float = 0.0  # mapper dropout

    def __post_init__(self) -> None:
        _one_of("model.mapper.type", self.type, ("mlp", "transformer"))
        if self.prefix_length < 1 or self.clip_length < 1:
            raise ConfigError("model.mapper.prefix_length and clip_length must be >= 1")
        _at_least("model.mapper.num_layers", self.num_layers, 1)
        _at_least("model.mapper.num_heads", self.num_heads, 1)
        _dropout("model.mapper.dropout", self.dropout)


def _check_lora(prefix: str, lora) -> None:
    _at_least(f"{prefix}.r", lora.r, 1)
    _above(f"{prefix}.alpha", lora.alpha, 0)
    _dropout(f"{prefix}.dropout", lora.dropout)
    if not lora.target_modules:
        raise ConfigError(f"{prefix}.target_modules is empty: name the modules that get adapters")


@dataclass
class LoraConfig:
    r: int = 8  # rank
    alpha: int = 16  # scaling numerator
    dropout: float = 0.05  # dropout on the LoRA branch
    target_modules: list = field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])  # GPT-2 Conv1D names

    def __post_init__(self) -> None:
        _check_lora("model.decoder.lora", self)


@dataclass
class DecoderConfig:
    name: str = "ai-forever/rugpt3small_based_on_gpt2"  # GPT-2 architecture; Hub id or folder; "tiny-random"
    revision: Optional[str] = None  # Hub revision
    mode: str = "frozen"  # frozen | full | lora
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    quantization: str = "none"  # none | 8bit | 4bit: load the frozen base with bitsandbytes (QLoRA with mode=lora)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16: frozen (non-quantized) weights; auto = bf16 on a bf16 GPU
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        _one_of("model.decoder.mode", self.mode, ("frozen", "full", "lora"))
        _one_of("model.decoder.dtype", self.dtype, WEIGHT_DTYPES)
        if self.mode == "full" and self.dtype not in ("auto", "float32"):
            raise ConfigError("model.decoder.dtype: a fully trained decoder keeps float32 weights "
                              "(use train.mixed_precision=bf16 for 16-bit compute)")
        _one_of("model.decoder.quantization", self.quantization, ("none", "8bit", "4bit"))
        if self.quantization != "none" and self.mode == "full":
            raise ConfigError("model.decoder.quantization needs mode=lora or frozen: quantized weights cannot be trained")


@dataclass
class TinyConfig:
    """Sizes of the random-initialised stand-ins made for "tiny-random" (demo and tests)."""

    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 64
    vision_layers: int = 2
    embed_dim: int = 64
    gpt_width: int = 128
    gpt_layers: int = 2
    gpt_heads: int = 4
    vocab_size: int = 512  # BPE vocabulary trained on the training captions
    rudolph_text_tokens: int = 64  # tiny RuDOLPH: right-text (caption) positions; its image grid is image_size / 8
    resnet_widths: list = field(default_factory=lambda: [16, 32])  # tiny ResNet: channels of each stage
    resnet_depths: list = field(default_factory=lambda: [1, 1])  # tiny ResNet: residual blocks of each stage

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "vision_width", "vision_layers", "embed_dim", "gpt_width",
                     "gpt_layers", "gpt_heads", "vocab_size", "rudolph_text_tokens"):
            _at_least(f"model.tiny.{name}", getattr(self, name), 1)
        if self.gpt_width % self.gpt_heads:
            raise ConfigError(f"model.tiny.gpt_width={self.gpt_width} must be a multiple of gpt_heads={self.gpt_heads}")


@dataclass
class RudolphLossWeights:
    """Weights of RuDOLPH's three cross-entropies; captioning trains on the right text."""

    left_text: float = 0.01  # the (constant) left text before the image
    image: float = 1.0  # the image's VQGAN codes
    right_text: float = 7.0  # the caption


@dataclass
class RudolphLoraConfig:
    r: int = 8  # rank
    alpha: int = 16  # scaling numerator
    dropout: float = 0.05  # dropout on the LoRA branch
    # RuDOLPH's attention (query_key_value, dense) and MLP (dense_h_to_4h, dense_4h_to_h) projections.
    target_modules: list = field(default_factory=lambda: ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"])

    def __post_init__(self) -> None:
        _check_lora("model.rudolph.lora", self)


@dataclass
class RudolphConfig:
    """RuDOLPH (left text, image as VQGAN codes, right text = the caption), used when model.family=rudolph."""

    name: str = "ai-forever/RUDOLPH-350M"  # Hub id or folder holding pytorch_model.bin; "tiny-random" builds one
    revision: Optional[str] = None  # Hub revision of the RuDOLPH weights
    shape: Optional[str] = None  # key of rudolph.model.MODELS (350M_v1, 350M, 1.3B, 2.7B, 2.7B_fbc2); null: from the Hub id or the folder's config.json
    vqgan: str = "ai-forever/rudalle-utils"  # Hub id or folder with vqgan.gumbelf8-sber.{config.yml,model.ckpt}
    vqgan_revision: Optional[str] = None
    tokenizer: str = "ai-forever/rudalle-utils"  # Hub id or folder with the YouTokenToMe bpe.model
    tokenizer_revision: Optional[str] = None
    mode: str = "full"  # full: every weight trains | subset: only `trainable` | lora: adapters on `lora.target_modules`
    trainable: list = field(default_factory=list)  # mode=subset: glob patterns of module or parameter names; each must match
    lora: RudolphLoraConfig = field(default_factory=RudolphLoraConfig)
    gradient_checkpointing: bool = False  # recompute each transformer layer in backward
    base_dtype: str = "float32"  # mode=lora: dtype of the frozen base weights (bfloat16 halves their memory)
    loss_weights: RudolphLossWeights = field(default_factory=RudolphLossWeights)

    def __post_init__(self) -> None:
        _one_of("model.rudolph.mode", self.mode, ("full", "subset", "lora"))
        _one_of("model.rudolph.base_dtype", self.base_dtype, ("float32", "bfloat16", "float16"))
        if self.mode == "subset" and not self.trainable:
            raise ConfigError("model.rudolph.mode=subset needs model.rudolph.trainable: module name patterns, "
                              "e.g. [transformer.layers.23, to_logits]")
        if self.mode != "subset" and self.trainable:
            raise ConfigError("model.rudolph.trainable is only read with model.rudolph.mode=subset")
        if self.base_dtype != "float32" and self.mode != "lora":
            raise ConfigError("model.rudolph.base_dtype applies to the frozen base of mode=lora; "
                              "trained weights stay float32 (use train.mixed_precision for half-precision compute)")
        w = self.loss_weights
        if min(w.left_text, w.image, w.right_text) < 0 or w.left_text + w.image + w.right_text <= 0:
            raise ConfigError("model.rudolph.loss_weights must be >= 0 with a positive sum")


# The names of memecap.ocr.cleaning.RULES (a test keeps them equal), here so that validating a config imports no OCR code.
OCR_CLEANING_RULES = ("handles", "timestamps", "chrome", "watermarks")


@dataclass
class OcrConfig:
    """Reading the meme's own text and showing it to the decoder (ClipCap's prompt, RuDOLPH's left
    text) or quoting it (ocr_template)."""

    enabled: bool = False  # condition the decoder on the OCR text: ClipCap's prompt after the image prefix, RuDOLPH's left text
    engine: str = "detect_tesseract"  # key of memecap.ocr.ENGINES (detect_tesseract: detected lines; tesseract: whole page), or a dotted path to an engine class
    languages: list = field(default_factory=lambda: ["rus", "eng"])  # engine language codes (Tesseract names)
    min_confidence: Optional[float] = None  # words read with a lower confidence (0-100) are dropped; null: the engine's own (detect_tesseract 0, tesseract 60)
    cleaning: list = field(default_factory=lambda: ["handles", "timestamps", "chrome", "watermarks"])  # rules of memecap.ocr.cleaning.RULES applied to each line
    max_tokens: int = 96  # OCR text tokens the decoder sees; longer text is cut (the separator is kept)
    template: str = "Текст на картинке: {text}\nОписание: "  # ClipCap's prompt around the text; the caption follows
    workers: Optional[int] = None  # OCR processes; null: one per CPU core

    def __post_init__(self) -> None:
        if self.template.count("{text}") != 1:
            raise ConfigError("model.ocr.template must contain {text} exactly once")
        if "\n" not in self.template.split("{text}")[1]:
            # Cleaned OCR text has no line breaks, so a break after it marks where the text ends.
            raise ConfigError("model.ocr.template needs a line break after {text}: it separates the text from the caption")
        if self.min_confidence is not None and not 0 <= self.min_confidence <= 100:
            raise ConfigError("model.ocr.min_confidence must be between 0 and 100")
        if self.max_tokens < 1:
            raise ConfigError("model.ocr.max_tokens must be >= 1")
        if not self.languages:
            raise ConfigError("model.ocr.languages is empty: name at least one, e.g. [rus, eng]")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("model.ocr.workers must be >= 1 or null")
        unknown = [r for r in self.cleaning if r not in OCR_CLEANING_RULES]
        if unknown:
            raise ConfigError(f"model.ocr.cleaning: unknown rule(s) {', '.join(map(str, unknown))}; "
                              f"known: {', '.join(OCR_CLEANING_RULES)}")


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
    navec: Optional[str] = None  # local navec file (navec_hudlit_v1_12B_500K_300d_100q.tar) to initialise embeddings
    train_embeddings: bool = True  # false keeps the (navec) word vectors fixed

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.hidden_dim < 1 or self.embed_dim < 1:
            raise ConfigError("model.lstm.num_layers, hidden_dim and embed_dim must be >= 1")
        if self.min_word_count < 1:
            raise ConfigError("model.lstm.min_word_count must be >= 1")
        _dropout("model.lstm.dropout", self.dropout)
        _at_least("model.lstm.attention_dim", self.attention_dim, 1)
        _at_least("model.lstm.max_vocab", self.max_vocab, 1, optional=True)


@dataclass
class ModelConfig:
    family: str = "clipcap"  # key of memecap.models.MODELS: clipcap | rudolph | lstm | vlm | ocr_template (a baseline, nothing to train)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # clipcap's and lstm's image encoder; rudolph reads resize_mode
    mapper: MapperConfig = field(default_factory=MapperConfig)  # clipcap only
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  # clipcap only
    rudolph: RudolphConfig = field(default_factory=RudolphConfig)  # rudolph only
    lstm: LstmConfig = field(default_factory=LstmConfig)  # lstm only
    tiny: TinyConfig = field(default_factory=TinyConfig)
    ocr: OcrConfig = field(default_factory=OcrConfig)  # clipcap (prompt), rudolph (left text), vlm (instruction) and ocr_template
    vlm: "VlmConfig" = field(default_factory=lambda: VlmConfig())  # vlm only (memecap/models/vlm/)

    def __post_init__(self) -> None:
        if self.family == "lstm" and self.ocr.enabled:
            raise ConfigError("model.ocr.enabled=true: the LSTM baselines do not read OCR text; "
                              "use a ClipCap or RuDOLPH recipe (e.g. clipcap_ocr_lora), or set model.ocr.enabled=false")
        if self.family == "lstm" and self.lstm.attention and self.encoder.features != "patches":
            raise ConfigError("model.lstm.attention=true attends over the spatial grid: "
                              "set model.encoder.features=patches")


@dataclass
class OptimConfig:
    name: str = "torch.optim.AdamW"  # dotted path, e.g. bitsandbytes.optim.AdamW8bit
    lr: float = 2e-4  # peak learning rate
    weight_decay: float = 0.01  # decoupled weight decay (not applied to biases and norms)
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: str = "linear"  # linear | cosine | constant (all after warmup)
    warmup_steps: int = 100  # optimizer steps of linear warmup
    max_grad_norm: Optional[float] = 1.0  # gradient clipping; null disables

    def __post_init__(self) -> None:
        _one_of("optim.scheduler", self.scheduler, ("linear", "cosine", "constant"))
        if self.lr <= 0:
            raise ConfigError("optim.lr must be > 0")
        _at_least("optim.weight_decay", self.weight_decay, 0)
        _above("optim.eps", self.eps, 0)
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={self.betas!r}: two numbers in [0, 1), e.g. [0.9, 0.999]")
        _at_least("optim.warmup_steps", self.warmup_steps, 0)
        _above("optim.max_grad_norm", self.max_grad_norm, 0, optional=True)


@dataclass
class GenerationConfig:
    strategy: str = "beam"  # greedy | beam | sample
    num_beams: int = 4  # beam search width
    length_penalty: float = 1.0  # beam scores are divided by length**length_penalty
    top_k: int = 0  # sampling: keep the k most likely tokens (0 = off)
    top_p: float = 1.0  # sampling: nucleus mass
    temperature: float = 1.0  # sampling temperature
    num_return_sequences: int = 1  # captions per image
    max_new_tokens: int = 96  # hard cap on caption length
    repetition_penalty: float = 1.0  # >1 discourages repeated tokens
    no_repeat_ngram_size: int = 0  # forbid repeating n-grams of this size (0 = off)
    quote: str = "free"  # free | copy: after an opening quote mark, write the OCR text, then the closing mark (needs model.ocr.enabled)

    def __post_init__(self) -> None:
        _one_of("generation.strategy", self.strategy, ("greedy", "beam", "sample"))
        _at_least("generation.num_beams", self.num_beams, 1)
        _at_least("generation.top_k", self.top_k, 0)
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"generation.top_p={self.top_p!r}: must be in (0, 1]")
        _above("generation.temperature", self.temperature, 0)
        _at_least("generation.num_return_sequences", self.num_return_sequences, 1)
        _at_least("generation.max_new_tokens", self.max_new_tokens, 1)
        _above("generation.repetition_penalty", self.repetition_penalty, 0)
        _at_least("generation.no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        _one_of("generation.quote", self.quote, ("free", "copy"))
        if self.strategy != "sample" and self.num_return_sequences > max(1, self.num_beams if self.strategy == "beam" else 1):
            raise ConfigError("generation.num_return_sequences must be <= num_beams (or use strategy=sample)")


@dataclass
class EvalConfig:
    scoring: str = "memecap"  # memecap: all references, Russian METEOR; seed: the original project's scorer
    batch_size: int = 32  # generation batch per process
    samples_to_show: int = 5  # captions printed after each evaluation
    compare_constant: bool = True  # also score the best constant caption (a floor the model must beat)

    def __post_init__(self) -> None:
        _one_of("eval.scoring", self.scoring, ("memecap", "seed"))
        _at_least("eval.batch_size", self.batch_size, 1)
        _at_least("eval.samples_to_show", self.samples_to_show, 0)


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"  # checkpoints, logs, predictions and the exported model
    seed: int = 42
    epochs: int = 10
    max_steps: Optional[int] = None  # optimizer steps; overrides epochs when set
    batch_size: int = 32  # per process, per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    mixed_precision: str = "auto"  # auto (bf16 where supported, else no) | no | fp16 | bf16
    log_every: int = 10  # optimizer steps between log lines
    eval_every: Optional[int] = None  # optimizer steps between evaluations (null: each epoch's end)
    save_every: Optional[int] = None  # optimizer steps between checkpoints (null: each evaluation)
    keep_checkpoints: int = 2  # newest step checkpoints kept (the best is kept apart)
    best_metric: str = "bleu4"  # chooses the best checkpoint (val_loss and quote: lower is better)
    early_stopping_patience: Optional[int] = None  # evaluations without improvement before stopping
    resume: Optional[str] = None  # null | auto (newest checkpoint in output_dir) | path
    trackers: list = field(default_factory=lambda: ["tensorboard"])  # Accelerate trackers; [] for none
    progress_bar: bool = True
    push_to_hub: bool = False  # upload the best export at the end (token: HF_TOKEN or `hf auth login`)
    hub_repo: Optional[str] = None  # "user/name" the export is pushed to
    hub_private: bool = False  # create the Hub repo as private
    hub_license: str = "apache-2.0"  # the model card's license (check the base models' licenses)
    overwrite: bool = False  # start afresh in an output_dir that holds an earlier run (its run files are deleted first)
    max_bad_steps: int = 0  # optimizer steps with a non-finite loss or gradient norm skipped before the run stops
    save_on_each_node: bool = False  # machines without a shared output_dir: each keeps its own checkpoints to resume from

    def __post_init__(self) -> None:
        _one_of("train.mixed_precision", self.mixed_precision, ("auto", "no", "fp16", "bf16"))
        if self.push_to_hub and not self.hub_repo:
            raise ConfigError("train.push_to_hub=true needs train.hub_repo=user/name")
        if self.hub_repo is not None and self.hub_repo.count("/") != 1:
            raise ConfigError(f"train.hub_repo={self.hub_repo!r}: expected user/name")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("train.batch_size and train.grad_accum must be >= 1")
        _at_least("train.epochs", self.epochs, 1)
        _at_least("train.max_steps", self.max_steps, 1, optional=True)
        _at_least("train.log_every", self.log_every, 1)
        _at_least("train.eval_every", self.eval_every, 1, optional=True)
        _at_least("train.save_every", self.save_every, 1, optional=True)
        _at_least("train.keep_checkpoints", self.keep_checkpoints, 0)
        _at_least("train.early_stopping_patience", self.early_stopping_patience, 1, optional=True)
        _at_least("train.max_bad_steps", self.max_bad_steps, 0)
        if self.overwrite and self.resume is not None:
            raise ConfigError("train.overwrite=true deletes the earlier run; it cannot be combined with train.resume")
        if self.best_metric not in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "cider", "rougeL", "quote", "val_loss"):
            raise ConfigError(f"train.best_metric={self.best_metric!r}: use bleu1..bleu4, meteor, cider, rougeL, "
                              "quote or val_loss")


@dataclass
class StageConfig:
    """One stage of a multi-stage run: its data, length, learning rate and what stays frozen.
    Each stage continues from the weights the previous one ended with."""

    name: str = ""  # shown in logs ("general", "memes", ...)
    train: list = field(default_factory=list)  # training tables of this stage, concatenated (data.train forms)
    val: str = ""  # validation table of this stage (evaluation and best-checkpoint choice)
    epochs: Optional[int] = None  # epochs of this stage (null: train.epochs)
    max_steps: Optional[int] = None  # optimizer steps of this stage; overrides epochs when set
    lr: Optional[float] = None  # peak learning rate of this stage (null: optim.lr); the schedule restarts
    freeze: list = field(default_factory=list)  # parameter-name patterns (fnmatch; a module name covers its parameters) kept fixed

    def __post_init__(self) -> None:
        if not self.train or not self.val:
            raise ConfigError(f"stages: stage {self.name or '(unnamed)'} needs train: [tables] and val: table")
        if any(not isinstance(t, str) or t == "synthetic" for t in self.train) or self.val == "synthetic":
            raise ConfigError("stages: train and val are table paths or hf: datasets (not 'synthetic')")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError("stages: lr must be > 0")
        _at_least(f"stages[{self.name or '?'}].epochs", self.epochs, 1, optional=True)
        _at_least(f"stages[{self.name or '?'}].max_steps", self.max_steps, 1, optional=True)


@dataclass
class CacheConfig:
    dir: str = "~/.cache/memecap/features"  # frozen-encoder embeddings (and OCR results, in ocr/), keyed by what made them
    enabled: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    stages: list[StageConfig] = field(default_factory=list)  # multi-stage training; empty: one stage from data/train/optim

    def __post_init__(self) -> None:
        if self.eval.scoring == "seed" and self.train.best_metric in ("cider", "rougeL"):
            raise ConfigError(f"train.best_metric={self.train.best_metric}: eval.scoring=seed (the original project's "
                              "scorer) has no CIDEr-D or ROUGE-L; use eval.scoring=memecap")
        # Only a config that trains is checked: an export's decoding settings are read alone, and
        # generate() itself refuses to copy without OCR text.
        copies = self.generation.quote == "copy" and bool(self.data.train or self.stages)
        if copies and not (self.model.ocr.enabled and self.model.family in ("clipcap", "rudolph", "vlm")):
            raise ConfigError("generation.quote=copy copies the OCR text into the caption: it needs model.ocr.enabled=true "
                              "on a clipcap, rudolph or vlm model")
        if self.stages:
            if self.data.train or self.data.val:
                raise ConfigError("data.train/data.val and stages are exclusive: with stages, each stage names its data")
            return
        if not self.data.train:
            return  # a config used only for inference needs no data
        if self.model.family == "ocr_template":
            raise ConfigError("model.family=ocr_template is a baseline with nothing to train; "
                              "score it with: memecap eval ocr_template --data TABLE")
        if self.model.family == "rudolph" and self.generation.strategy == "beam":
            raise ConfigError("generation.strategy=beam: RuDOLPH decodes with greedy or sample (top-k/top-p); "
                              "set generation.strategy=greedy or sample")
        if (self.data.train == "synthetic") != (self.data.val == "synthetic"):
            raise ConfigError("data.train and data.val must both be 'synthetic' or both be real tables")
        if not self.data.val:
            raise ConfigError("data.val is empty: evaluation and best-checkpoint selection need a validation set")


# ---------------------------------------------------------------------------------------------
# Binding plain dicts to the dataclasses, with errors that name the key.


def _bind(cls, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key(s) {', '.join(where + k for k in unknown)}; "
                          f"known in {prefix or 'the top level'}: {', '.join(sorted(names))}")
    kwargs = {name: _coerce(hints[name], value, f"{prefix}.{name}" if prefix else name)
              for name, value in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # pragma: no cover - fields all have defaults
        raise ConfigError(f"{prefix}: {err}") from err


def _coerce(hint, value, key: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if dataclasses.is_dataclass(hint):
        return _bind(hint, value or {}, key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value!r}: expected a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return str(value)
    if hint is list or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r}: expected a list, e.g. [a, b]")
        item = (typing.get_args(hint) or (None,))[0]
        if item is not None and dataclasses.is_dataclass(item):
            return [_bind(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return list(value)
    return value


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolve_recipe_path(recipe: str) -> Path:
    """A recipe name shipped with memecap (`clipcap_lora`) or a path to a YAML file."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        return path
    shipped = RECIPES_DIR / f"{recipe}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"no recipe named {recipe!r}; shipped recipes: {', '.join(list_recipes())}")
    return shipped


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _read_recipe(path: Path, seen: tuple = ()) -> dict:
    if path in seen:
        raise ConfigError(f"recipe {path} extends itself through {' -> '.join(map(str, seen))}")
    raw = _load_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends={parent!r}: name one recipe (extends: clipcap_lora) or one YAML file")
    is_file = parent.endswith((".yaml", ".yml"))
    parent_path = resolve_recipe_path(str(path.parent / parent) if is_file else parent)
    return _merge(_read_recipe(parent_path, seen + (path,)), raw)


def _load_yaml(path: Path):
    """A YAML file; a syntax error names the file, line and column instead of PyYAML's traceback."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def parse_overrides(overrides: list[str]) -> dict:
    """`a.b=c` strings -> nested dict; values are parsed as YAML (`1e-4`, `true`, `[a, b]`, `null`)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part}")
        node[parts[-1]] = value
    return tree


def config_from_dict(values: dict) -> Config:
    return _bind(Config, values, "")


def load_config(recipe: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Recipe (name or YAML path, may `extends:` another) + dotted overrides -> validated Config."""
    values = _read_recipe(resolve_recipe_path(recipe)) if recipe else {}
    values = _merge(values, parse_overrides(overrides or []))
    return config_from_dict(values)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), allow_unicode=True, sort_keys=False)


def save_config(cfg: Config, path: Path) -> None:
    Path(path).write_text(to_yaml(cfg), encoding="utf-8")


def load_saved_config(path: Path, *, published: bool = False) -> Config:
    """A config saved with a run. `published`: the file may be someone else's (a checkpoint
    given to `memecap caption`), so it may not name code to import (memecap/untrusted.py)."""
    values = _load_yaml(path) or {}
    if published:
        from memecap.untrusted import check_published_config

        check_published_config(values, Path(path))
    return config_from_dict(values)



# ---------------------------------------------------------------------------------------------
# The vision-language-model family (memecap/models/vlm/). Defined here, last, rather than in its
# folder: importing memecap.models.vlm would import the model registry (and transformers) with
# every config. ModelConfig refers to it through a lambda, so it may come after it.

VLM_TINY_ARCHITECTURES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm", "llava")  # memecap/models/vlm/tiny.py


@dataclass
class VlmLoraConfig:
    r: int = 16  # rank
    alpha: int = 32  # scaling numerator
    dropout: float = 0.05  # dropout on the LoRA branch
    # Projections of the language model only (its attention and MLP); the vision tower's modules of the same names are not adapted.
    target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    # model.vlm.vision=lora: the vision tower's linear layers (Qwen2-VL qkv/proj/fc1/fc2, Qwen2.5-VL gate/up/down_proj,
    # Qwen3-VL linear_fc1/2, SigLIP/Idefics3 q/k/v/out_proj, fc1/fc2); names a tower lacks are skipped
    vision_target_modules: list = field(default_factory=lambda: ["qkv", "proj", "q_proj", "k_proj", "v_proj", "out_proj", "fc1",
                                                                 "fc2", "gate_proj", "up_proj", "down_proj", "linear_fc1", "linear_fc2"])

    def __post_init__(self) -> None:
        _check_lora("model.vlm.lora", self)


@dataclass
class VlmConfig:
    """A vision-language model that transformers loads with AutoModelForImageTextToText (family: vlm)."""

    name: str = "Qwen/Qwen2-VL-2B-Instruct"  # Hub id or local folder (safetensors); "tiny-random" builds a tiny one of tiny_architecture
    revision: Optional[str] = None  # Hub revision (a commit hash pins it)
    tiny_architecture: str = "qwen2_vl"  # the class a "tiny-random" model is made of: qwen2_vl | qwen2_5_vl | qwen3_vl | smolvlm | llava
    instruction: str = "Опиши мем подробно: что изображено и какой на нём текст."  # the user turn after the image
    ocr_instruction: str = "Текст на картинке (распознан OCR): {text}"  # model.ocr.enabled: a line added to the instruction
    mode: str = "lora"  # lora: adapters on the language model | full: the language model (and connector) trains whole
    vision: str = "frozen"  # the vision tower: frozen | lora (adapters on vision_target_modules) | full
    lora: VlmLoraConfig = field(default_factory=VlmLoraConfig)
    quantization: str = "none"  # none | 8bit | 4bit (NF4, double quantization): the frozen base through bitsandbytes (QLoRA)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16: frozen (non-quantized) weights; auto = bf16 on a bf16 GPU
    gradient_checkpointing: bool = False  # recompute each layer in backward
    min_pixels: Optional[int] = None  # Qwen-VL image budget: fewest pixels an image is resized to (null: the model's own)
    max_pixels: Optional[int] = None  # Qwen-VL image budget: most pixels (28x28 px = one image token at merge 2, patch 14)
    longest_edge: Optional[int] = None  # Idefics3/SmolVLM: side the image is resized to (one tile, no splitting); null: the model's own

    def __post_init__(self) -> None:
        _one_of("model.vlm.mode", self.mode, ("lora", "full"))
        _one_of("model.vlm.vision", self.vision, ("frozen", "lora", "full"))
        _one_of("model.vlm.quantization", self.quantization, ("none", "8bit", "4bit"))
        _one_of("model.vlm.dtype", self.dtype, WEIGHT_DTYPES)
        _one_of("model.vlm.tiny_architecture", self.tiny_architecture, VLM_TINY_ARCHITECTURES)
        if self.quantization != "none" and (self.mode == "full" or self.vision == "full"):
            raise ConfigError("model.vlm.quantization needs mode=lora and vision=frozen or lora: quantized weights cannot be trained")
        if self.mode == "full" and self.vision == "lora":
            raise ConfigError("model.vlm.vision=lora adapts the vision tower beside a LoRA language model; with mode=full "
                              "set vision=frozen or full")
        if (self.mode == "full" or self.vision == "full") and self.dtype not in ("auto", "float32"):
            raise ConfigError("model.vlm.dtype: fully trained weights stay float32 (use train.mixed_precision=bf16 for 16-bit compute)")
        if self.ocr_instruction.count("{text}") != 1:
            raise ConfigError("model.vlm.ocr_instruction must contain {text} exactly once")
        if not self.instruction.strip():
            raise ConfigError("model.vlm.instruction is empty: say what the model should write")
        _at_least("model.vlm.min_pixels", self.min_pixels, 1, optional=True)
        _at_least("model.vlm.max_pixels", self.max_pixels, 1, optional=True)
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ConfigError("model.vlm.min_pixels must be <= model.vlm.max_pixels")
        _at_least("model.vlm.longest_edge", self.longest_edge, 1, optional=True)
