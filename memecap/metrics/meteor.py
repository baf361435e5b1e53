"""METEOR for Russian captions as an `evaluate` metric that loads offline by path.

    meteor = evaluate.load("/abs/path/memecap/metrics/meteor.py")
    meteor.compute(predictions=["кошка спит"], references=[["кошки спят", "кот спит"]])

NLTK's METEOR with Russian stemming and no WordNet; the arithmetic is in meteor_score.py.
"""

import datasets
import evaluate

from .meteor_score import mean_meteor
from .tokenization import TOKENIZERS

_CITATION = """\
@inproceedings{banerjee2005meteor,
  title={METEOR: An Automatic Metric for MT Evaluation with Improved Correlation with Human Judgments},
  author={Banerjee, Satanjeev and Lavie, Alon},
  booktitle={ACL Workshop on Intrinsic and Extrinsic Evaluation Measures}, year={2005}, pages={65--72}
}
"""

_KWARGS = """
Args:
    predictions: one caption per example.
    references: a list of reference captions per example (any number >= 1).
    alpha, beta, gamma: NLTK's METEOR parameters (precision/recall weight, fragmentation shape and weight).
    tokenizer: "words" (lower-cased words and punctuation marks), "nltk" or "whitespace".
Returns:
    meteor: mean sentence METEOR.
"""


class Meteor(evaluate.Metric):
    """Mean sentence METEOR with Russian stemming and several references per prediction."""

    def _info(self):
        return evaluate.MetricInfo(
            description="METEOR (NLTK) with the Russian Snowball stemmer and no WordNet synonyms.",
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, alpha=0.9, beta=3.0, gamma=0.5, tokenizer="words"):
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {sorted(TOKENIZERS)}, got {tokenizer!r}")
        tok = TOKENIZERS[tokenizer]
        hyps = [tok(p) for p in predictions]
        refs = [[tok(r) for r in rs] for rs in references]
        return {"meteor": mean_meteor(hyps, refs, alpha=alpha, beta=beta, gamma=gamma)}
