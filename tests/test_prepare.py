"""`memecap prepare`: the data checked and the caches filled ahead, alone and in two real processes;
the training run after it computes nothing of what was prepared."""
from __future__ import annotations

import os
from pathlib import Path

from memecap import prepare, train
from memecap.config import save_config
from tests.helpers import reset_accelerate, tiny_run_config
from tests.launching import accelerate_launch, launch_failure

FROZEN = ("model.encoder.trainable=false",)  # features computed once per image and cached


def feature_files(cache: Path) -> dict[tuple[str, str], str]:
    """The cached features, one index line each ((shard, digest) -> line) of the sharded feature store:
    an entry computed again would add a line (prepare's own folder holds the tiny random bases it built)."""
    return {(p.name, line.split(" ", 1)[0]): line for p in cache.rglob("*.idx")
            if "prepare" not in p.relative_to(cache).parts for line in p.read_text().splitlines()}


def test_shares_are_disjoint_and_cover_every_image_once():
    paths = [Path(f"/d/{i % 7}.jpg") for i in range(20)]  # repeated images, as in a table of references
    shares = prepare.shares(paths, 3)
    assert sorted(p for share in shares for p in share) == sorted(set(paths))
    assert [len(s) for s in shares] == [3, 2, 2]


def test_a_run_after_prepare_computes_no_feature(synthetic_data, tmp_path, capsys):
    cfg = tiny_run_config(tmp_path / "run", synthetic_data, "train.max_steps=1", "eval.compare_constant=false",
                          *FROZEN)
    summary = prepare.main(cfg)
    reset_accelerate()
    images = summary["images"]
    assert images == 48 + 13 and summary["per_process"] == [images]
    prepared = feature_files(Path(cfg.cache.dir))
    assert len(prepared) == images
    again = prepare.main(cfg)  # content-keyed caches: a second prepare computes nothing
    reset_accelerate()
    assert again["images"] == images and feature_files(Path(cfg.cache.dir)) == prepared
    assert train.main(cfg)["optimizer_steps"] == 1
    reset_accelerate()
    assert feature_files(Path(cfg.cache.dir)) == prepared  # every feature read, none computed or rewritten


def test_two_processes_split_the_images(synthetic_data, tmp_path):
    cfg = tiny_run_config(tmp_path / "run", synthetic_data, *FROZEN)
    recipe = tmp_path / "run.yaml"
    save_config(cfg, recipe)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = accelerate_launch("cpu_ddp.yaml", ["-m", "memecap.prepare", str(recipe)], env)
    assert proc.returncode == 0, launch_failure(proc)
    said = proc.stdout + proc.stderr
    assert "prepared 61 images" in said and "images per process: 31, 30" in said, said[-3000:]
    assert said.count("prepared 61 images") == 1  # the summary comes from the main process alone
    assert len(feature_files(Path(cfg.cache.dir))) == 61
