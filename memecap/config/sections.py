"""The sections of a run's config that every family shares, `ModelConfig` (built from the families'
registry) and the whole `Config`."""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Mapping, Optional

from memecap.config_checks import WEIGHT_DTYPES, ConfigError, above, at_least, duration_seconds, list_of, one_of, seed
from memecap.metrics.registry import SCORINGS, metric_names, not_offered
from memecap.models import DEFAULT_FAMILY, FAMILIES, Family
from memecap.models.packaged import check_packaged_encoder, is_package_name


OBJECTIVES = ("ce", "scst")  # what a stage trains on: the reference captions, or its sampled captions' reward


@dataclass
class SyntheticConfig:
    """The built-in demo set: coloured shapes with Cyrillic captions, generated on first use."""

    n_train: int = 2000  # training images
    n_val: int = 200  # held-out images
    image_size: int = 64  # side of the generated square images
    seed: int = 0  # generator seed (independent of the training seed)

    def __post_init__(self) -> None:
        at_least("data.synthetic.n_train", self.n_train, 1)
        at_least("data.synthetic.n_val", self.n_val, 1)
        at_least("data.synthetic.image_size", self.image_size, 16)
        seed("data.synthetic.seed", self.seed)


@dataclass
class DataConfig:
    train: str = ""  # table (.tsv meme format, .csv, .jsonl), "hf:imagefolder:DIR", "hf:user/name", or "synthetic"
    val: str = ""  # same forms; "synthetic" pairs with a synthetic train set
    image_dir: Optional[str] = None  # where images live when not next to the table in images/
    on_bad_row: str = "error"  # error: stop and list every bad row; skip: drop them, count and log each
    max_train_rows: Optional[int] = None  # cap for quick experiments
    max_val_rows: Optional[int] = None  # cap on evaluated examples
    max_caption_tokens: int = 128  # caption length cap in tokens, end-of-text token included (a model may allow fewer)
    # truncate: cut, keeping the end-of-text token; reject: stop and say how many are too long
    long_captions: str = "truncate"
    num_workers: int = 0  # DataLoader workers
    # full: every image decoded at start (results kept per image in the cache, so a next start only stats
    # each file); sample: `check_sample` images picked at random (seeded); none: no image. An image left
    # unchecked that cannot be read is met when the run reads it, and data.on_bad_row decides then.
    check: str = "full"
    check_sample: int = 1000
    # Read the train split lazily, batch by batch, never whole (.jsonl tables, .tar shards, folders of them,
    # `train-{000..099}.tar`): split by process, its position kept in checkpoints. Val is read whole.
    streaming: bool = False
    train_rows: Optional[int] = None  # a streamed split's row count, declared instead of counted at start
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        one_of("data.on_bad_row", self.on_bad_row, ("error", "skip"))
        one_of("data.long_captions", self.long_captions, ("truncate", "reject"))
        if self.max_caption_tokens < 2:
            raise ConfigError("data.max_caption_tokens must be >= 2 (one word and the end token)")
        at_least("data.max_train_rows", self.max_train_rows, 1, optional=True)
        at_least("data.max_val_rows", self.max_val_rows, 1, optional=True)
        at_least("data.num_workers", self.num_workers, 0)
        one_of("data.check", self.check, ("full", "sample", "none"))
        at_least("data.check_sample", self.check_sample, 1)
        at_least("data.train_rows", self.train_rows, 1, optional=True)
        if self.train_rows is not None and not self.streaming:
            raise ConfigError("data.train_rows declares a streamed train split's length: set data.streaming=true, "
                              "or leave it unset (a table read whole is counted)")
        if self.streaming and self.num_workers:
            raise ConfigError("data.num_workers: a streamed train split is read by the training process itself "
                              "(its position is what a checkpoint keeps): set data.num_workers=0")
        if self.streaming and (self.train == "synthetic" or self.train.lower().endswith((".tsv", ".csv"))):
            raise ConfigError(f"data.train={self.train}: data.streaming=true reads .jsonl tables, .tar shards (a "
                              "folder of them or name-{000..099}.tar) and hf: datasets; convert the table to .jsonl "
                              "(one JSON object a line: uid, image, text or captions) or set data.streaming=false")
        if self.streaming and self.max_train_rows is not None:
            raise ConfigError("data.max_train_rows: a streamed split is not capped by rows; set data.train_rows "
                              "to read only that many (each process its share)")


@dataclass
class EncoderConfig:
    # ruclip | clip | siglip | resnet (a transformers ResNetModel) | auto (any transformers image backbone)
    kind: str = "ruclip"
    # Hub id or local folder; "tiny-random" builds one; package:efficientnet-lite0 (kind auto)
    name: str = "ai-forever/ruclip-vit-base-patch32-384"
    revision: Optional[str] = None  # Hub revision (commit, tag or branch)
    trainable: bool = False  # frozen encoders are run once per image and cached
    resize_mode: str = "pad"  # pad keeps the whole meme (its text); crop is CLIP's centre crop; squash
    features: str = "pooled"  # pooled: one vector per image (ClipCap); patches: every last-layer token
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16: frozen weights; auto = bf16 on a bf16 GPU

    def __post_init__(self) -> None:
        one_of("model.encoder.kind", self.kind, ("ruclip", "clip", "siglip", "resnet", "auto"))
        if is_package_name(self.name):
            check_packaged_encoder(self.name, self.kind)
        one_of("model.encoder.dtype", self.dtype, WEIGHT_DTYPES)
        if self.trainable and self.dtype not in ("auto", "float32"):
            raise ConfigError("model.encoder.dtype: a trainable encoder keeps float32 weights "
                              "(use train.mixed_precision=bf16 for 16-bit compute)")
        one_of("model.encoder.features", self.features, ("pooled", "patches"))
        one_of("model.encoder.resize_mode", self.resize_mode, ("pad", "crop", "squash"))


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
            at_least(f"model.tiny.{name}", getattr(self, name), 1)
        list_of("model.tiny.resnet_widths", self.resnet_widths, int)
        list_of("model.tiny.resnet_depths", self.resnet_depths, int)
        if self.gpt_width % self.gpt_heads:
            raise ConfigError(f"model.tiny.gpt_width={self.gpt_width} must be a multiple of gpt_heads={self.gpt_heads}")


# The names of memecap.ocr.cleaning.RULES (a test keeps them equal), here so that validating a config
# imports no OCR code.
OCR_CLEANING_RULES = ("handles", "timestamps", "chrome", "watermarks")


@dataclass
class OcrConfig:
    """Reading the meme's own text and showing it to the decoder (ClipCap's prompt, RuDOLPH's left
    text) or quoting it (ocr_template)."""

    # condition the decoder on the OCR text: ClipCap's prompt after the image prefix, RuDOLPH's left text
    enabled: bool = False
    # key of memecap.ocr.ENGINES (detect_tesseract: detected lines; tesseract: whole page), or a dotted path
    # to an engine class
    engine: str = "detect_tesseract"
    languages: list = field(default_factory=lambda: ["rus", "eng"])  # engine language codes (Tesseract names)
    # words read with a lower confidence (0-100) are dropped; null: the engine's own (detect_tesseract 0, tesseract 60)
    min_confidence: Optional[float] = None
    # rules of memecap.ocr.cleaning.RULES applied to each line
    cleaning: list = field(default_factory=lambda: ["handles", "timestamps", "chrome", "watermarks"])
    max_tokens: int = 96  # OCR text tokens the decoder sees; longer text is cut (the separator is kept)
    template: str = "Текст на картинке: {text}\nОписание: "  # ClipCap's prompt around the text; the caption follows
    workers: Optional[int] = None  # OCR processes; null: one per CPU core

    def __post_init__(self) -> None:
        if self.template.count("{text}") != 1:
            raise ConfigError("model.ocr.template must contain {text} exactly once")
        if "\n" not in self.template.split("{text}")[1]:
            # Cleaned OCR text has no line breaks, so a break after it marks where the text ends.
            raise ConfigError("model.ocr.template needs a line break after {text}: "
                              "it separates the text from the caption")
        if self.min_confidence is not None and not 0 <= self.min_confidence <= 100:
            raise ConfigError("model.ocr.min_confidence must be between 0 and 100")
        if self.max_tokens < 1:
            raise ConfigError("model.ocr.max_tokens must be >= 1")
        if not self.languages:
            raise ConfigError("model.ocr.languages is empty: name at least one, e.g. [rus, eng]")
        list_of("model.ocr.languages", self.languages, str)
        list_of("model.ocr.cleaning", self.cleaning, str)
        if self.workers is not None and self.workers < 1:
            raise ConfigError("model.ocr.workers must be >= 1 or null")
        unknown = [r for r in self.cleaning if r not in OCR_CLEANING_RULES]
        if unknown:
            raise ConfigError(f"model.ocr.cleaning: unknown rule(s) {', '.join(map(str, unknown))}; "
                              f"known: {', '.join(OCR_CLEANING_RULES)}")


# The sections of `model` that any family may read (FAMILIES says which it does); a family's own
# sections are in its settings module.
SHARED_SECTIONS = {"encoder": EncoderConfig, "tiny": TinyConfig, "ocr": OcrConfig}


def model_config_class(families: Mapping[str, Family]) -> type:
    """The `model` dataclass for a registry of families: `family`, the shared sections and every
    family's own (its settings module's SECTIONS), so that a new family edits nothing here. A plain
    dataclass that binding, `to_dict` and YAML treat as any other; its fields keep the order saved
    configs have had: the image encoder, the families' own sections, then tiny and ocr."""
    own: dict = {}
    for name, family in families.items():
        for section, settings in family.own_sections.items():
            if section in own or section in SHARED_SECTIONS or section == "family":
                raise ValueError(f"FAMILIES[{name!r}]: model.{section} is defined twice")
            own[section] = settings
        if set(family.sections) != set(family.sections) & set(SHARED_SECTIONS) | set(family.own_sections):
            raise ValueError(f"FAMILIES[{name!r}].sections={family.sections}: the shared sections it reads "
                             f"({', '.join(SHARED_SECTIONS)}) and all of its own ({', '.join(family.own_sections)})")
    sections = {"encoder": EncoderConfig, **own, "tiny": TinyConfig, "ocr": OcrConfig}
    fields = [("family", str, field(default=DEFAULT_FAMILY)),
              *((name, settings, field(default_factory=settings)) for name, settings in sections.items())]
    cls = make_dataclass("ModelConfig", fields, namespace={
        "__doc__": "One section per family plus shared ones; FAMILY_SECTIONS says which a family reads.",
        "__post_init__": _model_checks(families)})
    cls.__module__ = __name__  # where pickle and binding's type hints look for it
    return cls


def _model_checks(families: Mapping[str, Family]):
    """ModelConfig's __post_init__: a known family, no OCR switched on for one that does not read it,
    and the family's own cross-field rules (its settings module's check_model)."""
    def __post_init__(self) -> None:
        one_of("model.family", self.family, tuple(families))
        family = families[self.family]
        if self.ocr.enabled and not family.reads_ocr:
            hint = family.foreign_section_hints.get("ocr", f"model.family={self.family} does not read OCR text")
            raise ConfigError(f"model.ocr.enabled=true: {hint}, or set model.ocr.enabled=false")
        if family.check_model is not None:
            family.check_model(self)
    return __post_init__


ModelConfig = model_config_class(FAMILIES)


def _either(names: list) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


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
        one_of("optim.scheduler", self.scheduler, ("linear", "cosine", "constant"))
        if self.lr <= 0:
            raise ConfigError("optim.lr must be > 0")
        at_least("optim.weight_decay", self.weight_decay, 0)
        above("optim.eps", self.eps, 0)
        list_of("optim.betas", self.betas, (int, float))
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={self.betas!r}: two numbers in [0, 1), e.g. [0.9, 0.999]")
        at_least("optim.warmup_steps", self.warmup_steps, 0)
        above("optim.max_grad_norm", self.max_grad_norm, 0, optional=True)


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
    # free | copy: after an opening quote mark, write the OCR text, then the closing mark (needs model.ocr.enabled)
    quote: str = "free"

    def __post_init__(self) -> None:
        one_of("generation.strategy", self.strategy, ("greedy", "beam", "sample"))
        at_least("generation.num_beams", self.num_beams, 1)
        at_least("generation.top_k", self.top_k, 0)
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"generation.top_p={self.top_p!r}: must be in (0, 1]")
        above("generation.temperature", self.temperature, 0)
        at_least("generation.num_return_sequences", self.num_return_sequences, 1)
        at_least("generation.max_new_tokens", self.max_new_tokens, 1)
        above("generation.repetition_penalty", self.repetition_penalty, 0)
        at_least("generation.no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        one_of("generation.quote", self.quote, ("free", "copy"))
        beams = self.num_beams if self.strategy == "beam" else 1
        if self.strategy != "sample" and self.num_return_sequences > max(1, beams):
            raise ConfigError("generation.num_return_sequences must be <= num_beams (or use strategy=sample)")


@dataclass
class EvalConfig:
    scoring: str = "memecap"  # memecap: all references, Russian METEOR; seed: the original project's scorer
    batch_size: int = 32  # generation batch per process
    samples_to_show: int = 5  # captions printed after each evaluation
    compare_constant: bool = True  # also score the best constant caption (a floor the model must beat)

    def __post_init__(self) -> None:
        one_of("eval.scoring", self.scoring, tuple(SCORINGS))
        at_least("eval.batch_size", self.batch_size, 1)
        at_least("eval.samples_to_show", self.samples_to_show, 0)


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
    # e.g. 3h50m or 03:50:00: checkpoint and stop (exit 0, no summary.json) while another step and a
    # checkpoint still fit; train.resume=auto continues. SIGUSR1 stops the same way at the next step.
    time_limit: Optional[str] = None
    # A checkpoint (or a run folder: its newest), or an exported model (a folder, or a Hub id), whose
    # trained weights a new run starts from; the same model settings. Not its optimizer, counters or
    # data position: that is `resume`.
    init_from: Optional[str] = None
    trackers: list = field(default_factory=lambda: ["tensorboard"])  # Accelerate trackers; [] for none
    progress_bar: bool = True
    push_to_hub: bool = False  # upload the best export at the end (token: HF_TOKEN or `hf auth login`)
    hub_repo: Optional[str] = None  # "user/name" the export is pushed to
    hub_private: bool = False  # create the Hub repo as private
    hub_license: str = "apache-2.0"  # the model card's license (check the base models' licenses)
    overwrite: bool = False  # start afresh in an output_dir that holds an earlier run (its run files are deleted first)
    max_bad_steps: int = 0  # optimizer steps with a non-finite loss or gradient norm skipped before the run stops
    save_on_each_node: bool = False  # no shared output_dir: each machine keeps its own checkpoints to resume from
    # ce: cross-entropy on the reference captions; scst: self-critical reward fine-tuning (the scst section)
    objective: str = "ce"

    def __post_init__(self) -> None:
        one_of("train.mixed_precision", self.mixed_precision, ("auto", "no", "fp16", "bf16"))
        one_of("train.objective", self.objective, OBJECTIVES)
        if not self.output_dir.strip():
            raise ConfigError("train.output_dir is empty: name the run's folder (e.g. train.output_dir=runs/first)")
        seed("train.seed", self.seed)
        list_of("train.trackers", self.trackers, str)
        if self.push_to_hub and not self.hub_repo:
            raise ConfigError("train.push_to_hub=true needs train.hub_repo=user/name")
        if self.hub_repo is not None and self.hub_repo.count("/") != 1:
            raise ConfigError(f"train.hub_repo={self.hub_repo!r}: expected user/name")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("train.batch_size and train.grad_accum must be >= 1")
        at_least("train.epochs", self.epochs, 1)
        at_least("train.max_steps", self.max_steps, 1, optional=True)
        at_least("train.log_every", self.log_every, 1)
        at_least("train.eval_every", self.eval_every, 1, optional=True)
        at_least("train.save_every", self.save_every, 1, optional=True)
        at_least("train.keep_checkpoints", self.keep_checkpoints, 0)
        at_least("train.early_stopping_patience", self.early_stopping_patience, 1, optional=True)
        at_least("train.max_bad_steps", self.max_bad_steps, 0)
        if self.time_limit is not None:
            duration_seconds("train.time_limit", self.time_limit)
        if self.overwrite and self.resume is not None:
            raise ConfigError("train.overwrite=true deletes the earlier run; it cannot be combined with train.resume")
        if self.best_metric not in metric_names():
            *first, last = metric_names()
            raise ConfigError(f"train.best_metric={self.best_metric!r}: use {', '.join(first)} or {last}")


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
    # parameter-name patterns (fnmatch; a module name covers its parameters) kept fixed
    freeze: list = field(default_factory=list)
    objective: Optional[str] = None  # ce | scst (null: train.objective)

    def __post_init__(self) -> None:
        if self.objective is not None:
            one_of(f"stages[{self.name or '?'}].objective", self.objective, OBJECTIVES)
        if not self.train or not self.val:
            raise ConfigError(f"stages: stage {self.name or '(unnamed)'} needs train: [tables] and val: table")
        if any(not isinstance(t, str) or t == "synthetic" for t in self.train) or self.val == "synthetic":
            raise ConfigError("stages: train and val are table paths or hf: datasets (not 'synthetic')")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError("stages: lr must be > 0")
        at_least(f"stages[{self.name or '?'}].epochs", self.epochs, 1, optional=True)
        list_of(f"stages[{self.name or '?'}].freeze", self.freeze, str)
        at_least(f"stages[{self.name or '?'}].max_steps", self.max_steps, 1, optional=True)


# The reward's parts, each a weight of the scst section (memecap/training/scst.py computes them).
REWARD_PARTS = ("cider", "quote", "length", "brevity", "repetition")


@dataclass
class ScstConfig:
    """Self-critical reward fine-tuning (a stage whose objective is scst): per image, `samples`
    captions sampled with the generation settings, each rewarded, pushed up by how much it beats the
    baseline. Reward = the weighted sum of its parts (memecap/training/scst.py)."""

    samples: int = 5  # captions sampled per image
    baseline: str = "mean_of_others"  # mean_of_others: the other samples' mean reward | greedy: the greedy caption's
    cider: float = 1.0  # CIDEr-D against the image's references (document frequencies of the training split)
    quote: float = 1.0  # 1 - quote CER against the references' quote (or the OCR text)
    length: float = 0.0  # minus the share of words beyond max_words
    brevity: float = 0.0  # minus the share of the closest-length reference's words the caption lacks
    repetition: float = 0.0  # minus the share of repeated word bigrams
    max_words: int = 60
    # Weight of a KL penalty to the stage's starting weights (0: none): keeps the policy near what it
    # started from (0.1 stopped the collapse seen by step 120 on real memes: docs/benchmarks.md).
    # Costs a copy of the trained parameters, kept in each checkpoint; not under ZeRO-3.
    kl: float = 0.0
    # Whether the policy's forward keeps the model's training forward (dropout, batch statistics). Off:
    # the captions are sampled without them, so the log-probability pushed up is that of the policy
    # that chose them, and the KL estimate is 0 where nothing has moved yet (with dropout it is not:
    # the penalty then also fights the noise).
    dropout: bool = False

    def __post_init__(self) -> None:
        one_of("scst.baseline", self.baseline, ("mean_of_others", "greedy"))
        at_least("scst.samples", self.samples, 2 if self.baseline == "mean_of_others" else 1)
        at_least("scst.max_words", self.max_words, 1)
        at_least("scst.kl", self.kl, 0)
        for name in REWARD_PARTS:
            at_least(f"scst.{name}", getattr(self, name), 0)
        if not any(getattr(self, name) for name in REWARD_PARTS):
            raise ConfigError("scst: every reward weight is 0: nothing to optimise")


@dataclass
class CacheConfig:
    # frozen-encoder embeddings (OCR results in ocr/, image checks in image_checks/), keyed by what made them
    dir: str = "~/.cache/memecap/features"
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
    scst: ScstConfig = field(default_factory=ScstConfig)
    # multi-stage training; empty: one stage from data/train/optim
    stages: list[StageConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        if why := not_offered(self.train.best_metric, self.eval.scoring):
            raise ConfigError(f"train.best_metric={self.train.best_metric}: {why}")
        # Only a config that trains is checked: an export's decoding settings are read alone, and
        # generate() itself refuses to copy without OCR text.
        name, family = self.model.family, FAMILIES[self.model.family]
        copies = self.generation.quote == "copy" and bool(self.data.train or self.stages)
        if copies and not (self.model.ocr.enabled and family.reads_ocr and not family.baseline):
            quoting = [n for n, f in FAMILIES.items() if f.reads_ocr and not f.baseline]
            raise ConfigError("generation.quote=copy copies the OCR text into the caption: "
                              f"it needs model.ocr.enabled=true on a {_either(quoting)} model")
        scst = self.train.objective == "scst" or any(s.objective == "scst" for s in self.stages)
        if scst and self.data.streaming:
            raise ConfigError("objective scst rewards captions against each image's references, read with the "
                              "split: it trains on tables read whole (data.streaming=false)")
        if self.stages:
            if self.data.train or self.data.val:
                raise ConfigError("data.train/data.val and stages are exclusive: "
                                  "with stages, each stage names its data")
            return
        if not self.data.train:
            return  # a config used only for inference needs no data
        if family.baseline:
            raise ConfigError(f"model.family={name} is a baseline with nothing to train; "
                              f"score it with: memecap eval {name} --data TABLE")
        if not family.beam_search and self.generation.strategy == "beam":
            reason = family.without_beam_search or f"model.family={name} has no beam search"
            raise ConfigError(f"generation.strategy=beam: {reason}; set generation.strategy=greedy or sample")
        if (self.data.train == "synthetic") != (self.data.val == "synthetic"):
            raise ConfigError("data.train and data.val must both be 'synthetic' or both be real tables")
        if not self.data.val:
            raise ConfigError("data.val is empty: evaluation and best-checkpoint selection need a validation set")
