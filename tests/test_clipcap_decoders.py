"""ClipCap with a modern causal LM as its decoder (Llama, Qwen2, Gemma 3 text): tiny random models
saved with their tokenizers in the published layout, through the same loading path as GPT-2."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch

from memecap.config import ConfigError, GenerationConfig, load_config
from memecap.data.datasets import CaptionEvalSet
from memecap.models import build_model, load_model
from memecap.models.clipcap.architectures import GPT2_TARGETS, LLAMA_TARGETS
from memecap.models.export import read_export_config
from memecap.models.tiny_causal_lm import FAMILIES, save_tiny_causal_lm
from memecap.plan import GIB, plan_memory
from tests.helpers import TEST_TINY, clipcap_batch, nudge_trained_parts, prompted, recipe_with_tiny_bases

pytestmark = pytest.mark.usefixtures("one_thread")
MODES = {"lora": "clipcap_lora", "full": "clipcap_mlp_finetune"}
TEMPLATE = "Текст на картинке: {text}\nОписание: "


@pytest.fixture(scope="module")
def decoders(tmp_path_factory, examples) -> dict:
    root = tmp_path_factory.mktemp("causal_lms")
    texts = [c for ex in examples for c in ex.captions]
    return {family: save_tiny_causal_lm(root / family, family, TEST_TINY, texts) for family in FAMILIES}


@pytest.fixture()
def gguf_cache(tmp_path, monkeypatch) -> Path:
    """memecap's cache in this test's folder: GGUF conversions land there, never in the user's cache."""
    cache = tmp_path / "memecap_cache"
    monkeypatch.setenv("MEMECAP_CACHE", str(cache))
    return cache


def built(recipe, tiny_ruclip_dir, decoder_dir, tmp_path, *overrides):
    cfg = recipe_with_tiny_bases(recipe, tiny_ruclip_dir, decoder_dir, *overrides)
    return cfg, build_model(cfg.model, work_dir=tmp_path)


def adapted_layers(model) -> set:
    """Last name parts of the layers that carry LoRA adapters."""
    return {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in model.decoder.named_parameters() if ".lora_" in n}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_decoder_is_the_saved_class_with_its_tokens(family, decoders, tiny_ruclip_dir, tmp_path):
    cfg, model = built("clipcap_mlp_frozen", tiny_ruclip_dir, decoders[family], tmp_path)
    expected = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
    assert type(model.decoder).__name__ == expected[family]
    assert model.mapper(torch.zeros(1, model.image_dim)).shape[-1] == TEST_TINY.gpt_width  # hidden_size
    tok = model.tokenizer
    assert model.eos_id == tok.eos_token_id is not None
    # Llama's tokenizer declares no pad (as published): padding reuses the end token, masked out of the loss.
    assert model.pad_id == (tok.eos_token_id if family == "llama" else tok.pad_token_id)
    # The OCR prompt reads back as the template around the text with this tokenizer too.
    _, ocr = built("clipcap_ocr_frozen", tiny_ruclip_dir, decoders[family], tmp_path)
    assert ocr.cfg.ocr.template == TEMPLATE
    assert tok.decode(ocr.encode_prompt("кек")) == TEMPLATE.format(text="кек")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_a_training_step_moves_exactly_the_trainable_weights(family, mode, decoders, tiny_ruclip_dir, examples,
                                                             tmp_path):
    _, model = built(MODES[mode], tiny_ruclip_dir, decoders[family], tmp_path)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    decoder_trainable = {n for n in trainable if n.startswith("decoder.")}
    if mode == "lora":
        assert decoder_trainable and all("lora_" in n for n in decoder_trainable)
        assert adapted_layers(model) == set(LLAMA_TARGETS)  # the architecture's default, not GPT-2's names
    else:
        assert len(decoder_trainable) == sum(1 for _ in model.decoder.parameters())
    batch = clipcap_batch(model, examples)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model(batch)["loss"].backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == trainable, changed ^ trainable


def test_lora_targets_default_per_architecture_and_the_setting_wins(decoders, tiny_ruclip_dir, tiny_gpt2_dir,
                                                                     tmp_path):
    _, gpt2 = built("clipcap_lora", tiny_ruclip_dir, tiny_gpt2_dir, tmp_path)
    assert adapted_layers(gpt2) == set(GPT2_TARGETS)
    _, chosen = built("clipcap_lora", tiny_ruclip_dir, decoders["qwen2"], tmp_path,
                      "model.decoder.lora.target_modules=[q_proj,v_proj]")
    assert adapted_layers(chosen) == {"q_proj", "v_proj"}
    with pytest.raises(ConfigError, match=r"model.decoder.lora.target_modules: 'c_fc2' names no module.*q_proj"):
        built("clipcap_lora", tiny_ruclip_dir, decoders["llama"], tmp_path,
              "model.decoder.lora.target_modules=[q_proj,c_fc2]")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_export_reloads_to_the_same_captions(family, mode, decoders, tiny_ruclip_dir, examples, tmp_path):
    _, model = built(MODES[mode], tiny_ruclip_dir, decoders[family], tmp_path)
    nudge_trained_parts(model)
    model.eval()
    out = tmp_path / "export"
    model.save_pretrained(out)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert ("adapter/adapter_model.safetensors" in files) == (mode == "lora")
    assert ("decoder/model.safetensors" in files) == (mode == "full")
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)

    loaded = load_model(out, with_encoder=True)
    assert type(loaded.decoder.get_base_model() if mode == "lora" else loaded.decoder) is type(
        model.decoder.get_base_model() if mode == "lora" else model.decoder)
    paths = [e.image_path for e in examples[:3]]
    gen = GenerationConfig(strategy="greedy", max_new_tokens=8)
    feats = model.image_inputs(paths, cache_dir=None, device="cpu", progress=False)
    expected = model.generate(model.collate([CaptionEvalSet(feats)[i] for i in range(3)]), gen)
    pixels = loaded.image_inputs(paths, cache_dir=None, device="cpu", progress=False)
    got = loaded.generate(loaded.collate([CaptionEvalSet(pixels)[i] for i in range(3)]), gen)
    assert got == expected and all(c[0] for c in expected)  # words, not empty strings
    from memecap import Captioner

    captioner = Captioner.from_pretrained(out, device="cpu")
    assert captioner([str(p) for p in paths], strategy="greedy", max_new_tokens=8) == [c[0] for c in expected]


@pytest.mark.parametrize("family", FAMILIES)
def test_plan_counts_equal_the_built_model(family, decoders, tiny_ruclip_dir, tmp_path):
    for recipe in ("clipcap_lora", "clipcap_mlp_finetune", "clipcap_mlp_frozen"):
        cfg, model = built(recipe, tiny_ruclip_dir, decoders[family], tmp_path)
        plan = plan_memory(cfg, mixed_precision="no")
        assert plan.trainable == sum(p.numel() for p in model.trainable_parameters()), recipe
        if recipe == "clipcap_mlp_frozen":  # every decoder weight frozen in fp32, tied head counted once
            frozen = next(b for what, b, _ in plan.rows if what.startswith("decoder weights, frozen"))
            assert frozen == 4 * sum(p.numel() for p in model.decoder.parameters())
            assert frozen / GIB < 1


@pytest.mark.parametrize("family", ["qwen2", "gemma3_text"])
def test_a_gguf_decoder_is_its_model(family, decoders, tiny_ruclip_dir, examples, tmp_path, gguf_cache, capfd):
    """model.decoder.gguf_file: the same model written as a GGUF file reads the same tokens, gives
    the same loss, trains with LoRA on its projections, exports and reloads to the same captions;
    loading and saving it print nothing of transformers' or PEFT's. The export names the user's
    GGUF folder and file, never the converted copy in memecap's cache."""
    from tests.gguf_files import write_gguf

    folder = tmp_path / "gguf"
    folder.mkdir()
    write_gguf(decoders[family], folder / "tiny.gguf")
    _, plain = built("clipcap_lora", tiny_ruclip_dir, decoders[family], tmp_path)
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PEFT's "Could not find a config file" on saving would fail here
        cfg, model = built("clipcap_lora", tiny_ruclip_dir, folder, tmp_path, "model.decoder.gguf_file=tiny.gguf")
        model.save_pretrained(tmp_path / "first_export")
    printed = capfd.readouterr()
    assert "GGUF" not in printed.err + printed.out
    assert type(model.decoder.get_base_model()) is type(plain.decoder.get_base_model())
    assert adapted_layers(model) == set(LLAMA_TARGETS)
    model.mapper.load_state_dict(plain.mapper.state_dict())
    batch = clipcap_batch(model, examples)
    assert torch.equal(batch["input_ids"], clipcap_batch(plain, examples)["input_ids"])
    assert model.eval()(batch)["loss"].item() == pytest.approx(plain.eval()(batch)["loss"].item(), abs=1e-5)
    assert plan_memory(cfg).trainable == sum(p.numel() for p in model.trainable_parameters())

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()(batch)["loss"].backward()
    opt.step()
    assert {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())} == trainable

    model.eval().save_pretrained(tmp_path / "export")
    loaded = load_model(tmp_path / "export")
    gen = GenerationConfig(strategy="greedy", max_new_tokens=8)
    eval_batch = model.collate([{"image": batch["image"][i]} for i in range(2)])
    assert loaded.generate(eval_batch, gen) == model.generate(eval_batch, gen)

    assert any((gguf_cache / "gguf").iterdir())  # the decoder came from the conversion
    decoder = read_export_config(tmp_path / "export")["model"]["decoder"]
    assert (decoder["name"], decoder["gguf_file"]) == (str(folder), "tiny.gguf")
    exported = [p for p in (tmp_path / "export").rglob("*") if p.is_file()]
    assert exported and not [p for p in exported if str(gguf_cache).encode() in p.read_bytes()]


def test_a_fully_trained_gguf_decoder_exports_and_reloads(decoders, tiny_ruclip_dir, examples, tmp_path, gguf_cache):
    """model.decoder.mode=full on a GGUF decoder: the trained decoder is exported whole (plain
    safetensors, nothing of GGUF's quantizer in its config) and the export captions as the model did."""
    import json

    from tests.gguf_files import write_gguf

    folder = tmp_path / "gguf"
    folder.mkdir()
    write_gguf(decoders["qwen2"], folder / "tiny.gguf")
    _, model = built("clipcap_lora", tiny_ruclip_dir, folder, tmp_path, "model.decoder.gguf_file=tiny.gguf",
                     "model.decoder.mode=full")
    batch = clipcap_batch(model, examples)
    nudge_trained_parts(model)
    model.eval().save_pretrained(tmp_path / "export")
    saved = json.loads((tmp_path / "export" / "decoder" / "config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in saved and "gguf_file" not in json.dumps(saved)
    loaded = load_model(tmp_path / "export")
    gen = GenerationConfig(strategy="greedy", max_new_tokens=8)
    eval_batch = model.collate([{"image": batch["image"][i]} for i in range(2)])
    assert loaded.generate(eval_batch, gen) == model.generate(eval_batch, gen)
    assert loaded.eval()(batch)["loss"].item() == pytest.approx(model(batch)["loss"].item(), abs=1e-6)


def test_bitsandbytes_optional_kernel_notice_is_not_shown_and_other_warnings_are(caplog):
    """bitsandbytes (imported with peft) warns on AVX-512 BF16 CPUs that an optional kernel package
    is absent; memecap drops that notice only."""
    import memecap.quiet as quiet

    logger = logging.getLogger(quiet.BITSANDBYTES_CPU_LOGGER)
    with caplog.at_level(logging.WARNING, logger=quiet.BITSANDBYTES_CPU_LOGGER):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'.")
        logger.warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"]


def test_a_missing_gguf_file_is_one_line(decoders, tiny_ruclip_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.decoder.gguf_file: .*absent.gguf is not a file"):
        built("clipcap_lora", tiny_ruclip_dir, decoders["qwen2"], tmp_path, "model.decoder.gguf_file=absent.gguf")
    # the recipe's placeholder folder, not overridden: the error says how to get the file
    with pytest.raises(FileNotFoundError, match=r"GEMMA_FOLDER .*gemma-3-270m-q4_k_m.gguf is not a file; .*"
                                                r"to get it, run python scripts/fetch_gemma3_270m.py"):
        build_model(load_config("clipcap_effnet_gemma_ocr").model, work_dir=tmp_path)
    with pytest.raises(ConfigError, match="model.decoder.gguf_file: .*quantization=none"):
        recipe_with_tiny_bases("clipcap_qlora_large", tiny_ruclip_dir, decoders["qwen2"],
                               "model.decoder.gguf_file=x.gguf")


class GgufParses:
    """Every entry through which transformers reads a GGUF file (the legacy reader and the gguf
    package's under it, the new header reader), counted; once `refuse` is set, each one raises."""

    ENTRIES = [("transformers.modeling_gguf_pytorch_utils", "load_gguf_checkpoint"),
               ("transformers.integrations.gguf.reader", "read_gguf_metadata"),
               ("transformers.integrations.gguf", "read_gguf_metadata"),
               ("gguf", "GGUFReader")]

    def __init__(self, monkeypatch):
        import importlib

        self.calls, self.refuse = [], False
        for module, attr in self.ENTRIES:
            owner = importlib.import_module(module)
            monkeypatch.setattr(owner, attr, self._watched(getattr(owner, attr), f"{module}.{attr}"))

    def _watched(self, real, name):
        def watched(*args, **kwargs):
            self.calls.append(name)
            if self.refuse:
                raise AssertionError(f"{name} read the GGUF file again")
            return real(*args, **kwargs)
        return watched


def gguf_decoder(decoder_dir, folder: Path, tiny_ruclip_dir):
    """`decoder_dir`'s model written as folder/tiny.gguf, and a clipcap_lora config that names it."""
    from tests.gguf_files import write_gguf

    folder.mkdir()
    write_gguf(decoder_dir, folder / "tiny.gguf")
    return folder, recipe_with_tiny_bases("clipcap_lora", tiny_ruclip_dir, folder, "model.decoder.gguf_file=tiny.gguf")


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("family", ["qwen2", "gemma3_text"])
def test_a_gguf_file_is_converted_once_then_its_folder_is_read(family, decoders, tiny_ruclip_dir, tmp_path,
                                                                gguf_cache, monkeypatch, caplog):
    """The first load converts the GGUF file into a transformers folder in memecap's cache; a later
    load (or `memecap plan`) reads that folder, parses nothing of the file, and gets the same
    tokens, weights and loss. Planning before the first load does not convert."""
    import json

    import transformers
    from safetensors.torch import load_file

    from memecap.data.fingerprint import file_digest
    from memecap.models.clipcap.gguf import conversion_folder
    from memecap.models.clipcap.model import load_decoder

    folder, cfg = gguf_decoder(decoders[family], tmp_path / "gguf", tiny_ruclip_dir)
    parses = GgufParses(monkeypatch)
    planned = plan_memory(cfg)
    assert not (gguf_cache / "gguf").exists()
    with caplog.at_level(logging.INFO, logger="memecap.models.clipcap.gguf"):
        first, first_tokens = load_decoder(cfg.model)
    assert parses.calls and "converting" in caplog.text
    converted = conversion_folder(str(folder), "tiny.gguf")
    assert converted.name == (f"tiny-{file_digest(folder / 'tiny.gguf')[:16]}"
                              f"-transformers{transformers.__version__}")
    assert [p.name for p in (gguf_cache / "gguf").iterdir()] == [converted.name]  # no temporary folder left
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in converted.iterdir()}
    assert {t.dtype for t in load_file(converted / "model.safetensors").values()} == {torch.float32}
    assert "quantization_config" not in json.loads((converted / "config.json").read_text(encoding="utf-8"))

    parses.calls.clear()
    parses.refuse = True
    caplog.clear()
    inode = (converted / "model.safetensors").stat().st_ino
    with caplog.at_level(logging.INFO, logger="memecap.models.clipcap.gguf"):
        second, second_tokens = load_decoder(cfg.model)
        replanned = plan_memory(cfg)
    assert not parses.calls and "converting" not in caplog.text
    assert (converted / "model.safetensors").stat().st_ino == inode
    assert (replanned.rows, replanned.trainable) == (planned.rows, planned.trainable)

    text = TEMPLATE.format(text="кек лол") + "ой всё"
    assert second_tokens(text)["input_ids"] == first_tokens(text)["input_ids"]
    assert (second_tokens.eos_token_id, second_tokens.pad_token_id) == (first_tokens.eos_token_id,
                                                                        first_tokens.pad_token_id)
    assert type(second) is type(first) and same_weights(first, second)
    ids = torch.tensor([first_tokens(text)["input_ids"]])
    with torch.no_grad():
        assert second(ids, labels=ids).loss.item() == first(ids, labels=ids).loss.item()
    # what PEFT's adapter config and saved files record: the user's folder, as when the file was read
    assert second.name_or_path == second.config.name_or_path == second_tokens.name_or_path == str(folder)


def test_a_changed_gguf_file_gets_its_own_conversion(decoders, tiny_ruclip_dir, examples, tmp_path, gguf_cache):
    from transformers import AutoModelForCausalLM

    from memecap.models.clipcap.model import load_decoder
    from tests.gguf_files import write_gguf

    folder, cfg = gguf_decoder(decoders["qwen2"], tmp_path / "gguf", tiny_ruclip_dir)
    first, _ = load_decoder(cfg.model)
    other = save_tiny_causal_lm(tmp_path / "other", "qwen2", TEST_TINY, [c for ex in examples for c in ex.captions],
                                seed=1)
    write_gguf(other, folder / "tiny.gguf")
    second, _ = load_decoder(cfg.model)
    assert len(list((gguf_cache / "gguf").iterdir())) == 2
    assert not same_weights(first, second)
    assert same_weights(second, AutoModelForCausalLM.from_pretrained(other))


def test_a_half_written_or_weightless_conversion_is_not_read(decoders, tiny_ruclip_dir, tmp_path, gguf_cache):
    """A temporary folder a stopped run left beside the conversion is never read, and a folder in
    the conversion's place without weights is converted over."""
    import json

    from memecap.models.clipcap.gguf import conversion_folder
    from memecap.models.clipcap.model import load_decoder

    folder, cfg = gguf_decoder(decoders["qwen2"], tmp_path / "gguf", tiny_ruclip_dir)
    target = conversion_folder(str(folder), "tiny.gguf")
    leftover = target.with_name(f".{target.name}-stopped")
    for place, files in ((target, ["config.json", "tokenizer.json"]),
                         (leftover, ["config.json", "tokenizer.json", "model.safetensors"])):
        place.mkdir(parents=True)
        for name in files:
            (place / name).write_text("half written", encoding="utf-8")
    decoder, tokens = load_decoder(cfg.model)
    assert (target / "model.safetensors").is_file()
    assert json.loads((target / "config.json").read_text(encoding="utf-8"))["model_type"] == "qwen2"
    assert type(decoder).__name__ == "Qwen2ForCausalLM" and tokens("кек")["input_ids"]


def test_a_llama_decoder_through_the_real_loop(decoders, synthetic_data, tmp_path):
    """`memecap train` with a Llama decoder adapted by LoRA: the loop trains, evaluates,
    exports, and the export captions the validation images."""
    import json

    from memecap import Captioner, train
    from tests.helpers import reset_accelerate, tiny_run_config

    out = tmp_path / "run"
    cfg = tiny_run_config(out, synthetic_data, f"model.decoder.name={decoders['llama']}", "model.decoder.mode=lora",
                          "model.encoder.trainable=false", "model.encoder.features=pooled", "train.epochs=1",
                          "eval.compare_constant=false", "generation.max_new_tokens=6")
    try:
        summary = train.main(cfg)
    finally:
        reset_accelerate()
    assert summary["optimizer_steps"] == 6 and "bleu4" in summary["final"]
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in rows if r["kind"] == "train")  # no NaN
    assert (out / "final/adapter/adapter_model.safetensors").is_file()
    images = sorted(str(p) for p in (Path(synthetic_data["val"]).parent / "images").glob("*.jpg"))[:2]
    assert len(Captioner.from_pretrained(out / "final", device="cpu")(images)) == 2


def steer_to(decoder, token: int) -> None:
    """Make a tiny random Llama-style decoder write `token` wherever it decodes freely: the layers
    add nothing to the residual stream (o_proj, down_proj zeroed), the final norm keeps only
    dimension 0, which every token embedding holds positive, and `token`'s output row reads that
    dimension 3x as strongly as the others (the rows are the embeddings when the head is tied)."""
    with torch.no_grad():
        for name, module in decoder.named_modules():
            if name.endswith(("o_proj", "down_proj")):
                module.weight.zero_()
        decoder.get_input_embeddings().weight[:, 0] = 1.0
        head = decoder.get_output_embeddings().weight
        head[:, 0] = 1.0
        head[token, 0] = 3.0
        norm = decoder.model.norm.weight
        gemma = decoder.config.model_type.startswith("gemma")  # Gemma's norm scales by 1 + weight
        norm.fill_(-1.0 if gemma else 0.0)
        norm[0] = 0.0 if gemma else 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_quote_copy_copies_the_ocr_text(family, decoders, tiny_ruclip_dir, examples, tmp_path):
    """generation.quote=copy with each tokenizer: after the opening mark the OCR text is forced,
    then the closing mark; left alone the steered decoder writes only quote marks."""
    from memecap.quote_copy import quote_text

    _, model = built("clipcap_ocr_frozen", tiny_ruclip_dir, decoders[family], tmp_path)
    model.eval()
    tok = model.tokenizer
    quote = tok.convert_tokens_to_ids('"')
    assert quote != tok.unk_token_id and quote in model.quote_processor(["x"]).openers
    steer_to(model.decoder, quote)
    texts = ["кек лол", "ой всё ну и ну"]
    dataset = CaptionEvalSet(prompted(model, examples, texts))
    free = model.generate(model.collate([dataset[i] for i in range(2)]),
                          GenerationConfig(strategy="greedy", max_new_tokens=4))
    assert all(c[0] == '""""' for c in free), free
    for i, text in enumerate(texts):
        length = 2 + len(tok(quote_text(text), add_special_tokens=False)["input_ids"])
        gen = GenerationConfig(strategy="greedy", max_new_tokens=length, quote="copy")
        one = CaptionEvalSet(prompted(model, examples[i:], [text]))
        assert model.generate(model.collate([one[0]]), gen) == [[f'"{text}"']]


def test_the_qwen2_5_recipe_trains_its_lora_on_a_qwen2_decoder(decoders, tiny_ruclip_dir, examples, tmp_path):
    """clipcap_qwen2_5_lora, its Hub names replaced by a tiny Qwen2 of the same class: adapters on the
    seven projections it names, checkpointing on, a step moves only the adapters and the mapper."""
    cfg, model = built("clipcap_qwen2_5_lora", tiny_ruclip_dir, decoders["qwen2"], tmp_path)
    assert cfg.model.decoder.gradient_checkpointing
    assert type(model.decoder.base_model.model).__name__ == "Qwen2ForCausalLM"
    assert adapted_layers(model) == set(LLAMA_TARGETS)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("mapper.") for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    loss = model(clipcap_batch(model, examples[:2]))["loss"]
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= trainable


def test_the_gemma_recipe_captions_with_a_tiny_gemma_gguf(decoders, tiny_ruclip_dir, examples, tmp_path, gguf_cache):
    """clipcap_effnet_gemma_ocr with a tiny Gemma 3 written as the GGUF file it names (and a tiny
    encoder in place of EfficientNet): LoRA on Gemma's projections, the OCR prompt, and captions
    whose quote is the OCR text (quote=copy)."""
    from memecap.quote_copy import quote_text
    from tests.gguf_files import write_gguf

    folder = tmp_path / "gemma"
    folder.mkdir()
    write_gguf(decoders["gemma3_text"], folder / "gemma-3-270m-q4_k_m.gguf")
    cfg, model = built("clipcap_effnet_gemma_ocr", tiny_ruclip_dir, folder, tmp_path, "model.encoder.kind=ruclip")
    assert cfg.model.ocr.enabled and cfg.generation.quote == "copy" and cfg.model.encoder.features == "pooled"
    assert type(model.decoder.get_base_model()).__name__ == "Gemma3ForCausalLM"
    assert adapted_layers(model) == set(LLAMA_TARGETS)
    model.eval()
    tok = model.tokenizer
    steer_to(model.decoder.get_base_model(), tok.convert_tokens_to_ids('"'))
    text = "кек лол"
    gen = cfg.generation
    gen.max_new_tokens = 2 + len(tok(quote_text(text), add_special_tokens=False)["input_ids"])
    one = CaptionEvalSet(prompted(model, examples, [text]))
    assert model.generate(model.collate([one[0]]), gen) == [[f'"{text}"']]
