"""The memory plan of a vision-language-model recipe (`memecap plan vlm_qwen2_5_3b_qlora`).

Parameter counts are exact: the model is built on the meta device from its config (the shipped
recipes' published shapes are in known.py; other models' config.json is read). Activations
count the language model's sequence at the recipe's image budget: the image tokens one image
becomes at `max_pixels` (Qwen: one token per 28 x 28 px at patch 14 and merge 2; 32 x 32 at
patch 16) or one Idefics3/SmolVLM tile, the prompt, the OCR text and the description.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from memecap.config import Config
from memecap.models.memory_plan import GIB, LOSS_PEAK_BYTES, Plan, sixteen_bit
from memecap.models.dtypes import weights_dtype
from memecap.models.tiny import TINY

PROMPT_TOKENS = 48  # chat template, system turn and the instruction around the image (a bound)
QWEN_DEFAULT_MAX_PIXELS = 12845056  # the Qwen2-VL image processors' default (16384 tokens at 28 px)


def vlm_config(cfg: Config):
    v = cfg.model.vlm
    if v.name == TINY:
        raise ValueError("model.vlm.name=tiny-random: plan a real model (its config is made when a run starts)")
    from memecap.models.vlm.known import known_config

    config = known_config(v.name)
    if config is None:
        from transformers import AutoConfig

        from memecap.untrusted import refuse_model_code

        refuse_model_code(v.name, v.revision)
        config = AutoConfig.from_pretrained(v.name, revision=v.revision, trust_remote_code=False)  # config.json only
    return config


def image_tokens(config, cfg: Config) -> tuple[int, int]:
    """(language-model tokens, vision-tower patches) of one image at the recipe's budget."""
    v = cfg.model.vlm
    vision = config.vision_config
    if config.model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        merge = vision.spatial_merge_size
        pixels_per_token = (vision.patch_size * merge) ** 2
        tokens = (v.max_pixels or QWEN_DEFAULT_MAX_PIXELS) // pixels_per_token
        return tokens, tokens * merge ** 2
    side = v.longest_edge or vision.image_size
    patches = (side // vision.patch_size) ** 2
    return patches // config.scale_factor ** 2, patches


def _linear_params(module: nn.Module, skip: tuple = ()) -> int:
    return sum(m.weight.numel() for n, m in module.named_modules()
               if isinstance(m, nn.Linear) and not any(n == s or n.startswith(s + ".") for s in skip))


def lora_params(model: nn.Module, prefix: str, targets: list, r: int) -> int:
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name.startswith(prefix + ".") and name.rsplit(".", 1)[-1] in targets:
            total += r * (m.in_features + m.out_features)
    return total


def weights(v, model, language: str, vision: str, total: int, vision_params: int,
            act_bytes: int) -> tuple[int, float, torch.dtype]:
    """(trained parameters, bytes of the frozen weights, their dtype) for `model.vlm`'s modes."""
    frozen_dtype = (weights_dtype(v.dtype, trains=False, sixteen_bit=act_bytes == 2)
                    if v.quantization == "none" else torch.float32)  # peft's k-bit preparation: the rest in fp32
    if v.mode == "full":
        trainable = total - (0 if v.vision == "full" else vision_params)
        return trainable, (total - trainable) * frozen_dtype.itemsize, frozen_dtype
    trainable = lora_params(model, language, list(v.lora.target_modules), v.lora.r)
    if v.vision == "lora":
        trainable += lora_params(model, vision, list(v.vision_target_modules), v.lora.r)
    # bitsandbytes quantizes every linear layer but the output head; the rest stays 16/32-bit.
    quantizable = _linear_params(model, skip=("lm_head",))
    quant = {"none": frozen_dtype.itemsize, "8bit": 1.0, "4bit": 0.5 + 0.5 / 64}[v.quantization]  # NF4 + constants
    frozen = quantizable * quant + (total - quantizable) * frozen_dtype.itemsize
    if v.vision == "full":
        trainable += vision_params
        frozen -= vision_params * frozen_dtype.itemsize
    return trainable, frozen, frozen_dtype


def vision_activations(v, config, batch: int, patches: int, act_bytes: int) -> tuple[str, float]:
    """The vision tower's row: one layer's working set when it is frozen, every layer's when it trains."""
    vc = config.vision_config
    v_width = getattr(vc, "embed_dim", None) or vc.hidden_size
    v_inter = getattr(vc, "intermediate_size", None) or v_width * getattr(vc, "mlp_ratio", 4)
    v_layers = getattr(vc, "depth", None) or vc.num_hidden_layers
    v_layer = batch * patches * (12 * v_width + 4 * v_inter) * act_bytes
    if v.vision == "frozen":
        return f"vision tower, frozen: one layer ({patches} patches/image)", v_layer
    return f"vision tower activations ({patches} patches/image)", v_layer * v_layers


def plan_vlm(cfg: Config, *, processes: int = 1, zero_stage: int = 0, offload_optimizer: bool = False,
             offload_params: bool = False, batch_size: Optional[int] = None, seq_len: Optional[int] = None,
             mixed_precision: Optional[str] = None) -> Plan:
    from transformers import AutoModelForImageTextToText

    from memecap.models.vlm.loading import language_model_name, vision_tower_name

    v = cfg.model.vlm
    config = vlm_config(cfg)
    with torch.device("meta"):  # shapes only: nothing is allocated or downloaded
        model = AutoModelForImageTextToText.from_config(config)
    language, vision = language_model_name(model), vision_tower_name(model)
    text = config.get_text_config()
    total = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    vision_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith(vision + "."))
    precision = mixed_precision or cfg.train.mixed_precision
    act_bytes = 4 if precision in ("no", "auto") and not torch.cuda.is_available() else 2
    batch = batch_size or cfg.train.batch_size
    per_image, patches = image_tokens(config, cfg)
    ocr = cfg.model.ocr.max_tokens + 16 if cfg.model.ocr.enabled else 0
    described = cfg.data.max_caption_tokens
    seq = seq_len or per_image + PROMPT_TOKENS + ocr + described

    plan = Plan()
    shard = processes if zero_stage == 3 else 1
    where_params = "CPU" if offload_params and zero_stage == 3 else "accelerator"
    trainable, frozen, frozen_dtype = weights(v, model, language, vision, total, vision_params, act_bytes)
    stored = v.quantization if v.quantization != "none" else str(frozen_dtype).removeprefix("torch.")
    if frozen:
        plan.add(f"frozen weights ({stored}{'' if v.mode == 'full' else ', vision tower too'})",
                 frozen / shard, where_params)
    plan.add_training_state(trainable, optimizer=cfg.optim.name, processes=processes, zero_stage=zero_stage,
                            offload_optimizer=offload_optimizer, where_params=where_params,
                            half_precision=sixteen_bit(precision, act_bytes))
    h, inter, layers = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    # A decoder layer keeps about 12 h + 4 I values per token for backward (norms, q/k/v/o, the
    # SwiGLU MLP; SDPA/flash attention keeps no score matrix); checkpointing keeps its input only.
    per_layer = batch * seq * (12 * h + 4 * inter) * act_bytes
    checkpointing = v.gradient_checkpointing
    kept = layers * batch * seq * h * act_bytes + per_layer if checkpointing else layers * per_layer
    plan.add(f"activations, batch {batch} x {seq} tokens{' (checkpointed)' if checkpointing else ''}", kept)
    # The loss reads logits of the description only (memecap/models/vlm/model.py: logits_to_keep).
    plan.add(f"logits + loss, {described + 1} description tokens only",
             batch * (described + 1) * text.vocab_size * LOSS_PEAK_BYTES)
    plan.add(*vision_activations(v, config, batch, patches, act_bytes))
    if zero_stage == 3:
        plan.add("ZeRO-3 working set (one gathered layer)", (total / layers) * 4.0 * 2)
    other = layers * per_layer if checkpointing else layers * batch * seq * h * act_bytes + per_layer
    plan.notes.append(f"activations {'without' if checkpointing else 'with'} gradient checkpointing would be "
                      f"{other / GIB:.3f} GiB")
    plan.notes.append(f"{total:,} parameters ({vision_params:,} in the vision tower); image budget {per_image} "
                      f"tokens per image; a frozen vision tower keeps nothing for backward")
    plan.notes.append("not counted: CUDA context (~0.3-0.5 GiB), allocator fragmentation, temporary buffers")
    return plan


def tokens_per_image(cfg: Config) -> int:
    return image_tokens(vlm_config(cfg), cfg)[0]

