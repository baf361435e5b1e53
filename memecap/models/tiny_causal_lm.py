"""Tiny random causal language models of the modern decoder classes (Llama, Qwen2, Gemma 3 text),
written in the published layout (config.json, model.safetensors, tokenizer files), so ClipCap's
decoder path loads them exactly as it loads Hub weights.

Each gets a tokenizer fit on the given texts with its family's special tokens, of the published
kind: a byte-level BPE for Llama and Qwen2 (Llama's declares no pad token, as published: memecap pads
with the end token then), Gemma's BPE over "▁"-spelled text with byte fallback for Gemma 3.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, models, normalizers, trainers
from transformers import AutoModelForCausalLM, GemmaTokenizer, PreTrainedTokenizerFast

from memecap.config import TinyConfig
from memecap.models.tiny import byte_level_bpe, save_on_any_process

# family -> (special tokens, bos, eos, pad or None)
SPECIAL = {
    "llama": (["<s>", "</s>"], "<s>", "</s>", None),
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|endoftext|>", "<|endoftext|>"),
    "gemma3_text": (["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"], "<bos>", "<eos>", "<pad>"),
}
FAMILIES = tuple(SPECIAL)


def gemma_tokenizer(texts: Iterable[str], vocab_size: int) -> GemmaTokenizer:
    """Gemma's kind: spaces spelled "▁", a BPE with the 256 byte tokens to fall back on (beyond `vocab_size`)."""
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size + len(byte_tokens), show_progress=False,
                                  special_tokens=SPECIAL["gemma3_text"][0] + byte_tokens)
    tok.train_from_iterator(list(texts), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return GemmaTokenizer(vocab=model["vocab"], merges=merges)


def tiny_tokenizer(family: str, texts: Iterable[str], vocab_size: int):
    if family == "gemma3_text":
        return gemma_tokenizer(texts, vocab_size)
    special, bos, eos, pad = SPECIAL[family]
    tok = byte_level_bpe(texts, special, vocab_size)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)


def tiny_config(family: str, cfg: TinyConfig, tokenizer):
    ids = {name: tokenizer.convert_tokens_to_ids(t) if t else None
           for name, t in zip(("bos", "eos", "pad"), SPECIAL[family][1:])}
    shape = dict(vocab_size=len(tokenizer), hidden_size=cfg.gpt_width, intermediate_size=2 * cfg.gpt_width,
                 num_hidden_layers=cfg.gpt_layers, num_attention_heads=cfg.gpt_heads, num_key_value_heads=1,
                 max_position_embeddings=512, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                 pad_token_id=ids["pad"])
    if family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**shape, tie_word_embeddings=False)  # an untied head
    if family == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**shape, tie_word_embeddings=True)  # tied, as Qwen2.5-0.5B
    from transformers import Gemma3TextConfig

    # Gemma 3's own layer pattern (5 sliding-window layers to 1 global), which a GGUF file implies too;
    # a window of 8 tokens, so that prefix and caption outgrow it.
    return Gemma3TextConfig(**shape, head_dim=cfg.gpt_width // cfg.gpt_heads, sliding_window=8)


def save_tiny_causal_lm(out_dir: Path, family: str, cfg: TinyConfig, texts: Iterable[str], seed: int = 0) -> Path:
    """A `family` (llama | qwen2 | gemma3_text) causal LM with random weights and a tokenizer fit on `texts`."""
    tokenizer = tiny_tokenizer(family, texts, cfg.vocab_size)
    config = tiny_config(family, cfg, tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    save_on_any_process(model, out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
