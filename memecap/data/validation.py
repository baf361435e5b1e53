"""Check every row of a table before training and say, in words, what is wrong with each."""

from __future__ import annotations

import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from memecap.data.fingerprint import IMAGE_WORK, CheckResult, ImageChecks, StatKey, image_digest, stat_key
from memecap.data.images import MAX_SIDE, REDUCED_FROM, ImageReadError, load_rgb
from memecap.outputs.file_names import shown


@dataclass(frozen=True, slots=True)  # slots: a table holds one per row, and a __dict__ doubled each
class RawRow:
    """One record as read, before validation; `error` is `(kind, detail)` if it could not be parsed."""

    source: str
    line: int
    uid: str | None
    image_path: Path | None
    captions: tuple[str, ...]
    error: tuple[str, str] | None = None
    covers: int = 1  # table rows this record stands for: a stray quote can swallow many into one


ON_BAD_ROW = ("error", "skip")
MAX_LISTED = 20
# Below this many images a progress bar is just noise in the log.
PROGRESS_MIN_IMAGES = 256


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row (or, for whole-file problems, with the file)."""

    source: str
    line: int
    uid: str | None
    kind: str  # bad header, bad row, bad encoding, empty caption, duplicate uid, missing image, ...
    detail: str

    def __str__(self) -> str:
        who = f" uid={self.uid}" if self.uid is not None else ""
        return shown(f"{self.source}:{self.line}{who}: {self.detail}")  # one line, whatever a name holds


def _count_kinds(problems: Sequence[Problem]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in Counter(p.kind for p in problems).most_common())


class DataError(ValueError):
    """Raised with every problem found, so one run shows everything that needs fixing."""

    def __init__(self, problems: Sequence[Problem], hint: str = ""):
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            lines.append(f"... and {len(self.problems) - MAX_LISTED} more")
        head = f"{len(self.problems)} data problem(s) ({_count_kinds(self.problems)})"
        super().__init__(head + (f"; {hint}" if hint else "") + ":\n  " + "\n  ".join(lines))


@dataclass
class ValidationReport:
    """What the validation pass found in one table."""

    source: str
    n_rows: int
    problems: list[Problem] = field(default_factory=list)
    skipped_rows: int = 0
    notes: list[str] = field(default_factory=list)  # what the check said besides the problems (logged as said)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Problems per kind."""
        return dict(Counter(p.kind for p in self.problems))

    def summary(self) -> str:
        if self.ok:
            return f"{self.source}: {self.n_rows} rows, no problems"
        return (
            f"{self.source}: skipped {self.skipped_rows} of {self.n_rows} rows "
            f"({_count_kinds(self.problems)})"
        )


def validate_rows(
    rows: Sequence[RawRow],
    *,
    source: str,
    on_bad_row: str = "error",
    check_images: bool = True,
    log: Callable[[str], None] | None = print,
    workers: int | None = None,
    check_cache: Path | None = None,
    decode: Callable[[list[Path]], list[Path]] | None = None,
) -> tuple[list[RawRow], ValidationReport]:
    """Check all rows; return the good ones and a report, or raise `DataError` listing every problem.

    `check_images=False` still checks that each image file exists, but does not decode it.
    `check_cache`: a folder where each decoded image's result is kept (data/fingerprint.py), so
    an unchanged image is not decoded again at the next start.
    With `on_bad_row="skip"` each problem is logged and the rows it touches are dropped.
    `decode`: which of the images to check (`images_to_check`); all of them if None.
    """
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")
    problems: list[Problem] = []
    bad: set[int] = set()

    def flag(i: int, kind: str, detail: str) -> None:
        r = rows[i]
        problems.append(Problem(r.source, r.line, r.uid, kind, detail))
        bad.add(i)

    first_seen: dict[str, int] = {}
    seen_captions: dict[tuple[str, str], int] = {}
    several: set[str] = set()  # the uids with more than one row
    for i, r in enumerate(rows):
        if r.error is not None:
            flag(i, *r.error)
            continue
        if not r.captions or any(not c.strip() for c in r.captions):
            flag(i, "empty caption", "empty caption")
        j = first_seen.setdefault(r.uid, i)
        if rows[j].image_path != r.image_path:
            flag(i, "duplicate uid", f"duplicate uid (first at line {rows[j].line}) with a different "
                 f"image: {r.image_path} vs {rows[j].image_path}")
            continue
        if j == i:
            continue  # its captions are noted when a second row of the uid comes (most uids have one row)
        if r.uid not in several:
            several.add(r.uid)
            for c in rows[j].captions:
                seen_captions.setdefault((r.uid, c), j)
        for c in r.captions:
            k = seen_captions.setdefault((r.uid, c), i)
            if k != i:
                flag(i, "duplicate uid", f"duplicate row: same uid and caption as line {rows[k].line}")
                break

    # The rows of each image: an index, or a list where rows share the image (most images have one
    # row, and a list per image was a tenth of the check's memory).
    by_image: dict[Path, int | list[int]] = {}
    for i, r in enumerate(rows):
        if r.image_path is not None:
            users = by_image.setdefault(r.image_path, i)
            if isinstance(users, list):
                users.append(i)
            elif users != i:
                by_image[r.image_path] = [users, i]
    checks = ImageChecks(check_cache if check_images else None, source, log)
    checked = list(by_image) if decode is None else decode(list(by_image))
    image_problems, notes = _check_images(checked, check_images, workers, log, checks)
    checks.save(also=by_image)  # a sample's other images keep their results for a later full check
    for path, (kind, detail) in image_problems:
        users = by_image[path]
        users = users if isinstance(users, list) else [users]
        if len(users) > 1:
            detail += f" (used by {len(users)} rows)"
        r = rows[users[0]]
        problems.append(Problem(r.source, r.line, r.uid, kind, detail))
        bad.update(users)

    problems.sort(key=lambda p: (p.source, p.line))
    # A record that swallowed rows counts as all of them, so "skipped N of M" is true of the table.
    report = ValidationReport(source, sum(r.covers for r in rows), problems,
                              skipped_rows=sum(rows[i].covers for i in bad), notes=notes)
    if problems and on_bad_row == "error":
        raise DataError(problems, hint="fix the data or set on_bad_row='skip'")
    if log is not None:
        for p in problems:
            log(str(p))
        log(report.summary())
    kept = [r for i, r in enumerate(rows) if i not in bad]
    if not kept:
        raise DataError([Problem(source, 1, None, "no rows", f"no usable rows left of {len(rows)}")])
    return kept, report


def images_to_check(mode: str, sample: int, log: Callable[[str], None] | None = None, seed: int = 0
                    ) -> Callable[[list[Path]], list[Path]] | None:
    """The images a `data.check` mode checks at start (None: all of them): `sample` picks the same
    ones at every start (seeded, over the sorted paths), `none` none."""
    if mode == "full":
        return None

    def pick(paths: list[Path]) -> list[Path]:
        chosen = [] if mode == "none" else sorted(random.Random(seed).sample(sorted(paths), min(sample, len(paths))))
        if log is not None and len(chosen) < len(paths):
            log(f"data.check={mode}: {len(chosen)} of {len(paths)} images checked at start; the others are "
                "checked when the run reads them (data.on_bad_row applies then)")
        return chosen

    return pick


# Images handed to the thread pool at a time: the futures and results of one chunk are held, not
# those of the whole table (at 100,000 images all at once they were most of the check's memory).
CHECK_CHUNK = 1024


def _check_images(
    paths: list[Path], decode: bool, workers: int | None, log: Callable[[str], None] | None = None,
    checks: ImageChecks | None = None,
) -> tuple[list[tuple[Path, tuple[str, str]]], list[str]]:
    """The problems found, in the order of `paths`, and the notes logged (images read reduced)."""
    checks = checks or ImageChecks(None, "")
    problems: dict[Path, tuple[str, str]] = {}
    reduced: list[tuple[Path, tuple[int, int]]] = []
    todo = []
    for path in paths:
        if not path.is_file():
            problems[path] = ("missing image", f"image not found: {path}")
        elif decode:
            known = checks.get(stat_key(path))
            if known is None:
                todo.append(path)
            elif known.problem:
                problems[path] = known.problem
            elif known.reduced_from:
                reduced.append((path, known.reduced_from))

    def check(path: Path) -> tuple[StatKey | None, CheckResult]:
        try:
            key = stat_key(path)
            digest = image_digest(path, key)
        except OSError as e:  # not remembered: a file made readable again keeps its modification time
            return None, CheckResult("", ("unreadable image", f"unreadable image: {path} ({type(e).__name__}: {e})"),
                                     None)
        IMAGE_WORK.count(decoded=1)
        try:
            img = load_rgb(path)
        except ImageReadError as e:
            return key, CheckResult(digest, ("unreadable image", f"unreadable image: {path} ({e.reason})"), None)
        return key, CheckResult(digest, None, img.info.get(REDUCED_FROM))

    if todo:
        # Decoding releases the GIL, so threads give a real speed-up on big tables.
        with ThreadPoolExecutor(workers or min(32, (os.cpu_count() or 1) + 4)) as pool, \
                tqdm(total=len(todo), desc="checking images", unit="img",
                     disable=len(todo) < PROGRESS_MIN_IMAGES) as bar:
            for start in range(0, len(todo), CHECK_CHUNK):
                chunk = todo[start:start + CHECK_CHUNK]
                for path, (key, result) in zip(chunk, pool.map(check, chunk)):
                    if result.problem:
                        problems[path] = result.problem
                    elif result.reduced_from:
                        reduced.append((path, result.reduced_from))
                    if result.digest:
                        checks.put(key, result)
                bar.update(len(chunk))
    notes = [_reduced_note(sorted(reduced))] if reduced else []
    if log is not None:
        for line in notes:
            log(line)
    return [(p, problems[p]) for p in paths if p in problems], notes


def _reduced_note(reduced: list[tuple[Path, tuple[int, int]]]) -> str:
    shown = ", ".join(f"{p} ({w} x {h})" for p, (w, h) in reduced[:5])
    return (f"{len(reduced)} image(s) larger than {MAX_SIDE} px on a side are read reduced to at most {MAX_SIDE} px: "
            f"{shown}{' ...' if len(reduced) > 5 else ''}")
