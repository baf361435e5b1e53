"""On-disk cache of frozen image-encoder embeddings, in a sharded store (memecap/feature_store.py).

A frozen encoder gives the same vector for the same image every epoch, so it runs once per
image, ever. The key covers everything that can change the vector: the encoder's weights
(hashed), the image transform's settings and the image file's bytes. A changed image, a new
transform or other weights simply miss; a stale entry can never be read back. Each file carries
the SHA-256 of its tensor: a damaged or edited entry is a miss, recomputed and said once
(memecap/cache_entries.py). Entries of older memecaps (one safetensors file per image) are still
read, and copied into the store when met.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, ContextManager, Optional, Sequence

import torch
from PIL import Image
from safetensors.torch import load
from tqdm.auto import tqdm

from memecap.cache_entries import NO_CHECKSUM, DamagedEntry, DamageTally
from memecap.data.fingerprint import image_digest
from memecap.data.images import read_image
from memecap.feature_store import DEFAULT_SHARD_BYTES, ShardStore, tensor_sha256

DIGEST_CHUNK = 4096  # images hashed per round: memory and queued work stay bounded at millions of images


def module_fingerprint(module: torch.nn.Module) -> str:
    """Hash of a module's class and every tensor of its state dict (names, shapes, dtypes, values)."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        # reshape: a 0-d tensor (batch norm's step counter) cannot be viewed as bytes directly
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class FeatureCache:
    """Embeddings of one (encoder weights, transform) pair: a sharded store under `dir/shards`, and
    the one-file-per-image entries an older memecap left under `dir/<digest[:2]>/`."""

    def __init__(self, root: Path, encoder_fingerprint: str, transform_signature: str,
                 shard_bytes: int = DEFAULT_SHARD_BYTES):
        key = hashlib.sha256(f"{encoder_fingerprint}|{transform_signature}".encode()).hexdigest()[:24]
        self.dir = Path(os.path.expanduser(str(root))) / key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store = ShardStore(self.dir / "shards", shard_bytes)
        self.hits = 0
        self.misses = 0
        self.damaged = DamageTally(self.dir)
        self._met_old: list[tuple[str, torch.Tensor]] = []  # older entries read, to copy into the store

    def new_pass(self) -> None:
        """Counts and damage from here on are the next pass's (a cache kept open serves many)."""
        self.hits = self.misses = 0
        self.damaged = DamageTally(self.dir)

    def legacy_path(self, image_digest: str) -> Path:
        return self.dir / image_digest[:2] / f"{image_digest}.safetensors"

    def get(self, image_digest: str) -> Optional[torch.Tensor]:
        """The stored embedding, or None (a miss) where there is none or it cannot be trusted."""
        embedding = self._lookup(image_digest)
        if embedding is None:
            self.misses += 1
            return None
        self.hits += 1
        return embedding

    def _lookup(self, image_digest: str) -> Optional[torch.Tensor]:
        if image_digest in self.store:
            try:
                return self.store.read(image_digest)
            except DamagedEntry as err:
                self.damaged.add(image_digest, err)
                return None
        path = self.legacy_path(image_digest)
        if not path.exists():
            return None
        try:
            embedding = _read_entry(path)
        except DamagedEntry as err:
            self.damaged.add(image_digest, err)
            return None
        self._met_old.append((image_digest, embedding))
        if len(self._met_old) >= 256:
            self.flush()
        return embedding

    def flush(self) -> None:
        """Copies the older entries met so far into the store (the old files stay for older memecaps)."""
        self.store.put_many(self._met_old)
        self._met_old = []

    def put(self, image_digest: str, embedding: torch.Tensor) -> None:
        self.put_many([(image_digest, embedding)])

    def put_many(self, items: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Stores finite embeddings, durably, in one write (a non-finite one would be refused at every read)."""
        self.store.put_many([(d, e) for d, e in items if torch.isfinite(e).all()])


def _read_entry(path: Path) -> torch.Tensor:
    """A feature file's embedding; DamagedEntry where it is unreadable, edited, non-finite or unchecked.
    Read into memory, not mapped: a file truncated while its tensor is in use would kill the
    process (SIGBUS) instead of being a miss."""
    try:
        data = path.read_bytes()
        embedding = load(data)["embedding"]
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])  # the format's 8-byte length + JSON
        stored = (header.get("__metadata__") or {}).get("sha256")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for every kind of damage
        raise DamagedEntry(f"unreadable: {type(err).__name__}: {err}") from None
    if stored is None:
        raise DamagedEntry(NO_CHECKSUM)
    if stored != tensor_sha256(embedding):
        raise DamagedEntry("checksum mismatch")
    if not torch.isfinite(embedding).all():  # only reachable with a recomputed checksum: refuse it all the same
        raise DamagedEntry("non-finite values")
    return embedding


class CachedFeatures:
    """The embeddings of a split, read from the cache when an item is asked for: a split of millions
    of images never sits in memory at once (3M patch features would take 46 GiB). Every entry was
    read and verified when the split was encoded; one that cannot be read later was removed or
    damaged while the run was using it, which stops the run naming the file."""

    def __init__(self, cache: FeatureCache, digests: Sequence[str]):
        self.store, self.digests = cache.store, list(digests)

    def __len__(self) -> int:
        return len(self.digests)

    def __getitem__(self, i: int) -> torch.Tensor:
        digest = self.digests[i]
        try:
            return self.store.read(digest)
        except (DamagedEntry, KeyError) as err:
            where = self.store.where(digest) if digest in self.store else self.store.folder
            raise RuntimeError(f"the feature cache entry {digest} in {where} was read at the start of this run and "
                               f"cannot be read now ({err}): was the cache folder changed while the run used it?"
                               ) from None

    def tensor(self) -> torch.Tensor:
        """All items stacked [N, ...]: for small sets only (a few images to caption)."""
        return torch.stack([self[i] for i in range(len(self))]) if len(self) else torch.empty(0)


@torch.no_grad()
def encode_images(encoder: torch.nn.Module, transform: Callable, paths: Sequence["Path | Image.Image"], *,
                  cache: Optional[FeatureCache], device: torch.device, batch_size: int = 64,
                  progress: bool = True, desc: str = "encoding images",
                  placed: Callable[[], ContextManager] = nullcontext) -> "torch.Tensor | CachedFeatures":
    """Embeddings of the images at `paths`: with a cache, as `CachedFeatures` (each entry verified or
    computed and stored now, read again when used, so memory does not grow with the split); without
    one, or for in-memory images (the Python API, never cached), as one tensor [N, D].
    Images are read and transformed in threads while the encoder runs, inside `placed()` (where the
    encoder is moved to the device: only when something is computed)."""
    paths = [p if isinstance(p, Image.Image) else Path(p) for p in paths]
    if cache is None or any(isinstance(p, Image.Image) for p in paths):
        with placed():
            return _encode_in_memory(encoder, transform, paths, device=device, batch_size=batch_size,
                                     progress=progress, desc=desc)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2))) as pool:
        digests: list[str] = []
        for start in range(0, len(paths), DIGEST_CHUNK):
            digests += pool.map(image_digest, paths[start:start + DIGEST_CHUNK])
        todo = [i for i, d in enumerate(digests) if cache.get(d) is None]  # verified, then let go
        cache.flush()
        with placed() if todo else nullcontext():
            for chunk, embeds in _encoded_batches(encoder, transform, paths, todo, pool, device=device,
                                                  batch_size=batch_size, progress=progress, desc=desc):
                for i, e in zip(chunk, embeds):
                    if not torch.isfinite(e).all():  # never stored, so a run could not read it back
                        raise ValueError(f"the image encoder gave non-finite values for {paths[i]}")
                cache.put_many([(digests[i], e) for i, e in zip(chunk, embeds)])
    cache.damaged.report()
    return CachedFeatures(cache, digests)


def _encode_in_memory(encoder, transform, paths, *, device, batch_size, progress, desc) -> torch.Tensor:
    out: list[Optional[torch.Tensor]] = [None] * len(paths)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2))) as pool:
        for chunk, embeds in _encoded_batches(encoder, transform, paths, list(range(len(paths))), pool,
                                              device=device, batch_size=batch_size, progress=progress, desc=desc):
            for i, e in zip(chunk, embeds):
                out[i] = e
    return torch.stack(out) if out else torch.empty(0)


def _encoded_batches(encoder, transform, paths, todo: list[int], pool, *, device, batch_size, progress, desc):
    """(indices, embeddings on the CPU) of `todo`'s images, batch by batch, the encoder in eval mode."""
    was_training = encoder.training
    encoder.eval()
    dtype = next(encoder.parameters()).dtype
    bar = tqdm(total=len(todo), desc=desc, disable=not progress or not todo, unit="img")
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            pixels = torch.stack(list(pool.map(lambda i: transform(read_image(paths[i])), chunk)))
            yield chunk, encoder(pixels.to(device=device, dtype=dtype)).float().cpu()
            bar.update(len(chunk))
    finally:
        bar.close()
        encoder.train(was_training)
