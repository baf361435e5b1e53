"""Greedy, beam and sampling decoding for models that predict one token at a time from a state
(the LSTM baselines), with the same `GenerationConfig` the transformers decoders use.

A model supplies `begin() -> (logits, state)` for the first position and
`step(tokens, state) -> (logits, state)` after it, plus `reorder(state, rows)` which selects
rows of a state (beams are rows). Logits are [rows, vocab].
"""
from __future__ import annotations

from typing import Callable

import torch

from memecap.config import GenerationConfig


def _penalise(logits: torch.Tensor, history: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """repetition_penalty and no_repeat_ngram_size, as transformers applies them."""
    if history.shape[1] == 0:
        return logits
    if cfg.repetition_penalty != 1.0:
        seen = torch.gather(logits, 1, history)
        seen = torch.where(seen < 0, seen * cfg.repetition_penalty, seen / cfg.repetition_penalty)
        logits = logits.scatter(1, history, seen)
    n = cfg.no_repeat_ngram_size
    if n and history.shape[1] >= n:
        rows = history.tolist()
        for r, row in enumerate(rows):
            prefix = tuple(row[len(row) - n + 1:]) if n > 1 else ()
            banned = [row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i:i + n - 1]) == prefix]
            if banned:
                logits[r, banned] = float("-inf")
    return logits


@torch.no_grad()
def decode(begin: Callable, step: Callable, reorder: Callable, batch_size: int, cfg: GenerationConfig,
           eos_id: int) -> list[list[list[int]]]:
    """Token ids (end token excluded) of `num_return_sequences` captions per batch row."""
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
    for _ in range(cfg.max_new_tokens):
        logp = torch.log_softmax(_penalise(logits.float(), history, cfg), dim=-1)
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
                token = torch.multinomial(_sampling_probs(logp, cfg), 1).squeeze(1)
            length = length + (~done).float()
        history = torch.cat([history, token[:, None]], dim=1)
        done = done | (token == eos_id)
        if bool(done.all()):
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


def _sampling_probs(logp: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    logits = logp / max(cfg.temperature, 1e-6)
    if cfg.top_k:
        kth = logits.topk(min(cfg.top_k, logits.shape[1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > cfg.top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits.softmax(-1)
