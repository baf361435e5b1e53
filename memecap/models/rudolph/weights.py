"""Load RuDOLPH, its VQGAN and its YouTokenToMe tokenizer from the Hub or from folders in the
published layouts, into the `rudolph` / `rudalle` packages' own classes.

    ai-forever/RUDOLPH-350M        pytorch_model.bin (the state dict of rudolph's ruDolphModel)
    ai-forever/rudalle-utils       bpe.model, vqgan.gumbelf8-sber.config.yml, vqgan.gumbelf8-sber.model.ckpt

The RuDOLPH repos publish no config: the model's shape comes from the `rudolph` package's MODELS
table (matched by Hub id, or named with model.rudolph.shape), or from a `config.json` of
ruDolphModel keyword arguments in a local folder (tiny test models are saved that way).
Pickled checkpoints are read with `torch.load(weights_only=True)`: tensors only, no code runs.
Downloads go through `hf_hub_download` (cached, revision-pinned); nothing here calls the
packages' own download helpers, which use a removed huggingface_hub API.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from typing import Optional

import torch

from memecap.models.hub_files import resolve_file
from memecap.models.rudolph.compat import import_rudolph

logger = logging.getLogger(__name__)

MODEL_WEIGHTS = "pytorch_model.bin"
MODEL_CONFIG = "config.json"  # local folders only: ruDolphModel keyword arguments
VQGAN_CONFIG = "vqgan.gumbelf8-sber.config.yml"
VQGAN_WEIGHTS = "vqgan.gumbelf8-sber.model.ckpt"
BPE_FILE = "bpe.model"
# Buffers ruDolphModel computes from its shape (sparse attention masks); older checkpoints may lack them.
MASK_BUFFERS = {f"transformer.{m}" for m in ("row_mask", "col_mask", "conv_mask", "last_conv_mask")}


def known_shapes() -> dict[str, str]:
    """Hub id (lower case) -> key of rudolph.model.MODELS. The package names the repos by their
    old owner `sberbank-ai`, since renamed `ai-forever`; both spellings are accepted."""
    out = {}
    for key, entry in import_rudolph().model_zoo.MODELS.items():
        repo = entry["repo_id"].lower()
        out[repo] = key
        owner, _, rest = repo.partition("/")
        if owner == "sberbank-ai":
            out[f"ai-forever/{rest}"] = key
    return out


def shape_params(shape: str) -> dict:
    zoo = import_rudolph().model_zoo.MODELS
    if shape not in zoo:
        raise ValueError(f"model.rudolph.shape={shape!r}: the rudolph package knows {', '.join(zoo)}")
    return dict(zoo[shape]["model_params"])


def model_params(name: str, shape: Optional[str] = None, revision: Optional[str] = None) -> dict:
    """ruDolphModel keyword arguments for the weights at `name`."""
    if shape:
        return shape_params(shape)
    if os.path.isdir(name):
        path = os.path.join(name, MODEL_CONFIG)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"RuDOLPH folder {name!r} has no {MODEL_CONFIG}: set model.rudolph.shape to the "
                                    f"published model it holds ({', '.join(import_rudolph().model_zoo.MODELS)})")
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    key = known_shapes().get(name.lower())
    if key is None:
        raise ValueError(f"model.rudolph.name={name!r} is not a RuDOLPH repo the rudolph package knows "
                         f"({', '.join(sorted(known_shapes()))}); set model.rudolph.shape")
    return shape_params(key)


def rudolph_of_shape(params: dict) -> torch.nn.Module:
    """A random-initialised ruDolphModel (the package's class) of the given shape."""
    return import_rudolph().model.ruDolphModel(device="cpu", **params)


def load_rudolph(name: str, revision: Optional[str] = None,
                 shape: Optional[str] = None) -> tuple[torch.nn.Module, dict]:
    """ruDolphModel with the weights at `name` (fp16 checkpoints are widened to fp32), and its shape."""
    params = model_params(name, shape, revision)
    model = rudolph_of_shape(params)
    state = torch.load(resolve_file(name, MODEL_WEIGHTS, revision, "RuDOLPH"), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - MASK_BUFFERS or unexpected:
        raise KeyError(f"RuDOLPH weights at {name!r} do not fit the {params.get('num_layers')}-layer, width "
                       f"{params.get('hidden_size')} model: missing {sorted(set(missing) - MASK_BUFFERS)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")
    return model, params


def load_vqgan(name: str, revision: Optional[str] = None) -> torch.nn.Module:
    """rudalle's VQGanGumbelVAE with the config and weights at `name`, encoder only: captioning
    turns images into codes and never decodes codes into pixels."""
    from omegaconf import OmegaConf

    vae_module = import_rudolph().vae
    config = OmegaConf.load(resolve_file(name, VQGAN_CONFIG, revision, "VQGAN"))
    with contextlib.redirect_stdout(io.StringIO()):  # taming prints the latent shape when it builds
        vae = vae_module.VQGanGumbelVAE(config, dwt=False)
    checkpoint = torch.load(resolve_file(name, VQGAN_WEIGHTS, revision, "VQGAN"), map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    missing, unexpected = vae.model.load_state_dict(state, strict=False)
    if missing:
        raise KeyError(f"VQGAN weights at {name!r} lack {sorted(missing)[:5]} ({len(missing)} tensors)")
    if unexpected:  # the published file is a training checkpoint: it also holds its loss networks
        logger.info("VQGAN %s: ignored %d tensors that are not part of the autoencoder", name, len(unexpected))
    vae.model.decoder = None
    vae.model.post_quant_conv = None
    vae.downsampling = 2 ** (len(config.model.params.ddconfig.ch_mult) - 1)
    return vae.eval().requires_grad_(False)


def load_tokenizer(name: str, revision: Optional[str] = None):
    """rudalle's YTTMTokenizerWrapper around the YouTokenToMe BPE at `name`, and the model file's path."""
    import youtokentome as yttm

    path = resolve_file(name, BPE_FILE, revision, "tokenizer")
    return import_rudolph().tokenizer.YTTMTokenizerWrapper(yttm.BPE(model=path)), path
