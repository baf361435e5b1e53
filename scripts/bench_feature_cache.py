"""Epoch time of a frozen-encoder ClipCap with memecap's feature cache against running the encoder
in every step (what the original meme project did), on real meme images.

    .venv/bin/python scripts/bench_feature_cache.py [--images 96] [--decoder small|tiny]
    .venv/bin/python scripts/bench_feature_cache.py --scale 10000 100000 1000000 [--old-up-to 100000]

`--scale` measures the feature store itself at N items (issue 23): fill and reload time per item,
peak RSS, files created, the time to open the store (its index read) and the index's memory per
item (what tracemalloc counts as held after a second open), each step in its own process. Items are synthetic 512-float
embeddings (ClipCap's vector) written through the store's put path without encoding images;
`--encode-up-to` also runs N tiny JPEGs through `encode_images` (a one-layer encoder), and the
one-file-per-image layout of older memecaps is measured beside it up to `--old-up-to`.

The encoder is a random-initialised ruCLIP ViT-B/32-384 of the real shape (speed needs no
pretrained weights), loaded through memecap's ruCLIP loader; images are the real JPEGs in
../shared/data/memes-sample (any size, decoded and letterboxed each time when uncached). The
decoder is frozen with ruGPT-3 small's shape (`small`) or a tiny one (`tiny`, isolates the
encoder's share). Prints Markdown rows for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
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


DIM, PUT_BATCH = 512, 256


def digest_of(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def synthetic(i: int) -> torch.Tensor:
    return torch.randn(DIM, generator=torch.Generator().manual_seed(i))


def scale_step(layout: str, step: str, n: int, root: Path) -> dict:
    """One step in this process: fill or reload n items in `layout` (store, old or encode)."""
    from memecap.features import CachedFeatures, FeatureCache, _read_entry, encode_images

    if step == "open":
        return open_step(root)
    t0 = time.perf_counter()
    if layout == "encode":
        paths = sorted((root / "jpegs").glob("*.jpg"))
        torch.manual_seed(0)
        encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, DIM))
        cache = FeatureCache(root / "cache", "bench-encoder", "8x8")
        features = encode_images(encoder, TinyPixels(), paths, cache=cache, device="cpu", batch_size=256,
                                 progress=False)
        for i in range(len(features)):
            features[i]
        assert (cache.misses if step == "fill" else cache.hits) == n
    elif layout == "store":
        cache = FeatureCache(root / "cache", "bench", "synthetic")
        if step == "fill":
            for start in range(0, n, PUT_BATCH):
                cache.put_many([(digest_of(i), synthetic(i)) for i in range(start, min(n, start + PUT_BATCH))])
        else:
            digests = [digest_of(i) for i in range(n)]
            assert all(cache.get(d) is not None for d in digests) and cache.hits == n  # verified, as a run does
            features = CachedFeatures(cache, digests)
            for i in range(n):
                features[i]  # and read again when used
    else:  # the one-file-per-image layout older memecaps wrote, with the same atomic write and checks
        from safetensors.torch import save_file

        from memecap.features import tensor_sha256
        folder = root / "old"
        for i in range(n):
            d = digest_of(i)
            path = folder / d[:2] / f"{d}.safetensors"
            if step == "fill":
                path.parent.mkdir(parents=True, exist_ok=True)
                e = synthetic(i)
                fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
                os.close(fd)
                save_file({"embedding": e}, tmp, metadata={"sha256": tensor_sha256(e)})
                os.replace(tmp, path)
            else:
                _read_entry(path)
                _read_entry(path)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "files": sum(len(files) for _, _, files in os.walk(root / ("old" if layout == "old" else "cache")))}


def open_step(root: Path) -> dict:
    """Seconds to open the filled store, then the bytes its index holds per item (a second open under
    tracemalloc, which slows it: the time is taken without it)."""
    import gc
    import tracemalloc

    from memecap.feature_store import ShardStore

    folder = next((root / "cache").glob("*/shards"))
    t0 = time.perf_counter()
    store = ShardStore(folder)
    seconds, n = time.perf_counter() - t0, len(store)
    del store
    gc.collect()
    tracemalloc.start()
    store = ShardStore(folder)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(store) == n
    return {"seconds": seconds, "index_bytes_per_item": held / n}


class TinyPixels:
    def __call__(self, image):
        import numpy as np
        pixels = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32)
        return torch.from_numpy(pixels).permute(2, 0, 1) / 255

    def signature(self) -> str:
        return "8x8"


def write_jpegs(folder: Path, n: int) -> None:
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (i % 256, (i // 256) % 256, (i // 65536) % 256)).save(folder / f"{i:07d}.jpg")


def scale(sizes: list[int], old_up_to: int, encode_up_to: int) -> None:
    print("| layout | items | fill µs/item | reload µs/item | peak RSS fill / reload (MiB) | files | open s "
          "| index B/item |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        layouts = ["store"] + (["old"] if n <= old_up_to else []) + (["encode"] if n <= encode_up_to else [])
        for layout in layouts:
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
                if layout == "encode":
                    write_jpegs(Path(tmp) / "jpegs", n)
                runs = {step: json.loads(subprocess.run(
                    [sys.executable, __file__, "--scale-step", layout, step, str(n), tmp],
                    check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                    for step in ("fill", "open", "reload") if step != "open" or layout == "store"}
            opened = (f"{runs['open']['seconds']:.2f} | {runs['open']['index_bytes_per_item']:.0f}"
                      if "open" in runs else "- | -")
            name = {"store": "sharded store (synthetic put)", "old": "one file per image (older memecap)",
                    "encode": "sharded store via encode_images (tiny JPEGs)"}[layout]
            print(f"| {name} | {n:,} | {runs['fill']['seconds'] / n * 1e6:.0f} | "
                  f"{runs['reload']['seconds'] / n * 1e6:.0f} | {runs['fill']['peak_rss_mib']:.0f} / "
                  f"{runs['reload']['peak_rss_mib']:.0f} | {runs['fill']['files']:,} | {opened} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--decoder", choices=["small", "tiny"], default="small")
    parser.add_argument("--scale", type=int, nargs="+", help="measure the feature store at these item counts")
    parser.add_argument("--old-up-to", type=int, default=100_000)
    parser.add_argument("--encode-up-to", type=int, default=10_000)
    parser.add_argument("--scale-step", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_step:
        layout, step, n, root = args.scale_step
        print(json.dumps(scale_step(layout, step, int(n), Path(root))))
        return
    if args.scale:
        scale(args.scale, args.old_up_to, args.encode_up_to)
        return
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
