"""ClipCap through its real loading path, on tiny random ruCLIP and ruGPT-3-class models."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from memecap.config import GenerationConfig
from memecap.features import FeatureCache
from memecap.models import build_model, load_model
from memecap.data.datasets import CaptionEvalSet
from tests.helpers import clipcap_batch, nudge_trained_parts, recipe_with_tiny_bases, stacked

RECIPES = ["clipcap_mlp_frozen", "clipcap_transformer_frozen", "clipcap_mlp_finetune", "clipcap_lora",
           "clipcap_qlora_large"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_builds_and_trains_the_intended_parts(recipe, tiny_ruclip_dir, tiny_gpt2_dir, examples, tmp_path):
    cfg = recipe_with_tiny_bases(recipe, tiny_ruclip_dir, tiny_gpt2_dir)
    model = build_model(cfg.model, work_dir=tmp_path)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("mapper.") for n in trainable)
    assert model.encoder is None  # frozen encoder: features come from the cache, not the trained module
    decoder_trainable = {n for n in trainable if n.startswith("decoder.")}
    mode = cfg.model.decoder.mode
    if mode == "frozen":
        assert not decoder_trainable
    elif mode == "lora":
        assert decoder_trainable and all("lora_" in n for n in decoder_trainable)
        if cfg.model.decoder.quantization == "4bit":
            assert any(type(m).__name__ == "Linear4bit" for m in model.decoder.modules())
    else:
        assert len(decoder_trainable) == sum(1 for _ in model.decoder.parameters())

    batch = clipcap_batch(model, examples)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    out = model(batch)
    out["loss"].backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == trainable, (changed ^ trainable)


def test_loss_masks_padding_not_real_tokens(tiny_ruclip_dir, tiny_gpt2_dir, examples, tmp_path):
    cfg = recipe_with_tiny_bases("clipcap_mlp_frozen", tiny_ruclip_dir, tiny_gpt2_dir)
    model = build_model(cfg.model, work_dir=tmp_path)
    short, long = "кек", examples[0].captions[0]
    ids_short, ids_long = model.encode_caption(short, 64), model.encode_caption(long, 64)
    assert ids_short[-1] == model.eos_id and ids_long[-1] == model.eos_id
    feats = model.image_inputs([examples[0].image_path] * 2, cache_dir=None, device="cpu", progress=False)
    batch = model.collate([{"image": feats[0], "input_ids": ids_short}, {"image": feats[1], "input_ids": ids_long}])
    assert (batch["labels"][0, len(ids_short):] == -100).all()
    assert batch["labels"][0, :len(ids_short)].tolist() == ids_short
    # The pad id is a real token (id 0 here); a row that contains it is still scored in full.
    assert model.pad_id == 0
    with_zero = ids_short[:-1] + [0] + [model.eos_id]
    batch0 = model.collate([{"image": feats[0], "input_ids": with_zero}])
    assert (batch0["labels"] != -100).sum() == len(with_zero)

    # Normalised by caption tokens: equals the token-mean of per-token cross-entropies.
    model.eval()
    out = model(batch)
    assert out["num_tokens"] == len(ids_short) + len(ids_long)
    single = [model(model.collate([{"image": feats[i], "input_ids": ids}]))["loss"] * len(ids)
              for i, ids in enumerate([ids_short, ids_long])]
    assert out["loss"].item() == pytest.approx((sum(single) / (len(ids_short) + len(ids_long))).item(), rel=1e-5)


def test_truncation_keeps_the_end_token(tiny_ruclip_dir, tiny_gpt2_dir, examples, tmp_path):
    cfg = recipe_with_tiny_bases("clipcap_mlp_frozen", tiny_ruclip_dir, tiny_gpt2_dir)
    model = build_model(cfg.model, work_dir=tmp_path)
    ids = model.encode_caption(examples[0].captions[0] * 5, 10)
    assert len(ids) == 10 and ids[-1] == model.eos_id


@pytest.mark.parametrize("generation", [
    GenerationConfig(strategy="greedy", max_new_tokens=6),
    GenerationConfig(strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=6),
    GenerationConfig(strategy="sample", top_k=5, top_p=0.9, num_return_sequences=3, max_new_tokens=6),
])
def test_generation_strategies(generation, tiny_ruclip_dir, tiny_gpt2_dir, examples, tmp_path):
    model = build_model(recipe_with_tiny_bases("clipcap_transformer_frozen", tiny_ruclip_dir, tiny_gpt2_dir).model,
                        work_dir=tmp_path).eval()
    feats = model.image_inputs([e.image_path for e in examples[:3]], cache_dir=None, device="cpu", progress=False)
    batch = model.collate([CaptionEvalSet(feats)[i] for i in range(3)])
    captions = model.generate(batch, generation)
    assert len(captions) == 3 and all(len(c) == generation.num_return_sequences for c in captions)
    assert all(isinstance(t, str) for c in captions for t in c)


@pytest.mark.parametrize("recipe, features", [(r, "pooled") for r in RECIPES] + [
    ("clipcap_mlp_frozen", "patches"), ("clipcap_transformer_frozen", "patches")])
def test_export_reloads_to_the_same_captions(recipe, features, tiny_ruclip_dir, tiny_gpt2_dir, examples, tmp_path):
    cfg = recipe_with_tiny_bases(recipe, tiny_ruclip_dir, tiny_gpt2_dir, f"model.encoder.features={features}")
    model = build_model(cfg.model, work_dir=tmp_path)
    nudge_trained_parts(model)
    model.eval()
    out = tmp_path / "export"
    model.save_pretrained(out)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert "memecap.yaml" in files and "mapper.safetensors" in files
    assert ("adapter/adapter_model.safetensors" in files) == (cfg.model.decoder.mode == "lora")
    assert ("decoder/model.safetensors" in files) == (cfg.model.decoder.mode == "full")
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)  # safetensors only, nothing to unpickle

    loaded = load_model(out, with_encoder=True)
    assert loaded.encoder is not None  # captions raw images
    paths = [e.image_path for e in examples[:3]]
    gen = GenerationConfig(strategy="greedy", max_new_tokens=8)
    feats = model.image_inputs(paths, cache_dir=None, device="cpu", progress=False)
    expected = model.generate(model.collate([CaptionEvalSet(feats)[i] for i in range(3)]), gen)
    pixels = loaded.image_inputs(paths, cache_dir=None, device="cpu", progress=False)
    assert torch.allclose(pixels, feats, atol=1e-5)
    got = loaded.generate(loaded.collate([CaptionEvalSet(pixels)[i] for i in range(3)]), gen)
    assert got == expected
    mapper = load_file(out / "mapper.safetensors")
    for name, tensor in model.mapper.state_dict().items():
        assert torch.equal(mapper[name], tensor)


@pytest.mark.parametrize("mapper, expected_prefix", [("mlp", 17), ("transformer", 20)])
def test_patch_features_feed_the_decoder_one_token_per_patch(mapper, expected_prefix, tiny_ruclip_dir,
                                                              tiny_gpt2_dir, examples, tmp_path):
    cfg = recipe_with_tiny_bases(f"clipcap_{mapper}_frozen", tiny_ruclip_dir, tiny_gpt2_dir,
                                 "model.encoder.features=patches")
    model = build_model(cfg.model, work_dir=tmp_path)
    batch = clipcap_batch(model, examples, n=2, cache_dir=tmp_path / "cache")
    assert batch["image"].shape == (2, 17, 64)  # 4x4 patches + class token, width 64, cached as such
    # mlp: every patch becomes a prefix token; transformer: prefix_length queries read the patches.
    assert model.prefix(batch["image"]).shape[:2] == (2, expected_prefix)
    out = model(batch)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.mapper.parameters())


def test_feature_cache_hits_and_invalidates(tiny_ruclip_dir, tiny_gpt2_dir, examples, tmp_path):
    cfg = recipe_with_tiny_bases("clipcap_mlp_frozen", tiny_ruclip_dir, tiny_gpt2_dir)
    model = build_model(cfg.model, work_dir=tmp_path)
    cache_dir = tmp_path / "cache"
    paths = [e.image_path for e in examples[:6]]
    cached = model.image_inputs(paths, cache_dir=cache_dir, device="cpu", progress=False)
    assert not isinstance(cached, torch.Tensor) and len(cached) == 6  # read when used, never held whole
    first = stacked(cached)
    assert (model.frozen_encoder.last_cache.hits, model.frozen_encoder.last_cache.misses) == (0, 6)
    second = stacked(model.image_inputs(paths, cache_dir=cache_dir, device="cpu", progress=False))
    assert (model.frozen_encoder.last_cache.hits, model.frozen_encoder.last_cache.misses) == (6, 0)
    assert torch.equal(first, second)
    assert torch.equal(first, model.image_inputs(paths, cache_dir=None, device="cpu", progress=False))

    # Another transform (crop instead of pad) is another key: nothing stale is reused.
    cropped = build_model(recipe_with_tiny_bases("clipcap_mlp_frozen", tiny_ruclip_dir, tiny_gpt2_dir,
                                                 "model.encoder.resize_mode=crop").model, work_dir=tmp_path)
    cropped.image_inputs(paths, cache_dir=cache_dir, device="cpu", progress=False)
    assert (cropped.frozen_encoder.last_cache.hits, cropped.frozen_encoder.last_cache.misses) == (0, 6)

    # Changed image bytes miss; the other images still hit.
    copy = tmp_path / "changed.jpg"
    copy.write_bytes(paths[1].read_bytes() + b"\0")
    model.image_inputs([paths[0], copy], cache_dir=cache_dir, device="cpu", progress=False)
    assert (model.frozen_encoder.last_cache.hits, model.frozen_encoder.last_cache.misses) == (1, 1)


def test_damaged_feature_files_are_recomputed_and_said_once(tiny_ruclip_dir, tiny_gpt2_dir, examples, tmp_path, caplog):
    """Per-image feature files an older memecap wrote are still read (and copied into the sharded
    store); an empty, truncated, NaN-edited, hand-edited or checksum-less one is a miss: it is
    recomputed, one line says how many, and the features equal a clean run's."""
    from safetensors.torch import save_file

    from memecap.data.fingerprint import image_digest
    from memecap.features import tensor_sha256

    model = build_model(recipe_with_tiny_bases("clipcap_mlp_frozen", tiny_ruclip_dir, tiny_gpt2_dir).model,
                        work_dir=tmp_path)
    paths = [e.image_path for e in examples[:6]]
    clean = stacked(model.image_inputs(paths, cache_dir=tmp_path / "fresh", device="cpu", progress=False))
    cache_dir = tmp_path / "cache"
    old = FeatureCache(cache_dir, model.frozen_encoder.fingerprint(), model.frozen_encoder.transform.signature())
    files = [old.legacy_path(image_digest(p)) for p in paths]
    for f, good in zip(files, clean):  # the layout an older memecap wrote: one checked file per image
        f.parent.mkdir(exist_ok=True)
        save_file({"embedding": good}, str(f), metadata={"sha256": tensor_sha256(good)})
    good = clean[0]
    nan = good.clone()
    nan[0] = float("nan")
    files[0].write_bytes(b"")                                          # empty
    files[1].write_bytes(files[1].read_bytes()[:40])                   # truncated
    save_file({"embedding": nan}, str(files[2]), metadata={"sha256": tensor_sha256(nan)})  # NaN, checksum redone
    save_file({"embedding": good + 1}, str(files[3]), metadata={"sha256": tensor_sha256(good)})  # edited values
    save_file({"embedding": good}, str(files[4]))                      # an older memecap's: no checksum

    caplog.clear()
    again = stacked(model.image_inputs(paths, cache_dir=cache_dir, device="cpu", progress=False))
    # Recomputed in a batch of 5, not 6: some CPUs' kernels round differently by batch size.
    torch.testing.assert_close(again, clean)
    assert torch.equal(again[5], clean[5])  # the intact old file, read as it was
    assert (model.frozen_encoder.last_cache.hits, model.frozen_encoder.last_cache.misses) == (1, 5)
    said = [r.getMessage() for r in caplog.records if "damaged cache entries" in r.getMessage()]
    assert said == [f"5 damaged cache entries in {model.frozen_encoder.last_cache.dir} were recomputed "
                    "(1 written by an older memecap without a checksum)"]

    # All six now sit in the store: the next pass hits everything and says nothing, even without the old files.
    for f in files:
        f.unlink()
    caplog.clear()
    assert torch.equal(stacked(model.image_inputs(paths, cache_dir=cache_dir, device="cpu", progress=False)), again)
    assert (model.frozen_encoder.last_cache.hits, model.frozen_encoder.last_cache.misses) == (6, 0)
    assert not [r for r in caplog.records if "damaged" in r.getMessage()]


def test_cache_key_includes_encoder_weights(tmp_path):
    a = FeatureCache(tmp_path, "weights-a", "transform")
    b = FeatureCache(tmp_path, "weights-b", "transform")
    a.put("img", torch.ones(3))
    assert a.get("img") is not None and b.get("img") is None


def test_pinned_regression_loss(tiny_ruclip_dir, examples, tmp_path):
    """A fixed-seed tiny model on fixed inputs: refactors must not change the math silently."""
    from memecap.config import TinyConfig
    from memecap.models.tiny import save_tiny_gpt2

    texts = ["на картинке красный круг слева на белом фоне.", 'на картинке синяя звезда. подпись: "кек"'] * 20
    gpt = save_tiny_gpt2(tmp_path / "gpt", TinyConfig(gpt_width=32, gpt_layers=2, gpt_heads=2, vocab_size=300), texts)
    torch.manual_seed(0)
    cfg = recipe_with_tiny_bases("clipcap_mlp_frozen", tiny_ruclip_dir, gpt)
    model = build_model(cfg.model, work_dir=tmp_path).eval()
    batch = model.collate([{"image": torch.linspace(-1, 1, model.image_dim) * (i + 1),
                            "input_ids": model.encode_caption(t, 32)} for i, t in enumerate(texts[:2])])
    loss = model(batch)["loss"].item()
    assert loss == pytest.approx(5.72443, abs=1e-4)
