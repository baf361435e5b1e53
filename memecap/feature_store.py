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
"""
from __future__ import annotations

import math
import os
import socket
import uuid
from pathlib import Path
from typing import Iterable, NamedTuple

import torch

from memecap.cache_entries import DamagedEntry, payload_sha256

DEFAULT_SHARD_BYTES = 256 * 2**20  # a few hundred MB: few files at millions of images, each still easy to copy
DATA_SUFFIX, INDEX_SUFFIX = ".bin", ".idx"
DTYPE = "float32"  # every cached output is stored as float32 (RuDOLPH's codes too)


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


class ShardStore:
    """The items of one store folder: `read(digest)` and `put_many([(digest, tensor), ...])`."""

    def __init__(self, folder: Path, shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_bytes = shard_bytes
        self.shards: list[Path] = []
        self.index: dict[str, Entry] = {}
        self.spares: dict[str, list[Entry]] = {}  # the same digest written again (recomputed after damage)
        self.torn = 0  # index lines ignored at open: a crash's tail, or bytes gone from their shard
        self._fds: dict[int, int] = {}
        self._writer: _Writer | None = None
        for index_file in sorted(self.folder.glob("*" + INDEX_SUFFIX)):
            self._load(index_file)

    def _load(self, index_file: Path) -> None:
        data_file = index_file.with_suffix(DATA_SUFFIX)
        try:
            size, text = data_file.stat().st_size, index_file.read_bytes()
        except FileNotFoundError:
            return
        shard = len(self.shards)
        self.shards.append(data_file)
        lines = text.split(b"\n")
        self.torn += bool(lines[-1])  # no newline yet: a line cut by a crash
        for line in lines[:-1]:
            entry = _parse(line, shard)
            if entry is None or entry.offset + entry.nbytes > size:
                self.torn += 1
                continue
            self._add(line.split(b" ", 1)[0].decode(), entry)

    def _add(self, digest: str, entry: Entry) -> None:
        if digest in self.index:
            self.spares.setdefault(digest, []).append(self.index[digest])
        self.index[digest] = entry

    def __contains__(self, digest: str) -> bool:
        return digest in self.index

    def __len__(self) -> int:
        return len(self.index)

    def read(self, digest: str) -> torch.Tensor:
        """The item's tensor; KeyError where there is none, DamagedEntry where no copy can be trusted."""
        candidates = [self.index[digest], *reversed(self.spares.get(digest, []))]
        damage = None
        for entry in candidates:
            try:
                return self._read(entry)
            except DamagedEntry as err:
                damage = damage or err
        raise damage

    def where(self, digest: str) -> Path:
        return self.shards[self.index[digest].shard]

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
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to tidy
            pass


_SHAPES: dict[str, tuple] = {}  # one tuple per distinct shape, not one per item: millions of entries stay small


def _parse(line: bytes, shard: int) -> Entry | None:
    try:
        _digest, offset, dtype, shape, sha = line.decode().split(" ")
        dims = _SHAPES.get(shape)
        if dims is None:
            dims = _SHAPES[shape] = tuple(int(d) for d in shape.split("x")) if shape != "-" else ()
        if dtype != DTYPE or len(sha) != 64 or int(offset) < 0 or any(d < 0 for d in dims):
            return None
        return Entry(shard, int(offset), dims, sha)
    except ValueError:
        return None


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
