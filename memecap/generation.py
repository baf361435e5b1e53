"""Decoding settings shared by the models that decode with a transformers language model."""
from __future__ import annotations

from dataclasses import fields, replace

from memecap.config import GenerationConfig


def with_overrides(cfg: GenerationConfig, **overrides) -> GenerationConfig:
    """A copy of `cfg` with the given fields changed (re-validated)."""
    known = {f.name for f in fields(cfg)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown generation setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def hf_generate_kwargs(cfg: GenerationConfig, *, eos_token_id: int, pad_token_id: int) -> dict:
    """GenerationConfig -> keyword arguments of `PreTrainedModel.generate`.

    Beam scores are length-normalised (`length_penalty`), so long detailed captions are not
    beaten by short ones merely for having fewer log-probabilities summed.
    """
    kwargs = dict(
        max_new_tokens=cfg.max_new_tokens,
        num_return_sequences=cfg.num_return_sequences,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        repetition_penalty=cfg.repetition_penalty,
        no_repeat_ngram_size=cfg.no_repeat_ngram_size,
    )
    if cfg.strategy == "greedy":
        kwargs.update(do_sample=False, num_beams=1)
    elif cfg.strategy == "beam":
        kwargs.update(do_sample=False, num_beams=cfg.num_beams, length_penalty=cfg.length_penalty,
                      early_stopping=True)
    else:
        kwargs.update(do_sample=True, num_beams=1, top_k=cfg.top_k or None, top_p=cfg.top_p,
                      temperature=cfg.temperature)
    return kwargs
