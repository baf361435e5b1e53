"""Caption every image of a folder into a JSON-lines file, resumably.

Each line is `{"image": <path relative to the folder>, "caption": ..., ["alternatives": [...]]}`,
appended and flushed batch by batch, so an interrupted run loses at most one batch and a rerun
captions only the images not yet in the file. Unreadable images and files that are not images
are reported, never fatal.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tqdm.auto import tqdm

from memecap.config import GenerationConfig
from memecap.data.images import ImageReadError, load_rgb
from memecap.inference import IMAGE_SUFFIXES, caption_paths


@dataclass
class FolderReport:
    captioned: int = 0
    already_done: int = 0
    unreadable: list = field(default_factory=list)  # (relative path, reason)
    not_images: list = field(default_factory=list)  # relative paths

    def format(self, out: Optional[Path]) -> str:
        lines = [f"captioned {self.captioned} image(s)" + (f" into {out}" if out else "")
                 + (f"; {self.already_done} were already there" if self.already_done else "")]
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} unreadable image(s), skipped (a rerun retries them):")
            lines += [f"  {path}: {reason}" for path, reason in self.unreadable]
        if self.not_images:
            shown = ", ".join(self.not_images[:10]) + (" ..." if len(self.not_images) > 10 else "")
            lines.append(f"{len(self.not_images)} file(s) are not images by their extension, skipped: {shown}")
        return "\n".join(lines)


def list_folder(target: Path) -> tuple[Path, list[str], list[str]]:
    """(root, image paths, other files), paths relative to root, sorted."""
    target = Path(target)
    if target.is_file():
        root, files = target.parent, [target.name]
    elif target.is_dir():
        root = target
        files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*")
                       if p.is_file() and not p.name.startswith("."))
    else:
        raise FileNotFoundError(f"{target}: no such image or folder")
    images = [f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return root, images, [f for f in files if Path(f).suffix.lower() not in IMAGE_SUFFIXES]


def done_images(out: Path) -> set[str]:
    """Images already captioned in `out`. A torn last line (a crash mid-write) is cut off first,
    so appending continues a valid file."""
    if not out.is_file():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(out, "r+b") as f:
            f.truncate(len(data))
    done = set()
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                done.add(json.loads(line)["image"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{out}:{number}: not a caption line of memecap; "
                                 "pass another --out or remove the file") from None
    return done


def caption_folder(model, target: Path, generation: GenerationConfig, *, device, out: Optional[Path] = None,
                   batch_size: int = 32, progress: bool = True,
                   emit: Callable[[dict], None] = lambda row: None) -> FolderReport:
    """Caption the images under `target`; rows go to `out` (appended) and to `emit`."""
    root, images, others = list_folder(target)
    report = FolderReport(not_images=others)
    done = done_images(Path(out)) if out else set()
    todo = [f for f in images if f not in done]
    report.already_done = len(images) - len(todo)
    sink = open(out, "a", encoding="utf-8") if out else None
    bar = tqdm(total=len(todo), desc="captioning", unit="img", disable=not progress or not todo)

    def read(rel: str):
        try:
            return rel, load_rgb(root / rel), None
        except ImageReadError as err:
            return rel, None, err.reason

    try:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
            for start in range(0, len(todo), batch_size):
                loaded = list(pool.map(read, todo[start:start + batch_size]))
                report.unreadable += [(rel, reason) for rel, _, reason in loaded if reason]
                good = [(rel, img) for rel, img, reason in loaded if not reason]
                captions = caption_paths(model, [img for _, img in good], generation, device=device,
                                         batch_size=batch_size, progress=False) if good else []
                for (rel, _), caps in zip(good, captions):
                    row = {"image": rel, "caption": caps[0], **({"alternatives": caps[1:]} if len(caps) > 1 else {})}
                    emit(row)
                    if sink:
                        sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                if sink:
                    sink.flush()
                    os.fsync(sink.fileno())
                report.captioned += len(good)
                bar.update(len(loaded))
    finally:
        bar.close()
        if sink:
            sink.close()
    return report
