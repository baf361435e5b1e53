"""On-disk cache of frozen image-encoder embeddings.

A frozen encoder gives the same vector for the same image every epoch, so it runs once per
image, ever. The key covers everything that can change the vector: the encoder's weights
(hashed), the image transform's settings and the image file's bytes. A changed image, a new
transform or other weights simply miss; a stale entry can never be read back. Each file carries
the SHA-256 of its tensor in its metadata: a damaged or edited file is a miss, recomputed and
said once (memecap/cache_entries.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from PIL import Image
from safetensors.torch import load, save_file
from tqdm.auto import tqdm

from memecap.cache_entries import NO_CHECKSUM, DamagedEntry, DamageTally, payload_sha256
from memecap.data.fingerprint import image_digest
from memecap.data.images import read_image


def module_fingerprint(module: torch.nn.Module) -> str:
    """Hash of a module's class and every tensor of its state dict (names, shapes, dtypes, values)."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        # reshape: a 0-d tensor (batch norm's step counter) cannot be viewed as bytes directly
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tensor_sha256(t: torch.Tensor) -> str:
    """Checksum of a tensor's dtype, shape and bytes (what a feature file stores)."""
    t = t.contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return payload_sha256(str(t.dtype).encode(), repr(tuple(t.shape)).encode(), data)


class FeatureCache:
    """Embeddings of one (encoder weights, transform) pair, one small safetensors file per image."""

    def __init__(self, root: Path, encoder_fingerprint: str, transform_signature: str):
        key = hashlib.sha256(f"{encoder_fingerprint}|{transform_signature}".encode()).hexdigest()[:24]
        self.dir = Path(os.path.expanduser(str(root))) / key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.damaged = DamageTally(self.dir)

    def _path(self, image_digest: str) -> Path:
        return self.dir / image_digest[:2] / f"{image_digest}.safetensors"

    def get(self, image_digest: str) -> Optional[torch.Tensor]:
        """The stored embedding, or None (a miss) where there is none or it cannot be trusted."""
        path = self._path(image_digest)
        try:
            embedding = _read_entry(path) if path.exists() else None
        except DamagedEntry as err:
            self.damaged.add(image_digest, err)
            embedding = None
        if embedding is None:
            self.misses += 1
            return None
        self.hits += 1
        return embedding

    def put(self, image_digest: str, embedding: torch.Tensor) -> None:
        embedding = embedding.detach().to("cpu", torch.float32).contiguous()
        if not torch.isfinite(embedding).all():
            return  # it would be refused as damaged at every read: nothing worth keeping
        path = self._path(image_digest)
        path.parent.mkdir(exist_ok=True)
        # Written beside the target then renamed, so a crash or a second process never leaves a torn file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"embedding": embedding}, tmp, metadata={"sha256": tensor_sha256(embedding)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


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
        self.dir, self.digests = cache.dir, list(digests)

    def __len__(self) -> int:
        return len(self.digests)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.dir / self.digests[i][:2] / f"{self.digests[i]}.safetensors"
        try:
            return _read_entry(path)
        except (DamagedEntry, OSError) as err:
            raise RuntimeError(f"the feature cache entry {path} was read at the start of this run and cannot be "
                               f"read now ({err}): was the cache folder changed while the run used it?") from None


@torch.no_grad()
def encode_images(encoder: torch.nn.Module, transform: Callable, paths: Sequence["Path | Image.Image"], *,
                  cache: Optional[FeatureCache], device: torch.device, batch_size: int = 64,
                  progress: bool = True, desc: str = "encoding images") -> "torch.Tensor | CachedFeatures":
    """Embeddings of the images at `paths`: with a cache, as `CachedFeatures` (each entry verified or
    computed and stored now, read again when used, so memory does not grow with the split); without
    one, or for in-memory images (the Python API, never cached), as one tensor [N, D].
    Images are read and transformed in threads while the encoder runs."""
    paths = [p if isinstance(p, Image.Image) else Path(p) for p in paths]
    if cache is None or any(isinstance(p, Image.Image) for p in paths):
        return _encode_in_memory(encoder, transform, paths, device=device, batch_size=batch_size,
                                 progress=progress, desc=desc)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2))) as pool:
        digests = list(pool.map(image_digest, paths))
        todo = [i for i, d in enumerate(digests) if cache.get(d) is None]  # verified, then let go
        for chunk, embeds in _encoded_batches(encoder, transform, paths, todo, pool, device=device,
                                              batch_size=batch_size, progress=progress, desc=desc):
            for i, e in zip(chunk, embeds):
                if not torch.isfinite(e).all():  # never stored, so a run could not read it back
                    raise ValueError(f"the image encoder gave non-finite values for {paths[i]}")
                cache.put(digests[i], e)
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
