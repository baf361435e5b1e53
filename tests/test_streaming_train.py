"""The loop on a streamed train split (data.streaming): .jsonl and tar shards read batch by batch,
exact resume from the stored positions, bad samples named, two real processes preparing and training."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from memecap import train
from memecap.config import ConfigError, load_config, save_config
from memecap.data.streamed_split import open_streamed_split
from memecap.data.tables import read_table
from memecap.data.validation import DataError
from tests.helpers import (LORA_RUN, assert_resumed_exactly, log_rows, reset_accelerate, straight_and_resumed,
                           tiny_run_config)
from tests.launching import accelerate_launch, launch_failure, quiet_env

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

STREAMED = ("data.streaming=true", "train.eval_every=100", "eval.compare_constant=false")


def write_jsonl(table: str, out: Path) -> Path:
    rows = read_table(table)
    out.write_text("".join(json.dumps({"uid": r.uid, "image": str(r.image_path), "captions": list(r.captions)},
                                      ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return out


def write_shards(table: str, folder: Path, shards: int, broken: str | None = None) -> str:
    """The table's rows as WebDataset-style shards (`folder/train-000.tar` ...); `broken`: a uid whose
    image bytes are not an image."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = read_table(table)
    for s in range(shards):
        with tarfile.open(folder / f"train-{s:03d}.tar", "w") as tar:
            for r in rows[s::shards]:
                image = b"not an image" if r.uid == broken else Path(r.image_path).read_bytes()
                for name, data in ((f"{r.uid}.jpg", image), (f"{r.uid}.txt", "\n".join(r.captions).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"train-{{000..{shards - 1:03d}}}.tar")


def train_losses(out: Path) -> dict:
    return {r["step"]: r["loss"] for r in log_rows(out)}


def test_streamed_jsonl_trains_epochs_of_whole_batches(tmp_path, synthetic_data, capsys):
    table = write_jsonl(synthetic_data["train"], tmp_path / "train.jsonl")
    out = tmp_path / "run"
    summary = train.main(tiny_run_config(out, synthetic_data, *STREAMED, f"data.train={table}", "train.epochs=3",
                                         "optim.lr=3e-3"))
    assert summary["optimizer_steps"] == 3 * 6  # 48 rows / batch 8, three epochs
    losses = list(train_losses(out).values())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    logged = capsys.readouterr().err
    assert "48 rows (counted)" in logged and "48 streamed train rows (6 batches per process an epoch)" in logged


def test_streamed_shards_resume_exactly_from_the_stored_position(tmp_path, synthetic_data):
    """N steps straight == k steps, stop mid-epoch, resume, N-k steps: same losses, same weights; the
    checkpoint holds the stream's position, and the resumed run reads from there."""
    spec = write_shards(synthetic_data["train"], tmp_path / "shards", shards=3)
    common = (*STREAMED, f"data.train={spec}", "train.max_steps=7", "train.save_every=2",
              "train.keep_checkpoints=5", "train.grad_accum=2")
    straight, resumed = straight_and_resumed(tmp_path, synthetic_data, common, step=2)
    state = json.loads((straight / "checkpoints" / "step_0000002" / "trainer_state.json").read_text())
    # 6 batches an epoch, 2 a step: 4 of 8 rows each read, two whole shards of 16, in the epoch's order
    assert state["batches_in_epoch"] == 4 and state["stream_positions"] == [{"shard": 1, "offset": 16}]
    assert_resumed_exactly(straight, resumed, [3, 4, 5, 6, 7], ("mapper.safetensors", "decoder/model.safetensors"))


def test_each_epoch_reads_the_shards_in_its_own_order(tmp_path, synthetic_data):
    spec = write_shards(synthetic_data["train"], tmp_path / "shards", shards=6)
    split = open_streamed_split([spec], key="data.train", image_dir=None, on_bad_row="error", declared_rows=None,
                                counts_dir=None, log=lambda _: None)
    epochs = [[r.uid for r in split.stream(rank=1, world_size=2, order_seed=seed)] for seed in (0, 1, 0)]
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(epochs[0]) == 24  # this process's three shards
    assert epochs[0] != epochs[1] and epochs[0] == epochs[2]  # another order per epoch, the same for the same seed


def test_a_bad_sample_is_skipped_and_named_or_stops_the_run(tmp_path, synthetic_data, capsys):
    uid = read_table(synthetic_data["train"])[4].uid
    spec = write_shards(synthetic_data["train"], tmp_path / "shards", shards=2, broken=uid)
    out = tmp_path / "skip"
    summary = train.main(tiny_run_config(out, synthetic_data, *STREAMED, f"data.train={spec}", "train.epochs=1",
                                         "data.on_bad_row=skip"))
    assert summary["optimizer_steps"] == 6  # the share left short is filled from its start: batches stay whole
    logged = capsys.readouterr().err
    assert "train-000.tar:3" in logged and "unreadable image" in logged and "skipped" in logged
    reset_accelerate()
    with pytest.raises(DataError, match=r"train-000\.tar:3"):
        train.main(tiny_run_config(tmp_path / "error", synthetic_data, *STREAMED, f"data.train={spec}"))


def test_streaming_settings_are_checked_before_any_work(tmp_path, synthetic_data):
    with pytest.raises(ConfigError, match="data.num_workers"):
        load_config("demo", ["data.streaming=true", "data.num_workers=2"])
    with pytest.raises(ConfigError, match="data.train_rows"):
        load_config("demo", ["data.train_rows=100"])
    with pytest.raises(ConfigError, match=r"data.train=.*train.tsv: data.streaming=true reads .jsonl tables"):
        tiny_run_config(tmp_path / "tsv", synthetic_data, *STREAMED)
    table = write_jsonl(synthetic_data["train"], tmp_path / "train.jsonl")
    with pytest.raises(ValueError, match="fewer than one accumulation"):
        train.main(tiny_run_config(tmp_path / "small", synthetic_data, *STREAMED, f"data.train={table}",
                                   "train.batch_size=64"))


def test_two_processes_prepare_each_image_once_then_train_on_their_shares(tmp_path, synthetic_data):
    spec = write_shards(synthetic_data["train"], tmp_path / "shards", shards=4)
    out = tmp_path / "run"
    cfg = tiny_run_config(out, synthetic_data, *STREAMED, *LORA_RUN, f"data.train={spec}", "train.epochs=2",
                          f"cache.dir={tmp_path / 'cache'}")
    recipe = tmp_path / "run.yaml"
    save_config(cfg, recipe)
    env = {**quiet_env(), "ACCELERATE_USE_CPU": "1"}
    proc = accelerate_launch("cpu_ddp.yaml", ["-m", "memecap.prepare", str(recipe)], env)
    assert proc.returncode == 0, launch_failure(proc)
    # val: every 2nd of 13 images; train: two of the four shards each
    assert "prepared 61 images" in proc.stdout and "images per process: 31, 30" in proc.stdout, proc.stdout
    stored = stored_features(tmp_path / "cache", synthetic_data["val"])
    assert stored == (61, 61)  # every image once, none computed twice

    proc = accelerate_launch("cpu_ddp.yaml", ["-m", "memecap.train", str(recipe)], env)
    assert proc.returncode == 0, launch_failure(proc)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["replicas_in_sync"] is True
    assert summary["optimizer_steps"] == 2 * 3  # 24 rows a process / batch 8, two epochs
    assert stored_features(tmp_path / "cache", synthetic_data["val"]) == stored  # training computed none


def stored_features(cache: Path, table: str) -> tuple[int, int]:
    """(distinct images in the feature store under `cache`, items its data files hold, duplicates included)."""
    from memecap.data.fingerprint import image_digest
    from memecap.feature_store import ShardStore

    (folder,) = {p.parent for p in cache.rglob("shards/*.bin")}
    store = ShardStore(folder)
    one = store.read(image_digest(Path(read_table(table)[0].image_path)))
    return len(store), sum(p.stat().st_size for p in folder.glob("*.bin")) // (4 * one.numel())


def test_streamed_run_under_deepspeed_zero2(tmp_path, synthetic_data):
    """No training loader is prepared for a stream: DeepSpeed's per-device batch comes from the config."""
    spec = write_shards(synthetic_data["train"], tmp_path / "shards", shards=2)
    out = tmp_path / "run"
    cfg = tiny_run_config(out, synthetic_data, *STREAMED, *LORA_RUN, f"data.train={spec}")
    recipe = tmp_path / "run.yaml"
    save_config(cfg, recipe)
    env = {k: v for k, v in quiet_env().items() if k != "ACCELERATE_USE_CPU"}  # DeepSpeed must not see it
    env["TORCH_EXTENSIONS_DIR"] = str(Path(__file__).resolve().parents[1] / ".torch_extensions")
    proc = accelerate_launch("deepspeed_zero2_offload.yaml", ["-m", "memecap.train", str(recipe)], env, processes=2)
    assert proc.returncode == 0, launch_failure(proc)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["distributed_type"] == "DistributedType.DEEPSPEED" and summary["num_processes"] == 2
    assert summary["optimizer_steps"] == 3  # 24 rows a process / batch 8, one epoch


def write_imagefolder(table: str, folder: Path) -> Path:
    """The table as a Hugging Face imagefolder: images and a metadata.jsonl naming them."""
    folder.mkdir(parents=True)
    lines = []
    for r in read_table(table):
        shutil.copy(r.image_path, folder / Path(r.image_path).name)
        lines.append(json.dumps({"file_name": Path(r.image_path).name, "uid": r.uid, "text": r.captions[0]},
                                ensure_ascii=False))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_a_streamed_hf_dataset_resumes_exactly_from_its_own_state(tmp_path, synthetic_data):
    folder = write_imagefolder(synthetic_data["train"], tmp_path / "imagefolder")
    hf = f"data.train=hf:imagefolder:{folder}"
    with pytest.raises(ValueError, match="declare them with data.train_rows"):
        train.main(tiny_run_config(tmp_path / "unknown", synthetic_data, *STREAMED, hf))
    reset_accelerate()
    common = (*STREAMED, hf, "data.train_rows=48", "train.max_steps=5", "train.save_every=2",
              "train.keep_checkpoints=5")
    straight, resumed = straight_and_resumed(tmp_path, synthetic_data, common, step=2)
    (position,) = json.loads((straight / "checkpoints" / "step_0000002" / "trainer_state.json").read_text()
                             )["stream_positions"]
    assert position["offset"] == 16 and position["state"]  # the dataset's own resumable state
    a, b = train_losses(straight), train_losses(resumed)
    assert sorted(b) == [3, 4, 5]
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])
