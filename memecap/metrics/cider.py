"""CIDEr-D as an `evaluate` metric that loads offline by path, on memecap's Russian word tokens.

    cider = evaluate.load("/abs/path/memecap/metrics/cider.py")
    cider.compute(predictions=["кот спит", ...], references=[["кот спит на диване", "спит кот"], ...])

The COCO caption evaluation's CIDEr-D (x10 scale, document frequencies from the references scored
in this call only); the arithmetic is in cider_score.py. Score a whole split in one call: CIDEr-D
weighs n-grams by how many of the split's examples share them.
"""

import datasets
import evaluate

from .cider_score import cider_d
from .tokenization import TOKENIZERS

_CITATION = """\
@inproceedings{vedantam2015cider,
  title={CIDEr: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={CVPR}, year={2015}, pages={4566--4575}
}
"""

_KWARGS = """
Args:
    predictions: one caption per example.
    references: a list of reference captions per example (any number >= 1).
    max_order: highest n-gram order (4 in CIDEr-D).
    sigma: standard deviation of the Gaussian length penalty, in words (6 in CIDEr-D).
    tokenizer: "words" (lower-cased words and punctuation marks), "nltk" or "whitespace".
Returns:
    cider: the mean CIDEr-D over the examples, x10 as in the COCO tools (a prediction equal to each
        of its references scores 10 when no n-gram of it occurs in every example).
    scores: each example's CIDEr-D.
"""


class Cider(evaluate.Metric):
    """CIDEr-D with several references per prediction."""

    def _info(self):
        return evaluate.MetricInfo(
            description="CIDEr-D (COCO caption evaluation) on word tokens; document frequencies from the given "
                        "references.",
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, max_order=4, sigma=6.0, tokenizer="words"):
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {sorted(TOKENIZERS)}, got {tokenizer!r}")
        tok = TOKENIZERS[tokenizer]
        scores = cider_d([tok(p) for p in predictions], [[tok(r) for r in refs] for refs in references],
                         max_order=max_order, sigma=sigma)
        return {"cider": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
