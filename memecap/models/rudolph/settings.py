"""RuDOLPH's own section of `model`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from memecap.config_checks import ConfigError, LoraConfig, check_lora, check_train_mode, one_of


@dataclass
class RudolphLossWeights:
    """Weights of RuDOLPH's three cross-entropies; captioning trains on the right text."""

    left_text: float = 0.01  # the (constant) left text before the image
    image: float = 1.0  # the image's VQGAN codes
    right_text: float = 7.0  # the caption


@dataclass
class RudolphConfig:
    """RuDOLPH (left text, image as VQGAN codes, right text = the caption), used when model.family=rudolph."""

    name: str = "ai-forever/RUDOLPH-350M"  # Hub id or folder holding pytorch_model.bin; "tiny-random" builds one
    revision: Optional[str] = None  # Hub revision of the RuDOLPH weights
    # key of rudolph.model.MODELS (350M_v1, 350M, 1.3B, 2.7B, 2.7B_fbc2); null: from the Hub id or the folder's
    # config.json
    shape: Optional[str] = None
    vqgan: str = "ai-forever/rudalle-utils"  # Hub id or folder with vqgan.gumbelf8-sber.{config.yml,model.ckpt}
    vqgan_revision: Optional[str] = None
    tokenizer: str = "ai-forever/rudalle-utils"  # Hub id or folder with the YouTokenToMe bpe.model
    tokenizer_revision: Optional[str] = None
    mode: str = "full"  # full: every weight trains | subset: only `trainable` | lora: adapters on `lora.target_modules`
    # mode=subset: glob patterns of module or parameter names; each must match
    trainable: list = field(default_factory=list)
    # RuDOLPH's attention (query_key_value, dense) and MLP (dense_h_to_4h, dense_4h_to_h) projections.
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(
        target_modules=["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]))
    gradient_checkpointing: bool = False  # recompute each transformer layer in backward
    resize_mode: str = "pad"  # pad keeps the whole meme (its text) in the square VQGAN input; crop; squash
    base_dtype: str = "float32"  # mode=lora: dtype of the frozen base weights (bfloat16 halves their memory)
    loss_weights: RudolphLossWeights = field(default_factory=RudolphLossWeights)

    def __post_init__(self) -> None:
        # frozen is not offered: a frozen RuDOLPH would leave nothing to train
        check_train_mode("model.rudolph", self.mode, self.trainable, allowed=("full", "subset", "lora"),
                         example="[transformer.layers.23, to_logits]")
        one_of("model.rudolph.resize_mode", self.resize_mode, ("pad", "crop", "squash"))
        check_lora("model.rudolph.lora", self.lora)
        one_of("model.rudolph.base_dtype", self.base_dtype, ("float32", "bfloat16", "float16"))
        if self.base_dtype != "float32" and self.mode != "lora":
            raise ConfigError("model.rudolph.base_dtype applies to the frozen base of mode=lora; "
                              "trained weights stay float32 (use train.mixed_precision for half-precision compute)")
        w = self.loss_weights
        if min(w.left_text, w.image, w.right_text) < 0 or w.left_text + w.image + w.right_text <= 0:
            raise ConfigError("model.rudolph.loss_weights must be >= 0 with a positive sum")


SECTIONS = {"rudolph": RudolphConfig}  # RuDOLPH's own section of `model` (FAMILIES)
# Set under model.encoder before RuDOLPH had its own section, and still read there.
MOVED_KEYS = {"encoder.resize_mode": "rudolph.resize_mode"}
WITHOUT_BEAM_SEARCH = "RuDOLPH decodes with greedy or sample (top-k/top-p)"
