"""Tiny random-initialised base models of the real classes, written to folders in the Hub layout.

The demo and the tests use them instead of ruCLIP / ruGPT-3: they are saved with
`save_pretrained` and then loaded back through exactly the code path that loads the real
weights, so nothing is mocked and nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection,
                          ConvNextImageProcessorPil, GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast, ResNetConfig,
                          ResNetModel)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from memecap.config import TinyConfig
from memecap.models import TINY  # noqa: F401 (defined beside the registry, so settings need no transformers)

EOS = "<|endoftext|>"
PAD = "<pad>"


def save_on_any_process(model, out_dir: Path) -> None:
    """`save_pretrained`'s files, written by whichever process calls this. Under torch.distributed
    transformers 5 writes weights on global rank 0 only, and on several machines with their own
    folders each machine's first process makes its own tiny bases."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out_dir)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(out_dir)
    weights, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:  # a tied weight (GPT-2's lm_head is its input embedding)
            continue
        seen.add(tensor.data_ptr())
        weights[name] = tensor.detach().contiguous()
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def save_tiny_clip_vision(out_dir: Path, cfg: TinyConfig, seed: int = 0) -> Path:
    """A CLIP vision tower with projection, random weights, and its image processor settings."""
    config = CLIPVisionConfig(
        hidden_size=cfg.vision_width, intermediate_size=4 * cfg.vision_width,
        num_hidden_layers=cfg.vision_layers, num_attention_heads=max(1, cfg.vision_width // 32),
        image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.embed_dim,
        hidden_act="quick_gelu",
    )
    with torch.random.fork_rng():  # leave the caller's random stream untouched
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(config)
        # transformers' 0.02 init hides position under patch content until training has run long
        # enough to amplify it; at unit scale a from-scratch tower learns "where" within minutes.
        torch.nn.init.normal_(model.vision_model.embeddings.position_embedding.weight, std=1.0)
    out_dir = Path(out_dir)
    save_on_any_process(model, out_dir)
    CLIPImageProcessorPil(size={"shortest_edge": cfg.image_size},
                       crop_size={"height": cfg.image_size, "width": cfg.image_size}).save_pretrained(out_dir)
    return out_dir


def byte_level_bpe(texts: Iterable[str], special: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE (GPT-2's, ruGPT-3's, Llama 3's and Qwen's kind) fit on `texts`, with the
    `special` tokens first."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> GPT2TokenizerFast:
    """A byte-level BPE like ruGPT-3's, trained on the given captions."""
    tok = byte_level_bpe(texts, [PAD, EOS], vocab_size)
    return GPT2TokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=PAD)


def save_tiny_gpt2(out_dir: Path, cfg: TinyConfig, texts: Iterable[str], seed: int = 0) -> Path:
    """A GPT-2 language model (ruGPT-3's class) with random weights and a tokenizer fit on `texts`."""
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=cfg.gpt_width,
                        n_layer=cfg.gpt_layers, n_head=cfg.gpt_heads,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    out_dir = Path(out_dir)
    save_on_any_process(model, out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def save_tiny_resnet(out_dir: Path, cfg: TinyConfig, seed: int = 0) -> Path:
    """A ResNet (microsoft/resnet-50's class) with random weights, basic blocks and few channels,
    and the image processor settings the real checkpoints ship."""
    config = ResNetConfig(embedding_size=cfg.resnet_widths[0], hidden_sizes=list(cfg.resnet_widths),
                          depths=list(cfg.resnet_depths), layer_type="basic")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ResNetModel(config)
    out_dir = Path(out_dir)
    save_on_any_process(model, out_dir)
    ConvNextImageProcessorPil(size={"shortest_edge": cfg.image_size}, image_mean=list(IMAGENET_DEFAULT_MEAN),
                              image_std=list(IMAGENET_DEFAULT_STD)).save_pretrained(out_dir)
    return out_dir
