"""Sharded, append-only store of encoder outputs: millions of images in a few hundred files.

Layout of one store folder: pairs `<writer>-<n>.bin` (the raw float32 bytes of many items, one
after the other) and `<writer>-<n>.idx` (one text line per item: digest, offset, shape, SHA-256).
`<writer>` is host, process id and a random part: every process appends only to its own files,
so concurrent runs and nodes share a store without locks. A batch's bytes are written and
fsync'ed before its index lines, and an index line counts only once it ends in a newline and
points inside its shard; a crash therefore leaves at most a torn tail, ignored at open and
recomputed. Items are read with `os.pread` on one descriptor per shard: no mapping per item (the
kernel's vm.max_map_count stops a process near 65k maps), no mapping at all (a shard truncated
while in use would kill a mapped reader with SIGBUS; here it is a short read, a damaged item),
and nothing held but the item asked for. Each item is checked against its SHA-256 when read.
In memory the index takes 80 bytes an item, in numpy arrays (ShardStore says how).
"""
from __future__ import annotations

import bisect
import hashlib
import math
import os
import socket
import struct
import uuid
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
import torch

from memecap.cache_entries import DamagedEntry, payload_sha256

DEFAULT_SHARD_BYTES = 256 * 2**20  # a few hundred MB: few files at millions of images, each still easy to copy
DATA_SUFFIX, INDEX_SUFFIX = ".bin", ".idx"
DTYPE = "float32"  # every cached output is stored as float32 (RuDOLPH's codes too)
DTYPE_BYTES = DTYPE.encode()


def tensor_sha256(t: torch.Tensor) -> str:
    """Checksum of a tensor's dtype, shape and bytes (what a feature entry stores)."""
    t = t.contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return payload_sha256(str(t.dtype).encode(), repr(tuple(t.shape)).encode(), data)


class Entry(NamedTuple):
    shard: int
    offset: int
    shape: tuple
    sha256: str

    @property
    def nbytes(self) -> int:
        return 4 * math.prod(self.shape)


# One index row: the digest's bytes after the 8 kept in `_prefix`, the SHA-256, and where the item is.
ROW = np.dtype([("rest", "u1", (24,)), ("sha", "u1", (32,)), ("shard", "<u4"), ("offset", "<i8"), ("shape", "<u4")])
ROW_STRUCT = struct.Struct("<24s32sIqI")  # the same 72 bytes, for one row at a time
MIN_SPARE_ROWS = 4096  # rows written after open wait in a dict; at most max(this, n/16) before a re-sort
CHUNK_LINES = 1 << 16  # index lines parsed at once: temporaries of a few tens of MB at any index size
NOT_HEX = 255
HEX_VALUES = np.full(256, NOT_HEX, np.uint8)  # byte -> its value as a lowercase hex digit
HEX_VALUES[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
OTHER_NAME = b"memecap-store-name:"  # hashed with a name that is not a SHA-256 hex digest


def digest_key(digest: "str | bytes") -> bytes:
    """The 32 bytes a digest is indexed by: a lowercase SHA-256 hex digest's own bytes; any other
    name's SHA-256 (its bytes could otherwise equal a hex digest's)."""
    if isinstance(digest, str) and len(digest) == 64:  # the usual case, without encoding
        try:
            raw = bytes.fromhex(digest)
            if len(raw) == 32 and raw.hex() == digest:
                return raw
        except ValueError:
            pass
    text = digest.encode() if isinstance(digest, str) else digest
    if len(text) == 64:
        try:
            raw = bytes.fromhex(text.decode("ascii"))
        except ValueError:  # UnicodeDecodeError too
            raw = b""
        if len(raw) == 32 and raw.hex().encode() == text:  # fromhex also takes uppercase and spaces
            return raw
    return hashlib.sha256(OTHER_NAME + text).digest()


def digest_keys(digests: list[bytes]) -> bytes:
    """digest_key of each, joined; in one C call when all are hex digests (millions at open)."""
    if all(len(d) == 64 for d in digests):
        joined = b"".join(digests)
        try:
            raw = bytes.fromhex(joined.decode("ascii"))
        except ValueError:
            raw = b""
        if len(raw) == 32 * len(digests) and raw.hex().encode() == joined:
            return raw
    return b"".join(map(digest_key, digests))


class ShardStore:
    """The items of one store folder: `read(digest)` and `put_many([(digest, tensor), ...])`.

    The index is two numpy arrays, not a dict of objects (that took ~360 bytes an item): per
    row the digest's first 8 bytes as a uint64 (`_prefix`, sorted, binary-searched) and
    72 packed bytes (`_rows`: the digest's other 24 bytes, checked on every hit, the raw SHA-256,
    shard, offset, and the number of the item's shape; shapes are kept once, a store's items
    almost always share one). Copies of one digest (rewritten after damage) are neighbouring
    rows in the order written, the newest read first. Rows written after open wait in `_recent`
    until the arrays are full, then all are sorted again (a stable sort: the sorted part is one
    run). Plain arrays also mean a forked data loader worker shares the index: no refcount write
    copies its pages."""

    def __init__(self, folder: Path, shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_bytes = shard_bytes
        self.shards: list[Path] = []
        self.shapes: list[tuple] = []  # a row's shape number -> shape
        self._shape_numbers: dict[tuple, int] = {}
        self.torn = 0  # index lines ignored at open: a crash's tail, or bytes gone from their shard
        self._fds: dict[int, int] = {}
        self._writer: _Writer | None = None
        parts = [self._load(index_file) for index_file in sorted(self.folder.glob("*" + INDEX_SUFFIX))]
        prefix = np.concatenate([p for p, _ in parts]) if parts else np.empty(0, np.uint64)
        rows = np.concatenate([r for _, r in parts]) if parts else np.empty(0, ROW)
        order = np.argsort(prefix, kind="stable")  # stable: copies of a digest stay in the order written
        self._set_arrays(prefix[order], rows[order])
        self._sorted = self._used = len(prefix)  # rows [0, _sorted) sorted by prefix; up to _used filled
        self._recent: dict[bytes, list[int]] = {}  # digest key -> its rows past _sorted, in the order written
        self._count = self._distinct_sorted()
        self._last_found: tuple[str | None, list[int]] = (None, [])  # `digest in store` then `read(digest)`: one search

    def _load(self, index_file: Path) -> tuple[np.ndarray, np.ndarray]:
        """The prefixes and rows of one index file's whole lines that point inside their shard."""
        data_file = index_file.with_suffix(DATA_SUFFIX)
        try:
            size, text = data_file.stat().st_size, index_file.read_bytes()
        except FileNotFoundError:
            return np.empty(0, np.uint64), np.empty(0, ROW)
        shard = len(self.shards)
        self.shards.append(data_file)
        whole = text.rfind(b"\n") + 1
        self.torn += whole < len(text)  # no newline yet: a line cut by a crash
        keys, shas, offsets, shapes = self._parse_regular(text, whole) or self._parse_lines(text[:whole])
        n = len(offsets)
        self.torn += text.count(b"\n") - n
        rows = np.empty(n, ROW)
        rows["rest"], rows["sha"], rows["shard"] = keys[:, 8:], shas, shard
        rows["offset"], rows["shape"] = offsets, shapes
        nbytes = np.array([min(4 * math.prod(s), 2**62) for s in self.shapes], dtype=np.int64)  # no overflow
        inside = offsets + nbytes[shapes] <= size
        self.torn += int(n - inside.sum())
        return np.ascontiguousarray(keys[inside, :8]).view(">u8").reshape(-1).astype(np.uint64), rows[inside]

    def _parse_regular(self, text: bytes, whole: int) -> tuple | None:
        """(digest bytes, SHA-256 bytes, offsets, shape numbers) of `text[:whole]` in a few numpy passes,
        where every line is `<64 hex> <digits> float32 <shape> <64 hex>` with one shape, as this
        module writes them; None otherwise (a name that is not a hex digest, two shapes, a hand
        edit), then line by line. A million lines split one by one took seconds."""
        buf = np.frombuffer(text, np.uint8, count=whole)
        ends, spaces = np.flatnonzero(buf == ord("\n")), np.flatnonzero(buf == ord(" "))
        n = len(ends)
        if not n or len(spaces) != 4 * n or (np.searchsorted(spaces, ends) != 4 * np.arange(1, n + 1)).any():
            return None  # not four spaces on every line
        starts, sp = np.concatenate([[0], ends[:-1] + 1]), spaces.reshape(n, 4)
        digits = sp[:, 1] - sp[:, 0] - 1
        shape_text = text[sp[0, 2] + 1:sp[0, 3]]
        shape = self._shape_number_of(shape_text)
        if (shape is None or (sp[:, 0] - starts != 64).any() or (ends - sp[:, 3] != 65).any()
                or (sp[:, 3] - sp[:, 1] != 9 + len(shape_text)).any() or (digits < 1).any() or (digits > 18).any()):
            return None
        fixed = np.frombuffer(b"float32 " + shape_text, np.uint8)  # the same bytes on every line
        keys, shas, offsets = np.empty((n, 32), np.uint8), np.empty((n, 32), np.uint8), np.zeros(n, np.int64)
        for lo in range(0, n, CHUNK_LINES):  # gathers of a bounded size, whatever the file's
            chunk = slice(lo, lo + CHUNK_LINES)
            part, line_starts, lengths = sp[chunk], starts[chunk], digits[chunk]
            if (buf[part[:, 1:2] + 1 + np.arange(len(fixed))] != fixed).any():
                return None
            for out, first in ((keys, line_starts), (shas, part[:, 3] + 1)):
                nibbles = HEX_VALUES[buf[first[:, None] + np.arange(64)]]
                if (nibbles == NOT_HEX).any():
                    return None
                out[lo:lo + len(part)] = nibbles[:, 0::2] << 4 | nibbles[:, 1::2]
            for k in range(int(lengths.max())):  # the k-th digit from the right, where the number has one
                has = k < lengths
                digit = buf[np.where(has, part[:, 1] - 1 - k, 0)].astype(np.int64) - ord("0")
                if ((digit < 0) | (digit > 9))[has].any():
                    return None
                offsets[lo:lo + len(part)] += np.where(has, digit, 0) * 10**k
        return keys, shas, offsets, np.full(n, shape, np.uint32)

    def _parse_lines(self, text: bytes) -> tuple:
        """What _parse_regular gives, line by line, leaving out lines that are not index lines."""
        fields = [f for f in (line.split(b" ") for line in text.split(b"\n")[:-1])
                  if len(f) == 5 and f[2] == DTYPE_BYTES and len(f[4]) == 64 and f[1].isdigit() and len(f[1]) < 19]
        numbers = {shape: self._shape_number_of(shape) for shape in {f[3] for f in fields}}
        fields = [f for f in fields if numbers[f[3]] is not None and _hex_to_bytes([f[4]]) is not None]
        n = len(fields)
        keys = np.frombuffer(digest_keys([f[0] for f in fields]), np.uint8).reshape(n, 32)
        shas = np.frombuffer(_hex_to_bytes([f[4] for f in fields]), np.uint8).reshape(n, 32)
        offsets = np.array([int(f[1]) for f in fields], dtype=np.int64)
        return keys, shas, offsets, np.array([numbers[f[3]] for f in fields], dtype=np.uint32)

    def _shape_number_of(self, text: bytes) -> int | None:
        try:
            shape = tuple(int(d) for d in text.split(b"x")) if text != b"-" else ()
        except ValueError:
            return None
        return self._shape_number(shape) if all(d >= 0 for d in shape) else None

    def _shape_number(self, shape: tuple) -> int:
        if shape not in self._shape_numbers:
            self._shape_numbers[shape] = len(self.shapes)
            self.shapes.append(shape)
        return self._shape_numbers[shape]

    def _distinct_sorted(self) -> int:
        """How many digests the sorted rows hold (copies of one digest counted once)."""
        prefix, rest = self._prefix[:self._sorted], self._rows["rest"][:self._sorted]
        after = np.flatnonzero(prefix[1:] == prefix[:-1]) + 1  # rows whose prefix is the one above's
        same = (rest[after] == rest[after - 1]).all(axis=1)
        if same.all():  # copies only, each next to the one before
            return self._sorted - len(after)
        # Two digests share 8 bytes (rare, but copies of either may then lie apart): count those exactly.
        shared = np.unique(prefix[after])
        in_shared = np.isin(prefix, shared)
        keys = {(int(p), r.tobytes()) for p, r in zip(prefix[in_shared], rest[in_shared])}
        return self._sorted - int(in_shared.sum()) + len(keys)

    def _set_arrays(self, prefix: np.ndarray, rows: np.ndarray) -> None:
        """The index arrays, and views of them that give one row as Python values without numpy's
        per-call cost (a lookup takes ~2 µs, beside ~20 µs to read and check an item)."""
        self._prefix, self._rows = prefix, rows
        self._prefix_view, self._row_bytes = memoryview(prefix), memoryview(rows.view(np.uint8))

    def _rows_of(self, digest: str) -> list[int]:
        """The rows of a digest, oldest first."""
        if self._last_found[0] == digest:
            return self._last_found[1]
        key = digest_key(digest)
        prefix, rest, size = int.from_bytes(key[:8], "big"), key[8:], ROW.itemsize
        rows = []
        i = bisect.bisect_left(self._prefix_view, prefix, 0, self._sorted)
        while i < self._sorted and self._prefix_view[i] == prefix:
            if self._row_bytes[i * size:i * size + 24] == rest:
                rows.append(i)
            i += 1
        rows += self._recent.get(key, [])
        self._last_found = (digest, rows)
        return rows

    def _entry(self, row: int) -> Entry:
        _rest, sha, shard, offset, shape = ROW_STRUCT.unpack_from(self._row_bytes, row * ROW.itemsize)
        return Entry(shard, offset, self.shapes[shape], sha.hex())

    def entries(self, digest: str) -> list[Entry]:
        """Where a digest's copies are, the newest first (the one read unless it is damaged)."""
        return [self._entry(row) for row in reversed(self._rows_of(digest))]

    def _add(self, digest: str, entry: Entry) -> None:
        if self._used == len(self._prefix):
            self._sort_and_grow()
        key = digest_key(digest)
        if digest not in self:
            self._count += 1
        row = self._used
        self._last_found = (None, [])
        self._prefix_view[row] = int.from_bytes(key[:8], "big")
        ROW_STRUCT.pack_into(self._row_bytes, row * ROW.itemsize, key[8:], bytes.fromhex(entry.sha256), entry.shard,
                             entry.offset, self._shape_number(entry.shape))
        self._recent.setdefault(key, []).append(row)
        self._used += 1

    def _sort_and_grow(self) -> None:
        """All rows sorted into arrays with room for max(MIN_SPARE_ROWS, n/16) more."""
        n = self._used
        order = np.argsort(self._prefix[:n], kind="stable")
        room = n + max(MIN_SPARE_ROWS, n // 16)
        prefix, rows = np.empty(room, np.uint64), np.empty(room, ROW)
        prefix[:n], rows[:n] = self._prefix[:n][order], self._rows[:n][order]
        self._set_arrays(prefix, rows)
        self._sorted, self._recent = n, {}
        self._last_found = (None, [])

    def __contains__(self, digest: str) -> bool:
        return bool(self._rows_of(digest))

    def __len__(self) -> int:
        return self._count

    def read(self, digest: str) -> torch.Tensor:
        """The item's tensor; KeyError where there is none, DamagedEntry where no copy can be trusted."""
        candidates = self.entries(digest)
        if not candidates:
            raise KeyError(digest)
        damage = None
        for entry in candidates:
            try:
                return self._read(entry)
            except DamagedEntry as err:
                damage = damage or err
        raise damage

    def where(self, digest: str) -> Path:
        rows = self._rows_of(digest)
        if not rows:
            raise KeyError(digest)
        return self.shards[self._entry(rows[-1]).shard]

    def _read(self, entry: Entry) -> torch.Tensor:
        try:
            data = os.pread(self._fd(entry.shard), entry.nbytes, entry.offset)
        except OSError as err:
            raise DamagedEntry(f"unreadable: {err}") from None
        if len(data) != entry.nbytes:
            raise DamagedEntry("shard truncated")
        # The same sum as tensor_sha256, taken on the bytes read: no copy back out of the tensor.
        if payload_sha256(b"torch.float32", repr(entry.shape).encode(), data) != entry.sha256:
            raise DamagedEntry("checksum mismatch")
        t = (torch.frombuffer(bytearray(data), dtype=torch.float32) if data else torch.empty(0)).reshape(entry.shape)
        if not torch.isfinite(t).all():
            raise DamagedEntry("non-finite values")
        return t

    def _fd(self, shard: int) -> int:
        if shard not in self._fds:
            self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
        return self._fds[shard]

    def put_many(self, items: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Appends items to this process's own shard, durable (fsync) before they are indexed."""
        items = [(d, t.detach().to("cpu", torch.float32).contiguous()) for d, t in items]
        if not items:
            return
        if self._writer is None or self._writer.pid != os.getpid():  # a forked child writes its own shards
            self._writer = _Writer()
        self._writer.write(self, items)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __getstate__(self):  # data loader workers: descriptors and the writer stay with their process
        state = dict(self.__dict__)
        state["_fds"], state["_writer"] = {}, None
        del state["_prefix_view"], state["_row_bytes"]  # views of the arrays, made again in the copy
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._set_arrays(self._prefix, self._rows)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to tidy
            pass


def _hex_to_bytes(texts: list[bytes]) -> bytes | None:
    """The bytes of lowercase hex strings, joined; None where one is not."""
    joined = b"".join(texts)
    try:
        raw = bytes.fromhex(joined.decode("ascii"))
    except ValueError:
        return None
    return raw if raw.hex().encode() == joined else None


class _Writer:
    """One process's open shard pair; a new pair starts once a shard reaches the store's shard size."""

    def __init__(self):
        self.pid = os.getpid()
        self.stem = f"{socket.gethostname()}-{self.pid}-{uuid.uuid4().hex[:8]}"
        self.number = -1
        self.data = None

    def _next_shard(self, store: ShardStore) -> None:
        self.number += 1
        base = store.folder / f"{self.stem}-{self.number:05d}"
        self.data = open(base.with_suffix(DATA_SUFFIX), "ab")
        self.index = open(base.with_suffix(INDEX_SUFFIX), "ab")
        self.size = 0
        self.shard = len(store.shards)
        store.shards.append(base.with_suffix(DATA_SUFFIX))
        self.pending: list[tuple[str, Entry, bytes]] = []

    def write(self, store: ShardStore, items: list[tuple[str, torch.Tensor]]) -> None:
        if self.data is None:
            self._next_shard(store)
        for digest, t in items:
            payload = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            if self.size and self.size + len(payload) > store.shard_bytes:
                self._commit(store)
                self.close()
                self._next_shard(store)
            entry = Entry(self.shard, self.size, tuple(t.shape), tensor_sha256(t))
            self.data.write(payload)
            self.size += len(payload)
            shape = "x".join(map(str, entry.shape)) or "-"
            self.pending.append((digest, entry, f"{digest} {entry.offset} {DTYPE} {shape} {entry.sha256}\n".encode()))
        self._commit(store)

    def _commit(self, store: ShardStore) -> None:
        """Bytes durable first, index lines second: an index line never points at bytes a crash lost."""
        self.data.flush()
        os.fsync(self.data.fileno())
        self.index.write(b"".join(line for _, _, line in self.pending))
        self.index.flush()
        os.fsync(self.index.fileno())
        for digest, entry, _ in self.pending:
            store._add(digest, entry)
        self.pending = []

    def close(self) -> None:
        if self.data is not None:
            self.data.close()
            self.index.close()
