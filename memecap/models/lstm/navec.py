"""Reading navec word vectors (natasha/navec) without the navec package or any unpickling.

A navec file is a tar of `meta.json` ({"id", "protocol": 1}), `vocab.bin` (gzip of: uint32 word
count N, N uint32 counts, then the words joined by newlines) and `pq.bin` (product-quantized
vectors: uint32 vectors, dim, qdim, centroids; uint8 indexes [vectors, qdim]; float32 codes
[qdim, centroids, dim / qdim]). A word's vector is its qdim code pieces joined.

`model.lstm.navec: natasha` names the news vectors that ship inside the natasha package
(navec_news_v1_1B_250K_300d_100q.tar, MIT), found where pip installed it; natasha's code is not run.
"""
from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path

import numpy as np

PROTOCOL = 1
NATASHA = "natasha"  # the value of model.lstm.navec that names natasha's packaged vectors


def navec_path(value: str | Path) -> Path:
    """The navec file `model.lstm.navec` names: a path, or `natasha` for the installed package's file."""
    if str(value) == NATASHA:
        from memecap.models.packaged import NATASHA_NAVEC, installed_file

        return installed_file(NATASHA_NAVEC, f"model.lstm.navec={NATASHA}")
    return Path(value).expanduser()


def read_navec(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Words and their vectors [N, dim] (float32)."""
    path = navec_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.lstm.navec={str(path)!r}: no such file; name a local navec file "
                                "(e.g. navec_hudlit_v1_12B_500K_300d_100q.tar from github.com/natasha/navec), "
                                "or natasha for the vectors inside the installed natasha package")
    try:
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except tarfile.TarError as err:
        raise ValueError(f"{path}: not a navec file (not a tar archive: {err})") from err
    missing = [n for n in ("meta.json", "vocab.bin", "pq.bin") if n not in members]
    if missing:
        raise ValueError(f"{path}: not a navec file (missing {', '.join(missing)})")
    protocol = json.loads(members["meta.json"].decode("ascii")).get("protocol")
    if protocol != PROTOCOL:
        raise ValueError(f"{path}: navec protocol {protocol}, this reader knows {PROTOCOL}")
    vocab = gzip.decompress(members["vocab.bin"])
    (size,) = np.frombuffer(vocab[:4], np.uint32)
    words = vocab[4 + 4 * int(size):].decode("utf-8").split("\n")
    pq = members["pq.bin"]
    vectors, dim, qdim, centroids = (int(v) for v in np.frombuffer(pq[:16], np.uint32))
    indexes = np.frombuffer(pq[16:16 + vectors * qdim], np.uint8).reshape(vectors, qdim)
    codes = np.frombuffer(pq[16 + vectors * qdim:], np.float32).reshape(qdim, centroids, -1)
    if len(words) != vectors or codes.shape[-1] * qdim != dim:
        raise ValueError(f"{path}: navec vocabulary ({len(words)} words) and vectors ({vectors} x {dim}) disagree")
    unpacked = codes[np.arange(qdim), indexes]  # [vectors, qdim, dim / qdim]
    return words, unpacked.reshape(vectors, dim).astype(np.float32, copy=False)  # already float32: no second copy
