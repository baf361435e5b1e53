"""The measurements of the GPU kit, most important first: a run that is cut short still holds the
figures memecap's promises rest on. Each is one memecap recipe on a random-initialised model of
the real shape (cost does not depend on weights), in a process of its own with a time budget.

`--cpu-dry-run` runs the same list through the same code with tiny shapes (TINY below).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

# ClipCap reads a frozen image encoder's cached features: a tiny random CLIP tower stands in for
# ruCLIP (it runs once per image and holds no accelerator memory while training).
TINY_ENCODER = ("model.encoder.kind=clip", "model.encoder.name=tiny-random", "model.encoder.trainable=false",
                "model.encoder.features=pooled")


@dataclass(frozen=True)
class Mode:
    name: str  # the id used by --only and --set
    what: str  # the table's description
    kind: str  # train: optimizer steps | generate: evaluation decoding
    recipe: str
    # clipcap (shape: a ruGPT-3 size of scripts/bench_memory.py) | rudolph (a rudolph MODELS key) |
    # vlm (shape "published": the recipe's base at its published shape, memecap/models/vlm/known.py)
    family: str
    shape: str
    batch: int
    tokens: int  # caption tokens per sample (a VLM's image and prompt come on top); RuDOLPH: its fixed
    # sequence; generate: new tokens
    overrides: tuple = ()
    accelerate: Optional[str] = None  # accelerate config (DeepSpeed modes), under accelerate_configs/
    budget_s: int = 60
    target_gib: Optional[float] = None  # the promise the peak is checked against
    steps: int = 8  # optimizer steps (train) or batches (generate), the first `warmup` not timed
    warmup: int = 2
    objective: str = "ce"  # train.objective; scst samples `tokens` new tokens per caption

    @property
    def zero_stage(self) -> int:
        return {"deepspeed_zero2_offload.yaml": 2, "deepspeed_zero3_offload.yaml": 3}.get(self.accelerate, 0)


MODES = [
    Mode("qlora-large", "ClipCap, ruGPT-3 large QLoRA (4-bit NF4 + LoRA r=16), checkpointing, 8-bit AdamW",
         "train", "clipcap_qlora_large", "clipcap", "large", 8, 128, TINY_ENCODER, budget_s=75, target_gib=6),
    Mode("zero2-large", "ClipCap, ruGPT-3 large full fine-tune, ZeRO-2 optimizer offload, checkpointing",
         "train", "clipcap_mlp_finetune", "clipcap", "large", 8, 128,
         (*TINY_ENCODER, "model.decoder.gradient_checkpointing=true", "optim.name=torch.optim.AdamW"),
         accelerate="deepspeed_zero2_offload.yaml", budget_s=150, target_gib=8),
    Mode("rudolph-350m", "RuDOLPH-350M full fine-tune, checkpointing, 8-bit AdamW (`rudolph_350m`)",
         "train", "rudolph_350m", "rudolph", "350M_v1", 4, 384, budget_s=60, target_gib=8),
    Mode("rudolph-2.7b-lora", "RuDOLPH-2.7B LoRA r=16, bf16 base, checkpointing (`rudolph_2.7b`)",
         "train", "rudolph_2.7b", "rudolph", "2.7B", 4, 1088, budget_s=120, target_gib=16),
    Mode("vlm-qwen2.5-3b-qlora", "Qwen2.5-VL-3B QLoRA (4-bit NF4 + LoRA r=16), checkpointing, 8-bit AdamW "
         "(`vlm_qwen2_5_3b_qlora`, 512 image tokens)", "train", "vlm_qwen2_5_3b_qlora", "vlm", "published", 4, 160,
         budget_s=300, target_gib=8),
    Mode("vlm-qwen3-4b-qlora", "Qwen3-VL-4B QLoRA (4-bit NF4 + LoRA r=16), checkpointing, 8-bit AdamW "
         "(`vlm_qwen3_4b_qlora`, 512 image tokens)", "train", "vlm_qwen3_4b_qlora", "vlm", "published", 4, 160,
         budget_s=300, target_gib=10),
    Mode("clipcap-small-fp32", "ClipCap, ruGPT-3 small LoRA (`clipcap_lora`), fp32",
         "train", "clipcap_lora", "clipcap", "small", 32, 128, (*TINY_ENCODER, "train.mixed_precision='no'"),
         budget_s=40),
    Mode("clipcap-small-bf16", "ClipCap, ruGPT-3 small LoRA (`clipcap_lora`), bf16 mixed precision",
         "train", "clipcap_lora", "clipcap", "small", 32, 128, (*TINY_ENCODER, "train.mixed_precision=bf16"),
         budget_s=40),
    Mode("scst-clipcap-small", "ClipCap, ruGPT-3 small LoRA (`clipcap_lora`), fp32, self-critical steps: "
         "5 captions sampled per image", "train", "clipcap_lora", "clipcap", "small", 32, 128,
         (*TINY_ENCODER, "train.mixed_precision='no'"), budget_s=60, objective="scst"),
    Mode("generate-clipcap-small", "ClipCap, ruGPT-3 small: evaluation decoding (`clipcap_lora`: beam 4)",
         "generate", "clipcap_lora", "clipcap", "small", 32, 96, TINY_ENCODER, budget_s=40, steps=4, warmup=1),
    Mode("generate-rudolph-350m", "RuDOLPH-350M: evaluation decoding (`rudolph_350m`: greedy)",
         "generate", "rudolph_350m", "rudolph", "350M_v1", 16, 63, budget_s=50, steps=4, warmup=1),
]
# What one GPU run may take, the environment check and installing included: under 9 minutes, inside
# a 10-minute command. All modes together need more: the last ones are skipped and rerun with --only.
TIME_LIMIT_S = 530
# The dry run's budgets only catch a hung mode: a shared CI CPU is slow, and DeepSpeed JIT-builds
# its CPU communication op the first time (about 40 s on an idle 2-core machine, minutes on a busy one).
DRY_RUN_BUDGET_S, DRY_RUN_TIME_LIMIT_S = 300, 1800


def tiny(mode: Mode) -> Mode:
    """The same mode at shapes a CPU runs in seconds (bench_memory's `tiny` decoder and RuDOLPH)."""
    if mode.kind == "generate":
        return replace(mode, shape="tiny", batch=2, tokens=4, budget_s=DRY_RUN_BUDGET_S, steps=2, warmup=1)
    return replace(mode, shape="tiny", batch=2, tokens=16, budget_s=DRY_RUN_BUDGET_S, steps=3, warmup=1)
