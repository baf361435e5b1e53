"""ClipCap's own sections of `model`: the mapping network and the causal LM decoder."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from memecap.config_checks import (WEIGHT_DTYPES, ConfigError, LoraConfig, at_least, check_lora, check_train_mode,
                                   dropout_probability, one_of)


@dataclass
class MapperConfig:
    type: str = "mlp"  # mlp | transformer
    prefix_length: int = 10  # GPT input embeddings made from one image (patches + mlp: one per patch)
    clip_length: int = 10  # transformer mapper: tokens the image vector is first expanded to
    num_layers: int = 8  # transformer mapper: encoder layers
    num_heads: int = 8  # transformer mapper: attention heads
    dropout: float = 0.0  # mapper dropout

    def __post_init__(self) -> None:
        one_of("model.mapper.type", self.type, ("mlp", "transformer"))
        if self.prefix_length < 1 or self.clip_length < 1:
            raise ConfigError("model.mapper.prefix_length and clip_length must be >= 1")
        at_least("model.mapper.num_layers", self.num_layers, 1)
        at_least("model.mapper.num_heads", self.num_heads, 1)
        dropout_probability("model.mapper.dropout", self.dropout)


@dataclass
class DecoderConfig:
    # any AutoModelForCausalLM (GPT-2, Llama, Qwen2, Gemma 3...); Hub id or folder; "tiny-random"
    name: str = "ai-forever/rugpt3small_based_on_gpt2"
    revision: Optional[str] = None  # Hub revision
    gguf_file: Optional[str] = None  # a GGUF file inside the folder `name` (config, tokenizer, weights; needs `gguf`)
    mode: str = "frozen"  # frozen | full | subset (only `trainable`) | lora (adapters on `lora.target_modules`)
    trainable: list = field(default_factory=list)  # mode=subset: glob patterns of decoder module or parameter names
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    quantization: str = "none"  # none | 8bit | 4bit: load the frozen base with bitsandbytes (QLoRA with mode=lora)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16: frozen (unquantized) weights; auto = bf16 on a bf16 GPU
    # GPT-2's; other architectures get their own (clipcap/architectures.py)
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(target_modules=["c_attn", "c_proj", "c_fc"]))

    def __post_init__(self) -> None:
        check_train_mode("model.decoder", self.mode, self.trainable, example="[transformer.h.11, transformer.ln_f]")
        check_lora("model.decoder.lora", self.lora)
        one_of("model.decoder.dtype", self.dtype, WEIGHT_DTYPES)
        if self.mode in ("full", "subset") and self.dtype not in ("auto", "float32"):
            raise ConfigError(f"model.decoder.dtype: a decoder trained with mode={self.mode} keeps float32 weights "
                              "(use train.mixed_precision=bf16 for 16-bit compute)")
        one_of("model.decoder.quantization", self.quantization, ("none", "8bit", "4bit"))
        if self.quantization != "none" and self.mode in ("full", "subset"):
            raise ConfigError("model.decoder.quantization needs mode=lora or frozen: "
                              "quantized weights cannot be trained")
        if self.gguf_file and self.quantization != "none":
            raise ConfigError("model.decoder.gguf_file: a GGUF file loads dequantized to float; "
                              "set model.decoder.quantization=none")


SECTIONS = {"mapper": MapperConfig, "decoder": DecoderConfig}  # ClipCap's own sections of `model` (FAMILIES)
