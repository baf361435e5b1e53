"""Caption every image of a folder into a JSON-lines file, resumably.

Each line is `{"image": <path relative to the folder>, "caption": ..., ["alternatives": [...]]}`,
appended and flushed batch by batch, so an interrupted run loses at most one batch and a rerun
captions only the images not yet in the file. Unreadable images and files that are not images
are reported, never fatal. File names that are not valid UTF-8 are written without loss (see
`memecap.outputs.file_names`).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tqdm.auto import tqdm

from memecap.config import GenerationConfig
from memecap.data.images import MAX_SIDE, ImageReadError, stored_size
from memecap.outputs.file_names import json_line, shown
from memecap.outputs.jsonl_rows import rows_or_first_foreign_line
from memecap.inference.exported import IMAGE_SUFFIXES, caption_paths
from memecap.inference.folder_listing import list_files


@dataclass
class FolderReport:
    captioned: int = 0
    already_done: int = 0
    unreadable: list = field(default_factory=list)  # (relative path, reason)
    not_images: list = field(default_factory=list)  # relative paths
    reduced: list = field(default_factory=list)  # (relative path, original size) of images read reduced
    unfollowed: list = field(default_factory=list)  # (relative path, reason): broken links, link loops

    def format(self, out: Optional[Path]) -> str:
        lines = [f"captioned {self.captioned} image(s)" + (f" into {shown(str(out))}" if out else "")
                 + (f"; {self.already_done} were already there" if self.already_done else "")]
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} unreadable image(s), skipped (a rerun retries them):")
            lines += [f"  {shown(path)}: {reason}" for path, reason in self.unreadable]
        if self.reduced:
            names = ", ".join(f"{shown(path)} ({w} x {h})" for path, (w, h) in self.reduced[:10])
            lines.append(f"{len(self.reduced)} image(s) larger than {MAX_SIDE} px on a side were read reduced: {names}"
                         + (" ..." if len(self.reduced) > 10 else ""))
        if self.unfollowed:
            names = ", ".join(f"{shown(path)} ({shown(why)})" for path, why in self.unfollowed[:10])
            lines.append(f"{len(self.unfollowed)} link(s) or folder(s) could not be followed, skipped: {names}"
                         + (" ..." if len(self.unfollowed) > 10 else ""))
        if self.not_images:
            names = (", ".join(shown(name) for name in self.not_images[:10])
                     + (" ..." if len(self.not_images) > 10 else ""))
            lines.append(f"{len(self.not_images)} file(s) are not images by their extension, skipped: {names}")
        return "\n".join(lines)


def list_folder(target: Path) -> tuple[Path, list[str], list[str], list[tuple[str, str]]]:
    """(root, image paths, other files, links and folders that could not be followed), paths
    relative to root, sorted."""
    root, files, skipped = list_files(target)
    images = [f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return root, images, [f for f in files if Path(f).suffix.lower() not in IMAGE_SUFFIXES], skipped


RECORD_START = b'{"image": '  # how every line this module writes begins
NEWLINE = b"\n"


def done_images(out: Path) -> set[str]:
    """Images already captioned in `out`. The whole file is checked to be a captions file of
    memecap first; only then is a torn last line (a crash mid-write) cut off, so appending
    continues a valid file and a file memecap did not write is never changed."""
    out = Path(out)
    refuse_non_file(out)
    if not out.exists():
        return set()
    data = out.read_bytes()
    end = data.rfind(NEWLINE) + 1
    done = _caption_lines(out, data[:end])
    torn = data[end:]
    if torn and not (torn.startswith(RECORD_START) or RECORD_START.startswith(torn)):
        raise ValueError(_not_ours(out, f"line {data[:end].count(NEWLINE) + 1} is not a caption line"))
    if torn:
        with open(out, "r+b") as f:
            f.truncate(end)
    return done


def refuse_non_file(out: Path) -> None:
    """A folder, pipe or device named by --out is refused before anything opens it."""
    if out.exists() and not out.is_file():
        raise ValueError(f"{out}: not a file; --out names the captions file (JSON Lines) to write")


def _caption_lines(out: Path, data: bytes) -> set[str]:
    rows, foreign = rows_or_first_foreign_line(
        data, lambda row: isinstance(row.get("image"), str) and isinstance(row.get("caption"), str))
    if foreign:
        raise ValueError(_not_ours(out, foreign if foreign.startswith("it ") else f"{foreign} is not a caption line"))
    return {row["image"] for row in rows}


def _not_ours(out: Path, why: str) -> str:
    return (f"{out}: not a captions file of `memecap caption` ({why}); it was left unchanged: "
            "pass another --out, or remove the file if it is yours to lose")


def caption_folder(model, target: Path, generation: GenerationConfig, *, device, out: Optional[Path] = None,
                   batch_size: int = 32, progress: bool = True,
                   emit: Callable[[dict], None] = lambda row: None) -> FolderReport:
    """Caption the images under `target`; rows go to `out` (appended) and to `emit`. A batch is
    checked by its files' headers and handed to the model as paths: the model decodes each image
    when it prepares it and lets it go, so no decoded batch is held beside the model's pixels."""
    root, images, others, unfollowed = list_folder(target)
    report = FolderReport(not_images=others, unfollowed=unfollowed)
    done = done_images(Path(out)) if out else set()
    todo = [f for f in images if f not in done]
    report.already_done = len(images) - len(todo)
    sink = open(out, "ab") if out else None
    bar = tqdm(total=len(todo), desc="captioning", unit="img", disable=not progress or not todo)

    def probe(rel: str):
        try:
            return rel, stored_size(root / rel), None
        except ImageReadError as err:
            return rel, None, shown(err.reason)

    try:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
            for start in range(0, len(todo), batch_size):
                probed = list(pool.map(probe, todo[start:start + batch_size]))
                report.unreadable += [(rel, reason) for rel, _, reason in probed if reason]
                report.reduced += [(rel, size) for rel, size, _ in probed if size and max(size) > MAX_SIDE]
                captioned, unreadable = caption_readable(model, root, [rel for rel, size, _ in probed if size],
                                                         generation, device=device, batch_size=batch_size)
                report.unreadable += unreadable
                for rel, caps in captioned:
                    row = {"image": rel, "caption": caps[0], **({"alternatives": caps[1:]} if len(caps) > 1 else {})}
                    emit(row)
                    if sink:
                        sink.write(json_line(row))
                if sink:
                    sink.flush()
                    os.fsync(sink.fileno())
                report.captioned += len(captioned)
                bar.update(len(probed))
    finally:
        bar.close()
        if sink:
            sink.close()
    return report


def caption_readable(model, root: Path, rels: list[str], generation: GenerationConfig, *, device,
                     batch_size: int) -> tuple[list[tuple[str, list[str]]], list[tuple[str, str]]]:
    """(image, captions) of the images that decode, and (image, reason) of those that do not. An
    image whose header was fine but whose pixels are not (a truncated file) stops the batch; it is
    set aside and the rest captioned again, so a rare bad file costs one batch's work, not the run."""
    unreadable: list[tuple[str, str]] = []
    while rels:
        try:
            captions = caption_paths(model, [root / rel for rel in rels], generation, device=device,
                                     batch_size=batch_size, progress=False)
            return list(zip(rels, captions)), unreadable
        except ImageReadError as err:
            bad = next((rel for rel in rels if root / rel == err.path), None)
            if bad is None:
                raise
            unreadable.append((bad, shown(err.reason)))
            rels = [rel for rel in rels if rel != bad]
    return [], unreadable
