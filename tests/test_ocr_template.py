"""The ocr_template baseline: scored through `memecap eval` like any model, never trained."""
from __future__ import annotations

import pytest

from memecap import cli
from memecap.config import ConfigError, GenerationConfig, load_config
from memecap.evaluation import read_predictions
from memecap.metrics.quote_score import quote_spans
from memecap.models import build_model
from tests.ocr_images import MAX_CER


def test_ocr_template_baseline_scores_through_eval(text_images, capsys):
    out = text_images["root"] / "baseline.jsonl"
    assert cli.main(["eval", "ocr_template", f"cache.dir={text_images['cache']}", "--data", str(text_images["table"]),
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bleu4" in printed and "quote" in printed
    rows = read_predictions(out)
    assert [r["prediction"] for r in rows] == [f'подпись: "{t}"' for t in text_images["texts"]]
    metrics = dict(line.split() for line in printed.splitlines() if line.startswith(("quote", "bleu1")))
    assert float(metrics["quote"]) <= MAX_CER  # it quotes what the OCR read, which is nearly exact

    model = build_model(load_config("ocr_template").model, work_dir=out.parent)
    assert model.trainable_parameters() == []
    batch = model.collate([{"image": 'он сказал "да" и «нет»', "index": 0}])
    caption = model.generate(batch, GenerationConfig(strategy="greedy"))[0][0]
    assert caption == 'подпись: "он сказал да и нет"'  # OCR's quote marks cannot end the quote early
    assert quote_spans(caption) == ["он сказал да и нет"]


def test_ocr_template_cannot_be_trained(capsys):
    with pytest.raises(ConfigError, match="memecap eval ocr_template"):
        load_config("ocr_template", ["data.train=a.tsv", "data.val=b.tsv"])
    assert cli.main(["train", "ocr_template", "data.train=a.tsv", "data.val=b.tsv"]) == 2
    assert "nothing to train" in capsys.readouterr().err


def test_eval_rejects_overrides_for_an_export_and_untrained_recipes(tmp_path, capsys):
    (tmp_path / "memecap.yaml").write_text("family: clipcap\n", encoding="utf-8")
    assert cli.main(["eval", str(tmp_path), "model.ocr.min_confidence=5", "--data", "x.tsv"]) == 2
    assert "baseline recipes only" in capsys.readouterr().err
    assert cli.main(["eval", "clipcap_ocr_lora", "--data", "x.tsv"]) == 2
    assert "must be trained first" in capsys.readouterr().err
