"""RuDOLPH through its real loading path (the rudolph/rudalle packages' classes), on a tiny random
RuDOLPH, VQGAN and BPE saved in the published layouts."""
from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from memecap.config import ConfigError, GenerationConfig, load_config
from memecap.data.captions import CaptionTooLong, encode_captions
from memecap.models import build_model, load_model
from memecap.data.datasets import CaptionEvalSet
from memecap.models.lora import base_model
from memecap.models.rudolph.model import SPECIAL_OFFSETS
from memecap.models.rudolph.compat import import_rudolph
from tests.helpers import build_rudolph, no_dropout, nudge_trained_parts, rudolph_overrides, stacked

RECIPES = ["rudolph_350m", "rudolph_1.3b", "rudolph_2.7b"]
pytestmark = pytest.mark.usefixtures("one_thread")


def make_batch(model, examples, n=4):
    codes = model.image_inputs([e.image_path for e in examples[:n]], cache_dir=None, device="cpu", progress=False)
    return model.collate([{"image": codes[i], "input_ids": model.encode_caption(e.captions[0], 128)}
                          for i, e in enumerate(examples[:n])])


def eval_batch(model, examples, n=3):
    codes = model.image_inputs([e.image_path for e in examples[:n]], cache_dir=None, device="cpu", progress=False)
    return model.collate([CaptionEvalSet(codes)[i] for i in range(n)])


# -- the compatibility layer -----------------------------------------------------------------

def test_packages_import_without_torchvision_and_leave_huggingface_hub_as_it_was():
    import huggingface_hub

    modules = import_rudolph()
    assert modules.model.ruDolphModel.__module__ == "rudolph.model.model"
    assert "cached_download" not in vars(huggingface_hub)  # the stand-in existed only during the import
    assert importlib.util.find_spec("torchvision") is None and "torchvision" not in sys.modules


def test_special_token_offsets_match_rudolph_api():
    """memecap cannot import rudolph.api (torchvision); its token table is read from the source."""
    source = Path(importlib.util.find_spec("rudolph").submodule_search_locations[0]) / "api.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    table = next(ast.literal_eval(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "DEFAULT_SPC_TOKENS" for t in node.targets))
    for name, offset in SPECIAL_OFFSETS.items():
        assert table[name] == 16384 + offset  # the published BPE has 16384 tokens


def test_gelu_shim_equals_the_packages_gelu():
    transformer = import_rudolph().transformer
    x = torch.randn(512, 64) * 4
    torch.testing.assert_close(transformer.gelu_jit(x), transformer.gelu(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(transformer.packaged_gelu_jit(x), transformer.gelu_jit(x), rtol=0, atol=1e-6)


def test_the_packages_own_checkpointing_flag_still_crashes(tiny_rudolph):
    """Why memecap checkpoints layers itself (rudolph_compat shim 4); if this starts passing, the
    package was fixed and the shim can go."""
    import json

    params = json.loads((Path(tiny_rudolph["name"]) / "config.json").read_text())
    model = import_rudolph().model.ruDolphModel(device="cpu", gradient_checkpointing=1, **params)
    n = params["l_text_seq_length"] + params["image_tokens_per_dim"] ** 2 + params["r_text_seq_length"]
    with pytest.raises(TypeError, match="has_cache"):
        model(torch.ones(1, n, dtype=torch.long), torch.tril(torch.ones(1, 1, n, n)), return_loss=True)


# -- what trains ----------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_builds_and_trains_the_intended_parts(recipe, tiny_rudolph, examples, tmp_path):
    model = build_rudolph(tiny_rudolph, recipe, work_dir=tmp_path)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    mode = load_config(recipe).model.rudolph.mode
    if mode == "lora":
        assert trainable and all("lora_" in n for n in trainable)
        assert {n.split(".")[-4] for n in trainable} == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
        assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    else:
        assert trainable == {n for n, _ in model.named_parameters()}
    vqgan = {p.data_ptr() for p in model.frozen_encoder.module.parameters()}
    # The frozen VQGAN is not trained or saved.
    assert vqgan and not vqgan & {t.data_ptr() for t in model.state_dict().values()}
    batch = make_batch(model, examples)
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    out = model(batch)
    out["loss"].backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach().float())}
    # Every trained weight moves except image-embedding rows no code in the batch uses (Adam's step of a zero gradient).
    assert changed <= trainable and trainable - changed <= {n for n in trainable if "image_embeddings" in n}


def test_subset_trains_only_the_named_modules_and_rejects_patterns_that_match_nothing(tiny_rudolph, examples, tmp_path):
    model = build_rudolph(tiny_rudolph, "rudolph_350m", "model.rudolph.mode=subset",
                          "model.rudolph.trainable=[transformer.layers.2, 'to_logits.*']", work_dir=tmp_path)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("rudolph.transformer.layers.2.", "rudolph.to_logits.")) for n in trainable)
    assert "rudolph.to_logits.1.weight" in trainable
    assert "rudolph.transformer.layers.1.mlp.dense_h_to_4h.weight" not in trainable
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model(make_batch(model, examples))["loss"].backward()
    opt.step()
    assert {n for n, p in model.named_parameters() if not torch.equal(before[n], p)} == trainable

    # The meme notebook's mistake: a substring of a name RuDOLPH does not have silently trained the wrong set.
    with pytest.raises(ValueError, match=r"'transformer\.layer\.23' matches no module.*transformer\.layers"):
        build_rudolph(tiny_rudolph, "rudolph_350m", "model.rudolph.mode=subset",
                      "model.rudolph.trainable=[transformer.layer.23]", work_dir=tmp_path)
    with pytest.raises(ConfigError, match="needs model.rudolph.trainable"):
        load_config("rudolph_350m", ["model.rudolph.mode=subset"])
    with pytest.raises(ValueError, match="'attn' names no module"):
        build_rudolph(tiny_rudolph, "rudolph_1.3b", "model.rudolph.lora.target_modules=[query_key_value, attn]",
                      work_dir=tmp_path)


def test_lora_changes_only_the_adapter_and_learns(tiny_rudolph, examples, tmp_path):
    model = no_dropout(build_rudolph(tiny_rudolph, "rudolph_1.3b", "model.rudolph.base_dtype=float32",
                                     work_dir=tmp_path))
    batch = make_batch(model, examples)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)


def test_gradient_checkpointing_gives_the_same_gradients_and_recomputes(tiny_rudolph, examples, tmp_path):
    grads, calls = {}, {}
    for ckpt in (False, True):
        model = no_dropout(build_rudolph(tiny_rudolph, "rudolph_350m",
                                         f"model.rudolph.gradient_checkpointing={str(ckpt).lower()}",
                                         work_dir=tmp_path)).train()
        seen = []
        base_model(model.rudolph).transformer.layers[0].attention.query_key_value.register_forward_hook(
            lambda *_: seen.append(1))
        out = model(make_batch(model, examples))
        out["loss"].backward()
        grads[ckpt] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        calls[ckpt] = len(seen)
    assert calls == {False: 1, True: 2}  # the layer ran again in backward
    assert grads[False].keys() == grads[True].keys() and grads[False]
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_and_a_bf16_base_train(tiny_rudolph, examples, tmp_path):
    """Mixed precision as Accelerate applies it (autocast), and a half-precision frozen base under LoRA."""
    model = build_rudolph(tiny_rudolph, work_dir=tmp_path)
    batch = make_batch(model, examples)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.trainable_parameters()[:5])
    lora = build_rudolph(tiny_rudolph, "rudolph_1.3b", work_dir=tmp_path)  # base_dtype: bfloat16, no autocast
    assert base_model(lora.rudolph).text_embeddings.weight.dtype == torch.bfloat16
    out = lora(make_batch(lora, examples))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(p.grad is not None for p in lora.trainable_parameters())


# -- inputs -----------------------------------------------------------------------------------

def test_long_captions_are_truncated_keeping_the_end_token_or_rejected_with_a_count(tiny_rudolph, examples, tmp_path):
    model = build_rudolph(tiny_rudolph, work_dir=tmp_path)
    assert model.caption_limit == 24 - 2  # <BOS> and <RT_I2T> lead the 24 right-text positions
    long = " ".join(ex.captions[0] for ex in examples[:4])
    ids = model.encode_caption(long, 128)
    assert len(ids) == model.caption_limit and ids[-1] == model.eos_id
    assert len(model.encode_caption(long, 10)) == 10  # data.max_caption_tokens applies when smaller
    batch = model.collate([{"image": torch.zeros(16, dtype=torch.long), "input_ids": ids}])
    assert batch["input_ids"].shape == (1, 24) and batch["input_ids"][0, -1] == model.eos_id
    with pytest.raises(CaptionTooLong, match="limit is 22"):
        model.encode_caption(long, 128, truncate=False)

    class Row:
        def __init__(self, uid, captions):
            self.uid, self.captions = uid, captions

    rows = [Row("a", [examples[0].captions[0]]), Row("b", [long, long]), Row("c", [long])]
    with pytest.raises(ValueError, match=r"3 of 4 train captions are longer than 22 tokens: b \(\d+ tokens\)"):
        encode_captions(model, rows, 128, "reject", "train")
    ids, owners = encode_captions(model, rows, 128, "truncate", "train")
    assert owners == [0, 1, 1, 2] and all(i[-1] == model.eos_id for i in ids)


def test_bases_that_do_not_belong_together_or_are_incomplete_are_refused(tiny_rudolph, tmp_path):
    import shutil

    from memecap.models.rudolph.tiny import save_tiny_vqgan

    other = save_tiny_vqgan(tmp_path / "other-vqgan", 32, n_embed=32)  # RuDOLPH reads 64 codes
    with pytest.raises(ValueError, match="has 32 codes but RuDOLPH reads 64"):
        build_rudolph(tiny_rudolph, "rudolph_350m", f"model.rudolph.vqgan={other}", work_dir=tmp_path)
    empty = tmp_path / "no-weights"
    empty.mkdir()
    shutil.copy(Path(tiny_rudolph["name"]) / "config.json", empty)
    with pytest.raises(FileNotFoundError, match="no 'pytorch_model.bin'"):
        build_rudolph(tiny_rudolph, "rudolph_350m", f"model.rudolph.name={empty}", work_dir=tmp_path)
    (empty / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="set model.rudolph.shape"):
        build_rudolph(tiny_rudolph, "rudolph_350m", f"model.rudolph.name={empty}", work_dir=tmp_path)
    with pytest.raises(ValueError, match="not a RuDOLPH repo the rudolph package knows"):
        build_rudolph(tiny_rudolph, "rudolph_350m", "model.rudolph.name=someone/RuDOLPH-9B", work_dir=tmp_path)


def test_images_are_letterboxed_not_squashed(tiny_rudolph, tmp_path):
    model = build_rudolph(tiny_rudolph, work_dir=tmp_path)
    assert model.transform.size == 32  # 4x4 codes from an 8x-downsampling VQGAN
    wide = Image.new("RGB", (64, 16), (255, 0, 0))
    pixels = model.transform(wide)
    assert pixels.shape == (3, 32, 32)
    assert torch.all(pixels[:, :12] == 0) and torch.all(pixels[:, 20:] == 0)  # grey bars above and below
    # The whole picture, unstretched.
    assert torch.allclose(pixels[:, 12:20], torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1))
    squashed = build_rudolph(tiny_rudolph, "rudolph_350m", "model.rudolph.resize_mode=squash", work_dir=tmp_path)
    assert not torch.all(squashed.transform(wide)[:, :12] == 0)


def test_codes_are_cached_and_keyed_by_the_transform(tiny_rudolph, examples, tmp_path):
    model = build_rudolph(tiny_rudolph, work_dir=tmp_path)
    paths = [e.image_path for e in examples[:5]]
    first = stacked(model.image_inputs(paths, cache_dir=tmp_path / "cache", device="cpu", progress=False))
    assert first.dtype == torch.long and first.shape == (5, 16) and int(first.max()) < 64
    assert (model.frozen_encoder.last_cache.hits, model.frozen_encoder.last_cache.misses) == (0, 5)
    assert torch.equal(stacked(model.image_inputs(paths, cache_dir=tmp_path / "cache", device="cpu", progress=False)),
                       first)
    assert model.frozen_encoder.last_cache.hits == 5
    assert torch.equal(first, model.image_inputs(paths, cache_dir=None, device="cpu", progress=False))
    cropped = build_rudolph(tiny_rudolph, "rudolph_350m", "model.rudolph.resize_mode=crop", work_dir=tmp_path)
    cropped.image_inputs(paths, cache_dir=tmp_path / "cache", device="cpu", progress=False)
    assert cropped.frozen_encoder.last_cache.misses == 5


# -- generation -------------------------------------------------------------------------------

@pytest.mark.parametrize("generation", [
    GenerationConfig(strategy="greedy", max_new_tokens=8),
    GenerationConfig(strategy="sample", top_k=5, top_p=0.9, temperature=0.8, num_return_sequences=3, max_new_tokens=8),
    GenerationConfig(strategy="greedy", max_new_tokens=8, repetition_penalty=1.3, no_repeat_ngram_size=2),
])
def test_generation_strategies(generation, tiny_rudolph, examples, tmp_path):
    model = build_rudolph(tiny_rudolph, work_dir=tmp_path).eval()
    captions = model.generate(eval_batch(model, examples), generation)
    assert len(captions) == 3 and all(len(c) == generation.num_return_sequences for c in captions)
    assert all(isinstance(t, str) for c in captions for t in c)
    with pytest.raises(ValueError, match="not beam search"):
        model.generate(eval_batch(model, examples), GenerationConfig(strategy="beam", num_beams=2))


def test_score_processors_see_only_ids_they_can_score(tiny_rudolph, examples, tmp_path, monkeypatch):
    """The right prefix's special token lies beyond the scored vocabulary: transformers before 5.2x
    gathered the repetition penalty at it and failed on a GPU (device-side assert, RuDOLPH-2.7B)."""
    import memecap.models.rudolph.model as rudolph_model

    seen_beyond = []

    def recording(generation):
        processors = logits_processors(generation)
        processors.append(lambda ids, scores: seen_beyond.append(int((ids >= scores.shape[1]).sum())) or scores)
        return processors

    logits_processors = rudolph_model.logits_processors
    monkeypatch.setattr(rudolph_model, "logits_processors", recording)
    model = build_rudolph(tiny_rudolph, work_dir=tmp_path).eval()
    assert any(i >= model.bpe_vocab for i in model.right_prefix)  # the case at stake is present
    model.generate(eval_batch(model, examples), GenerationConfig(strategy="greedy", max_new_tokens=4,
                                                                 repetition_penalty=1.3))
    assert seen_beyond and not any(seen_beyond)


def test_cached_decoding_equals_full_recomputation(tiny_rudolph, examples, tmp_path):
    model = build_rudolph(tiny_rudolph, work_dir=tmp_path).eval()
    batch = eval_batch(model, examples)
    greedy = GenerationConfig(strategy="greedy", max_new_tokens=10)
    got = model.generate(batch, greedy)
    # Reference: no cache, the whole sequence through the package's model at every step.
    out = model._inputs(batch["image"], torch.tensor(model.right_prefix).expand(3, -1))
    mask = model._causal_mask(model.l_len + model.image_len + model.r_len, "cpu")
    start, done = out.shape[1], torch.zeros(3, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(10):
            logits, _ = model.rudolph(out, mask, return_loss=False)
            scores = logits[:, -1, :model.bpe_vocab].clone()
            scores[:, :3] = float("-inf")
            token = torch.where(done, torch.zeros(3, dtype=torch.long), scores.argmax(-1))
            out, done = torch.cat([out, token[:, None]], 1), done | (token == model.eos_id)
    expected = []
    for row in out[:, start:].tolist():
        row = row[: row.index(model.eos_id)] if model.eos_id in row else row
        expected.append([model.tokenizer.decode_text(torch.tensor(row)).strip()])
    assert got == expected


def test_decoding_stops_at_the_end_token(tiny_rudolph, examples, tmp_path):
    model = build_rudolph(tiny_rudolph, work_dir=tmp_path).eval()
    with torch.no_grad():  # make <EOS> the most likely next token everywhere
        base_model(model.rudolph).to_logits[1].bias[model.eos_id] = 1e4
    forwards = []
    model.rudolph.register_forward_hook(lambda *_: forwards.append(1))
    greedy = GenerationConfig(strategy="greedy", max_new_tokens=12)
    assert model.generate(eval_batch(model, examples), greedy) == [[""]] * 3
    assert len(forwards) == 1


# -- export -----------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, expected_file", [
    ([], "model.safetensors"),
    (["model.rudolph.mode=subset", "model.rudolph.trainable=[transformer.layers.2, to_logits]"], "trained.safetensors"),
    (["model.rudolph.mode=lora", "model.rudolph.lora.r=4"], "adapter/adapter_model.safetensors"),
])
def test_export_holds_only_the_trained_parts_and_reloads_to_the_same_captions(overrides, expected_file, tiny_rudolph,
                                                                            examples, tmp_path, monkeypatch):
    model = build_rudolph(tiny_rudolph, "rudolph_350m", *overrides, work_dir=tmp_path)
    nudge_trained_parts(model)
    model.eval()
    out = tmp_path / "export"
    model.save_pretrained(out, generation=GenerationConfig(strategy="greedy", max_new_tokens=8))
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    weights = {f for f in files if f.endswith(".safetensors")}
    assert weights == {expected_file} and {"memecap.yaml", "tokenizer/bpe.model"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".ckpt")) for f in files)  # nothing to unpickle
    saved = load_file(out / expected_file)
    if expected_file == "trained.safetensors":
        assert set(saved) == {n[len("rudolph."):] for n, p in model.named_parameters() if p.requires_grad}

    if expected_file == "model.safetensors":  # every weight is in the export: the base checkpoint is not read
        monkeypatch.setattr("memecap.models.rudolph.model.load_rudolph", lambda *a: pytest.fail("base weights loaded"))
    loaded = load_model(out)
    gen = GenerationConfig(strategy="greedy", max_new_tokens=8)
    assert loaded.generate(eval_batch(loaded, examples), gen) == model.generate(eval_batch(model, examples), gen)
    assert loaded.cfg.rudolph.name == str(tiny_rudolph["name"])  # the base is named, not copied


# -- memecap plan -----------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [[],
                                       ["model.rudolph.mode=subset", "model.rudolph.trainable=[transformer.layers.1]"],
                                       ["model.rudolph.mode=lora", "model.rudolph.lora.r=4"]])
def test_plan_counts_exactly_what_the_built_model_trains(overrides, tiny_rudolph, tmp_path):
    from memecap.plan import plan_memory

    cfg = load_config("rudolph_350m", [*rudolph_overrides(tiny_rudolph), *overrides])
    built = sum(p.numel() for p in build_model(cfg.model, work_dir=tmp_path).trainable_parameters())
    assert plan_memory(cfg).trainable == built


def test_plan_of_the_real_recipes_needs_no_download():
    from memecap.plan import GIB, plan_memory

    plan = plan_memory(load_config("rudolph_350m"), mixed_precision="bf16")
    assert plan.trainable == 353_065_024  # RuDOLPH-350M, from the rudolph package's shape table
    assert 2 < plan.total() / GIB < 8
    with pytest.raises(ValueError, match="matches no module"):
        plan_memory(load_config("rudolph_350m", ["model.rudolph.mode=subset", "model.rudolph.trainable=[layers.99]"]))


def test_tiny_random_names_build_a_tiny_rudolph_in_the_run_folder(examples, tmp_path):
    cfg = load_config("rudolph_350m", ["model.rudolph.name=tiny-random", "model.rudolph.vqgan=tiny-random",
                                       "model.rudolph.tokenizer=tiny-random", "model.tiny.image_size=32",
                                       "model.tiny.gpt_width=32", "model.tiny.gpt_heads=2"])
    model = build_model(cfg.model, work_dir=tmp_path, train_texts=[c for e in examples for c in e.captions])
    assert Path(cfg.model.rudolph.name).is_relative_to(tmp_path) and model.image_len == 16
    assert model(make_batch(model, examples, n=2))["loss"].isfinite()
