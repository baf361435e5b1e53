"""Caption metrics (BLEU-1..4, METEOR, CIDEr-D, ROUGE-L, quote), the best-constant-caption
baseline, predictions files.

Which metrics there are, which way each is better and which scoring offers each is
memecap/metrics/registry.py; this module prepares the captions they score (`ScoredCaptions`) and
asks it. `quote` (memecap/metrics/quote_score.py) is the mean character error rate of the text a
caption quotes against the text its reference quotes (lower is better); it is the same in both
scorings.

Two scorings:

- "memecap": every reference, lower-cased words and punctuation marks, METEOR with the Russian
  Snowball stemmer, CIDEr-D and ROUGE-L as the COCO caption evaluation computes them (CIDEr-D's
  document frequencies from the scored references only, so one split's score never depends on
  another).
- "seed": the numbers of the project this one grew from (github.com/Pstva/meme-captions,
  src/baseline/eval_baseline*.py, src/clip_model/evaluate.py, src/finetune_eval_rudolph.ipynb).
  There: `nltk.word_tokenize` on lower-cased text (punctuation kept as tokens), one reference
  per image, `corpus_bleu` with weights (1,), (1/2,)*2, (1/3,)*3, (1/4,)*4 and no smoothing,
  and the mean of `single_meteor_score` with NLTK's defaults (Porter stemmer, English WordNet).
  We match that offline: Treebank tokens after a regex sentence split instead of Punkt, and
  no WordNet, which cannot match Cyrillic words anyway. Not reproduced: its ClipCap script
  did not lower-case, and its LSTM baselines scored references rebuilt from a vocabulary
  (unknown words as <unk>). It had no CIDEr-D or ROUGE-L, and neither has this scoring.

The same metrics ship as Hugging Face `evaluate` modules (memecap/metrics/bleu.py, meteor.py,
cider.py, rouge.py, quote.py: `evaluate.load` by path, offline) over the same arithmetic, with the
same numbers (tested). Scoring here does not go through them: importing `evaluate` pulls in
`datasets` and transformers' pipelines, and loading the modules copies and imports scripts; a
process's first scoring of the 546 validation memes took 12.8 s that way against 2.6 s this way.
"""

import json
import os
import random
import tempfile
from functools import cached_property
from pathlib import Path

from memecap.metrics import registry
from memecap.metrics.bleu_score import corpus_bleu
from memecap.metrics.meteor_score import mean_meteor, stemmer_for
from memecap.metrics.quote_score import example_quote_cers
from memecap.metrics.tokenization import tokenize, tokenize_nltk
from memecap.outputs.jsonl_rows import rows_or_first_foreign_line

SCORINGS = tuple(registry.SCORINGS)


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


class ScoredCaptions:
    """What a metric function of the registry receives: the captions as given and their word tokens
    as `scoring` sees them, tokenised once for all the metrics."""

    def __init__(self, predictions: list[str], references: list[list[str]], scoring: str):
        self.predictions, self.references, self.scoring = predictions, references, scoring

    @cached_property
    def hypotheses(self) -> list[list[str]]:
        return [_tokenizer(self.scoring)(p) for p in self.predictions]

    @cached_property
    def reference_tokens(self) -> list[list[list[str]]]:
        return _reference_tokens(self.references, self.scoring)


def compute_metrics(predictions: list[str], references: list[list[str]], scoring: str = "memecap") -> dict[str, float]:
    """BLEU-1..4 (corpus), METEOR (mean of sentences), CIDEr-D (x10, mean of examples) and ROUGE-L
    (mean of examples) of `predictions`, higher is better, and `quote`, the mean capped CER of the
    quoted text, in [0, 1] (lower is better): every metric of the registry that `scoring` offers.
    The seed scoring has no CIDEr-D and ROUGE-L."""
    _check_inputs(predictions, references, scoring)
    captions = ScoredCaptions(predictions, references, scoring)
    return {name: value for metric in registry.computed(scoring) for name, value in metric.compute(captions).items()}


def example_scores(predictions: list[str], references: list[list[str]], scoring: str = "memecap") -> list[dict]:
    """Per-example sentence BLEU-4, METEOR and quote CER, for reading results one meme at a time.

    Sentence BLEU-4 is add-one smoothed above unigrams: unsmoothed, almost every single caption
    scores 0 for lacking one matching 4-gram. Corpus BLEU (`compute_metrics`) is not the mean of these.
    """
    _check_inputs(predictions, references, scoring)
    tok = _tokenizer(scoring)
    stemmer = stemmer_for(scoring)
    out = []
    for hyp, refs in zip((tok(p) for p in predictions), _reference_tokens(references, scoring)):
        bleu = corpus_bleu([hyp], [refs], max_order=4, smooth=True)
        out.append({"bleu4": float(bleu["bleu4"]), "meteor": float(mean_meteor([hyp], [refs], stemmer=stemmer))})
    for row, cer in zip(out, example_quote_cers(predictions, references)):
        row["quote"] = cer  # None: no reference quotes any text
    return out


def _constant_scores(candidates: list[str], references: list[list[str]], scoring: str, metric: str) -> list[float]:
    """`metric` of each candidate used as the prediction for every example, by the registry's
    function for it (BLEU's counts the references once for all the candidates)."""
    hyps, refs = [_tokenizer(scoring)(c) for c in candidates], _reference_tokens(references, scoring)
    return [scores[metric] for scores in registry.metric(metric).constant_scores(hyps, refs, scoring)]


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
    `max_candidates` if there are more. Returns the caption and its `compute_metrics` scores.
    """
    if metric not in registry.constant_names():
        raise ValueError(f"metric must be one of {registry.constant_names()}, got {metric!r}")
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
    return best, compute_metrics([best] * len(references), references, scoring)


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
