"""OCR-conditioned ClipCap: the prompt layout, the loss mask (caption tokens only), batched
generation with prompts of different lengths, export, and the recipes through the real loop."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from memecap import train
from memecap.config import GenerationConfig, load_config
from memecap.models import load_model
from memecap.data.datasets import CaptionEvalSet
from tests.helpers import nudge_trained_parts, ocr_model, prompted, reset_accelerate, tiny_run_config

TEMPLATE = "Текст на картинке: {text}\nОписание: "


def test_ocr_recipes_are_one_switch_on_clipcap_recipes():
    for ocr_recipe, base in (("clipcap_ocr_lora", "clipcap_lora"), ("clipcap_ocr_frozen", "clipcap_mlp_frozen")):
        with_ocr, without = load_config(ocr_recipe), load_config(base)
        assert with_ocr.model.ocr.enabled and not without.model.ocr.enabled
        with_ocr.model.ocr.enabled = False
        with_ocr.train.output_dir = without.train.output_dir
        assert with_ocr == without, ocr_recipe  # nothing else differs
    assert load_config("clipcap_ocr_frozen").model.decoder.mode == "frozen"
    assert load_config("clipcap_ocr_lora").model.decoder.mode == "lora"
    assert load_config("clipcap_ocr_lora").model.ocr.languages == ["rus", "eng"]


def test_prompt_layout_and_length_cap(tiny_ruclip_dir, tiny_gpt2_dir, tmp_path):
    model = ocr_model("clipcap_ocr_frozen", tiny_ruclip_dir, tiny_gpt2_dir, tmp_path, "model.ocr.max_tokens=5")
    tok = model.tokenizer
    assert model.cfg.ocr.template == TEMPLATE
    short = model.encode_prompt("кек")
    assert tok.decode(short) == TEMPLATE.format(text="кек")
    long_text = "очень длинная подпись на меме " * 10
    ids = model.encode_prompt(long_text)
    before = tok(TEMPLATE.split("{text}")[0], add_special_tokens=False)["input_ids"]
    after = tok(TEMPLATE.split("{text}")[1], add_special_tokens=False)["input_ids"]
    assert len(ids) == len(before) + 5 + len(after)  # the text is cut to max_tokens ...
    assert ids[:len(before)] == before and ids[-len(after):] == after  # ... the separator never is
    assert tok.decode(ids[len(before):-len(after)]) == tok.decode(tok(long_text)["input_ids"][:5])
    assert "\n" in tok.decode(after) and model.eos_id not in ids
    empty = model.encode_prompt("")
    assert tok.decode(empty) == TEMPLATE.format(text="")  # no text read: the same layout, empty


def test_loss_covers_caption_tokens_only(tiny_ruclip_dir, tiny_gpt2_dir, examples, tmp_path):
    model = ocr_model("clipcap_ocr_frozen", tiny_ruclip_dir, tiny_gpt2_dir, tmp_path).eval()
    texts = ["кек", "ой всё ну и ну"]
    images = prompted(model, examples, texts)
    captions = [model.encode_caption('на картинке круг. подпись: "кек"', 64),
                model.encode_caption("на картинке звезда.", 64)]
    items = [{"image": images[i], "input_ids": captions[i]} for i in range(2)]
    batch = model.collate(items)
    for row in range(2):
        prompt, caption = images.prompt_ids[row], captions[row]
        n = len(prompt) + len(caption)
        assert batch["input_ids"][row, :n].tolist() == prompt + caption  # prompt, then caption
        assert (batch["labels"][row, :len(prompt)] == -100).all()  # the prompt is read, not scored
        assert batch["labels"][row, len(prompt):n].tolist() == caption
        assert (batch["labels"][row, n:] == -100).all() and batch["attention_mask"][row].sum() == n
    # What the vocabulary projection computes: only the caption tokens, none of the padding. The frozen
    # projection is applied by its weight, not its module call, so the profiler's shapes tell.
    vocab = model.decoder.get_output_embeddings().weight.shape
    with torch.profiler.profile(record_shapes=True) as profile:
        out = model(batch)
    by_op = {"aten::linear": list(vocab), "aten::matmul": list(vocab)[::-1]}  # x W^T, or x @ W.t()
    projected = [shapes[0][0] for event in profile.events() if event.name in by_op
                 for shapes in [event.input_shapes] if len(shapes) > 1 and list(shapes[1]) == by_op[event.name]]
    assert out["num_tokens"] == sum(len(c) for c in captions)
    assert projected == [sum(len(c) for c in captions)]

    # The loss by hand: cross-entropy at the positions that predict caption tokens, nothing else.
    with torch.no_grad():
        prefix = model.prefix(batch["image"])
        P = prefix.shape[1]
        inputs = torch.cat([prefix, model.decoder.get_input_embeddings()(batch["input_ids"])], dim=1)
        mask = torch.cat([torch.ones(2, P, dtype=torch.long), batch["attention_mask"]], dim=1)
        logits = model.decoder(inputs_embeds=inputs, attention_mask=mask).logits
    terms = []
    for row in range(2):
        start = len(images.prompt_ids[row])
        for t, token in enumerate(captions[row]):
            # input position P + start + t holds caption token t; the position before it predicts it
            terms.append(F.cross_entropy(logits[row, P + start + t - 1][None], torch.tensor([token])))
    assert out["loss"].item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)

    # The decoder reads the OCR text (the loss changes with it) but never scores it.
    other = prompted(model, examples, ["совсем другой текст", "ой всё ну и ну"])
    changed = model(model.collate([{"image": other[i], "input_ids": captions[i]} for i in range(2)]))
    assert changed["num_tokens"] == out["num_tokens"]
    assert changed["loss"].item() != pytest.approx(out["loss"].item(), abs=1e-6)


@pytest.mark.parametrize("recipe", ["clipcap_ocr_frozen", "clipcap_ocr_lora"])
def test_batched_generation_equals_one_by_one(recipe, tiny_ruclip_dir, tiny_gpt2_dir, examples, tmp_path):
    """Prompts of different lengths are padded on the left for decoding: a caption must not depend
    on what else is in its batch."""
    model = ocr_model(recipe, tiny_ruclip_dir, tiny_gpt2_dir, tmp_path)
    nudge_trained_parts(model)
    model.eval()
    images = prompted(model, examples, ["кек", "", "да ладно ну и ну привет мир ой всё"])
    dataset = CaptionEvalSet(images)
    gen = GenerationConfig(strategy="greedy", max_new_tokens=8)
    batch = model.collate([dataset[i] for i in range(3)])
    assert batch["prompt_mask"].sum(1).tolist() == [len(p) for p in images.prompt_ids]
    together = model.generate(batch, gen)
    alone = [model.generate(model.collate([dataset[i]]), gen)[0] for i in range(3)]
    assert together == alone
    assert len({c[0] for c in together}) > 1  # the prompt reaches the decoder: captions differ


def test_export_keeps_ocr_conditioning(tiny_ruclip_dir, tiny_gpt2_dir, examples, tmp_path):
    model = ocr_model("clipcap_ocr_lora", tiny_ruclip_dir, tiny_gpt2_dir, tmp_path, "model.ocr.min_confidence=42")
    model.save_pretrained(tmp_path / "export")
    loaded = load_model(tmp_path / "export", with_encoder=True)
    assert loaded.cfg.ocr.enabled and loaded.cfg.ocr.min_confidence == 42
    assert loaded.encode_prompt("кек") == model.encode_prompt("кек")


def test_ocr_recipe_smoke_run(tmp_path, synthetic_data):
    """The real loop with OCR on (Tesseract on the synthetic images): runs, caches the OCR next to
    the features, scores the quote metric, and exports a model that keeps reading text."""
    out = tmp_path / "run"
    cfg = tiny_run_config(out, synthetic_data, "model.ocr.enabled=true", "model.ocr.max_tokens=16",
                          "data.max_train_rows=16", "data.max_val_rows=4", "train.max_steps=2",
                          "eval.compare_constant=false")
    summary = train.main(cfg)
    reset_accelerate()
    assert summary["optimizer_steps"] == 2
    assert 0.0 <= summary["final"]["quote"] <= 1.0
    assert list((out / "cache" / "ocr").glob("*/*/*.json"))  # one reading per image, cached
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any(r["kind"] == "eval" and "quote" in r for r in rows)
    assert load_model(out / "final").cfg.ocr.enabled
