"""ROUGE-L as an `evaluate` metric that loads offline by path, on memecap's Russian word tokens.

    rouge = evaluate.load("/abs/path/memecap/metrics/rouge.py")
    rouge.compute(predictions=["кот спит"], references=[["кот спит на диване", "спит кот"]])

The COCO caption evaluation's ROUGE-L (LCS F-measure, beta 1.2); the arithmetic is in rougel_score.py.
"""

import datasets
import evaluate

from .rougel_score import rouge_l
from .tokenization import TOKENIZERS

_CITATION = """\
@inproceedings{lin2004rouge,
  title={ROUGE: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew},
  booktitle={Text Summarization Branches Out}, year={2004}, pages={74--81}
}
"""

_KWARGS = """
Args:
    predictions: one caption per example.
    references: a list of reference captions per example (any number >= 1).
    beta: weight of recall against precision in the F-measure (1.2 in the COCO code).
    tokenizer: "words" (lower-cased words and punctuation marks), "nltk" or "whitespace".
Returns:
    rougeL: the mean ROUGE-L F-measure over the examples, in [0, 1].
    scores: each example's ROUGE-L.
"""


class Rouge(evaluate.Metric):
    """ROUGE-L (longest common subsequence F-measure) with several references per prediction."""

    def _info(self):
        return evaluate.MetricInfo(
            description="ROUGE-L (COCO caption evaluation) on word tokens.",
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, beta=1.2, tokenizer="words"):
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {sorted(TOKENIZERS)}, got {tokenizer!r}")
        tok = TOKENIZERS[tokenizer]
        scores = rouge_l([tok(p) for p in predictions], [[tok(r) for r in refs] for refs in references], beta=beta)
        return {"rougeL": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
