"""The CNN + LSTM baselines through their real loading path: a tiny random ResNet saved in the
Hub layout, navec vectors from a file written in navec's format, the loop end to end."""
from __future__ import annotations

import gzip
import io
import json
import tarfile

import numpy as np
import pytest
import torch

from memecap import train
from memecap.config import GenerationConfig, load_config
from memecap.data.tables import load_split
from memecap.inference.captioner import Captioner
from memecap.evaluation import read_predictions
from memecap.publish.hub import stage_export
from memecap.inference.exported import evaluate_export
from memecap.models import build_model, load_model
from memecap.data.datasets import CaptionEvalSet
from memecap.models.lstm.navec import read_navec
from memecap.models.tiny import save_tiny_resnet
from memecap.models.lstm.vocab import WordVocab
from tests.helpers import TEST_TINY, tiny_run_config, stacked

SMALL = ["model.lstm.embed_dim=16", "model.lstm.hidden_dim=32", "model.lstm.attention_dim=16",
         "model.lstm.min_word_count=1"]


def write_navec(path, words, vectors, qdim=2, centroids=4):
    """A navec file as navec 0.10 writes it (tar of meta.json, vocab.bin, pq.bin), from exact
    vectors: each sub-vector is its own centroid, so unpacking must give `vectors` back."""
    n, dim = vectors.shape
    sub = dim // qdim
    codes = np.zeros((qdim, centroids, sub), np.float32)
    indexes = np.zeros((n, qdim), np.uint8)
    for q in range(qdim):
        for i in range(n):
            codes[q, i % centroids] = vectors[i, q * sub:(q + 1) * sub] if i < centroids else codes[q, i % centroids]
            indexes[i, q] = i % centroids
    vocab = gzip.compress(np.array([n], np.uint32).tobytes() + np.ones(n, np.uint32).tobytes()
                          + "\n".join(words).encode("utf8"))
    pq = np.array([n, dim, qdim, centroids], np.uint32).tobytes() + indexes.tobytes() + codes.tobytes()
    with tarfile.open(path, "w") as tar:
        for name, data in (("meta.json", json.dumps({"id": "test", "protocol": 1}).encode()),
                           ("vocab.bin", vocab), ("pq.bin", pq)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def tiny_resnet_dir(tmp_path_factory):
    return save_tiny_resnet(tmp_path_factory.mktemp("resnet") / "resnet-tiny", TEST_TINY)


def lstm_model(recipe, resnet, examples, tmp_path, *overrides):
    cfg = load_config(recipe, [f"model.encoder.name={resnet}", *SMALL, *overrides])
    texts = [c for e in examples for c in e.captions]
    return build_model(cfg.model, work_dir=tmp_path, train_texts=texts)


def batch_of(model, examples, n=4):
    feats = model.image_inputs([e.image_path for e in examples[:n]], cache_dir=None, device="cpu", progress=False)
    return model.collate([{"image": feats[i], "input_ids": model.encode_caption(e.captions[0], 64)}
                          for i, e in enumerate(examples[:n])])


def test_vocabulary_unknown_words_and_decoding():
    vocab = WordVocab.build(["Кот сидит.", "кот спит, а пёс — нет!"])
    assert vocab.encode("Кот летит.") == [vocab.index["кот"], vocab.unk_id, vocab.index["."]]
    assert vocab.decode(vocab.encode("кот спит, а пёс нет!") + [vocab.eos_id, vocab.index["кот"]]) == \
        "кот спит, а пёс нет!"


def test_navec_file_reads_back_exactly(tmp_path):
    vectors = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    path = write_navec(tmp_path / "navec.tar", ["кот", "пёс", "<unk>", "<pad>"], vectors)
    words, got = read_navec(path)
    assert words == ["кот", "пёс", "<unk>", "<pad>"]
    np.testing.assert_array_equal(got, vectors)
    with pytest.raises(FileNotFoundError, match="model.lstm.navec=.*no such file"):
        read_navec(tmp_path / "missing.tar")


def test_navec_initialises_known_words_only(tiny_resnet_dir, examples, tmp_path):
    known = ["на", "картинке", "круг"]
    vectors = np.random.default_rng(0).standard_normal((len(known), 16)).astype(np.float32)
    navec = write_navec(tmp_path / "navec.tar", known, vectors, qdim=4, centroids=4)
    model = lstm_model("lstm_resnet101_navec", tiny_resnet_dir, examples, tmp_path, f"model.lstm.navec={navec}")
    for word, vec in zip(known, vectors):
        torch.testing.assert_close(model.embed.weight[model.vocab.index[word]].detach(), torch.from_numpy(vec))
    assert 0 < model.navec_coverage < 1  # the other words keep their random init
    with pytest.raises(ValueError, match="embed_dim"):
        lstm_model("lstm_resnet101_navec", tiny_resnet_dir, examples, tmp_path, f"model.lstm.navec={navec}",
                   "model.lstm.embed_dim=8")
    with pytest.raises(FileNotFoundError, match="navec"):  # the recipe's default file is not here
        lstm_model("lstm_resnet101_navec", tiny_resnet_dir, examples, tmp_path)


@pytest.mark.parametrize("attention", [False, True])
def test_trains_all_but_the_encoder_and_masks_padding(attention, tiny_resnet_dir, examples, tmp_path):
    extra = ["model.lstm.attention=true", "model.encoder.features=patches"] if attention else []
    model = lstm_model("lstm_resnet50", tiny_resnet_dir, examples, tmp_path, *extra)
    assert model.encoder is None  # frozen: features come from the cache
    batch = batch_of(model, examples)
    assert batch["image"].dim() == (3 if attention else 2)
    ids = model.encode_caption(examples[0].captions[0], 64)
    assert ids[-1] == model.eos_id and len(model.encode_caption(examples[0].captions[0] * 9, 10)) == 10
    assert (batch["labels"][batch["input_ids"] == model.pad_id] == -100).all()

    model.eval()  # padding changes nothing: a caption scored alone or beside a longer one
    alone = model(model.collate([{"image": batch["image"][0], "input_ids": ids}]))
    short = model.encode_caption("на картинке круг", 64)
    both = model(model.collate([{"image": batch["image"][0], "input_ids": ids},
                                {"image": batch["image"][1], "input_ids": short}]))
    assert both["num_tokens"] == len(ids) + len(short) and alone["num_tokens"] == len(ids)
    second = model(model.collate([{"image": batch["image"][1], "input_ids": short}]))
    expected = (alone["loss"] * len(ids) + second["loss"] * len(short)) / (len(ids) + len(short))
    assert both["loss"].item() == pytest.approx(expected.item(), rel=1e-5)

    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model(batch)["loss"].backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("norm.") for n in changed) and (not attention or "att_score.weight" in changed)


@pytest.mark.parametrize("generation", [
    GenerationConfig(strategy="greedy", max_new_tokens=6),
    GenerationConfig(strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=6, no_repeat_ngram_size=2),
    GenerationConfig(strategy="sample", top_k=5, top_p=0.9, num_return_sequences=3, max_new_tokens=6,
                     repetition_penalty=1.3),
])
def test_generation_strategies(generation, tiny_resnet_dir, examples, tmp_path):
    model = lstm_model("lstm_resnet50", tiny_resnet_dir, examples, tmp_path, "model.lstm.attention=true",
                       "model.encoder.features=patches").eval()
    feats = model.image_inputs([e.image_path for e in examples[:3]], cache_dir=None, device="cpu", progress=False)
    captions = model.generate(model.collate([CaptionEvalSet(feats)[i] for i in range(3)]), generation)
    assert len(captions) == 3 and all(len(c) == generation.num_return_sequences for c in captions)
    assert all(isinstance(t, str) and len(t.split()) <= 6 for c in captions for t in c)
    assert not any("<" in t for c in captions for t in c)  # never <unk>, <pad> or <bos>


def test_beam_of_one_is_greedy(tiny_resnet_dir, examples, tmp_path):
    model = lstm_model("lstm_resnet50", tiny_resnet_dir, examples, tmp_path).eval()
    batch = model.collate([CaptionEvalSet(batch_of(model, examples)["image"])[i] for i in range(4)])
    greedy = model.generate(batch, GenerationConfig(strategy="greedy", max_new_tokens=8))
    beam = model.generate(batch, GenerationConfig(strategy="beam", num_beams=1, max_new_tokens=8, length_penalty=0.0))
    assert greedy == beam


def test_grid_and_pooled_features_are_cached_apart(tiny_resnet_dir, examples, tmp_path):
    paths = [e.image_path for e in examples[:2]]
    pooled = lstm_model("lstm_resnet50", tiny_resnet_dir, examples, tmp_path)
    grid = lstm_model("lstm_resnet50", tiny_resnet_dir, examples, tmp_path, "model.encoder.features=patches")
    a = stacked(pooled.image_inputs(paths, cache_dir=tmp_path / "cache", device="cpu", progress=False))
    b = stacked(grid.image_inputs(paths, cache_dir=tmp_path / "cache", device="cpu", progress=False))
    assert a.shape == (2, 32) and b.shape == (2, 16, 32) and grid.frozen_encoder.last_cache.misses == 2


def test_loop_trains_exports_and_scores_against_original_references(tmp_path, synthetic_data, fresh_accelerate_state):
    out = tmp_path / "run"
    # Pooled features keep this run short; the attention path is tested step by step above.
    cfg = tiny_run_config(out, synthetic_data, "model.encoder.name=tiny-random", *SMALL, "train.epochs=2",
                          "optim.lr=1e-2", "optim.warmup_steps=1", "eval.compare_constant=false",
                          "generation.strategy=greedy", recipe="lstm_resnet50")
    summary = train.main(cfg)
    assert summary["optimizer_steps"] == 2 * 6
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    files = {p.relative_to(out / "best").as_posix() for p in (out / "best").rglob("*") if p.is_file()}
    assert {"memecap.yaml", "lstm.safetensors", "vocab.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)

    # References are the table's own strings, not rebuilt from the vocabulary (no <unk> in them).
    val = {e.uid: e.captions for e in load_split(synthetic_data["val"], log=None)[0]}
    preds = read_predictions(sorted((out / "predictions").glob("*.jsonl"))[-1])
    assert all(tuple(p["references"]) == val[p["uid"]] for p in preds)

    # The export loads by itself and captions raw images to the same text as in the loop.
    model = load_model(out / "final")
    metrics, path = evaluate_export(out / "final", synthetic_data["val"], progress=False)
    final_preds = read_predictions(sorted((out / "predictions").glob("*.jsonl"))[-1])
    assert [p["prediction"] for p in read_predictions(path)] == [p["prediction"] for p in final_preds]
    assert set(metrics) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "cider", "rougeL", "quote"}
    assert model.encoder is not None

    # Published as ClipCap exports are: the local tiny ResNet is bundled, and the staged folder loads alone.
    staged = tmp_path / "staged"
    files = {name for name, _ in stage_export(out / "final", staged, repo_id="you/lstm", license="apache-2.0",
                                               log=lambda m: None)}
    assert {"README.md", "memecap.yaml", "lstm.safetensors", "vocab.json", "bases/encoder/config.json"} <= files
    captioner = Captioner.from_pretrained(staged)
    image = load_split(synthetic_data["val"], log=None)[0][0].image_path
    assert captioner(str(image)) == read_predictions(path)[0]["prediction"]


def test_synced_decoding_runs_every_rank_to_the_last_finished_caption(tmp_path):
    """ZeRO-3 (`synced_gpus`): each forward gathers weights from all ranks, so a rank whose captions all
    ended must go on stepping while another rank still decodes; two real gloo processes."""
    import subprocess
    import sys

    from tests.launching import REPO, quiet_env

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "probes" / "synced_step_decoding.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ended, decoding = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for strategy in ("greedy", "beam", "sample"):
        assert ended[strategy]["steps"] == decoding[strategy]["steps"] == 6, strategy  # max_new_tokens
        # The best caption of each image (a beam's runner-up is another caption); ended ones stay empty.
        assert [image[0] for image in ended[strategy]["captions"]] == [[], []]
        assert [image[0] for image in decoding[strategy]["captions"]] == [[1] * 6, [1] * 6]
