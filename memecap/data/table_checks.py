"""A table's whole check, kept per fingerprint, so a start on the same table checks nothing again:
no row checked, no image decoded or hashed (one `stat` per image remains, to know they are unchanged).

The fingerprint is the table file (path, size, modification time), every image's (size, modification
time) or its absence, in row order, and the settings that change the verdict (`data.on_bad_row`,
`data.check`, `data.check_sample`, `data.image_dir`, the row cap, the check's versions). Any change
to one of them, or a damaged record, means the usual check. Only a table that passed (possibly with
rows skipped) is recorded: one that fails is checked again until it is fixed.

The record also holds each image's digest, so the data fingerprint a checkpoint keeps, and the
feature and OCR caches, read no image bytes either.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from itertools import chain
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from memecap.data.fingerprint import CHECK_VERSION, StatKey, image_digest, remember_digest, write_atomically
from memecap.data.validation import Problem, RawRow, ValidationReport

# Bump when what a table check decides, or what its record holds, changes: older records are not reused.
TABLE_CHECK_VERSION = 1
DIGEST_SIZE = 32
NO_DIGEST = bytes(DIGEST_SIZE)  # a missing or unreadable image: the digests stay one fixed width apart
HASH_CHUNK = 1024  # digests joined into one piece of the record as it is written
_PACKED = struct.Struct("<qq")
MISSING = (-1, -1)


class TableCheck:
    """The record of one table's last check, in `<cache.dir>/image_checks/table-<name>.record`: a line
    of JSON naming the version and fingerprint, a line of JSON with the result, every image's SHA-256
    (32 bytes each, in the order of the table's images: half the size of hex text, and read back
    without a copy), and a last line with the checksum of all that precedes it."""

    def __init__(self, root: Path, source: str, table: Path, rows: Sequence[RawRow], settings: dict):
        name = hashlib.sha256(source.encode()).hexdigest()[:24]
        self.path = Path(root).expanduser() / f"table-{name}.record"
        # By their path strings (which each Path caches): hashing a Path would keep a hash object per image.
        self.images = list(dict.fromkeys(str(r.image_path) for r in rows if r.image_path is not None))
        # Each image's (size, mtime_ns) packed, 16 bytes an image instead of a tuple's ~120; (-1, -1): missing.
        self.stats = bytearray()
        h = hashlib.sha256(json.dumps([TABLE_CHECK_VERSION, CHECK_VERSION, source, _stat(table), settings,
                                       len(rows)], sort_keys=True).encode())
        for path in self.images:
            stat = _PACKED.pack(*(_stat(path) or MISSING))
            self.stats += stat
            h.update(f"{path}\0".encode() + stat)
        self.key = h.hexdigest()

    def _stat_keys(self) -> Iterator[Optional[StatKey]]:
        """Each image's key in the digest memo, None for a missing one."""
        for path, stat in zip(self.images, _PACKED.iter_unpack(self.stats)):
            yield None if stat == MISSING else (path, *stat)

    def recall(self, rows: Sequence[RawRow], log: Optional[Callable[[str], None]]
               ) -> Optional[tuple[list[RawRow], ValidationReport]]:
        """The kept rows and report of the check made under this fingerprint, or None if there is none
        to trust (a damaged record is said, once, and the table checked again)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            return self._damaged(err, log)
        try:
            head_end = data.index(b"\n")
            result_end = data.index(b"\n", head_end + 1)
            checked_end = data.rindex(b"\n", result_end, len(data) - 1)  # the checksum line follows
            head = json.loads(data[:head_end])
            if (head["version"] != TABLE_CHECK_VERSION
                    or json.loads(data[checked_end + 1:])["sha256"] != hashlib.sha256(data[:checked_end]).hexdigest()):
                raise ValueError("checksum mismatch")
            if head["key"] != self.key:
                return None  # the table, an image or a setting changed: checked again, as expected
            stored = json.loads(data[head_end + 1:result_end])
            digests = memoryview(data)[result_end + 1:checked_end]
            if stored["n_records"] != len(rows) or len(digests) != DIGEST_SIZE * len(self.images):
                raise ValueError("the record does not fit the table")
            report = ValidationReport(stored["source"], stored["n_rows"], [Problem(*p) for p in stored["problems"]],
                                      skipped_rows=stored["skipped_rows"], notes=list(stored["notes"]))
            bad = set(stored["bad"])
        except (ValueError, KeyError, TypeError) as err:
            return self._damaged(err, log)
        for i, key in enumerate(self._stat_keys()):
            digest = digests[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE]
            if key is not None and digest != NO_DIGEST:
                remember_digest(key, digest.hex())  # the data fingerprint and the caches read no image bytes
        if log is not None:
            for line in [*report.notes, *map(str, report.problems)]:
                log(line)
            log(report.summary() + " (checked at an earlier start; the table and its images are unchanged)")
        return [r for i, r in enumerate(rows) if i not in bad], report

    def _damaged(self, err: Exception, log: Optional[Callable[[str], None]]) -> None:
        if log is not None:
            log(f"{self.path}: damaged table-check record ({type(err).__name__}: {err}); checking the table again")

    def keep(self, rows: Sequence[RawRow], kept: Sequence[RawRow], report: ValidationReport) -> None:
        """Record this check's result with every image's digest (those not read yet are hashed now: the
        data fingerprint reads them next), written atomically and streamed."""
        result = json.dumps({"source": report.source, "n_rows": report.n_rows, "n_records": len(rows),
                             "skipped_rows": report.skipped_rows,
                             "problems": [[p.source, p.line, p.uid, p.kind, p.detail] for p in report.problems],
                             "notes": report.notes, "bad": _dropped(rows, kept)}, ensure_ascii=False)

        def pieces() -> Iterator[bytes]:
            h = hashlib.sha256()
            for piece in chain([json.dumps({"version": TABLE_CHECK_VERSION, "key": self.key}).encode() + b"\n",
                                result.encode() + b"\n"], self._digests()):
                h.update(piece)
                yield piece
            yield b"\n" + json.dumps({"sha256": h.hexdigest()}).encode() + b"\n"

        write_atomically(self.path, pieces())

    def _digests(self) -> Iterator[bytes]:
        """Each image's digest, raw (NO_DIGEST for a missing or unreadable one), a chunk at a time.
        Read one after the other, as the data fingerprint would: on small files a thread pool costs
        3x more than it gains (measured: 15,000 64 px JPEGs, 0.21 s serially, 0.64 s in threads)."""
        chunk = bytearray()
        for path, key in zip(self.images, self._stat_keys()):
            try:
                chunk += NO_DIGEST if key is None else bytes.fromhex(image_digest(path, key))  # known if checked
            except OSError:
                chunk += NO_DIGEST
            if len(chunk) >= HASH_CHUNK * DIGEST_SIZE:
                yield bytes(chunk)
                chunk.clear()
        yield bytes(chunk)


def _dropped(rows: Sequence[RawRow], kept: Sequence[RawRow]) -> list[int]:
    """The indices of the rows the check dropped (`kept` is the others, in order)."""
    bad, k = [], 0
    for i, r in enumerate(rows):
        if k < len(kept) and kept[k] is r:
            k += 1
        else:
            bad.append(i)
    return bad


def _stat(path: Path) -> Optional[tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


