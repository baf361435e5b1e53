"""Caption metrics (BLEU-1..4, METEOR, CIDEr-D, ROUGE-L, quote), the best-constant-caption
baseline, predictions files.

`quote` (memecap/metrics/quote_score.py) is the mean character error rate of the text a caption
quotes against the text its reference quotes (lower is better); it is the same in both scorings.

Two scorings:

- "memecap": the shipped `evaluate` modules in memecap/metrics: every reference, lower-cased
  words and punctuation marks, METEOR with the Russian Snowball stemmer, CIDEr-D and ROUGE-L as
  the COCO caption evaluation computes them (CIDEr-D's document frequencies from the scored
  references only, so one split's score never depends on another).
- "seed": the numbers of the project this one grew from (github.com/Pstva/meme-captions,
  src/baseline/eval_baseline*.py, src/clip_model/evaluate.py, src/finetune_eval_rudolph.ipynb).
  There: `nltk.word_tokenize` on lower-cased text (punctuation kept as tokens), one reference
  per image, `corpus_bleu` with weights (1,), (1/2,)*2, (1/3,)*3, (1/4,)*4 and no smoothing,
  and the mean of `single_meteor_score` with NLTK's defaults (Porter stemmer, English WordNet).
  We match that offline: Treebank tokens after a regex sentence split instead of Punkt, and
  no WordNet, which cannot match Cyrillic words anyway. Not reproduced: its ClipCap script
  did not lower-case, and its LSTM baselines scored references rebuilt from a vocabulary
  (unknown words as <unk>). It had no CIDEr-D or ROUGE-L, and neither has this scoring.

`evaluate` is imported on the first `compute_metrics` call, not with this module: it pulls in
`datasets` and transformers' pipelines, most of a second that training's start does not need.
"""

import json
import os
import random
import tempfile
import warnings
from collections import Counter, defaultdict
from pathlib import Path

from nltk.stem import PorterStemmer
from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

from memecap.metrics.bleu_score import bleu_from_stats, closest_length, corpus_bleu, max_reference_counts, ngram_counts
from memecap.metrics.cider_score import cider_d
from memecap.metrics.meteor_score import RUSSIAN_STEMMER, CachedStemmer, mean_meteor
from memecap.metrics.quote_score import mean_quote_cer, quote_cer
from memecap.outputs.jsonl_rows import rows_or_first_foreign_line
from memecap.metrics.rougel_score import rouge_l
from memecap.metrics.tokenization import tokenize, tokenize_nltk

METRIC_NAMES = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "cider", "rougeL")  # word metrics, higher is better
# What the best constant caption can be chosen by: CIDEr-D or ROUGE-L would cost a corpus pass per candidate.
CONSTANT_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor")
SCORINGS = ("memecap", "seed")
_METRICS_DIR = Path(__file__).parent / "metrics"
_PORTER = CachedStemmer(PorterStemmer())  # NLTK's default METEOR stemmer, which the seed project used
# Loaded once per process: evaluation runs every N steps and a load copies and imports a script.
_LOADED: dict = {}


def _metric(name: str):
    if name not in _LOADED:
        import evaluate  # here, not at the top: see the module docstring

        _LOADED[name] = evaluate.load(str(_METRICS_DIR / f"{name}.py"), keep_in_memory=True)
    return _LOADED[name]


def _check_inputs(predictions: list[str], references: list[list[str]], scoring: str) -> None:
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    if not predictions:
        raise ValueError("no predictions to score: the predictions list is empty")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists; they must pair up")
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            raise TypeError(f"references[{i}] is a str; each example needs a list of reference strings")
        if not refs:
            raise ValueError(f"references[{i}] is empty; each example needs at least one reference")


def _tokenizer(scoring: str):
    return tokenize_nltk if scoring == "seed" else tokenize


def _reference_tokens(references: list[list[str]], scoring: str) -> list[list[list[str]]]:
    """Reference tokens as the scoring sees them: the seed project scored the first reference only."""
    tok = _tokenizer(scoring)
    if scoring == "seed":
        return [[tok(refs[0])] for refs in references]
    return [[tok(r) for r in refs] for refs in references]


def compute_metrics(predictions: list[str], references: list[list[str]], scoring: str = "memecap") -> dict[str, float]:
    """BLEU-1..4 (corpus), METEOR (mean of sentences), CIDEr-D (x10, mean of examples) and ROUGE-L
    (mean of examples) of `predictions`, higher is better, and `quote`, the mean capped CER of the
    quoted text, in [0, 1] (lower is better). The seed scoring has no CIDEr-D and ROUGE-L."""
    _check_inputs(predictions, references, scoring)
    # The quote metric reads the raw captions, not word tokens; the scorings differ only in the word metrics.
    quote = {"quote": float(mean_quote_cer(predictions, references)[0])}
    if scoring == "memecap":
        kw = dict(predictions=predictions, references=references)
        bleu = _metric("bleu").compute(**kw, max_order=4)
        return {**{f"bleu{n}": float(bleu[f"bleu{n}"]) for n in range(1, 5)},
                "meteor": float(_metric("meteor").compute(**kw)["meteor"]),
                "cider": float(_metric("cider").compute(**kw)["cider"]),
                "rougeL": float(_metric("rouge").compute(**kw)["rougeL"]), **quote}
    return {**_seed_word_metrics(predictions, references), **quote}


def _seed_word_metrics(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    hyps, refs = [tokenize_nltk(p) for p in predictions], _reference_tokens(references, "seed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns once per order without a match
        bleus = nltk_corpus_bleu(refs, hyps, weights=[(1.0,), (1 / 2,) * 2, (1 / 3,) * 3, (1 / 4,) * 4])
    meteor = mean_meteor(hyps, refs, stemmer=_PORTER)
    return {**{f"bleu{n}": float(b) for n, b in enumerate(bleus, start=1)}, "meteor": float(meteor)}


def metrics_without_evaluate(predictions: list[str], references: list[list[str]], scoring: str = "memecap") -> dict:
    """What `compute_metrics` returns, computed by the metric modules' own arithmetic without loading
    them through `evaluate`: the best constant caption is scored before training's first step."""
    _check_inputs(predictions, references, scoring)
    quote = {"quote": float(mean_quote_cer(predictions, references)[0])}
    if scoring == "seed":
        return {**_seed_word_metrics(predictions, references), **quote}
    hyps, refs = [tokenize(p) for p in predictions], _reference_tokens(references, scoring)
    bleu = corpus_bleu(hyps, refs, max_order=4)
    cider, rouge = cider_d(hyps, refs), rouge_l(hyps, refs)
    return {**{f"bleu{n}": float(bleu[f"bleu{n}"]) for n in range(1, 5)}, "meteor": float(mean_meteor(hyps, refs)),
            "cider": float(sum(cider) / len(cider)), "rougeL": float(sum(rouge) / len(rouge)), **quote}


def example_scores(predictions: list[str], references: list[list[str]], scoring: str = "memecap") -> list[dict]:
    """Per-example sentence BLEU-4, METEOR and quote CER, for reading results one meme at a time.

    Sentence BLEU-4 is add-one smoothed above unigrams: unsmoothed, almost every single caption
    scores 0 for lacking one matching 4-gram. Corpus BLEU (`compute_metrics`) is not the mean of these.
    """
    _check_inputs(predictions, references, scoring)
    tok = _tokenizer(scoring)
    stemmer = _PORTER if scoring == "seed" else RUSSIAN_STEMMER
    out = []
    for hyp, refs in zip((tok(p) for p in predictions), _reference_tokens(references, scoring)):
        bleu = corpus_bleu([hyp], [refs], max_order=4, smooth=True)
        out.append({"bleu4": float(bleu["bleu4"]), "meteor": float(mean_meteor([hyp], [refs], stemmer=stemmer))})
    for row, prediction, refs in zip(out, predictions, references):
        quotes = [q for q in (quote_cer(prediction, r) for r in refs) if q is not None]
        row["quote"] = min(quotes) if quotes else None  # None: no reference quotes any text
    return out


def _constant_scores(candidates: list[str], references: list[list[str]], scoring: str, metric: str) -> list[float]:
    """`metric` of each candidate used as the prediction for every example, without `evaluate`."""
    hyps, refs = [_tokenizer(scoring)(c) for c in candidates], _reference_tokens(references, scoring)
    if metric == "meteor":
        stemmer = _PORTER if scoring == "seed" else RUSSIAN_STEMMER
        return [mean_meteor([hyp] * len(refs), refs, stemmer=stemmer) for hyp in hyps]
    # Every example's clipped matches of one n-gram depend only on how often the candidate has it, so
    # the references are counted once into, per n-gram, a histogram of its clipping limits over the
    # examples; a candidate then costs a few lookups per n-gram of its own, not per example.
    limits = [defaultdict(Counter) for _ in range(4)]
    for clip in (max_reference_counts(r, 4) for r in refs):
        for n in range(4):
            for gram, limit in clip[n].items():
                limits[n][gram][limit] += 1
    ref_lengths = [[len(x) for x in r] for r in refs]
    closest: dict[int, int] = {}  # hypothesis length -> summed closest reference length
    scores = []
    for hyp in hyps:
        counts = ngram_counts(hyp, 4)
        matches = [sum(min(c, limit) * k for gram, c in counts[n].items()
                       for limit, k in limits[n].get(gram, {}).items()) for n in range(4)]
        totals = [max(1, len(hyp) - n) * len(refs) for n in range(4)]
        if len(hyp) not in closest:
            closest[len(hyp)] = sum(closest_length(lengths, len(hyp)) for lengths in ref_lengths)
        scores.append(bleu_from_stats(matches, totals, len(hyp) * len(refs), closest[len(hyp)])[metric])
    return scores


def best_constant_caption(
    train_captions: list[str],
    references: list[list[str]],
    scoring: str = "memecap",
    metric: str = "bleu4",
    max_candidates: int = 200,
) -> tuple[str, dict]:
    """The training caption that scores best on `metric` as the prediction for every example.

    A floor for any model: a captioner that cannot beat one fixed sentence has learnt only the
    dataset's stock phrases. Candidates are the distinct captions, a fixed-seed sample of
    `max_candidates` if there are more. Returns the caption and its `compute_metrics` scores
    (computed without `evaluate`, identical).
    """
    if metric not in CONSTANT_METRICS:
        raise ValueError(f"metric must be one of {CONSTANT_METRICS}, got {metric!r}")
    if not references:
        raise ValueError("no references to score the candidates against")
    _check_inputs([""] * len(references), references, scoring)
    candidates = list(dict.fromkeys(c.strip() for c in train_captions if c.strip()))
    if not candidates:
        raise ValueError("no training captions to choose from")
    if len(candidates) > max_candidates:
        candidates = random.Random(0).sample(candidates, max_candidates)
    scores = _constant_scores(candidates, references, scoring, metric)
    best = candidates[max(range(len(candidates)), key=scores.__getitem__)]
    return best, metrics_without_evaluate([best] * len(references), references, scoring)


def write_predictions(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write rows (`uid`, `references`, `prediction`, any extras) as UTF-8 JSON Lines, atomically."""
    for i, row in enumerate(rows):
        missing = [k for k in ("uid", "references", "prediction") if k not in row]
        if missing:
            raise ValueError(f"predictions row {i} lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A reader (or a crash mid-write) must never see half a file: write aside, then rename.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def refuse_foreign_predictions(path: str | os.PathLike) -> None:
    """A predictions file may replace a new path or an earlier predictions file, never anything
    else (the table being scored, an image, a document); that is refused before any work."""
    path = Path(path)
    if not path.exists():
        return
    why = "not a file" if not path.is_file() else _foreign_lines(path)
    if why:
        raise ValueError(f"{path}: not a predictions file ({why}); it was left unchanged: "
                         "pass another --out, or remove the file if it is yours to lose")


def _foreign_lines(path: Path) -> str | None:
    _, foreign = rows_or_first_foreign_line(path.read_bytes(), lambda row: "uid" in row and "prediction" in row)
    if foreign is None:
        return None
    return "not UTF-8 text" if foreign.startswith("it ") else f"{foreign} is not a predictions line"


def read_predictions(path: str | os.PathLike) -> list[dict]:
    """Rows of a file written by `write_predictions`."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_metrics_table(metrics: dict[str, float], title: str | None = None) -> str:
    """Metrics as aligned `name  value` lines for the console, values to 4 decimals."""
    width = max(len(name) for name in metrics) if metrics else 0
    lines = [f"{name:<{width}}  {value:.4f}" if isinstance(value, float) else f"{name:<{width}}  {value}"
             for name, value in metrics.items()]
    rule = "-" * max([len(title or "")] + [len(line) for line in lines])
    return "\n".join(([title, rule] if title else []) + lines)
