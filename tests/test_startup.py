"""What `memecap train` does before its first optimizer step stays cheap and quiet: no heavy
imports it does not need, transformers' schedules without transformers' trainer, the best
constant caption by counting n-grams once, and no third-party line on the console."""

import json
import os
import random
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import get_scheduler

from memecap.config import OptimConfig
from memecap.evaluation import _constant_scores, _reference_tokens, _tokenizer
from memecap.metrics.bleu_score import bleu_from_stats, closest_length, max_reference_counts, ngram_counts
from memecap.training.optim import build_scheduler

# Pulled in by `import evaluate` (datasets, transformers' pipelines) or by transformers' trainer
# utilities (peft, bitsandbytes): together about 1.6 s of a 3-6 s start, and none is needed to train.
HEAVY = ("evaluate", "datasets", "transformers.pipelines", "transformers.trainer_utils", "peft", "bitsandbytes")


def test_importing_the_loop_imports_nothing_heavy():
    code = f"import sys, memecap.train, memecap.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert out.stderr == ""  # bitsandbytes printed "Failed to load CPU gemm_4bit_forward ..." on import


@pytest.mark.parametrize("name, hf_name", [("linear", "linear"), ("cosine", "cosine"),
                                           ("constant", "constant_with_warmup")])
@pytest.mark.parametrize("warmup, total, processes", [(30, 200, 1), (0, 50, 1), (5, 40, 2), (10, 3, 1)])
def test_schedules_equal_transformers(name, hf_name, warmup, total, processes):
    def lrs(make):
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=0.5)
        sched = make(opt)
        out = []
        for _ in range((total + 5) * processes):  # past the end too
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    cfg = OptimConfig(scheduler=name, warmup_steps=warmup)
    ours = lrs(lambda opt: build_scheduler(cfg, opt, total, processes))
    theirs = lrs(lambda opt: get_scheduler(hf_name, opt, num_warmup_steps=warmup * processes,
                                           num_training_steps=total * processes))
    assert ours == theirs  # the same arithmetic, bit for bit
    assert len(set(ours)) > 1 or name == "constant"


def constant_bleu_per_example(candidates, references, scoring, metric):
    """The best-constant-caption BLEU as memecap computed it before: each candidate against each
    example's clipping counts in turn (the slow, obvious loop this test pins the fast one to)."""
    hyps, refs = [_tokenizer(scoring)(c) for c in candidates], _reference_tokens(references, scoring)
    clips = [max_reference_counts(r, 4) for r in refs]
    ref_lengths = [[len(x) for x in r] for r in refs]
    scores = []
    for hyp in hyps:
        counts = ngram_counts(hyp, 4)
        matches = [sum(sum(min(c, clip[n][g]) for g, c in counts[n].items()) for clip in clips) for n in range(4)]
        totals = [max(1, len(hyp) - n) * len(refs) for n in range(4)]
        ref_length = sum(closest_length(lengths, len(hyp)) for lengths in ref_lengths)
        scores.append(bleu_from_stats(matches, totals, len(hyp) * len(refs), ref_length)[metric])
    return scores


@pytest.mark.parametrize("scoring", ["memecap", "seed"])
def test_constant_scores_equal_the_per_example_loop(scoring):
    rng = random.Random(2)
    vocab = "на фото кот кот кот собака спит подпись : , . когда пятница".split()
    sent = lambda: " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 25)))  # noqa: E731
    refs = [[sent() or "кот" for _ in range(rng.randint(1, 4))] for _ in range(120)]
    candidates = [sent() for _ in range(60)]
    for metric in ("bleu1", "bleu2", "bleu3", "bleu4"):
        fast = _constant_scores(candidates, refs, scoring, metric)
        assert fast == constant_bleu_per_example(candidates, refs, scoring, metric), metric  # exactly
        assert max(fast) > 0


# Lines other packages print: bitsandbytes on import, transformers' progress bars for every model it
# writes or loads, DeepSpeed's "[WARNING] ... Setting accelerator to CPU", Accelerate's warning about
# tied weights on export, Python warnings.
THIRD_PARTY = re.compile(r"bitsandbytes|Failed to load|kernels|Writing model shards|Loading weights|accelerator|"
                         r"Removed shared tensor|warning|warn\(", re.IGNORECASE)


def test_train_prints_no_third_party_line(tmp_path):
    run = tmp_path / "run"
    args = [f"train.output_dir={run}", f"cache.dir={run / 'cache'}", "train.max_steps=1", "data.synthetic.n_train=32",
            "data.synthetic.n_val=8", "eval.batch_size=8", "generation.max_new_tokens=4", "train.best_metric=cider"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "memecap.train", "demo", *args], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    console = out.stdout + out.stderr
    assert "best constant caption" in console and "cider" in console and "rougeL" in console
    offending = [line for line in re.split(r"[\r\n]", console) if THIRD_PARTY.search(line)]
    assert not offending, textwrap.shorten(" | ".join(offending), 2000)
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))  # CIDEr-D chose the best export
    assert summary["best_metric"] == "cider" and summary["best_score"] == summary["final"]["cider"]
