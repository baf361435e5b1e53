"""Epoch time of a frozen-encoder ClipCap with memecap's feature cache against running the encoder
in every step (what the original meme project did), on real meme images.

    .venv/bin/python scripts/bench_feature_cache.py [--images 96] [--decoder small|tiny]

The encoder is a random-initialised ruCLIP ViT-B/32-384 of the real shape (speed needs no
pretrained weights), loaded through memecap's ruCLIP loader; images are the real JPEGs in
../shared/data/memes-sample (any size, decoded and letterboxed each time when uncached). The
decoder is frozen with ruGPT-3 small's shape (`small`) or a tiny one (`tiny`, isolates the
encoder's share). Prints Markdown rows for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from memecap.config import load_config
from memecap.data.tables import load_split
from memecap.models import build_model
from memecap.data.datasets import CaptionTrainSet, LazyPixels
from memecap.models.tiny import train_tokenizer

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "memes-sample" / "train.tsv"
RUCLIP_B32_384 = {"embed_dim": 512, "image_resolution": 384, "vision_layers": 12, "vision_width": 768,
                  "vision_patch_size": 32, "context_length": 77, "vocab_size": 49408, "transformer_width": 512,
                  "transformer_heads": 8, "transformer_layers": 12}


def save_ruclip_shaped(folder: Path) -> None:
    """Random weights in ruCLIP's published layout, visual tower only (the loader reads nothing else)."""
    from memecap.models.ruclip_weights import ruclip_vision_config  # noqa: F401  (documents the consumer)
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    w = RUCLIP_B32_384["vision_width"]
    hf = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=w, intermediate_size=4 * w, num_hidden_layers=RUCLIP_B32_384["vision_layers"],
        num_attention_heads=w // 64, image_size=384, patch_size=32, projection_dim=512, hidden_act="quick_gelu"))
    sd, v = {}, hf.vision_model
    sd["visual.conv1.weight"] = v.embeddings.patch_embedding.weight
    sd["visual.class_embedding"] = v.embeddings.class_embedding
    sd["visual.positional_embedding"] = v.embeddings.position_embedding.weight
    sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"] = v.pre_layrnorm.weight, v.pre_layrnorm.bias
    sd["visual.ln_post.weight"], sd["visual.ln_post.bias"] = v.post_layernorm.weight, v.post_layernorm.bias
    sd["visual.proj"] = hf.visual_projection.weight.T
    for i, layer in enumerate(v.encoder.layers):
        p = f"visual.transformer.resblocks.{i}."
        a = layer.self_attn
        sd[p + "attn.in_proj_weight"] = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        sd[p + "attn.in_proj_bias"] = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
        sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"] = a.out_proj.weight, a.out_proj.bias
        sd[p + "ln_1.weight"], sd[p + "ln_1.bias"] = layer.layer_norm1.weight, layer.layer_norm1.bias
        sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = layer.layer_norm2.weight, layer.layer_norm2.bias
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = layer.mlp.fc1.weight, layer.mlp.fc1.bias
        sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = layer.mlp.fc2.weight, layer.mlp.fc2.bias
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(RUCLIP_B32_384))
    from safetensors.torch import save_file

    save_file({k: t.detach().contiguous() for k, t in sd.items()}, str(folder / "model.safetensors"))


def save_decoder(folder: Path, size: str, texts: list[str]) -> None:
    tok = train_tokenizer(texts, 2000)
    shape = dict(n_embd=768, n_layer=12, n_head=12) if size == "small" else dict(n_embd=64, n_layer=2, n_head=2)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=512, eos_token_id=tok.eos_token_id,
                               bos_token_id=tok.eos_token_id, **shape)).save_pretrained(folder)
    tok.save_pretrained(folder)


def timed_epoch(model, images, ids, batch_size: int, encode_in_step: bool) -> float:
    dataset = CaptionTrainSet(images, ids, list(range(len(ids))))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=model.collate)
    encoder = model.frozen_encoder.module
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    start = time.perf_counter()
    for batch in loader:
        if encode_in_step:  # the frozen encoder runs on every batch, as without a cache
            with torch.no_grad():
                batch["image"] = encoder(batch["image"])
        model(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--decoder", choices=["small", "tiny"], default="small")
    args = parser.parse_args()
    examples, _ = load_split(SAMPLE, max_rows=args.images, log=None)
    texts = [c for e in examples for c in e.captions]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_ruclip_shaped(tmp / "ruclip")
        save_decoder(tmp / "gpt", args.decoder, texts)
        cfg = load_config("clipcap_mlp_frozen",
                          [f"model.encoder.name={tmp / 'ruclip'}", f"model.decoder.name={tmp / 'gpt'}"])
        model = build_model(cfg.model, work_dir=tmp)
        ids = [model.encode_caption(t, 128) for t in texts]
        paths = [e.image_path for e in examples]
        model.train()

        uncached = timed_epoch(model, LazyPixels(paths, model.transform), ids, args.batch_size, encode_in_step=True)
        t0 = time.perf_counter()
        feats = model.image_inputs(paths, cache_dir=tmp / "cache", device="cpu", progress=False)
        first_fill = time.perf_counter() - t0
        t0 = time.perf_counter()
        feats = model.image_inputs(paths, cache_dir=tmp / "cache", device="cpu", progress=False)
        reload = time.perf_counter() - t0
        cached = timed_epoch(model, feats, ids, args.batch_size, encode_in_step=False)
    label = f"ruCLIP B/32-384 + frozen GPT ({args.decoder}), {len(paths)} real memes, batch {args.batch_size}"
    print(f"| {label} | encoder in every step | {uncached:.1f} s/epoch | 1.0x |")
    print(f"| {label} | cache, first run (fill) | {first_fill + cached:.1f} s (fill {first_fill:.1f} s) | - |")
    print(f"| {label} | cache, later epochs | {cached:.1f} s/epoch | {uncached / cached:.1f}x |")
    print(f"| {label} | cache, later runs (reload) | {reload:.2f} s + {cached:.1f} s/epoch | - |")


if __name__ == "__main__":
    main()
