"""Tiny random RuDOLPH, VQGAN and YouTokenToMe tokenizer, of the packages' own classes, saved in
the published layouts so that they load through exactly the code that loads the Hub weights.

    folder/rudolph/         pytorch_model.bin + config.json (ruDolphModel keyword arguments)
    folder/rudalle-utils/   bpe.model + vqgan.gumbelf8-sber.config.yml + vqgan.gumbelf8-sber.model.ckpt

Used by the tests, the benchmarks (with the real shapes) and `model.rudolph.name=tiny-random`.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import torch

from memecap.config import TinyConfig
from memecap.models.rudolph.compat import import_rudolph
from memecap.models.rudolph.weights import (BPE_FILE, MODEL_CONFIG, MODEL_WEIGHTS, VQGAN_CONFIG, VQGAN_WEIGHTS,
                                            rudolph_of_shape)


def save_tiny_tokenizer(folder: Path, texts: Iterable[str], vocab_size: int) -> Path:
    """A YouTokenToMe BPE (pad 0, unk 1, bos 2, eos 3, like RuDOLPH's) fit on lower-cased `texts`."""
    import youtokentome as yttm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "texts.txt"
        corpus.write_text("\n".join(t.lower().strip() for t in texts), encoding="utf-8")
        # YouTokenToMe reports its settings from C++; this keeps test and demo logs readable.
        with _quiet_fd(1), _quiet_fd(2):
            yttm.BPE.train(data=str(corpus), model=str(folder / BPE_FILE), vocab_size=vocab_size, n_threads=1)
    return folder / BPE_FILE


@contextlib.contextmanager
def _quiet_fd(fd: int):
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def tiny_vqgan_config(image_size: int, n_embed: int, width: int = 32) -> dict:
    """A 4-level (8x downsampling, like the real f8 VQGAN) encoder/decoder of width `width`
    (GroupNorm needs multiples of 32), with attention at the coarsest level."""
    return {"model": {"target": "taming.models.vqgan.GumbelVQ", "params": {
        "kl_weight": 1.0e-8, "embed_dim": width, "n_embed": n_embed,
        "ddconfig": {"double_z": False, "z_channels": width, "resolution": image_size, "in_channels": 3, "out_ch": 3,
                     "ch": width, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [image_size // 8],
                     "dropout": 0.0}}}}


def save_tiny_vqgan(folder: Path, image_size: int, n_embed: int, seed: int = 0) -> Path:
    """rudalle's VQGanGumbelVAE with random weights, saved like the published training checkpoint."""
    from omegaconf import OmegaConf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.create(tiny_vqgan_config(image_size, n_embed))
    OmegaConf.save(config, folder / VQGAN_CONFIG)
    with torch.random.fork_rng(), contextlib.redirect_stdout(io.StringIO()):
        torch.manual_seed(seed)
        vae = import_rudolph().vae.VQGanGumbelVAE(config, dwt=False)
        # Codebook logits of a random encoder are nearly flat; a wider projection spreads the codes.
        torch.nn.init.normal_(vae.model.quantize.proj.weight, std=1.0)
    torch.save({"state_dict": vae.model.state_dict()}, folder / VQGAN_WEIGHTS)
    return folder


def tiny_rudolph_params(bpe_vocab: int, cfg: TinyConfig, n_embed: int) -> dict:
    """ruDolphModel arguments in the published models' conventions (vocab_size = BPE + left-text
    positions; special tokens after the BPE vocabulary), with every mask kind in 3 layers."""
    return dict(num_layers=max(3, cfg.gpt_layers), hidden_size=cfg.gpt_width, num_attention_heads=cfg.gpt_heads,
                embedding_dropout_prob=0.0, attention_dropout_prob=0.0, output_dropout_prob=0.0,
                l_text_seq_length=8, image_tokens_per_dim=cfg.image_size // 8,
                r_text_seq_length=cfg.rudolph_text_tokens,
                kernel_size=3, last_kernel_size=3, cogview_sandwich_layernorm=True, cogview_pb_relax=True,
                text_special_tokens=8, image_special_tokens=4, vocab_size=bpe_vocab + 8, image_vocab_size=n_embed)


def save_tiny_rudolph(folder: Path, params: dict, seed: int = 0, dtype: Optional[torch.dtype] = None) -> Path:
    """A random ruDolphModel of shape `params` as pytorch_model.bin + config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = rudolph_of_shape(params)
    state = model.state_dict()
    if dtype is not None:  # the published checkpoints are fp16
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, folder / MODEL_WEIGHTS)
    (folder / MODEL_CONFIG).write_text(json.dumps(params, indent=1), encoding="utf-8")
    return folder


def save_tiny_rudolph_bases(folder: Path, cfg: TinyConfig, texts: Iterable[str], seed: int = 0) -> tuple[Path, Path]:
    """Tiny RuDOLPH + tokenizer + VQGAN; returns (RuDOLPH folder, utils folder)."""
    import youtokentome as yttm

    folder = Path(folder)
    utils = folder / "rudalle-utils"
    bpe = save_tiny_tokenizer(utils, texts, cfg.vocab_size)
    n_embed = 64
    save_tiny_vqgan(utils, cfg.image_size, n_embed, seed)
    params = tiny_rudolph_params(yttm.BPE(model=str(bpe)).vocab_size(), cfg, n_embed)
    return save_tiny_rudolph(folder / "rudolph", params, seed), utils
