"""BLEU/METEOR modules and memecap.evaluation, checked against values worked out by hand
(CIDEr-D and ROUGE-L: tests/test_cider_rouge.py)."""

import json
import math
import os
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from nltk.translate.bleu_score import SmoothingFunction
from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

from memecap import evaluation
from memecap.config import ConfigError, load_config
from memecap.evaluation import (
    _constant_scores,
    best_constant_caption,
    compute_metrics,
    format_metrics_table,
    read_predictions,
    write_predictions,
)
from memecap.metrics.bleu_score import corpus_bleu
from memecap.metrics.meteor_score import mean_meteor
from memecap.metrics.registry import SCORINGS, metric_names
from memecap.metrics.tokenization import tokenize, tokenize_nltk

METRICS_DIR = Path(evaluation.__file__).parent / "metrics"
BLEUS = ("bleu1", "bleu2", "bleu3", "bleu4")


class IdentityStemmer:
    def stem(self, word):
        return word


def test_tokenize_splits_punctuation_and_lowercases():
    assert tokenize('Подпись: "Кот"') == ["подпись", ":", '"', "кот", '"']
    assert tokenize("На фото — ёж,  2 шт.") == ["на", "фото", "—", "ёж", ",", "2", "шт", "."]


def test_tokenize_nltk_follows_word_tokenize():
    # Treebank rules: an opening " becomes ``, a closing one '', each sentence's final period
    # is split off. A period and a space end a sentence, as in Punkt for words it does not
    # know as abbreviations, so "т.д." loses its last period.
    assert tokenize_nltk('Подпись: "Кот". Пёс и т.д. спит.') == [
        "подпись", ":", "``", "кот", "''", ".", "пёс", "и", "т.д", ".", "спит", "."
    ]


def test_bleu_two_sentences_by_hand():
    # A: hyp "кот спит на диване" (4), ref "кот спит на полу" (4)
    #    1-grams 3/4 (диване misses), 2-grams 2/3, 3-grams 1/2, 4-grams 0/1
    # B: hyp "собака лает на кота" (4), ref "собака лает на кота громко" (5)
    #    1-grams 4/4, 2-grams 3/3, 3-grams 2/2, 4-grams 1/1
    # corpus: p1 = 7/8, p2 = 5/6, p3 = 3/4, p4 = 1/2; c = 8, r = 4 + 5 = 9
    # BP = exp(1 - 9/8) = exp(-1/8) = 0.8824969
    # bleu1 = BP * 7/8                          = 0.7721848
    # bleu2 = BP * (7/8 * 5/6) ** (1/2)         = 0.7535752
    # bleu3 = BP * (7/8 * 5/6 * 3/4) ** (1/3)   = 0.7216765
    # bleu4 = BP * (7/8 * 5/6 * 3/4 * 1/2) ** (1/4) = 0.6381573
    preds = ["Кот спит на диване", "Собака лает на кота"]
    refs = [["кот спит на полу"], ["собака лает на кота громко"]]
    bp = math.exp(-1 / 8)
    expected = {
        "bleu1": bp * 7 / 8,
        "bleu2": bp * (7 / 8 * 5 / 6) ** (1 / 2),
        "bleu3": bp * (7 / 8 * 5 / 6 * 3 / 4) ** (1 / 3),
        "bleu4": bp * (7 / 8 * 5 / 6 * 3 / 4 * 1 / 2) ** (1 / 4),
    }
    assert expected["bleu4"] == pytest.approx(0.6381573, abs=1e-6)
    for scoring in ("memecap", "seed"):  # one reference each: both scorings agree
        got = compute_metrics(preds, refs, scoring=scoring)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, abs=1e-6), (scoring, name)
    raw = corpus_bleu([tokenize(p) for p in preds], [[tokenize(r) for r in rs] for rs in refs])
    assert raw["precisions"] == pytest.approx([7 / 8, 5 / 6, 3 / 4, 1 / 2])
    assert raw["brevity_penalty"] == pytest.approx(bp)


def test_bleu_clips_repeated_words_to_the_most_in_one_reference():
    # hyp "кот кот кот"; "кот" occurs at most twice in one reference, so 1-grams 2/3.
    # reference lengths 2 and 5; 2 is nearest to 3, c = 3 > r = 2, BP = 1; bleu1 = 2/3.
    got = corpus_bleu([tokenize("кот кот кот")], [[tokenize("кот спит"), tokenize("кот и кот спят рядом")]])
    assert got["bleu1"] == pytest.approx(2 / 3, abs=1e-9)
    assert got["brevity_penalty"] == 1.0


def test_bleu_brevity_uses_the_closest_reference_and_the_shorter_on_ties():
    # hyp length 3, references of length 4 and 2: both 1 away, the shorter (2) counts, BP = 1.
    tie = corpus_bleu([["а", "б", "в"]], [[["а", "б", "в", "г"], ["а", "б"]]])
    assert tie["reference_length"] == 2 and tie["brevity_penalty"] == 1.0
    # references of length 4 and 6: r = 4, BP = exp(1 - 4/3) = 0.7165313
    short = corpus_bleu([["а", "б", "в"]], [[["а", "б", "в", "г"], ["а", "б", "в", "г", "д", "е"]]])
    assert short["brevity_penalty"] == pytest.approx(math.exp(-1 / 3), abs=1e-9)


def test_perfect_match_and_no_overlap():
    refs = [["на фото кот спит на диване"], ["подпись: когда пятница"]]
    perfect = compute_metrics(["На фото кот спит на диване", "Подпись: когда пятница"], refs)
    assert all(perfect[b] == pytest.approx(1.0) for b in BLEUS) and perfect["rougeL"] == pytest.approx(1.0)
    # The two references share no n-gram, so each has idf log 2 and each cosine is 1: CIDEr-D x10 = 10.
    assert perfect["cider"] == pytest.approx(10.0)
    nothing = compute_metrics(["собака лает", "птица поёт"], refs)
    # quote: no reference quotes anything, so nothing can be misquoted.
    assert nothing == {"bleu1": 0.0, "bleu2": 0.0, "bleu3": 0.0, "bleu4": 0.0, "meteor": 0.0, "cider": 0.0,
                       "rougeL": 0.0, "quote": 0.0}


def test_multiple_references_memecap_uses_all_seed_only_the_first():
    # hyp "кот спит" (2); references "кот спит на диване у окна" (6) and "кот спит днём" (3).
    # Both: 1-grams 2/2, 2-grams 1/1, 3-grams 0/1 (denominator floored at 1) -> bleu3 = bleu4 = 0.
    # memecap: closest reference has length 3, BP = exp(1 - 3/2) = 0.6065307 = bleu1 = bleu2.
    # seed: first reference only, r = 6, BP = exp(1 - 6/2) = 0.1353353.
    preds, refs = ["кот спит"], [["кот спит на диване у окна", "кот спит днём"]]
    memecap = compute_metrics(preds, refs)
    seed = compute_metrics(preds, refs, scoring="seed")
    assert memecap["bleu1"] == pytest.approx(math.exp(-0.5), abs=1e-6)
    assert memecap["bleu2"] == pytest.approx(math.exp(-0.5), abs=1e-6)
    assert memecap["bleu3"] == 0.0
    assert seed["bleu1"] == pytest.approx(math.exp(-2), abs=1e-6)
    assert seed["bleu3"] == pytest.approx(0.0, abs=1e-6)  # NLTK: ~1e-100, not exactly 0


def test_meteor_identical_sentence_has_only_the_fragmentation_penalty():
    # 5 matches, P = R = 1, Fmean = 1, one chunk: penalty = 0.5 * (1/5) ** 3 = 0.004 -> 0.996
    sentence = "на фото кот и собака"
    assert compute_metrics([sentence], [[sentence]])["meteor"] == pytest.approx(0.996, abs=1e-9)


def test_meteor_russian_stemming_matches_word_forms():
    # hyp кошка спит на диване / ref кошки спит на диване
    # exact stage: спит, на, диване; stem stage: кошка ~ кошки (both "кошк").
    #   Russian: 4 matches, P = R = 1, one chunk, penalty 0.5 * (1/4) ** 3 -> 1 - 1/128 = 0.9921875
    #   exact only: 3 matches, P = R = 3/4, Fmean = 3/4, one chunk,
    #   penalty 0.5 * (1/3) ** 3 = 1/54 -> 0.75 * 53/54 = 0.7361111
    hyp, ref = tokenize("кошка спит на диване"), tokenize("кошки спит на диване")
    assert mean_meteor([hyp], [[ref]]) == pytest.approx(1 - 1 / 128, abs=1e-9)
    assert mean_meteor([hyp], [[ref]], stemmer=IdentityStemmer()) == pytest.approx(0.75 * 53 / 54, abs=1e-9)
    # Porter (the seed scoring) does not touch Cyrillic, so it sees only the exact matches.
    seed = compute_metrics(["кошка спит на диване"], [["кошки спит на диване"]], scoring="seed")
    assert seed["meteor"] == pytest.approx(0.75 * 53 / 54, abs=1e-9)


def test_meteor_takes_the_best_reference_in_memecap_the_first_in_seed():
    # identical 2-token second reference: 1 - 0.5 * (1/2) ** 3 = 0.9375; the first shares nothing.
    preds, refs = ["кот спит"], [["собака лает", "кот спит"]]
    assert compute_metrics(preds, refs)["meteor"] == pytest.approx(0.9375, abs=1e-9)
    assert compute_metrics(preds, refs, scoring="seed")["meteor"] == 0.0


def test_bleu_agrees_with_nltk_corpus_bleu_on_random_corpora():
    rng = random.Random(0)
    vocab = "а б в г д е ж".split()
    words = lambda lo, hi: [rng.choice(vocab) for _ in range(rng.randint(lo, hi))]  # noqa: E731
    for _ in range(20):
        hyps = [words(0, 9) for _ in range(12)]
        refs = [[words(1, 9) for _ in range(rng.randint(1, 3))] for _ in range(12)]
        for smooth, fn in ((False, None), (True, SmoothingFunction().method2)):
            ours = corpus_bleu(hyps, refs, smooth=smooth)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = nltk_corpus_bleu(refs, hyps, [(1 / n,) * n for n in range(1, 5)], smoothing_function=fn)
            assert [ours[b] for b in BLEUS] == pytest.approx(theirs, abs=1e-12)


def test_evaluate_loads_the_modules_by_path_offline(tmp_path):
    script = (
        "import json, evaluate\n"
        f"b = evaluate.load({str(METRICS_DIR / 'bleu.py')!r})\n"
        f"m = evaluate.load({str(METRICS_DIR / 'meteor.py')!r})\n"
        f"c = evaluate.load({str(METRICS_DIR / 'cider.py')!r})\n"
        f"r = evaluate.load({str(METRICS_DIR / 'rouge.py')!r})\n"
        "kw = dict(predictions=['Кот спит на диване'], references=[['кот спит на полу', 'кот']])\n"
        "print(json.dumps({**b.compute(**kw), **m.compute(**kw), **c.compute(**kw), **r.compute(**kw)}))\n"
    )
    # A fresh modules cache proves the relative import of tokenization.py is copied along.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # 1-grams 3/4, 2-grams 2/3, 3-grams 1/2, 4-grams 0/1; c = 4, closest r = 4, BP = 1
    assert got["bleu1"] == pytest.approx(0.75) and got["bleu2"] == pytest.approx((0.75 * 2 / 3) ** 0.5)
    assert got["bleu4"] == 0.0
    # 3 matches of 4 (vs the 4-token reference), one chunk: 0.75 * (1 - 0.5 / 27) = 0.7361111
    assert got["meteor"] == pytest.approx(0.75 * 53 / 54, abs=1e-9)
    # One example: every n-gram's idf is log(1/1) = 0, so CIDEr-D is 0 (a corpus measure).
    assert got["cider"] == 0.0
    # ROUGE-L: LCS 3 with "кот спит на полу" (P = R = 3/4), 1 with "кот" (P = 1/4, R = 1); the best P
    # and the best R are taken separately: (1 + 1.2^2) * 3/4 * 1 / (1 + 1.2^2 * 3/4) = 0.8798077
    assert got["rougeL"] == pytest.approx(2.44 * 0.75 / (1 + 1.44 * 0.75), abs=1e-9)


def test_scoring_imports_no_evaluate():
    # `evaluate` pulls in datasets and transformers' pipelines; the modules above are for loading by path.
    code = ("import sys; from memecap.evaluation import compute_metrics\n"
            "for scoring in ('memecap', 'seed'): compute_metrics(['кот спит'], [['кот спит', 'кот']], scoring)\n"
            "print([m for m in ('evaluate', 'datasets') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_registered_metric_is_reported_and_can_choose_the_best_checkpoint():
    for scoring in SCORINGS:
        reported = compute_metrics(["кот спит"], [["кот спит", "кот"]], scoring)
        assert (*reported, "val_loss") == metric_names(scoring)  # the validation pass adds its loss
        for name in metric_names(scoring):
            cfg = load_config("demo", [f"train.best_metric={name}", f"eval.scoring={scoring}"])
            assert cfg.train.best_metric == name
    assert set(metric_names("seed")) == set(metric_names("memecap")) - {"cider", "rougeL"}
    with pytest.raises(ConfigError, match=r"train.best_metric='bleu5': use bleu1, bleu2, .*, quote or val_loss$"):
        load_config("demo", ["train.best_metric=bleu5"])


def test_the_best_checkpoint_follows_each_metrics_direction():
    from memecap.training.validation_pass import is_better

    for name in metric_names():
        lower = name in ("quote", "val_loss")  # an error rate and a loss
        assert is_better(name, 0.1, 0.2) == lower and is_better(name, 0.3, 0.2) == (not lower), name


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([], [])
    with pytest.raises(ValueError, match=r"3 predictions but 2 reference"):
        compute_metrics(["а", "б", "в"], [["а"], ["б"]])
    with pytest.raises(ValueError, match="scoring"):
        compute_metrics(["а"], [["а"]], scoring="sacrebleu")
    with pytest.raises(TypeError, match="references\\[0\\]"):
        compute_metrics(["а"], ["а"])


def test_best_constant_caption_picks_the_obvious_one():
    # "на фото кот спит" against the three references below:
    #   1-grams 4+3+3 of 12, 2-grams 3+2+2 of 9, 3-grams 2+1+1 of 6, 4-grams 1+0+0 of 3; c = r = 12, BP = 1
    #   bleu4 = (10/12 * 7/9 * 4/6 * 1/3) ** (1/4) = 0.6160493
    # "на фото кот" has no 4-gram at all (bleu4 = 0); the others share no word.
    refs = [["на фото кот спит"], ["на фото кот ест"], ["на фото кот бежит"]]
    train = ["собака лает", "на фото кот", "на фото кот спит", " на фото кот спит ", "", "птица поёт громко"]
    caption, metrics = best_constant_caption(train, refs)
    assert caption == "на фото кот спит"
    assert metrics["bleu4"] == pytest.approx((10 / 12 * 7 / 9 * 4 / 6 * 1 / 3) ** 0.25, abs=1e-6)
    assert metrics == compute_metrics([caption] * 3, refs)


@pytest.mark.parametrize("scoring", ["memecap", "seed"])
def test_constant_scores_equal_compute_metrics(scoring):
    rng = random.Random(1)
    vocab = "на фото кот собака спит подпись : , . когда".split()
    sent = lambda: " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 8)))  # noqa: E731
    refs = [[sent() for _ in range(rng.randint(1, 3))] for _ in range(15)]
    candidates = [sent() for _ in range(8)]
    for metric in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor"):
        fast = _constant_scores(candidates, refs, scoring, metric)
        slow = [compute_metrics([c] * len(refs), refs, scoring)[metric] for c in candidates]
        assert fast == pytest.approx(slow, abs=1e-9), metric


def test_best_constant_caption_is_fast_and_subsamples():
    rng = random.Random(0)
    vocab = [f"слово{i}" for i in range(300)] + ["на", "фото", "подпись", ":", "кот", "."]
    sent = lambda: " ".join(rng.choice(vocab) for _ in range(rng.randint(15, 40)))  # noqa: E731
    train = [sent() for _ in range(500)]
    refs = [[sent() for _ in range(rng.randint(1, 3))] for _ in range(200)]
    start = time.perf_counter()
    caption, metrics = best_constant_caption(train, refs, max_candidates=200)
    assert time.perf_counter() - start < 10
    assert caption in train
    assert set(metrics) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "cider", "rougeL", "quote"}
    assert best_constant_caption(train, refs, max_candidates=200)[0] == caption  # deterministic


def test_predictions_round_trip_keeps_cyrillic_and_quotes(tmp_path):
    rows = [
        {"uid": "17", "references": ['Подпись: "Кот"', "кот"], "prediction": "На фото «кот» и \"пёс\"", "step": 500},
        {"uid": 18, "references": ["мем"], "prediction": ""},
    ]
    path = tmp_path / "out" / "predictions.jsonl"
    write_predictions(path, [{"uid": 0, "references": ["старое"], "prediction": "x"}])
    write_predictions(path, rows)  # replaces the old file
    assert read_predictions(path) == rows
    text = path.read_text(encoding="utf-8")
    assert "Подпись" in text and "\\u" not in text and len(text.splitlines()) == 2
    assert os.listdir(path.parent) == ["predictions.jsonl"]  # no temp file left behind
    with pytest.raises(ValueError, match="lacks \\['prediction'\\]"):
        write_predictions(path, [{"uid": 1, "references": []}])
    assert read_predictions(path) == rows


def test_format_metrics_table_aligns_values():
    table = format_metrics_table({"bleu1": 0.23654, "meteor": 0.1684, "bleu4": 0.0443}, title="test")
    lines = table.splitlines()
    assert lines[0] == "test" and set(lines[1]) == {"-"}
    assert lines[2:] == ["bleu1   0.2365", "meteor  0.1684", "bleu4   0.0443"]
