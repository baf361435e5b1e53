"""The sharded feature store: shards of a few items here, so rollover, torn tails and many shards are hit."""
from __future__ import annotations

import gc
import hashlib
import logging
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from memecap.feature_store import ShardStore
from memecap.features import CachedFeatures, FeatureCache, encode_images, tensor_sha256

REPO = Path(__file__).resolve().parents[1]
ITEM = 4 * 6  # bytes of one [2, 3] float32 item
SMALL = 3 * ITEM  # three items per shard


def item(i: int) -> torch.Tensor:
    return torch.arange(6, dtype=torch.float32).reshape(2, 3) + 10 * i


def fill(cache: FeatureCache, numbers, batch: int = 4) -> None:
    numbers = list(numbers)
    for start in range(0, len(numbers), batch):
        cache.put_many([(f"d{i}", item(i)) for i in numbers[start:start + batch]])


def test_fill_reopen_read_back_equal(tmp_path):
    cache = FeatureCache(tmp_path, "w", "t", shard_bytes=SMALL)
    fill(cache, range(20))
    shards = sorted((cache.dir / "shards").glob("*.bin"))
    assert len(shards) == 7 and all(s.stat().st_size <= SMALL for s in shards)  # 20 items, 3 per shard
    again = FeatureCache(tmp_path, "w", "t", shard_bytes=SMALL)
    assert len(again.store) == 20 and again.store.torn == 0
    for i in range(20):
        assert torch.equal(again.get(f"d{i}"), item(i))
    assert again.get("d20") is None and (again.hits, again.misses) == (20, 1)


def test_torn_tail_is_ignored_and_refilled(tmp_path):
    """A crash mid-write: bytes cut from a shard and a half-written index line. The entries they
    held are misses at the next open, refilled, and read back after that."""
    cache = FeatureCache(tmp_path, "w", "t", shard_bytes=SMALL)
    fill(cache, range(9))
    folder = cache.dir / "shards"
    data = sorted(folder.glob("*.bin"))[-1]
    os.truncate(data, ITEM + 5)  # the last shard keeps its first item whole, the second cut
    with open(data.with_suffix(".idx"), "ab") as f:
        f.write(b"d99 0 float32 2x")  # a line cut before its newline
    reopened = FeatureCache(tmp_path, "w", "t", shard_bytes=SMALL)
    assert reopened.store.torn == 3 and len(reopened.store) == 7
    missing = [i for i in range(9) if reopened.get(f"d{i}") is None]
    assert missing == [7, 8]
    reopened.put_many([(f"d{i}", item(i)) for i in missing])
    final = FeatureCache(tmp_path, "w", "t", shard_bytes=SMALL)
    assert all(torch.equal(final.get(f"d{i}"), item(i)) for i in range(9)) and final.misses == 0


def test_corrupted_item_is_a_miss_said_once_then_recomputed(tmp_path, caplog):
    cache = FeatureCache(tmp_path, "w", "t", shard_bytes=SMALL)
    fill(cache, range(6))
    shard = cache.store.where("d4")
    raw = bytearray(shard.read_bytes())
    raw[cache.store.entries("d4")[0].offset] ^= 0xFF
    shard.write_bytes(bytes(raw))
    reader = FeatureCache(tmp_path, "w", "t", shard_bytes=SMALL)
    assert reader.get("d4") is None and torch.equal(reader.get("d5"), item(5))
    with caplog.at_level(logging.WARNING):
        reader.damaged.report()
    assert [r.getMessage() for r in caplog.records] == [f"1 damaged cache entries in {reader.dir} were recomputed"]
    reader.put("d4", item(4))  # recomputed: a second copy, found behind the damaged one
    assert torch.equal(FeatureCache(tmp_path, "w", "t", shard_bytes=SMALL).get("d4"), item(4))


WRITER = """
import sys, torch
from memecap.features import FeatureCache
root, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cache = FeatureCache(root, "w", "t", shard_bytes={small})
for i in range(first, last):
    cache.put(f"d{{i}}", torch.arange(6, dtype=torch.float32).reshape(2, 3) + 10 * i)
"""


def test_two_processes_fill_one_store_then_one_reads_all(tmp_path):
    """Two real processes write overlapping items at once, each to its own shards; a reader sees all."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = WRITER.format(small=SMALL)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(a), str(b)], env=env)
             for a, b in [(0, 40), (20, 60)]]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    reader = FeatureCache(tmp_path, "w", "t", shard_bytes=SMALL)
    writers = {s.name.rsplit("-", 1)[0] for s in reader.store.shards}
    assert len(writers) == 2 and reader.store.torn == 0
    assert all(torch.equal(reader.get(f"d{i}"), item(i)) for i in range(60)) and reader.misses == 0


def test_old_per_image_files_are_read_and_copied_into_the_store(tmp_path):
    cache = FeatureCache(tmp_path, "w", "t", shard_bytes=SMALL)
    old = cache.legacy_path("abcdef")
    old.parent.mkdir()
    save_file({"embedding": item(1)}, str(old), metadata={"sha256": tensor_sha256(item(1))})
    assert torch.equal(cache.get("abcdef"), item(1)) and cache.hits == 1
    cache.flush()
    old.unlink()
    assert torch.equal(FeatureCache(tmp_path, "w", "t", shard_bytes=SMALL).get("abcdef"), item(1))


def test_reading_holds_one_descriptor_per_shard_and_no_maps(tmp_path):
    """vm.max_map_count stopped runs past ~65k cached images: reads now open each shard once and map nothing."""
    fill(FeatureCache(tmp_path, "w", "t", shard_bytes=SMALL), range(30), batch=8)
    reader = FeatureCache(tmp_path, "w", "t", shard_bytes=SMALL)
    features = CachedFeatures(reader, [f"d{i}" for i in range(30)] * 2)
    assert all(torch.equal(features[i], item(i % 30)) for i in range(len(features)))
    folder = str(reader.store.folder)
    open_shards = [p for p in (os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                               if os.path.exists(f"/proc/self/fd/{fd}")) if p.startswith(folder)]
    assert len(open_shards) == len(set(open_shards)) == len(reader.store.shards) == 10
    assert folder not in Path("/proc/self/maps").read_text()


class TinyTransform:
    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.convert("RGB").resize((2, 2)), dtype=np.float32)).flatten() / 255

    def signature(self) -> str:
        return "tiny-2x2"


def test_encode_images_streams_through_the_store(tmp_path):
    """encode_images fills the store batch by batch across many shards and gives items read on demand."""
    paths = []
    for i in range(13):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (5, 4), (20 * i, 255 - 10 * i, 7 * i)).save(path)
        paths.append(path)
    torch.manual_seed(0)
    encoder = torch.nn.Linear(12, 4)
    direct = encode_images(encoder, TinyTransform(), paths, cache=None, device="cpu", batch_size=5, progress=False)
    cache = FeatureCache(tmp_path / "cache", "enc", "tiny-2x2", shard_bytes=3 * 16)
    cached = encode_images(encoder, TinyTransform(), paths, cache=cache, device="cpu", batch_size=5, progress=False)
    assert isinstance(cached, CachedFeatures) and len(cached) == 13 and (cache.hits, cache.misses) == (0, 13)
    assert len(cache.store.shards) == 5
    torch.testing.assert_close(cached.tensor(), direct)
    again = FeatureCache(tmp_path / "cache", "enc", "tiny-2x2", shard_bytes=3 * 16)
    reread = encode_images(encoder, TinyTransform(), paths, cache=again, device="cpu", batch_size=5, progress=False)
    assert (again.hits, again.misses) == (13, 0) and torch.equal(reread.tensor(), cached.tensor())


def test_store_survives_pickling_for_loader_workers(tmp_path):
    import pickle

    fill(FeatureCache(tmp_path, "w", "t", shard_bytes=SMALL), range(5))
    store = ShardStore(FeatureCache(tmp_path, "w", "t").store.folder)
    store.read("d1")
    copy = pickle.loads(pickle.dumps(store))
    assert copy._fds == {} and torch.equal(copy.read("d1"), item(1)) and copy._fds.keys() == store._fds.keys()


def hex_digest(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_index_holds_under_100_bytes_an_item(tmp_path):
    """The index was a dict of strings and tuples (~360 bytes an item, 1 GiB at 3M images). 5,000
    items also pass the point where rows written since open are sorted into the arrays."""
    store = ShardStore(tmp_path, shard_bytes=2000 * ITEM)
    for start in range(0, 5000, 1000):
        store.put_many([(hex_digest(i), item(i)) for i in range(start, start + 1000)])
    assert len(store) == 5000 and store._sorted >= 4096
    assert all(torch.equal(store.read(hex_digest(i)), item(i)) for i in range(0, 5000, 7))
    store.close()
    gc.collect()
    tracemalloc.start()
    reopened = ShardStore(tmp_path)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(reopened) == 5000 and held / 5000 < 100
    assert all(torch.equal(reopened.read(hex_digest(i)), item(i)) for i in range(5000))
    assert hex_digest(5000) not in reopened


def test_digests_sharing_their_first_bytes_are_not_confused(tmp_path):
    """The index searches on a digest's first 8 bytes and checks the other 24 on every hit. Copies of
    one digest (written again after damage) are read newest first, also when another digest with the
    same first bytes lies between them, and count once."""
    prefix = "ab" * 8
    a, b, c = (prefix + f"{n:x}" * 48 for n in (1, 2, 3))
    store = ShardStore(tmp_path, shard_bytes=SMALL)
    store.put_many([(a, item(1)), (b, item(2))])
    store.put_many([(a, item(3))])  # a newer copy of a, with b written between the two
    for s in (store, ShardStore(tmp_path)):
        assert len(s) == 2 and a in s and b in s and c not in s
        assert torch.equal(s.read(a), item(3)) and torch.equal(s.read(b), item(2))
        assert [e.sha256 for e in s.entries(a)] == [tensor_sha256(item(3)), tensor_sha256(item(1))]
        with pytest.raises(KeyError):
            s.read(c)
        with pytest.raises(KeyError):
            s.where(c)
    upper = a.upper()  # the same bytes, another name: a dict of names kept them apart, so does the index
    store.put_many([(upper, item(4)), ("d1", item(5))])
    assert len(store) == 4 and torch.equal(store.read(upper), item(4)) and torch.equal(store.read(a), item(3))
    assert torch.equal(ShardStore(tmp_path).read("d1"), item(5))


def test_a_line_edited_by_hand_is_ignored_and_the_others_read(tmp_path):
    """Index lines as this module writes them are parsed all at once; one edited line sends its file
    line by line, where only that line is left out."""
    store = ShardStore(tmp_path)
    store.put_many([(hex_digest(i), item(i)) for i in range(8)])
    index = next(tmp_path.glob("*.idx"))
    lines = index.read_bytes().split(b"\n")
    lines[1] = lines[1][:-1] + b"G"  # a checksum that is not hex
    lines[3] = lines[3].replace(b" 2x3 ", b" 2xa ")  # a shape that is not numbers
    lines[5] = lines[5].replace(b" 120 ", b" 12O ")  # an offset that is not a number
    index.write_bytes(b"\n".join(lines))
    reader = ShardStore(tmp_path)
    assert reader.torn == 3 and len(reader) == 5
    assert [i for i in range(8) if hex_digest(i) not in reader] == [1, 3, 5]
    assert all(torch.equal(reader.read(hex_digest(i)), item(i)) for i in (0, 2, 4, 6, 7))


def test_index_read_at_once_equals_index_read_line_by_line(tmp_path):
    store = ShardStore(tmp_path)
    store.put_many([(hex_digest(i), item(i)) for i in range(500)])  # offsets of 1 to 5 digits
    text = next(tmp_path.glob("*.idx")).read_bytes()
    at_once, by_line = store._parse_regular(text, len(text)), store._parse_lines(text)
    assert len(by_line[2]) == 500 and all(np.array_equal(a, b) for a, b in zip(at_once, by_line))
