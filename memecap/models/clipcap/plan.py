"""ClipCap's memory plan: the decoder (any causal LM) and mapping network built on the meta device
from their configs (ruGPT-3's shapes ship here; other decoders' config.json is read), then arithmetic."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, PretrainedConfig

from memecap.config import Config
from memecap.models.memory_plan import GIB, LOSS_PEAK_BYTES, Plan, sixteen_bit
from memecap.models.dtypes import weights_dtype
from memecap.models.family_parts import body_and_head
from memecap.models.vocab_log_probs import block_rows
from memecap.models.clipcap.architectures import decoder_width, lora_parameter_count, lora_targets
from memecap.models.clipcap.gguf import converted_folder, gguf_kwargs
from memecap.models.clipcap.mapping import build_mapper
from memecap.models.param_patterns import select_parameters
from memecap.models.tiny import TINY
from memecap.untrusted import refuse_model_code

# ai-forever's ruGPT-3 family (GPT-2 architecture), so that planning needs no download.
KNOWN_DECODERS = {
    "ai-forever/rugpt3small_based_on_gpt2": dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50264, n_positions=2048),
    "ai-forever/rugpt3medium_based_on_gpt2": dict(n_embd=1024, n_layer=24, n_head=16, vocab_size=50257,
                                                  n_positions=2048),
    "ai-forever/rugpt3large_based_on_gpt2": dict(n_embd=1536, n_layer=24, n_head=16, vocab_size=50257,
                                                 n_positions=2048),
}
# Image encoders: (tokens per image incl. class token, width, pooled output size).
KNOWN_ENCODERS = {"ai-forever/ruclip-vit-base-patch32-384": (145, 768, 512),
                  "ai-forever/ruclip-vit-base-patch16-384": (577, 768, 512)}


def decoder_config(name: str, cfg: Config) -> PretrainedConfig:
    if name == TINY:
        t = cfg.model.tiny
        return GPT2Config(n_embd=t.gpt_width, n_layer=t.gpt_layers, n_head=t.gpt_heads, vocab_size=t.vocab_size,
                          n_positions=512)
    if name in KNOWN_DECODERS:
        return GPT2Config(**KNOWN_DECODERS[name])
    refuse_model_code(name, cfg.model.decoder.revision)
    gguf_file = cfg.model.decoder.gguf_file
    converted = converted_folder(name, gguf_file) if gguf_file else None
    if converted is not None:  # what transformers made of the header, without parsing it again (~20 s for Gemma)
        return AutoConfig.from_pretrained(converted, trust_remote_code=False).get_text_config()
    config = AutoConfig.from_pretrained(name, revision=cfg.model.decoder.revision,  # config.json (or a GGUF's header)
                                        trust_remote_code=False, **gguf_kwargs(name, gguf_file))
    return config.get_text_config()


def image_features(cfg: Config) -> tuple[int, int]:
    """(tokens, width) of what the mapper reads per image."""
    enc = cfg.model.encoder
    if enc.name == TINY:
        t = cfg.model.tiny
        tokens, width, pooled = (t.image_size // t.patch_size) ** 2 + 1, t.vision_width, t.embed_dim
    elif enc.name in KNOWN_ENCODERS:
        tokens, width, pooled = KNOWN_ENCODERS[enc.name]
    elif enc.kind in ("auto", "resnet"):  # any transformers backbone: its output shape, run on the meta device
        from memecap.models.backbones import planned_features

        return planned_features(enc.name, enc.revision, enc.features)
    elif enc.kind == "ruclip":
        import json

        from memecap.models.hub_files import resolve_file

        with open(resolve_file(enc.name, "config.json", enc.revision), encoding="utf-8") as f:
            rc = json.load(f)
        tokens = (rc["image_resolution"] // rc["vision_patch_size"]) ** 2 + 1
        width, pooled = rc["vision_width"], rc["embed_dim"]
    else:
        from transformers import AutoConfig

        refuse_model_code(enc.name, enc.revision)
        vision = AutoConfig.from_pretrained(enc.name, revision=enc.revision, trust_remote_code=False)
        vision = getattr(vision, "vision_config", vision)
        tokens = (vision.image_size // vision.patch_size) ** 2 + 1
        width, pooled = vision.hidden_size, getattr(vision, "projection_dim", vision.hidden_size)
    return (tokens, width) if enc.features == "patches" else (1, pooled)


def activation_bytes(config: PretrainedConfig, batch: int, seq: int, bytes_per: int, checkpointing: bool) -> float:
    """Per-layer saved activations, and with checkpointing only each block's input plus one
    block's worth during its recomputation. A GPT-2 block keeps s*b*h*(34 + 5*a*s/h) bytes at
    16 bit, attention scores included (Korthikanti et al. 2022), 34*s*b*h without them (SDPA, the
    default attention, keeps no score matrix); a Llama-style block about 12 h + 4 I values per token
    (norms, q/k/v/o, the gated MLP)."""
    h, a, L = config.hidden_size, config.num_attention_heads, config.num_hidden_layers
    if config.model_type == "gpt2":
        scores = 5 * a * seq / h if config._attn_implementation == "eager" else 0
        per_layer = seq * batch * h * (34 + scores) * bytes_per / 2
    else:
        per_layer = seq * batch * (12 * h + 4 * config.intermediate_size) * bytes_per
    if checkpointing:
        return L * seq * batch * h * bytes_per + per_layer
    return L * per_layer


def lora_input_features(model: nn.Module, targets: Sequence[str]) -> int:
    """Input features of every layer LoRA adapts (its adapter saves its own copy of that input)."""
    total = 0
    for name, m in model.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if isinstance(m, nn.Linear):
            total += m.in_features
        elif type(m).__name__ == "Conv1D":  # GPT-2's layers store their weight as in x out
            total += m.weight.shape[0]
    return total


def lora_input_bytes(dec, decoder: nn.Module, batch: int, seq: int, act_bytes: int, autocast: bool,
                     checkpointing: bool) -> float:
    """What the adapters keep for their backward beyond the base layer's activations: the input cast
    to the adapter's fp32 (under autocast, the cast back to 16 bit) and the dropout mask. With
    checkpointing, one block's worth."""
    copy = act_bytes if autocast else (4 if act_bytes != 4 or dec.lora.dropout else 0)
    per_value = copy + (1 if dec.lora.dropout else 0)
    features = lora_input_features(decoder, lora_targets(decoder, dec.lora.target_modules))
    layers = decoder.config.num_hidden_layers
    return batch * seq * features * per_value / (layers if checkpointing else 1)


def quantizable_parameters(decoder: nn.Module) -> int:
    """Weights bitsandbytes quantizes: every linear (or GPT-2 Conv1D) layer but the output head."""
    head = decoder.get_output_embeddings()
    return sum(m.weight.numel() for m in decoder.modules()
               if m is not head and (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"))


def decoder_weights(dec, decoder: nn.Module, decoder_params: int, act_bytes: int) -> tuple[int, float, torch.dtype]:
    """(trained decoder parameters, bytes of its frozen weights, their dtype) for `dec.mode`."""
    linear_params = quantizable_parameters(decoder)
    # peft's k-bit preparation casts the layers that are not quantized back to fp32.
    frozen_dtype = (weights_dtype(dec.dtype, trains=dec.mode == "subset", sixteen_bit=act_bytes == 2)
                    if dec.quantization == "none" else torch.float32)
    # 4bit: NF4 + block constants
    quant = {"none": frozen_dtype.itemsize, "8bit": 1.0, "4bit": 0.5 + 0.5 / 64}[dec.quantization]
    if dec.mode == "full":
        return decoder_params, 0.0, frozen_dtype
    if dec.mode == "subset":  # the chosen parameters train in fp32, the rest stays as loaded
        chosen = select_parameters(decoder, dec.trainable, key="model.decoder.trainable", what="the decoder")
        trained = sum(p.numel() for n, p in decoder.named_parameters() if n in chosen)
        return trained, (decoder_params - trained) * frozen_dtype.itemsize, frozen_dtype
    frozen = linear_params * quant + (decoder_params - linear_params) * frozen_dtype.itemsize
    trained = (lora_parameter_count(decoder, lora_targets(decoder, dec.lora.target_modules), dec.lora.r)
               if dec.mode == "lora" else 0)
    return trained, frozen, frozen_dtype


def head_stays_frozen(dec, decoder: nn.Module) -> bool:
    """Whether the decoder's output projection trains nothing under `dec.mode`: a frozen decoder, or LoRA
    adapters that leave the projection out."""
    if dec.mode == "frozen":
        return True
    if dec.mode != "lora":
        return False
    head = decoder.get_output_embeddings()
    name = next((n for n, m in decoder.named_modules() if m is head), "")
    return name.rsplit(".", 1)[-1] not in lora_targets(decoder, dec.lora.target_modules)


def plan_clipcap(cfg: Config, *, processes: int = 1, zero_stage: int = 0, offload_optimizer: bool = False,
                 offload_params: bool = False, batch_size: Optional[int] = None, seq_len: Optional[int] = None,
                 mixed_precision: Optional[str] = None) -> Plan:
    dec = cfg.model.decoder
    config = decoder_config(dec.name, cfg)
    with torch.device("meta"):  # shapes only: nothing is allocated or downloaded
        decoder = AutoModelForCausalLM.from_config(config)
        tokens, width = image_features(cfg)
        mapper = build_mapper(cfg.model.mapper, width, decoder_width(config),
                              patches=cfg.model.encoder.features == "patches")
    mapper_params = sum(p.numel() for p in mapper.parameters())
    precision = mixed_precision or cfg.train.mixed_precision
    act_bytes = 4 if precision in ("no", "auto") and not torch.cuda.is_available() else 2
    batch = batch_size or cfg.train.batch_size
    prefix = (tokens if (cfg.model.encoder.features == "patches" and cfg.model.mapper.type == "mlp")
              else cfg.model.mapper.prefix_length)
    ocr = cfg.model.ocr
    prompt = ocr.max_tokens + 16 if ocr.enabled else 0  # the OCR text and the template around it (a bound)
    seq = seq_len or prefix + prompt + cfg.data.max_caption_tokens

    plan = Plan()
    shard = processes if zero_stage == 3 else 1
    decoder_params = sum(p.numel() for p in decoder.parameters())  # tied lm_head counted once
    trained, frozen_weights, frozen_dtype = decoder_weights(dec, decoder, decoder_params, act_bytes)
    trainable = mapper_params + trained
    where_params = "CPU" if offload_params and zero_stage == 3 else "accelerator"
    if frozen_weights:
        stored = dec.quantization if dec.quantization != "none" else str(frozen_dtype).removeprefix("torch.")
        plan.add(f"decoder weights, frozen ({stored})",
                 frozen_weights / shard, where_params)
    autocast = sixteen_bit(precision, act_bytes)
    plan.add_training_state(trainable, optimizer=cfg.optim.name, processes=processes, zero_stage=zero_stage,
                            offload_optimizer=offload_optimizer, where_params=where_params, half_precision=autocast)
    checkpointing = dec.gradient_checkpointing
    plan.add(f"activations, batch {batch} x {seq} tokens{' (checkpointed)' if checkpointing else ''}",
             activation_bytes(config, batch, seq, act_bytes, checkpointing))
    if dec.mode == "lora":
        plan.add("LoRA inputs (fp32 copies, dropout masks)",
                 lora_input_bytes(dec, decoder, batch, seq, act_bytes, autocast, checkpointing))
    # Only the caption's positions reach the vocabulary (family_parts.scored_positions_loss); where the decoder's
    # logits are more than its projection, the prompt's too (family_parts.scored_tail); never the prefix's.
    plain = body_and_head(decoder) is not None
    positions = batch * (max(1, seq - prefix - prompt) if plain else seq - prefix + 1)
    if plain and head_stays_frozen(dec, decoder) and zero_stage != 3:
        # A frozen projection scores a block of positions at a time and keeps a hidden-size vector per
        # position for the backward (models/vocab_log_probs.py), never the logits of all of them.
        block = min(positions, block_rows(config.vocab_size))
        plan.add(f"logits + loss ({block} positions at a time, fp32)",
                 block * config.vocab_size * LOSS_PEAK_BYTES + positions * decoder_width(config) * act_bytes)
    else:
        plan.add("logits + loss (fp32 log-softmax and gradients, at the peak)",
                 positions * config.vocab_size * LOSS_PEAK_BYTES)
    if zero_stage == 3:
        plan.add("ZeRO-3 working set (one gathered layer)", (decoder_params / config.num_hidden_layers) * 4.0 * 2)
    if cfg.model.encoder.trainable:
        plan.notes.append("the image encoder trains: its weights, gradients and activations are not in this table")
    else:
        plan.notes.append("the frozen image encoder is cached once beforehand and takes no memory during training")
    other = activation_bytes(config, batch, seq, act_bytes, not checkpointing)
    plan.notes.append(f"activations {'without' if checkpointing else 'with'} gradient checkpointing would be "
                      f"{other / GIB:.3f} GiB")
    plan.notes.append("not counted: CUDA context (~0.3-0.5 GiB), allocator fragmentation, temporary buffers")
    return plan
