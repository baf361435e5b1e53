"""OCR-conditioned RuDOLPH: the meme's text goes into the left text, the caption reads it, and
the switch works through the real loop and the export."""
from __future__ import annotations

import pytest
import torch

from memecap import train
from memecap.data.tables import load_split
from memecap.models import load_model
from memecap.data.datasets import CaptionEvalSet
from memecap.models.prompted import PromptedImages
from memecap.models.rudolph.model import EOS, PAD
from tests.helpers import build_rudolph, no_dropout, reset_accelerate, rudolph_run_config, with_texts

pytestmark = pytest.mark.usefixtures("one_thread")


def test_left_text_holds_the_lower_cased_ocr_text_cut_to_fit(tiny_rudolph, tmp_path):
    model = build_rudolph(tiny_rudolph, "rudolph_350m", "model.ocr.enabled=true", work_dir=tmp_path)
    head = model.left[: model.left.index(EOS)]
    text_ids = model.tokenizer.tokenizer.encode(["на картинке синий круг и жёлтый квадрат слева на зелёном фоне"])[0]
    room = model.l_len - len(head) - 1
    assert len(text_ids) > room  # the tiny left part (8 positions) must cut this text
    left = model.encode_left("На картинке СИНИЙ круг и жёлтый квадрат слева на ЗЕЛЁНОМ фоне")
    assert len(left) == model.l_len
    assert left == head + text_ids[:room] + [EOS] + [PAD] * (model.l_len - len(head) - room - 1)
    assert model.encode_left("   ") == model.left  # no text read: the published captioning layout

    capped = build_rudolph(tiny_rudolph, "rudolph_350m", "model.ocr.enabled=true", "model.ocr.max_tokens=2",
                           work_dir=tmp_path)
    two_tokens = head + text_ids[:2] + [EOS] + [PAD] * (model.l_len - len(head) - 3)
    assert capped.encode_left("на картинке синий круг и жёлтый квадрат слева на зелёном фоне") == two_tokens


def test_the_caption_reads_the_left_text(tiny_rudolph, examples, tmp_path):
    model = no_dropout(build_rudolph(tiny_rudolph, "rudolph_350m", "model.ocr.enabled=true", work_dir=tmp_path)).eval()
    captions = [model.encode_caption(e.captions[0], 128) for e in examples[:2]]

    def loss(texts):
        images = with_texts(model, examples, texts)
        batch = model.collate([{"image": images[i], "input_ids": captions[i]} for i in range(2)])
        assert batch["left"].shape == (2, model.l_len)
        return model.loss(batch)["loss"].item()

    with torch.no_grad():
        plain = model.collate([{"image": img, "input_ids": ids} for img, ids in
                               zip(model._codes([e.image_path for e in examples[:2]], cache_dir=None, device="cpu",
                                                progress=False, desc=""), captions)])
        assert "left" not in plain
        # An empty reading is exactly the layout without OCR; a text changes what the caption sees.
        assert loss(["", ""]) == pytest.approx(model.loss(plain)["loss"].item(), abs=1e-6)
        assert loss(["кот сидит", "понедельник"]) != pytest.approx(loss(["", ""]), abs=1e-4)

        images = with_texts(model, examples, ["кот сидит", "", "понедельник"])
        eval_batch = model.collate([CaptionEvalSet(images)[i] for i in range(3)])
        together = model.generate(eval_batch, model_generation())
        alone = [model.generate(model.collate([CaptionEvalSet(images)[i]]), model_generation())[0] for i in range(3)]
    assert together == alone and all(isinstance(c[0], str) for c in together)


def model_generation():
    from memecap.config import GenerationConfig

    return GenerationConfig(strategy="greedy", max_new_tokens=8, repetition_penalty=1.0)


def test_ocr_switch_through_the_loop_and_the_export(tmp_path, synthetic_data, tiny_rudolph):
    """Tesseract reads the synthetic images once (cached), the loop trains and scores, and the
    export keeps reading text: loading it gives left texts built from the same cached readings."""
    out = tmp_path / "run"
    cfg = rudolph_run_config("rudolph_350m", out, synthetic_data, tiny_rudolph, "model.ocr.enabled=true",
                             "data.max_train_rows=16", "data.max_val_rows=4", "train.max_steps=2",
                             "eval.compare_constant=false")
    try:
        summary = train.main(cfg)
    finally:
        reset_accelerate()
    assert summary["optimizer_steps"] == 2 and 0.0 <= summary["final"]["quote"] <= 1.0
    assert len(list((out / "cache" / "ocr").glob("*/*/*.json"))) >= 20  # 16 train + 4 val readings

    model = load_model(out / "final")
    assert model.cfg.ocr.enabled
    val, _ = load_split(synthetic_data["val"], log=None)
    images = model.image_inputs([e.image_path for e in val[:4]], cache_dir=str(out / "cache"), device="cpu",
                                progress=False)
    assert isinstance(images, PromptedImages)
    assert [images[i]["prompt_ids"] for i in range(4)] == [model.encode_left(t) for t in images.texts]
