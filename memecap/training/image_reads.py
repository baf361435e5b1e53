"""Reading a stage's images when `data.check` left some unchecked: an image that cannot be read is
met here, and `data.on_bad_row` decides as it would have at the start (skip: its rows are dropped
and the others read again, what was already computed coming back from the cache; error: the run
stops naming the table row). Images read only when a batch is made (a trained encoder's pixels, a
VLM's processor) are met in the batch's collate (`RowCollate`), with the same choice."""
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


class RowCollate:
    """A loader's collate that names the table row of an image met unreadable while its batch is made:
    `data.on_bad_row=skip` drops that image's items from the batch (said once per image), `error` stops.
    Items carry their example's index in `examples` (`owner`, or an evaluation item's `index`); an item
    whose image could not be read carries `unreadable` (the error) instead of the image."""

    def __init__(self, collate: Callable[[list], dict], examples: Sequence[Example], *, on_bad_row: str, split: str,
                 log: Callable[[str], None]):
        self.collate, self.examples, self.on_bad_row, self.split, self.log = collate, examples, on_bad_row, split, log
        self.said: set[Path] = set()

    def __call__(self, items: list[dict]) -> dict:
        while True:
            late = next((it["unreadable"] for it in items if "unreadable" in it), None)
            if late is not None:
                items = self._without(items, late)
                continue
            try:
                return self.collate([{k: v for k, v in it.items() if k != "owner"} for it in items])
            except ImageReadError as err:
                items = self._without(items, err)

    def _without(self, items: list[dict], err: ImageReadError) -> list[dict]:
        bad = [it for it in items if Path(self.examples[_owner(it)].image_path) == err.path]
        if not bad:
            raise err
        ex = self.examples[_owner(bad[0])]
        problem = Problem(ex.source, ex.line, ex.uid, "unreadable image",
                          f"unreadable image: {err.path} ({err.reason})")
        if self.on_bad_row == "error":
            raise DataError([problem], hint=f"met while reading the {self.split} images: data.check=full finds "
                            "every bad image before training; data.on_bad_row=skip drops them")
        if err.path not in self.said:
            self.said.add(err.path)
            self.log(f"{problem} (met while reading the {self.split} images: skipped)")
        kept = [it for it in items if not any(it is b for b in bad)]
        if not kept:
            raise DataError([problem], hint=f"every image of a {self.split} batch was unreadable")
        return kept


def _owner(item: dict) -> int:
    return item["owner"] if "owner" in item else item["index"]
