"""Quote CER: how well a caption quotes the meme's own text, as an `evaluate` metric that loads offline.

    quote = evaluate.load("/abs/path/memecap/metrics/quote.py")
    quote.compute(predictions=['кот. подпись: "когда пятница"'],
                  references=[['на фото кот. подпись: «Когда пятница!»']])

The rules and the arithmetic are in quote_score.py.
"""

import datasets
import evaluate

from .quote_score import mean_quote_cer

_CITATION = """\
@article{levenshtein1966binary,
  title={Binary codes capable of correcting deletions, insertions, and reversals},
  author={Levenshtein, Vladimir I.}, journal={Soviet Physics Doklady}, volume={10}, number={8}, year={1966}
}
"""

_KWARGS = """
Args:
    predictions: one caption per example.
    references: a list of reference captions per example (any number >= 1).
Returns:
    quote: mean capped character error rate of the quoted text (lower is better).
    counted: examples whose references quote something (the others are left out).
"""


class Quote(evaluate.Metric):
    """Mean capped character error rate of the quoted text; lower is better."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Character error rate between the quoted text of the prediction and of the reference.",
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references):
        score, counted = mean_quote_cer(predictions, references)
        return {"quote": score, "counted": counted}
