"""Greedy, beam and sampling decoding for models that predict one token at a time from a state
(the LSTM baselines), with the same `GenerationConfig` the transformers decoders use: penalties
and sampling filters are transformers' own processors (`memecap.generation.logits_processors`).

A model supplies `begin() -> (logits, state)` for the first position and
`step(tokens, state) -> (logits, state)` after it, plus `reorder(state, rows)` which selects
rows of a state (beams are rows). Logits are [rows, vocab].
"""
from __future__ import annotations

from typing import Callable

import torch

from memecap.config import GenerationConfig
from memecap.generation import logits_processors
from memecap.sampling import draw_tokens


@torch.no_grad()
def decode(begin: Callable, step: Callable, reorder: Callable, batch_size: int, cfg: GenerationConfig,
           eos_id: int, synced_gpus: bool = False) -> list[list[list[int]]]:
    """Token ids (end token excluded) of `num_return_sequences` captions per batch row. With
    `synced_gpus` (ZeRO-3) decoding goes on until every rank's captions are finished: each `step`
    gathers the weights from all ranks, so one that stopped early would leave the others waiting."""
    width = cfg.num_beams if cfg.strategy == "beam" else (cfg.num_return_sequences if cfg.strategy == "sample" else 1)
    logits, state = begin()
    rows = torch.arange(batch_size, device=logits.device).repeat_interleave(width)
    logits, state = logits[rows], reorder(state, rows)
    n = batch_size * width
    history = torch.zeros((n, 0), dtype=torch.long, device=logits.device)
    done = torch.zeros(n, dtype=torch.bool, device=logits.device)
    score = torch.zeros(n, device=logits.device)
    if cfg.strategy == "beam":  # identical beams at the start: only the first may expand
        score.view(batch_size, width)[:, 1:] = float("-inf")
    length = torch.zeros(n, device=logits.device)
    processors = logits_processors(cfg)
    for _ in range(cfg.max_new_tokens):
        logp = torch.log_softmax(processors(history, logits.float()), dim=-1)
        # A finished caption only "continues" with the end token, at no cost.
        logp[done] = float("-inf")
        logp[done, eos_id] = 0.0
        if cfg.strategy == "beam":
            total = score[:, None] + logp
            new_length = (length + (~done).float())[:, None].expand_as(logp)
            norm = total / new_length.clamp(min=1) ** cfg.length_penalty
            vocab = logp.shape[1]
            best = norm.view(batch_size, -1).topk(width, dim=1).indices  # [B, width] over width * vocab
            parent = (best // vocab) + torch.arange(batch_size, device=best.device)[:, None] * width
            parent, token = parent.reshape(-1), (best % vocab).reshape(-1)
            score, length = total[parent, token], new_length[parent, 0]
            history, done, state = history[parent], done[parent], reorder(state, parent)
        else:
            if cfg.strategy == "greedy":
                token = logp.argmax(dim=-1)
            else:
                token = draw_tokens(logp)  # filtered by the sampling processors
            length = length + (~done).float()
        history = torch.cat([history, token[:, None]], dim=1)
        done = done | (token == eos_id)
        if not still_decoding(done, synced_gpus):
            break
        logits, state = step(token, state)
    if cfg.strategy == "beam":  # topk kept beams sorted by normalised score, best first
        keep = cfg.num_return_sequences
    else:
        keep = width
    out = []
    for b in range(batch_size):
        texts = []
        for r in range(b * width, b * width + keep):
            ids = history[r].tolist()
            texts.append(ids[:ids.index(eos_id)] if eos_id in ids else ids)
        out.append(texts)
    return out


def still_decoding(done: torch.Tensor, synced_gpus: bool) -> bool:
    """Whether a caption is unfinished here or, with `synced_gpus`, on any rank (a finished caption
    only goes on with the end token, which is cut off)."""
    pending = (~done).any().float()
    if synced_gpus:
        torch.distributed.all_reduce(pending)
    return pending.item() > 0
