"""Corpus BLEU-1..4 as an `evaluate` metric that loads offline by path.

    bleu = evaluate.load("/abs/path/memecap/metrics/bleu.py")
    bleu.compute(predictions=["кот спит"], references=[["кот спит на диване", "спит кот"]])

The arithmetic (NLTK-compatible corpus BLEU) is in bleu_score.py.
"""

import datasets
import evaluate

from .bleu_score import corpus_bleu
from .tokenization import TOKENIZERS

_CITATION = """\
@inproceedings{papineni2002bleu,
  title={BLEU: a Method for Automatic Evaluation of Machine Translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing},
  booktitle={ACL}, year={2002}, pages={311--318}
}
"""

_KWARGS = """
Args:
    predictions: one caption per example.
    references: a list of reference captions per example (any number >= 1).
    max_order: highest n-gram order; scores bleu1..bleu{max_order} are returned.
    smooth: add-one smoothing for orders >= 2 (NLTK method2).
    tokenizer: "words" (lower-cased words and punctuation marks), "nltk" or "whitespace".
Returns:
    bleu1..bleuN (cumulative, uniform weights), precisions (per order, unsmoothed),
    brevity_penalty, translation_length, reference_length.
"""


class Bleu(evaluate.Metric):
    """Corpus BLEU-1..N with several references per prediction."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Corpus BLEU-1..N (NLTK-compatible) with several references per prediction.",
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, max_order=4, smooth=False, tokenizer="words"):
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {sorted(TOKENIZERS)}, got {tokenizer!r}")
        tok = TOKENIZERS[tokenizer]
        return corpus_bleu(
            [tok(p) for p in predictions], [[tok(r) for r in refs] for refs in references], max_order, smooth
        )
