"""Streaming rows: lazy .jsonl and tar-shard reading, split across real processes, exact resume, bad rows."""

import io
import json
import subprocess
import sys
import tarfile
from itertools import islice
from pathlib import Path

import pytest
from PIL import Image

from memecap.data.streaming import RowStream, StreamPosition, count_rows, shard_paths
from memecap.data.validation import DataError


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def _add(tar, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_shards(root: Path, shards: int, per_shard: int, broken: str | None = None) -> str:
    jpeg = _jpeg()
    for s in range(shards):
        with tarfile.open(root / f"train-{s:03d}.tar", "w") as tar:
            for i in range(per_shard):
                uid = f"s{s}i{i}"
                _add(tar, f"{uid}.jpg", b"not an image" if uid == broken else jpeg)
                _add(tar, f"{uid}.txt", f"подпись {uid}".encode())
    return str(root / f"train-{{000..{shards - 1:03d}}}.tar")


def test_tar_shards_read_lazily_with_captions_and_counted(tmp_path):
    spec = _write_shards(tmp_path, shards=3, per_shard=4)
    paths = shard_paths(spec)
    assert [p.name for p in paths] == ["train-000.tar", "train-001.tar", "train-002.tar"]
    rows = list(RowStream(paths))
    assert [r.uid for r in rows[:2]] == ["s0i0", "s0i1"] and rows[0].captions == ("подпись s0i0",)
    assert isinstance(rows[0].image, bytes) and rows[5].line == 2 and rows[5].source.endswith("train-001.tar")
    assert count_rows(paths) == 12
    (tmp_path / "train-000.tar.count").write_text("100")  # a declared sidecar wins over counting
    assert count_rows(paths) == 108


def test_jsonl_read_line_by_line(tmp_path):
    table = tmp_path / "big.jsonl"
    table.write_text("\n".join(json.dumps({"uid": f"u{i}", "text": f"t{i}"}) for i in range(5)) + "\n\n")
    stream = RowStream(shard_paths(str(table)))
    first = next(iter(stream))
    assert (first.uid, first.captions, first.line) == ("u0", ("t0",), 1)
    assert first.image == tmp_path / "images" / "u0.jpg"
    assert count_rows([table]) == 5


def test_bad_sample_is_skipped_and_counted_or_stops_naming_file_and_row(tmp_path):
    paths = shard_paths(_write_shards(tmp_path, shards=2, per_shard=3, broken="s1i1"))
    stream = RowStream(paths, on_bad_row="skip")
    assert [r.uid for r in stream] == ["s0i0", "s0i1", "s0i2", "s1i0", "s1i2"] and stream.skipped == 1
    with pytest.raises(DataError, match=r"train-001\.tar:2"):
        list(RowStream(paths, on_bad_row="error"))


@pytest.mark.parametrize("shards", [4, 1])  # whole shards per process, then every 2nd row of one shard
def test_two_real_processes_see_every_row_exactly_once(tmp_path, shards):
    spec = _write_shards(tmp_path, shards=shards, per_shard=12 // shards)
    script = ("import sys; from memecap.data.streaming import RowStream, shard_paths\n"
              "s = RowStream(shard_paths(sys.argv[1]), rank=int(sys.argv[2]), world_size=2)\n"
              "print(' '.join(r.uid for r in s))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, spec, str(rank)], stdout=subprocess.PIPE, text=True)
             for rank in range(2)]
    seen = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(seen[0]) == len(seen[1]) == 6
    assert sorted(seen[0] + seen[1]) == sorted(r.uid for r in RowStream(shard_paths(spec)))


@pytest.mark.parametrize("shards", [3, 1])
def test_resume_from_stored_position_reads_exactly_the_unread_rows(tmp_path, shards):
    paths = shard_paths(_write_shards(tmp_path, shards=shards, per_shard=15 // shards))
    whole = [r.uid for r in RowStream(paths, rank=1, world_size=2)]
    for stop in range(len(whole) + 1):
        first = RowStream(paths, rank=1, world_size=2)
        before = [r.uid for r in islice(first, stop)]
        saved = json.loads(json.dumps(first.position.to_dict()))  # as a checkpoint stores it
        resumed = RowStream(paths, rank=1, world_size=2, position=StreamPosition.from_dict(saved))
        assert before + [r.uid for r in resumed] == whole
