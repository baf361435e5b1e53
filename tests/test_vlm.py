"""The vision-language-model family on tiny random models of the real classes (Qwen2-VL, Qwen2.5-VL,
SmolVLM, LLaVA through its own processor; Qwen3-VL where cheap), saved in the published layout and
loaded through the Hub path:
the label mask, batched = one-by-one generation, what LoRA trains, a 4-bit base, the plan."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from memecap.config import ConfigError, GenerationConfig, load_config
from memecap.data.captions import CaptionTooLong
from memecap.data.datasets import CaptionEvalSet
from memecap.models.memory_plan import GIB
from memecap.models import build_model
from memecap.models.vlm.loading import language_model_name, load_base, vision_tower_name
from memecap.plan import plan_memory

CAPTIONS = ['На фото кот сидит на диване. Подпись: "когда понедельник"', "На фото собака в шапке.",
            'На фото мужчина у доски. Подпись: "я всё объясню"', "На фото красный квадрат на белом фоне."]
ARCHS = ["qwen2_vl", "qwen2_5_vl", "smolvlm", "llava"]


def vlm_config(arch: str, *overrides: str):
    return load_config("vlm_tiny", [f"model.vlm.tiny_architecture={arch}", "model.vlm.mode=lora", *overrides]).model


@pytest.fixture(scope="session")
def vlm_bases(tmp_path_factory) -> Path:
    """One work folder where each architecture's tiny base is made once and reused."""
    return tmp_path_factory.mktemp("vlm_bases")


def build(bases: Path, arch: str, *overrides: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(vlm_config(arch, *overrides), work_dir=bases, train_texts=CAPTIONS)


def images() -> list[Image.Image]:
    # Different sizes: Qwen makes a different number of image tokens for each.
    return [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (32, 64), (10, 200, 10)),
            Image.new("RGB", (50, 50), (10, 10, 200)), Image.new("RGB", (24, 24), (250, 250, 0))]


def train_items(model, texts=CAPTIONS, max_tokens: int = 64):
    inputs = model.image_inputs(images(), cache_dir=None, device="cpu", progress=False)
    return [{"image": inputs[i], "input_ids": model.encode_caption(t, max_tokens)} for i, t in enumerate(texts)]


@pytest.mark.parametrize("arch", ARCHS)
def test_only_description_tokens_are_scored(arch, vlm_bases, one_thread):
    model = build(vlm_bases, arch)
    items = train_items(model)
    batch = model.collate(items)
    image_id = model.image_token_id
    for row, item in enumerate(items):
        prompt = model.prepare(images()[row])["prompt_ids"]  # the items' images are prepared in collate, per batch
        caption = item["input_ids"]
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        assert caption[-1] == model.eos_id  # the end-of-turn token is scored: generation learns to stop
        assert (labels[:len(prompt)] == -100).all() and (ids[:len(prompt)] == image_id).sum() > 0
        assert labels[len(prompt):len(prompt) + len(caption)].tolist() == caption
        assert (labels[len(prompt) + len(caption):] == -100).all()  # padding
        assert (ids[:len(prompt)] == torch.tensor(prompt)).all()
    out = model(batch)
    assert out["num_tokens"].item() == sum(len(it["input_ids"]) for it in items)
    # The loss from the kept logits equals the mean cross-entropy over every scored position of the full logits.
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        full = model.model(**inputs).logits[:, :-1].float()
        expected = F.cross_entropy(full.reshape(-1, full.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                                   ignore_index=-100)
    assert torch.allclose(out["loss"], expected, atol=1e-5)
    if arch in ("qwen2_vl",):  # M-RoPE: what the bypassed processor would return, 1 on image tokens only
        assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == image_id).long())


def test_image_tokens_follow_the_image_budget(vlm_bases):
    model = build(vlm_bases, "qwen2_vl")
    small, large = (model.prepare(Image.new("RGB", s, (1, 2, 3))) for s in ((16, 16), (64, 64)))
    count = lambda p: sum(t == model.image_token_id for t in p["prompt_ids"])  # noqa: E731
    grid = lambda p: int(p["vision"]["image_grid_thw"].prod()) // 4  # noqa: E731
    assert count(small) == grid(small) == 4 and count(large) == grid(large) == 16  # max_pixels 32 x 32 caps it
    narrow = build(vlm_bases, "qwen2_vl", "model.vlm.max_pixels=256")
    assert sum(t == model.image_token_id for t in narrow.prepare(Image.new("RGB", (64, 64)))["prompt_ids"]) == 4


def test_a_long_description_is_cut_or_refused_never_the_prompt(vlm_bases):
    model = build(vlm_bases, "smolvlm")
    long = " ".join(["На фото кот и собака."] * 20)
    ids = model.encode_caption(long, 12)
    assert len(ids) == 12 and ids[-1] == model.eos_id
    with pytest.raises(CaptionTooLong):
        model.encode_caption(long, 12, truncate=False)
    item = train_items(model, [long], max_tokens=12)[0]
    batch = model.collate([item])
    prompt = model.prepare(images()[0])["prompt_ids"]
    assert batch["input_ids"].shape[1] == len(prompt) + 12  # the whole prompt, image tokens included
    assert sum(t == model.image_token_id for t in prompt) == 4


def test_smolvlm_answer_keeps_the_space_merged_with_its_first_letter(vlm_bases):
    """`Assistant: На фото` is `:`, `ĠНа`, `Ġфото` in SmolVLM's BPE: the prompt ends at `Assistant:`
    and the answer's first token carries the space, in training labels and in what generation
    continues from (tests/test_vlm_parity.py compares whole batches with the official processor)."""
    model = build(vlm_bases, "smolvlm")
    tokens = model.tokenizer.convert_ids_to_tokens
    prompt = model.prepare(images()[0])["prompt_ids"]
    caption = model.encode_caption(CAPTIONS[0], 64)
    assert model.tokenizer.decode(prompt).endswith("Assistant:") and tokens(prompt)[-1] == ":"
    assert tokens(caption)[:2] == tokens(model.tokenizer(" " + CAPTIONS[0])["input_ids"])[:2]
    assert tokens(caption)[0].startswith("Ġ") and len(tokens(caption)[0]) > 1  # one token, not a lone space
    conversation = model.tokenizer.decode(prompt) + " " + CAPTIONS[0]
    assert model.tokenizer(conversation, add_special_tokens=False)["input_ids"] == prompt + caption[:-1]
    evals = CaptionEvalSet(model.image_inputs(images()[:1], cache_dir=None, device="cpu", progress=False))
    assert model.collate([evals[0]])["input_ids"][0].tolist() == prompt  # generation starts after `Assistant:`


def test_a_batch_is_prepared_at_once_as_one_by_one(vlm_bases):
    """collate prepares its items' images together (one template render, one tokenizer call):
    the batch is the one made from images prepared one by one."""
    for arch in ("qwen2_vl", "smolvlm", "llava"):
        model = build(vlm_bases, arch, "model.ocr.enabled=true")
        texts = ["КОТ", None, "", "СОБАКА"]
        together = model.collate([{"image": {"source": im, "ocr_text": t}, "index": i}
                                  for i, (im, t) in enumerate(zip(images(), texts))])
        single = model.collate([{"image": model.prepare(im, t), "index": i}
                                for i, (im, t) in enumerate(zip(images(), texts))])
        assert together.keys() == single.keys()
        for key, value in together.items():
            assert torch.equal(value, single[key]) if isinstance(value, torch.Tensor) else value == single[key], key


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_generation_equals_one_by_one(arch, vlm_bases, one_thread):
    model = build(vlm_bases, arch).eval()
    evals = CaptionEvalSet(model.image_inputs(images(), cache_dir=None, device="cpu", progress=False))
    greedy = GenerationConfig(strategy="greedy", max_new_tokens=6)
    batched = model.generate(model.collate([evals[i] for i in range(4)]), greedy)
    single = [model.generate(model.collate([evals[i]]), greedy)[0] for i in range(4)]
    assert batched == single and len({c[0] for c in batched}) > 1  # and the images are told apart


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "smolvlm"])
def test_lora_trains_exactly_the_language_model_projections(arch, vlm_bases, one_thread):
    """Qwen2.5-VL's vision MLP has gate/up/down_proj and SmolVLM's SigLIP q/k/v_proj: same names as
    the language model's, and they must not be adapted."""
    model = build(vlm_bases, arch)
    base = load_base(model.cfg)  # the model as published, before PEFT wraps its layers
    language, vision = language_model_name(base), vision_tower_name(base)
    assert any(n.rsplit(".", 1)[-1] in ("gate_proj", "q_proj") for n, _ in base.named_modules()
               if n.startswith(vision + "."))  # the trap is real
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    targets = set(model.cfg.vlm.lora.target_modules)
    expected = {f"model.base_model.model.{n}.lora_{ab}.default.weight" for n, m in base.named_modules()
                if n.startswith(language + ".") and n.rsplit(".", 1)[-1] in targets for ab in "AB"
                if isinstance(m, torch.nn.Linear)}
    assert trained == expected and len(expected) == 2 * 7 * base.config.get_text_config().num_hidden_layers
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    for _ in range(2):
        model(model.collate(train_items(model)))["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {n for n in changed if "lora_B" in n} == {n for n in expected if "lora_B" in n}
    assert changed <= expected  # nothing else moved: vision tower, embeddings, head stay as loaded

    with_vision = build(vlm_bases, arch, "model.vlm.vision=lora")
    vision_adapted = [n for n, p in with_vision.named_parameters() if p.requires_grad and f".{vision}." in n]
    assert vision_adapted and all("lora_" in n for n in vision_adapted)


def test_full_mode_trains_the_language_model_not_the_vision_tower(vlm_bases):
    model = build(vlm_bases, "smolvlm", "model.vlm.mode=full")
    vision = vision_tower_name(model.model)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and not any(n.startswith(f"model.{vision}.") for n in trained)
    assert any(".connector." in n for n in trained) and any(".text_model." in n for n in trained)


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_kbit_base_trains(bits, vlm_bases, one_thread):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit, Linear8bitLt

    model = build(vlm_bases, "qwen2_vl", f"model.vlm.quantization={bits}", "model.vlm.gradient_checkpointing=true")
    base = model.model.get_base_model()
    layer = Linear4bit if bits == "4bit" else Linear8bitLt
    quantized = [n for n, m in base.named_modules() if isinstance(m, layer)]
    assert any(".language_model." in n for n in quantized)
    assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in base.modules())  # memecap/models/kbit.py
    batch = model.collate(train_items(model))
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=2e-2)
    model.train()
    losses = []
    for _ in range(4):
        loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()  # evaluation between training steps (the first one repacks on AVX-512 CPUs without the guard)
    evals = CaptionEvalSet(model.image_inputs(images()[:2], cache_dir=None, device="cpu", progress=False))
    greedy = GenerationConfig(strategy="greedy", max_new_tokens=3)
    assert len(model.generate(model.collate([evals[0], evals[1]]), greedy)) == 2
    model.train()
    model(batch)["loss"].backward()
    assert all(p.grad is not None for p in model.trainable_parameters())


def test_qwen3_vl_trains_and_generates(vlm_bases, one_thread):
    model = build(vlm_bases, "qwen3_vl")
    batch = model.collate(train_items(model))
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == model.image_token_id).long())
    model(batch)["loss"].backward()
    evals = CaptionEvalSet(model.image_inputs(images()[:2], cache_dir=None, device="cpu", progress=False))
    greedy = GenerationConfig(strategy="greedy", max_new_tokens=3)
    assert len(model.generate(model.collate([evals[0], evals[1]]), greedy)) == 2


def test_ocr_text_joins_the_instruction_and_stays_unscored(vlm_bases):
    model = build(vlm_bases, "qwen2_vl", "model.ocr.enabled=true", "model.ocr.max_tokens=4")
    plain, with_text = model.prepare(images()[0]), model.prepare(images()[0], "КОГДА ПОНЕДЕЛЬНИК И ДОЖДЬ")
    assert len(with_text["prompt_ids"]) > len(plain["prompt_ids"])
    assert "Текст на картинке" in model.tokenizer.decode(with_text["prompt_ids"])
    assert model.instruction("  ") == model.cfg.vlm.instruction  # a meme without text gets no OCR line
    cut = model.instruction("КОГДА ПОНЕДЕЛЬНИК И ДОЖДЬ")  # cut to model.ocr.max_tokens tokens of the text
    assert "ДОЖДЬ" not in cut
    batch = model.collate([{"image": with_text, "input_ids": model.encode_caption("На фото кот", 16)}])
    assert (batch["labels"][0, :len(with_text["prompt_ids"])] == -100).all()
    assert batch["ocr_text"] == ["КОГДА ПОНЕДЕЛЬНИК И ДОЖДЬ"]


def test_config_refuses_what_cannot_train():
    with pytest.raises(ConfigError, match="model.vlm.quantization"):
        load_config("vlm_qwen2_5_3b_qlora", ["model.vlm.mode=full"])
    with pytest.raises(ConfigError, match="model.vlm.mode"):
        load_config("vlm_tiny", ["model.vlm.mode=half"])
    with pytest.raises(ConfigError, match="model.vlm.tiny_architecture"):
        load_config("vlm_tiny", ["model.vlm.tiny_architecture=blip"])


SHIPPED = {  # recipe -> (Hub id, parameters of the published model, batch-4 target in GiB or None)
    "vlm_qwen2_5_3b_qlora": ("Qwen/Qwen2.5-VL-3B-Instruct", 3_754_622_976, 8),
    "vlm_qwen3_4b_qlora": ("Qwen/Qwen3-VL-4B-Instruct", 4_437_815_808, 10),
    "vlm_qwen2_2b_lora": ("Qwen/Qwen2-VL-2B-Instruct", 2_208_985_600, None),
    "vlm_smolvlm_500m": ("HuggingFaceTB/SmolVLM-500M-Instruct", 507_482_304, None),
}


@pytest.mark.parametrize("recipe", sorted(SHIPPED))
def test_plan_of_the_shipped_recipes(recipe):
    name, params, target = SHIPPED[recipe]
    cfg = load_config(recipe)
    assert cfg.model.vlm.name == name and len(cfg.model.vlm.revision) == 40
    plans = {b: plan_memory(cfg, batch_size=b, mixed_precision="bf16") for b in (1, 4, 8)}
    assert f"{params:,} parameters" in " ".join(plans[4].notes)
    totals = [plans[b].total() for b in (1, 4, 8)]
    assert totals[0] < totals[1] < totals[2]
    if target is not None:
        assert totals[1] <= target * GIB, plans[4].format()
    # More image tokens cost more activation memory.
    bigger = plan_memory(load_config(recipe, ["model.vlm.max_pixels=1605632", "model.vlm.longest_edge=1024"]),
                         batch_size=4, mixed_precision="bf16")
    assert bigger.total() > plans[4].total()


def test_plan_command_runs_offline():
    proc = subprocess.run([sys.executable, "-m", "memecap", "plan", "vlm_qwen2_5_3b_qlora",
                           "--mixed-precision", "bf16"],
                          capture_output=True, text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert "frozen weights (4bit" in proc.stdout and "total on each accelerator" in proc.stdout


def test_tiny_base_is_saved_in_the_published_layout(vlm_bases):
    model = build(vlm_bases, "qwen2_5_vl")
    folder = Path(model.cfg.vlm.name)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json"} <= {p.name for p in folder.iterdir()}
    assert type(model.model.get_base_model()).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(model.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert model.cfg.vlm.instruction in model.tokenizer.decode(model.prepare(images()[0])["prompt_ids"])


def test_export_names_the_hub_base_and_holds_only_the_adapter_and_processing(vlm_bases, tmp_path):
    import yaml

    model = build(vlm_bases, "qwen2_vl", "model.vlm.max_pixels=512")
    model.cfg.vlm.name, model.cfg.vlm.revision = "Qwen/Qwen2-VL-2B-Instruct", "895c3a49bc3fa70a340399125c650a463535e71c"
    model.save_pretrained(tmp_path / "export", generation=GenerationConfig(strategy="greedy"))
    meta = yaml.safe_load((tmp_path / "export" / "memecap.yaml").read_text(encoding="utf-8"))
    assert meta["bases"]["vlm"]["name"] == "Qwen/Qwen2-VL-2B-Instruct" and meta["bases"]["vlm"]["needed_to_load"]
    assert meta["bases"]["vlm"]["revision"] == "895c3a49bc3fa70a340399125c650a463535e71c"
    assert meta["model"]["vlm"]["name"] == "Qwen/Qwen2-VL-2B-Instruct"
    assert all(f.startswith(("adapter/", "processor/")) for f in meta["files"])
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in meta["files"])  # safetensors and text only
    processor = json.loads((tmp_path / "export" / "processor" / "preprocessor_config.json").read_text())
    assert processor["size"]["longest_edge"] == 512  # the recipe's image budget travels with the model


def test_quote_copy_starts_after_the_prompt(vlm_bases):
    """generation.quote=copy reads only generated tokens: a quote mark inside the prompt (the OCR
    line of the instruction) must not start a copy; one the model writes must."""
    model = build(vlm_bases, "qwen2_vl", "model.ocr.enabled=true")
    item = model.prepare(images()[0], 'ПРИВЕТ "МИР"')
    prompt = torch.tensor([item["prompt_ids"]])
    quote = model.tokenizer('"', add_special_tokens=False)["input_ids"]
    processor = model.quote_processor(["ПРИВЕТ МИР"], start=prompt.shape[1])
    scores = torch.zeros(1, len(model.tokenizer))
    assert torch.equal(processor(prompt, scores.clone()), scores)  # the prompt's quotes start nothing
    written = torch.cat([prompt, torch.tensor([quote])], dim=1)
    forced = processor(written, scores.clone())
    first = model.tokenizer("ПРИВЕТ МИР", add_special_tokens=False)["input_ids"][0]
    assert forced[0].argmax().item() == first and torch.isinf(forced[0]).sum() == forced.shape[1] - 1


def test_an_architecture_without_known_expansion_goes_through_its_processor(vlm_bases, tmp_path):
    """LLaVA: memecap does not expand its image tokens itself; its LlavaProcessor does, at training,
    in the export and after reloading it."""
    from memecap.models import load_model

    model = build(vlm_bases, "llava").eval()
    assert type(model.processor).__name__ == "LlavaProcessor"
    prompt = model.prepare(images()[0])["prompt_ids"]
    assert sum(t == model.image_token_id for t in prompt) == 16  # (32 / 8)^2 patches, as the processor writes them
    model.save_pretrained(tmp_path / "export", generation=GenerationConfig(strategy="greedy"))
    assert (tmp_path / "export" / "processor" / "processor_config.json").is_file()
    loaded = load_model(tmp_path / "export")
    assert type(loaded.processor).__name__ == "LlavaProcessor"
    greedy = GenerationConfig(strategy="greedy", max_new_tokens=5)
    evals = lambda m: CaptionEvalSet(m.image_inputs(images(), cache_dir=None, device="cpu", progress=False))  # noqa: E731
    batch = lambda m: m.collate([evals(m)[i] for i in range(4)])  # noqa: E731
    assert loaded.generate(batch(loaded), greedy) == model.generate(batch(model), greedy)


def test_published_smolvlm_shape_gives_its_64_image_tokens(tmp_path, one_thread):
    """SmolVLM-500M's published shape (one 512 px tile, patch 16, pixel shuffle 4): 64 image tokens,
    the `image_seq_len` its processor ships; loaded through the family like a Hub download."""
    from memecap.models.vlm.known import known_config
    from memecap.models.vlm.tiny import save_shaped_vlm

    config = known_config("HuggingFaceTB/SmolVLM-500M-Instruct")
    config.text_config.num_hidden_layers = config.vision_config.num_hidden_layers = 1
    if getattr(config.text_config, "layer_types", None):
        config.text_config.layer_types = config.text_config.layer_types[:1]
    folder = save_shaped_vlm(tmp_path / "smolvlm", config, CAPTIONS)
    model = build_model(load_config("vlm_smolvlm_500m", [f"model.vlm.name={folder}", "model.vlm.revision=null"]).model,
                        work_dir=tmp_path)
    item = model.prepare(Image.new("RGB", (700, 300), (1, 2, 3)))
    assert sum(t == model.image_token_id for t in item["prompt_ids"]) == 64
    assert tuple(item["vision"]["pixel_values"].shape) == (1, 1, 3, 512, 512)


def test_an_image_processor_type_transformers_lacks_falls_back_to_the_architectures(vlm_bases, tmp_path, caplog):
    """A public copy of Qwen2.5-VL's preprocessor_config.json names `Qwen2_5_VLImageProcessor`, which
    transformers never had: the model type's own image processor is used, and memecap says so."""
    from memecap.models import load_model

    model = build(vlm_bases, "qwen2_5_vl")
    base = tmp_path / "base"
    shutil.copytree(model.cfg.vlm.name, base)
    settings = base / "preprocessor_config.json"
    values = json.loads(settings.read_text(encoding="utf-8"))
    assert values["image_processor_type"] == "Qwen2VLImageProcessor"
    settings.write_text(json.dumps({**values, "image_processor_type": "Qwen2_5_VLImageProcessor"}), encoding="utf-8")
    with caplog.at_level("WARNING", logger="memecap"):
        edited = build(vlm_bases, "qwen2_5_vl", f"model.vlm.name={base}")
    said = [r.getMessage() for r in caplog.records if r.name.startswith("memecap")]
    assert said == [f"{base}: image_processor_type 'Qwen2_5_VLImageProcessor' is not an image processor transformers "
                    "has; using the one of model type 'qwen2_5_vl' (Qwen2VLImageProcessorPil)"]
    assert type(edited.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    ours, theirs = model.prepare(images()[0]), edited.prepare(images()[0])
    assert torch.equal(ours["vision"]["pixel_values"], theirs["vision"]["pixel_values"])
    assert ours["prompt_ids"] == theirs["prompt_ids"]

    edited.save_pretrained(tmp_path / "export", generation=GenerationConfig(strategy="greedy"))
    assert load_model(tmp_path / "export").image_processor.to_dict() == edited.image_processor.to_dict()
