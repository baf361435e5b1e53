"""`memecap compare`: two predictions files paired meme by meme, every score with a bootstrap interval."""
import json
import random

import numpy as np
import pytest
from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

from memecap.cli import main as cli
from memecap.compare import compare_predictions, example_stats, read_scored_predictions
from memecap.evaluation import compute_metrics, write_predictions
from memecap.metrics.bleu_score import bleu_from_stats, corpus_bleu
from memecap.metrics.paired import bleu_stats, score_of_sums
from memecap.metrics.tokenization import tokenize

WORDS = "кот собака спит сидит на диване столе фото подпись когда ты понедельник опять устал мем".split()


def memes(count: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """(uid, references): most quote a text, some have two references, one quotes nothing."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        said = " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))
        refs = [f'На фото {rng.choice(WORDS)} {rng.choice(WORDS)}. Подпись: "{said}"']
        if i % 4 == 1:
            refs.append(f'{rng.choice(WORDS)} {rng.choice(WORDS)}: "{said}"')
        if i == 2:
            refs = ["на фото кот спит на диване"]  # a meme without text: no quote to score
        out.append((f"m{i}", refs))
    return out


def noisy(text: str, rng: random.Random, keep: float) -> str:
    return " ".join(w if rng.random() < keep else rng.choice(WORDS) for w in text.split())


def write(path, table, captions, order=None):
    rows = [{"uid": uid, "references": refs, "prediction": caption} for (uid, refs), caption in zip(table, captions)]
    write_predictions(path, [rows[i] for i in (order or range(len(rows)))])
    return path


def test_every_score_of_a_whole_file_is_what_eval_reports(tmp_path):
    table = memes(24)
    rng = random.Random(1)
    captions = [noisy(refs[0], rng, 0.6) for _, refs in table]
    captions[5] = ""  # an empty caption: length 0, no quote
    path = write(tmp_path / "p.jsonl", table, captions)
    for scoring in ("memecap", "seed"):
        stats = example_stats(read_scored_predictions(path), scoring)
        whole = {name: float(score_of_sums(s.kind, s.values.sum(axis=0, keepdims=True))[0])
                 for name, s in stats.items()}
        assert whole == pytest.approx(compute_metrics(captions, [refs for _, refs in table], scoring), abs=1e-12)
        assert ("cider" in whole) == (scoring == "memecap")


def test_a_resample_of_bleu_statistics_is_the_corpus_bleu_of_the_resampled_captions(tmp_path):
    table = memes(30)
    rng = random.Random(2)
    captions = [noisy(refs[-1], rng, 0.7) for _, refs in table]
    stats = example_stats(read_scored_predictions(write(tmp_path / "p.jsonl", table, captions)), "memecap")
    hyps = [tokenize(c) for c in captions]
    refs = [[tokenize(r) for r in rs] for _, rs in table]
    for picks in np.random.default_rng(0).integers(0, 30, size=(5, 30)):
        expected = corpus_bleu([hyps[i] for i in picks], [refs[i] for i in picks])
        for order in range(1, 5):
            s = stats[f"bleu{order}"]
            assert score_of_sums(s.kind, s.values[picks].sum(axis=0, keepdims=True))[0] == pytest.approx(
                expected[f"bleu{order}"], abs=1e-12)
        # and NLTK's own corpus BLEU of the resample agrees
        ours = score_of_sums("bleu4", stats["bleu4"].values[picks].sum(axis=0, keepdims=True))[0]
        assert ours == pytest.approx(nltk_corpus_bleu([refs[i] for i in picks], [hyps[i] for i in picks]), abs=1e-9)


def test_vectorised_bleu_matches_the_scalar_arithmetic_on_edge_cases():
    rows = np.array([
        [5, 3, 1, 0, 8, 7, 6, 5, 8, 9],  # a 4-gram order without a match: BLEU-4 0, BLEU-3 not
        [5, 3, 2, 1, 5, 4, 3, 2, 5, 4],  # longer than the reference: no brevity penalty
        [0, 0, 0, 0, 1, 1, 1, 1, 0, 4],  # an empty translation
        [7, 4, 2, 1, 9, 8, 7, 6, 9, 20],  # short: a brevity penalty
    ], dtype=float)
    for row in rows:
        expected = bleu_from_stats(list(row[:4]), list(row[4:8]), row[8], row[9])
        for order in range(1, 5):
            got = score_of_sums(f"bleu{order}", row[None, :])[0]
            assert got == pytest.approx(expected[f"bleu{order}"], abs=1e-15)
    with pytest.raises(ValueError, match="max_order >= 4"):
        bleu_stats([[1, 1, 2, 2, 3, 3]], 4)


def test_better_captions_are_called_better_and_the_same_ones_within_chance(tmp_path, capsys):
    table = memes(60)
    rng = random.Random(3)
    weak = write(tmp_path / "weak.jsonl", table, [noisy(refs[0], rng, 0.3) for _, refs in table])
    strong = write(tmp_path / "strong.jsonl", table, [noisy(refs[0], rng, 0.9) for _, refs in table])

    better = compare_predictions(weak, [strong])
    assert {m.name: m.verdict for m in better.metrics} == {
        name: "better" for name in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "cider", "rougeL", "quote")}
    quote = next(m for m in better.metrics if m.name == "quote")
    assert quote.gain.gain < 0 and quote.gain.high < 0  # lower is better: a fall is the improvement
    assert all(m.verdict == "worse" for m in compare_predictions(strong, [weak]).metrics)

    same = compare_predictions(weak, [weak])
    for m in same.metrics:
        assert m.verdict == "within chance" and m.gain.gain == 0 and m.gain.low == m.gain.high == 0
    assert same.improved == [] and same.worsened == []

    assert cli(["compare", str(weak), str(strong), "--show", "2"]) == 0
    out = capsys.readouterr().out
    assert "60 memes paired, memecap scoring" in out
    cider = next(line for line in out.splitlines() if line.startswith("CIDEr-D"))
    assert cider.endswith("better") and f"{better.metrics[5].gain.before:.4f}" in cider
    assert "the memes whose CIDEr-D improved most" in out

    # A gate: worse beyond chance fails, naming the scores; better or within chance passes.
    assert cli(["compare", str(strong), str(weak), "--fail-if-worse", "--show", "0"]) == 1
    assert "worse beyond chance: bleu1, bleu2" in capsys.readouterr().err
    assert cli(["compare", str(weak), str(strong), "--fail-if-worse", "--show", "0"]) == 0
    assert cli(["compare", str(weak), str(weak), "--fail-if-worse", "--show", "0"]) == 0


def test_several_after_files_are_averaged_and_files_pair_by_uid_not_line(tmp_path, capsys):
    table = memes(20)
    rng = random.Random(4)
    before = write(tmp_path / "before.jsonl", table, [noisy(refs[0], rng, 0.5) for _, refs in table])
    runs, run_scores = [], []
    for seed in range(2):
        captions = [noisy(refs[0], rng, 0.8) for _, refs in table]
        run_scores.append(compute_metrics(captions, [refs for _, refs in table]))
        shuffled = list(range(20))
        random.Random(seed).shuffle(shuffled)
        runs.append(str(write(tmp_path / f"seed{seed}.jsonl", table, captions, order=shuffled)))
    assert cli(["compare", str(before), *runs, "--json", "--resamples", "500"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["memes"] == 20 and result["resamples"] == 500 and len(result["after"]) == 2
    for name, scores in result["metrics"].items():
        assert scores["after"] == pytest.approx((run_scores[0][name] + run_scores[1][name]) / 2, abs=1e-12)
        assert scores["low"] <= scores["gain"] <= scores["high"] or scores["low"] == scores["high"]
    assert result["by"] == "cider" and all("uid" in c for c in result["improved"] + result["worsened"])


def test_the_interval_is_seeded(tmp_path):
    table = memes(15)
    rng = random.Random(5)
    a = write(tmp_path / "a.jsonl", table, [noisy(refs[0], rng, 0.5) for _, refs in table])
    b = write(tmp_path / "b.jsonl", table, [noisy(refs[0], rng, 0.6) for _, refs in table])
    one, two = compare_predictions(a, [b], seed=7), compare_predictions(a, [b], seed=7)
    assert [m.gain for m in one.metrics] == [m.gain for m in two.metrics]
    assert [m.gain.low for m in compare_predictions(a, [b], seed=8).metrics] != [m.gain.low for m in one.metrics]


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows[:-1], r"b\.jsonl lacks 1 of the memes in .*a\.jsonl \(first: m5\)"),
    (lambda rows: rows + [{**rows[0], "uid": "new"}], r"a\.jsonl lacks 1 of the memes in .*b\.jsonl \(first: new\)"),
    (lambda rows: rows + [rows[2]], r"b\.jsonl:7: meme m2 again \(first at line 3\)"),
    (lambda rows: [{**rows[0], "references": ["другое"]}] + rows[1:],
     r"meme m0: its references differ between .*a\.jsonl and .*b\.jsonl"),
    (lambda rows: [{"uid": "m0", "prediction": "кот"}] + rows[1:], r"b\.jsonl:1: no references"),
    (lambda rows: [{"uid": "m0", "caption": "кот"}] + rows[1:], r"b\.jsonl:1: not a predictions line"),
])
def test_files_that_do_not_pair_are_refused_by_name(tmp_path, capsys, change, message):
    table = memes(6)
    rows = [{"uid": uid, "references": refs, "prediction": "кот"} for uid, refs in table]
    write_predictions(tmp_path / "a.jsonl", rows)
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in change(rows)),
                                      encoding="utf-8")
    assert cli(["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("memecap: ")
    with pytest.raises(ValueError, match=message):
        compare_predictions(tmp_path / "a.jsonl", [tmp_path / "b.jsonl"])


def test_unreadable_files_and_settings_are_refused(tmp_path, capsys):
    good = write(tmp_path / "good.jsonl", memes(3), ["кот"] * 3)
    (tmp_path / "broken.jsonl").write_text('{"uid": "m0", "prediction": "кот", "references": ["кот"]}\n{oops\n')
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00")
    for name, message in (("broken", r"broken\.jsonl:2: not a JSON line"), ("empty", r"empty\.jsonl: no predictions"),
                          ("binary", "not UTF-8")):
        with pytest.raises(ValueError, match=message):
            compare_predictions(good, [tmp_path / f"{name}.jsonl"])
    with pytest.raises(ValueError, match=r"--by bleu4: not a per-meme score .* from meteor, cider, rougeL, quote"):
        compare_predictions(good, [good], by="bleu4")
    with pytest.raises(ValueError, match="--by cider: not a per-meme score of the seed scoring"):
        compare_predictions(good, [good], scoring="seed", by="cider")
    with pytest.raises(SystemExit):
        cli(["compare", str(good), str(good), "--level", "1"])
    assert "--level: must be > 0 and < 1, got 1" in capsys.readouterr().err
