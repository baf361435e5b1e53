"""Reading a stage's images when `data.check` left some unchecked: an image that cannot be read is
met here, and `data.on_bad_row` decides as it would have at the start (skip: its rows are dropped
and the others read again, what was already computed coming back from the cache; error: the run
stops naming the table row)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from memecap.data.images import ImageReadError
from memecap.data.tables import Example
from memecap.data.validation import DataError, Problem


def readable_inputs(examples: Sequence[Example], read: Callable[[list], object], *, on_bad_row: str, split: str,
                    log: Callable[[str], None]) -> tuple[list[Example], object]:
    """The examples whose images could be read, and what `read` made of their images."""
    examples = list(examples)
    while True:
        try:
            return examples, read([ex.image_path for ex in examples])
        except ImageReadError as err:
            bad = [ex for ex in examples if Path(ex.image_path) == err.path]
            if not bad:
                raise
            problems = [Problem(ex.source, ex.line, ex.uid, "unreadable image",
                                f"unreadable image: {err.path} ({err.reason})") for ex in bad]
            if on_bad_row == "error":
                raise DataError(problems, hint=f"met while reading the {split} images: data.check=full finds "
                                "every bad image before training; data.on_bad_row=skip drops them") from None
            for problem in problems:
                log(f"{problem} (met while reading the {split} images: skipped)")
            examples = [ex for ex in examples if Path(ex.image_path) != err.path]
            if not examples:
                raise DataError([Problem(bad[0].source, 1, None, "no rows",
                                         f"no {split} row has a readable image")]) from None
