"""`memecap plan` for RuDOLPH: exact parameter counts from the package's model built on the meta
device (no storage, no download), then the same arithmetic as for ClipCap (memecap/plan.py).

Activations of one RuDOLPH layer, counted from its forward (rudolph/model/transformer.py), per
token of width h: the layer input, three layer norms' inputs (input, sandwich, post-attention,
sandwich), q/k/v and the pre-scaled query, the attention context, the clamped projection,
the MLP input, the GELU input and output (4h each): about 22 h values, plus 1-byte dropout
masks. Per attention score (heads x s x s): the softmax output and its dropout (fp32 under
autocast too: softmax runs in fp32), the half-precision copy the value matmul reads and a
1-byte dropout mask. The logits of every position over the whole (text + image) vocabulary,
the fp32 copies the loss slices from them and their log-softmax come on top.
"""
from __future__ import annotations

from typing import Optional

import torch

from memecap.config import Config
from memecap.models.memory_plan import GIB, Plan, sixteen_bit
from memecap.models.tiny import TINY


def rudolph_params(cfg: Config) -> dict:
    from memecap.models.rudolph.weights import model_params

    r = cfg.model.rudolph
    if r.name == TINY:
        from memecap.models.rudolph.tiny import tiny_rudolph_params

        return tiny_rudolph_params(cfg.model.tiny.vocab_size, cfg.model.tiny, 64)
    return model_params(r.name, r.shape, r.revision)  # known Hub ids: the package's table, nothing downloaded


def layer_activation_bytes(p: dict, batch: int, act: int) -> float:
    h, a = p["hidden_size"], p["num_attention_heads"]
    s = p["l_text_seq_length"] + p["image_tokens_per_dim"] ** 2 + p["r_text_seq_length"]
    return s * batch * h * (22 * act + 2) + a * s * s * batch * (4 + 4 + act + 1)


def activation_bytes(p: dict, batch: int, act: int, checkpointing: bool) -> float:
    s = p["l_text_seq_length"] + p["image_tokens_per_dim"] ** 2 + p["r_text_seq_length"]
    per_layer = layer_activation_bytes(p, batch, act)
    if checkpointing:  # each layer's input (the fp32 residual stream) + one layer during its recomputation
        return p["num_layers"] * s * batch * p["hidden_size"] * 4 + per_layer
    return p["num_layers"] * per_layer


def logits_bytes(p: dict, batch: int, act: int) -> float:
    text_vocab = p["vocab_size"] + p["text_special_tokens"]
    image_vocab = p["image_vocab_size"] + p["image_special_tokens"]
    left, image, right = p["l_text_seq_length"], p["image_tokens_per_dim"] ** 2, p["r_text_seq_length"]
    full = batch * (left + image + right) * (text_vocab + image_vocab)
    sliced = batch * ((left + right) * text_vocab + image * image_vocab)
    return full * act * 2 + sliced * 4 * 3  # logits and their gradient; fp32 slices, log-softmax, gradient


def plan_rudolph(cfg: Config, *, processes: int = 1, zero_stage: int = 0, offload_optimizer: bool = False,
                 offload_params: bool = False, batch_size: Optional[int] = None, seq_len: Optional[int] = None,
                 mixed_precision: Optional[str] = None) -> Plan:
    from memecap.models.rudolph.model import select_trainable

    if seq_len is not None:
        raise ValueError("--seq-len does not apply to RuDOLPH: its sequence (left text, image codes, caption) is fixed")
    from memecap.models.rudolph.weights import rudolph_of_shape

    r = cfg.model.rudolph
    p = rudolph_params(cfg)
    with torch.device("meta"):  # shapes only
        model = rudolph_of_shape(p)
    total = sum(t.numel() for t in model.parameters())
    if r.mode == "full":
        trainable = total
    elif r.mode == "subset":
        chosen = select_trainable(model, r.trainable)  # also checks the patterns, before any download
        trainable = sum(t.numel() for n, t in model.named_parameters() if n in chosen)
    else:
        targets = set(r.lora.target_modules)
        trainable = sum(r.lora.r * (m.in_features + m.out_features) for n, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in targets)
    precision = mixed_precision or cfg.train.mixed_precision
    act = 4 if precision in ("no", "auto") and not torch.cuda.is_available() else 2
    batch = batch_size or cfg.train.batch_size
    seq = p["l_text_seq_length"] + p["image_tokens_per_dim"] ** 2 + p["r_text_seq_length"]

    plan = Plan()
    shard = processes if zero_stage == 3 else 1
    where_params = "CPU" if offload_params and zero_stage == 3 else "accelerator"
    frozen = total - trainable if r.mode != "lora" else total
    frozen_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}[r.base_dtype]
    if frozen:
        plan.add(f"RuDOLPH weights, frozen ({r.base_dtype}, {frozen:,} parameters)", frozen * frozen_bytes / shard,
                 where_params)
    plan.add_training_state(trainable, optimizer=cfg.optim.name, processes=processes, zero_stage=zero_stage,
                            offload_optimizer=offload_optimizer, where_params=where_params, detail=f", mode {r.mode}",
                            half_precision=sixteen_bit(precision, act))
    ckpt = r.gradient_checkpointing
    plan.add(f"activations, batch {batch} x {seq} tokens{' (checkpointed)' if ckpt else ''}",
             activation_bytes(p, batch, act, ckpt))
    plan.add("logits over text + image vocabulary, loss slices", logits_bytes(p, batch, act))
    if zero_stage == 3:
        plan.add("ZeRO-3 working set (one gathered layer)", (total / p["num_layers"]) * 4.0 * 2)
    plan.notes.append("the frozen VQGAN runs once per image beforehand (codes are cached) and takes no memory "
                      "during training")
    other = activation_bytes(p, batch, act, not ckpt)
    plan.notes.append(f"activations {'without' if ckpt else 'with'} gradient checkpointing "
                      f"would be {other / GIB:.3f} GiB")
    plan.notes.append("not counted: CUDA context (~0.3-0.5 GiB), allocator fragmentation, temporary buffers")
    return plan
