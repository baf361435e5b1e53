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


def logits_processors(cfg: GenerationConfig):
    """The score adjustments of `cfg` for a hand-written decoding loop (RuDOLPH's, the LSTM's), as transformers'
    own processors, so both families share one meaning of each setting. Sampling settings apply
    only with strategy=sample."""
    from transformers.generation.logits_process import (LogitsProcessorList, NoRepeatNGramLogitsProcessor,
                                                        RepetitionPenaltyLogitsProcessor)

    processors = LogitsProcessorList()
    if cfg.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    if cfg.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGramLogitsProcessor(cfg.no_repeat_ngram_size))
    processors.extend(sampling_processors(cfg))
    return processors


def sampling_processors(cfg: GenerationConfig) -> list:
    """Temperature, top-k and top-p of `cfg` as transformers' processors (none unless strategy=sample)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    if cfg.strategy != "sample":
        return []
    processors = []
    if cfg.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(cfg.temperature))
    if cfg.top_k:
        processors.append(TopKLogitsWarper(cfg.top_k))
    if cfg.top_p < 1.0:
        processors.append(TopPLogitsWarper(cfg.top_p))
    return processors


def hf_generate_drawing_kwargs(cfg: GenerationConfig, processors: list, *, eos_token_id: int,
                               pad_token_id: int) -> dict:
    """Keyword arguments of `PreTrainedModel.generate` that sample (strategy=sample) as transformers' greedy
    decoding with `DrawToken` last (memecap/sampling.py: the same distribution, without
    `torch.multinomial`'s one random number per vocabulary entry), after `processors` (the family's,
    e.g. quote copying) and the sampling processors, the order transformers' own sampling applies.

    Greedy decoding returns one sequence per input row: the caller repeats each row
    `num_return_sequences` times, consecutively, as transformers does for its own sampling.
    """
    from transformers import LogitsProcessorList

    from memecap.sampling import DrawToken

    if cfg.strategy != "sample":
        raise ValueError(f"hf_generate_drawing_kwargs samples; strategy is {cfg.strategy!r}")
    kwargs = hf_generate_kwargs(replace(cfg, strategy="greedy", num_return_sequences=1),
                                eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    kwargs["logits_processor"] = LogitsProcessorList([*processors, *sampling_processors(cfg), DrawToken()])
    return kwargs
