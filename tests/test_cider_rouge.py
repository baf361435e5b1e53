"""CIDEr-D and ROUGE-L: values worked out by hand, agreement with the COCO caption evaluation code
(pycocoevalcap, a dev dependency) on generated captions, document frequencies from the scored
references only, and the new columns in the config, the report and the model card."""

import math
import random
from pathlib import Path

import evaluate
import pytest
from pycocoevalcap.cider.cider import Cider as CocoCider
from pycocoevalcap.rouge.rouge import Rouge as CocoRouge
from pycocoevalcap.rouge.rouge import my_lcs

from memecap import evaluation
from memecap.config import ConfigError, load_config
from memecap.evaluation import compute_metrics
from memecap.metrics.cider_score import cider_d, document_frequency
from memecap.metrics.rougel_score import lcs_length, rouge_l
from memecap.metrics.tokenization import tokenize
from memecap.publish.model_card import model_card
from memecap.publish.report import render_report

# Words and marks as memecap's tokenizer splits them, so a caption is its tokens joined by spaces.
VOCAB = "на фото кот кошка собака спит сидит стол подпись : , . « » когда пятница".split()


def corpus(rng: random.Random, examples: int, max_refs: int = 4) -> tuple[list[str], list[list[str]]]:
    words = lambda lo, hi: " ".join(rng.choice(VOCAB) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    hyps = [words(0, 14) for _ in range(examples)]
    refs = [[words(1, 14) for _ in range(rng.randint(1, max_refs))] for _ in range(examples)]
    return hyps, refs


def coco_cider(hyps: list[str], refs: list[list[str]]) -> tuple[float, list[float]]:
    mean, scores = CocoCider().compute_score({i: r for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)})
    return float(mean), [float(s) for s in scores]


def test_cider_by_hand():
    # A: "кот спит" against "кот спит"; B: "пёс" against "пёс лает". N = 2, every reference n-gram is in
    # one example only: idf = log 2 for all of them.
    #   A: orders 1 and 2 have cosine 1 (identical vectors), orders 3 and 4 are empty; lengths equal.
    #      10 * (1 + 1 + 0 + 0) / 4 = 5
    #   B: order 1: (log2 * log2) / (log2 * sqrt(2) log2) = 1/sqrt(2); nothing of order 2-4 in the
    #      candidate. Length (bigrams): 0 against 1, penalty exp(-1 / (2 * 36)).
    #      10 * (1/sqrt(2)) / 4 * exp(-1/72) = 1.7433843
    hyps, refs = [["кот", "спит"], ["пёс"]], [[["кот", "спит"]], [["пёс", "лает"]]]
    b = 10 / math.sqrt(2) / 4 * math.exp(-1 / 72)
    assert b == pytest.approx(1.7433843, abs=1e-7)
    assert cider_d(hyps, refs) == pytest.approx([5.0, b], abs=1e-12)
    assert compute_metrics(["кот спит", "пёс"], [["кот спит"], ["пёс лает"]])["cider"] == pytest.approx((5 + b) / 2)


def test_cider_clips_repeats_and_averages_references():
    # N = 2; example A: candidate "кот кот" against "кот спит" and "собака"; B (only there to make
    # idf non-zero) "собака" against "собака". df: кот 1, спит 1, (кот спит) 1, собака 2.
    #   vs "кот спит": order 1, candidate кот: 2 log2, reference кот: log2, спит: log2.
    #     clipped: min(2 log2, log2) * log2 = log2^2; norms 2 log2 and sqrt(2) log2 -> 1 / (2 sqrt 2).
    #     order 2: (кот кот) is in no reference: weight log2 in the candidate, 0 in the reference -> 0.
    #     lengths 1 and 1: no penalty. Sum 1 / (2 sqrt 2).
    #   vs "собака": idf(собака) = log(2/2) = 0, a zero vector: 0.
    #   A = 10 * (1 / (2 sqrt 2)) / 4 / 2 references = 0.4419417
    scores = cider_d([["кот", "кот"], ["собака"]], [[["кот", "спит"], ["собака"]], [["собака"]]])
    assert scores[0] == pytest.approx(10 / (2 * math.sqrt(2)) / 4 / 2, abs=1e-12)
    assert scores[1] == 0.0  # its only n-gram occurs in every example


def test_cider_document_frequencies_come_from_the_scored_references_only():
    rng = random.Random(3)
    hyps, refs = corpus(rng, 40)
    split_a, split_b = (hyps[:20], refs[:20]), (hyps[20:], refs[20:])
    alone = compute_metrics(*split_a)["cider"]
    together = compute_metrics(hyps, refs)["cider"]
    assert compute_metrics(*split_b)["cider"] != together  # the other split changes N and df ...
    assert compute_metrics(*split_a)["cider"] == alone  # ... but leaves nothing behind for the next call
    assert alone == pytest.approx(coco_cider(*split_a)[0], abs=1e-9)
    tokens = [[tokenize(r) for r in rs] for rs in split_a[1]]
    assert max(document_frequency(tokens).values()) <= 20


@pytest.mark.parametrize("seed, examples", [(0, 1), (1, 2), (2, 30), (3, 300)])
def test_cider_agrees_with_the_coco_code(seed, examples):
    hyps, refs = corpus(random.Random(seed), examples)
    ours = cider_d([h.split() for h in hyps], [[r.split() for r in rs] for rs in refs])
    mean, theirs = coco_cider(hyps, refs)
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert compute_metrics(hyps, refs)["cider"] == pytest.approx(mean, abs=1e-6)
    if examples > 2:
        assert mean > 0.1  # the generated captions share n-grams: not a comparison of zeros


def test_lcs_length_equals_dynamic_programming():
    rng = random.Random(5)
    for _ in range(500):
        a = [rng.choice("абвгд") for _ in range(rng.randint(0, 70))]  # past 64: one integer holds any length
        b = [rng.choice("абвгд") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == my_lcs(a, b) == lcs_length(b, a)


def test_rouge_l_by_hand():
    # "кот спит на диване" (4) against "на диване спит кот" (4): LCS 2 ("на диване"), P = R = 1/2,
    # F = (1 + 1.44) * 1/4 / (1/2 + 1.44/2) = 1/2. Against "кот" as well: LCS 1, P = 1/4, R = 1; the
    # best P (1/2) and best R (1) combine: 2.44 * 1/2 / (1 + 0.72) = 0.7093023.
    hyp = ["кот", "спит", "на", "диване"]
    assert rouge_l([hyp], [[["на", "диване", "спит", "кот"]]]) == pytest.approx([0.5])
    assert rouge_l([hyp], [[["на", "диване", "спит", "кот"], ["кот"]]]) == pytest.approx([2.44 * 0.5 / 1.72])
    assert rouge_l([[]], [[["кот"]]]) == [0.0] and rouge_l([hyp], [[["пёс"]]]) == [0.0]


@pytest.mark.parametrize("seed, examples", [(0, 1), (4, 300)])
def test_rouge_l_agrees_with_the_coco_code(seed, examples):
    hyps, refs = corpus(random.Random(seed), examples)
    coco = CocoRouge()
    theirs = [coco.calc_score([h], rs) for h, rs in zip(hyps, refs)]
    ours = rouge_l([h.split() for h in hyps], [[r.split() for r in rs] for rs in refs])
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert compute_metrics(hyps, refs)["rougeL"] == pytest.approx(sum(theirs) / len(theirs), abs=1e-6)


def test_the_evaluate_modules_equal_compute_metrics():
    hyps, refs = corpus(random.Random(6), 50)
    hyps = [h.replace("« ", "«").replace(" »", "»") for h in hyps]  # some quotes, so the quote metric counts
    metrics_dir = Path(evaluation.__file__).parent / "metrics"
    through_evaluate = {}
    for module in ("bleu", "meteor", "cider", "rouge", "quote"):
        loaded = evaluate.load(str(metrics_dir / f"{module}.py"), keep_in_memory=True)
        through_evaluate.update(loaded.compute(predictions=hyps, references=refs))
    ours = compute_metrics(hyps, refs)
    assert ours == {name: through_evaluate[name] for name in ours}
    assert ours["quote"] > 0 and ours["cider"] > 0


def test_seed_scoring_has_neither_and_cannot_choose_by_them(tmp_path):
    assert {"cider", "rougeL"}.isdisjoint(compute_metrics(["кот спит"], [["кот спит"]], scoring="seed"))
    for metric in ("cider", "rougeL"):
        assert load_config("demo", [f"train.best_metric={metric}"]).train.best_metric == metric
        with pytest.raises(ConfigError, match=f"train.best_metric={metric}.*eval.scoring=seed"):
            load_config("demo", [f"train.best_metric={metric}", "eval.scoring=seed"])


def test_report_and_model_card_show_the_new_columns(tmp_path):
    rows = [{"uid": "a", "references": ["на фото кот спит", "кот спит"], "prediction": "на фото кот"},
            {"uid": "b", "references": ["на фото собака"], "prediction": "на фото собака сидит"}]
    metrics = compute_metrics([r["prediction"] for r in rows], [r["references"] for r in rows])
    assert metrics["cider"] > 0 and metrics["rougeL"] > 0
    html, summary = render_report(rows, images_dir=None, base=Path(tmp_path), title="t")
    assert summary["metrics"] == metrics
    for name in ("cider", "rougeL"):
        assert f"<th>{name}</th>" in html and f"<td>{metrics[name]:.4f}</td>" in html
    card = model_card({"family": "clipcap", "model": {"decoder": {"mode": "lora"}}},
                      {"metrics": {**metrics, "val_loss": 2.5}, "data": {"val": "val.tsv", "val_examples": 2},
                       "step": 7},
                      [("model.safetensors", 10)], repo_id="you/memecap-test", license="apache-2.0")
    header = next(line for line in card.splitlines() if line.startswith("| BLEU-1"))
    assert "| CIDEr-D |" in header and "| ROUGE-L |" in header
    values = card.splitlines()[card.splitlines().index(header) + 2]
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = [c.strip() for c in values.strip("|").split("|")]
    assert cells[columns.index("CIDEr-D")] == f"{metrics['cider']:.4f}"
    assert cells[columns.index("ROUGE-L")] == f"{metrics['rougeL']:.4f}"
