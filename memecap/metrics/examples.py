"""Each score's per-example statistics (`memecap.metrics.paired.ExampleStats`), for comparing two
captioners meme by meme: the registry's `examples` functions. Each takes a
`memecap.evaluation.ScoredCaptions` and returns `{name: ExampleStats}`; summed over every example,
the statistics give the score `compute_metrics` reports (tested), so a comparison's before and after
are the numbers `memecap eval` prints.
"""
from __future__ import annotations

from memecap.metrics.bleu_score import sentence_stats
from memecap.metrics.cider_score import cider_d
from memecap.metrics.meteor_score import sentence_meteors, stemmer_for
from memecap.metrics.paired import ExampleStats, bleu_stats, mean_stats
from memecap.metrics.quote_score import example_quote_cers
from memecap.metrics.rougel_score import rouge_l


def bleu(captions) -> dict[str, ExampleStats]:
    """Corpus BLEU-1..4 as memecap computes it (the seed scoring's NLTK gives the same numbers, down
    to its ~1e-80 where an order matches nothing, which is 0 here)."""
    rows = [sentence_stats(hyp, refs, 4) for hyp, refs in zip(captions.hypotheses, captions.reference_tokens)]
    return {f"bleu{order}": bleu_stats(rows, order) for order in range(1, 5)}


def meteor(captions) -> dict[str, ExampleStats]:
    scores = sentence_meteors(captions.hypotheses, captions.reference_tokens, stemmer=stemmer_for(captions.scoring))
    return {"meteor": mean_stats(scores)}


def cider(captions) -> dict[str, ExampleStats]:
    """Per-example CIDEr-D, the document frequencies those of the whole split's references."""
    return {"cider": mean_stats(cider_d(captions.hypotheses, captions.reference_tokens))}


def rouge(captions) -> dict[str, ExampleStats]:
    return {"rougeL": mean_stats(rouge_l(captions.hypotheses, captions.reference_tokens))}


def quote(captions) -> dict[str, ExampleStats]:
    """Each meme's best quote CER over its references; memes whose references quote nothing do not count."""
    return {"quote": mean_stats(example_quote_cers(captions.predictions, captions.references))}
