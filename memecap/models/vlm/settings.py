"""The vision-language-model family's own section of `model` (`model.vlm`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from memecap.config_checks import WEIGHT_DTYPES, ConfigError, LoraConfig, at_least, check_lora, list_of, one_of

VLM_TINY_ARCHITECTURES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm", "llava")  # memecap/models/vlm/tiny.py


@dataclass
class VlmConfig:
    """A vision-language model that transformers loads with AutoModelForImageTextToText (family: vlm)."""

    # Hub id or local folder (safetensors); "tiny-random" builds a tiny one of tiny_architecture
    name: str = "Qwen/Qwen2-VL-2B-Instruct"
    revision: Optional[str] = None  # Hub revision (a commit hash pins it)
    # the class a "tiny-random" model is made of: qwen2_vl | qwen2_5_vl | qwen3_vl | smolvlm | llava
    tiny_architecture: str = "qwen2_vl"
    instruction: str = "Опиши мем подробно: что изображено и какой на нём текст."  # the user turn after the image
    # model.ocr.enabled: a line added to the instruction
    ocr_instruction: str = "Текст на картинке (распознан OCR): {text}"
    mode: str = "lora"  # lora: adapters on the language model | full: the language model (and connector) trains whole
    vision: str = "frozen"  # the vision tower: frozen | lora (adapters on vision_target_modules) | full
    # LoRA on the language model's attention and MLP projections only: the vision tower's modules of the same
    # names (Qwen2.5-VL's MLP gate/up/down_proj, SigLIP's q/k/v_proj) are not adapted.
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(r=16, alpha=32, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    # vision=lora: the vision tower's linear layers (Qwen2-VL qkv/proj/fc1/fc2, Qwen2.5-VL gate/up/down_proj,
    # Qwen3-VL linear_fc1/2, SigLIP/Idefics3 q/k/v/out_proj, fc1/fc2); names a tower lacks are skipped
    vision_target_modules: list = field(default_factory=lambda: [
        "qkv", "proj", "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "gate_proj", "up_proj", "down_proj",
        "linear_fc1", "linear_fc2"])
    # none | 8bit | 4bit (NF4, double quantization): the frozen base through bitsandbytes (QLoRA)
    quantization: str = "none"
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16: frozen (unquantized) weights; auto = bf16 on a bf16 GPU
    gradient_checkpointing: bool = False  # recompute each layer in backward
    # Qwen-VL image budget: fewest pixels an image is resized to (null: the model's own)
    min_pixels: Optional[int] = None
    # Qwen-VL image budget: most pixels (28x28 px = one image token at merge 2, patch 14)
    max_pixels: Optional[int] = None
    # Idefics3/SmolVLM: side the image is resized to (one tile, no splitting); null: the model's own
    longest_edge: Optional[int] = None

    def __post_init__(self) -> None:
        check_lora("model.vlm.lora", self.lora)
        list_of("model.vlm.vision_target_modules", self.vision_target_modules, str)
        if not self.vision_target_modules:
            raise ConfigError("model.vlm.vision_target_modules is empty: "
                              "name the vision tower's modules for vision=lora")
        one_of("model.vlm.mode", self.mode, ("lora", "full"))
        one_of("model.vlm.vision", self.vision, ("frozen", "lora", "full"))
        one_of("model.vlm.quantization", self.quantization, ("none", "8bit", "4bit"))
        one_of("model.vlm.dtype", self.dtype, WEIGHT_DTYPES)
        one_of("model.vlm.tiny_architecture", self.tiny_architecture, VLM_TINY_ARCHITECTURES)
        if self.quantization != "none" and (self.mode == "full" or self.vision == "full"):
            raise ConfigError("model.vlm.quantization needs mode=lora and vision=frozen or lora: "
                              "quantized weights cannot be trained")
        if self.mode == "full" and self.vision == "lora":
            raise ConfigError("model.vlm.vision=lora adapts the vision tower beside a LoRA language model; "
                              "with mode=full set vision=frozen or full")
        if (self.mode == "full" or self.vision == "full") and self.dtype not in ("auto", "float32"):
            raise ConfigError("model.vlm.dtype: fully trained weights stay float32 "
                              "(use train.mixed_precision=bf16 for 16-bit compute)")
        if self.ocr_instruction.count("{text}") != 1:
            raise ConfigError("model.vlm.ocr_instruction must contain {text} exactly once")
        if not self.instruction.strip():
            raise ConfigError("model.vlm.instruction is empty: say what the model should write")
        at_least("model.vlm.min_pixels", self.min_pixels, 1, optional=True)
        at_least("model.vlm.max_pixels", self.max_pixels, 1, optional=True)
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ConfigError("model.vlm.min_pixels must be <= model.vlm.max_pixels")
        at_least("model.vlm.longest_edge", self.longest_edge, 1, optional=True)


SECTIONS = {"vlm": VlmConfig}  # the family's own section of `model` (FAMILIES)
