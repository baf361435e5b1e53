"""Reading caption tables (meme TSV, CSV, JSONL, Hugging Face datasets) into examples."""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from memecap.data.table_checks import TableCheck
from memecap.data.validation import DataError, Problem, RawRow, ValidationReport, images_to_check, validate_rows

TEXT_COLUMNS = ("text", "caption", "captions", "description")
UID_COLUMNS = ("uid", "id", "image_id")
DEFAULT_CACHE = Path(os.environ.get("MEMECAP_CACHE", "~/.cache/memecap")).expanduser()


@dataclass(frozen=True, slots=True)  # slots: one per image, held for the whole run
class Example:
    """One image and all its reference captions; `source:line` point at its first row."""

    uid: str
    image_path: Path
    captions: tuple[str, ...]
    source: str
    line: int


def read_table(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> list[RawRow]:
    """Read a `.tsv` (the meme project's `&`-quoted format), `.csv` or `.jsonl` table.

    Images default to `images/{uid}.jpg` next to the table, or `{image_dir}/{uid}.jpg`;
    an `image` column, if present, is a path relative to `image_dir` or the table's folder.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return _read_delimited(path, image_dir, delimiter="\t", quotechar="&")
    if suffix == ".csv":
        return _read_delimited(path, image_dir, delimiter=",", quotechar='"')
    if suffix == ".jsonl":
        return _read_jsonl(path, image_dir)
    raise ValueError(f"{path}: unsupported table type {suffix!r}; use .tsv, .csv, .jsonl or hf:<id>")


def _image_path(uid: str, image: str | None, table: Path, image_dir: str | os.PathLike | None) -> Path:
    if image:
        p = Path(image)
        return p if p.is_absolute() else Path(image_dir or table.parent) / p
    return Path(image_dir or table.parent / "images") / f"{uid}.jpg"


class _Lines:
    """A table's lines, read and decoded one at a time (a big table is never all in memory as bytes
    and as text): one bad byte costs one row and the error names its line (`bad`: line number ->
    what is wrong). With `keep`, the lines read since the last `take()` are kept, for a record that
    must be shown whole."""

    def __init__(self, path: Path, keep: bool = False):
        self.path, self.keep = path, keep
        self.bad: dict[int, str] = {}
        self.recent: list[str] = []

    def __iter__(self) -> Iterator[str]:
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    self.bad[number] = (f"bad UTF-8 encoding: byte 0x{raw[e.start]:02x} at offset {e.start + 1} "
                                        "in the line")
                    line = raw.decode("utf-8", errors="replace")
                if self.keep:
                    self.recent.append(line)
                yield line

    def take(self) -> list[str]:
        """The lines read since the last call (those of the record just read)."""
        taken, self.recent = self.recent, []
        return taken


def _header_columns(fields: list[str], source: str, fmt: str) -> tuple[int, int, int | None]:
    names = [f.strip().lower() for f in fields]
    text = next((names.index(c) for c in TEXT_COLUMNS if c in names), None)
    if "uid" not in names or text is None:
        raise DataError([Problem(source, 1, None, "bad header",
                                 f"bad header {fields!r}: expected columns uid and text ({fmt})")])
    return names.index("uid"), text, names.index("image") if "image" in names else None


def _read_delimited(path: Path, image_dir, *, delimiter: str, quotechar: str) -> list[RawRow]:
    source = str(path)
    fmt = "tab-separated, quotechar &" if delimiter == "\t" else "comma-separated"
    lines = _Lines(path, keep=True)
    # strict: a stray quote character is an error here instead of silently eating the next rows.
    reader = csv.reader(lines, delimiter=delimiter, quotechar=quotechar, strict=True)
    rows: list[RawRow] = []
    columns = None
    end = 0
    while True:
        start = end + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # the reader resets itself, so the next record still parses
            end = reader.line_num
            rows.append(_swallowed(lines.take(), source, start, end, f"cannot parse: {e}", delimiter, quotechar))
            continue
        end = reader.line_num
        record = lines.take()
        if not fields:
            continue  # blank line
        if end > start and delimiter == "\t" and any(re.search(r"\n[^\n]*\t", f) for f in fields):
            # A legal quoted field that swallowed whole rows: two stray quotes, lines apart.
            detail = "one quoted field holds tab-separated rows"
            rows.append(_swallowed(record, source, start, end, detail, delimiter, quotechar))
            continue
        if columns is None:
            columns = _header_columns(fields, source, fmt)
            n_fields = len(fields)
            continue
        encoding = next((lines.bad[n] for n in range(start, end + 1) if n in lines.bad), None)
        rows.append(_delimited_row(fields, columns, n_fields, source, start, encoding, path, image_dir))
    if columns is None:
        raise DataError([Problem(source, 1, None, "bad header", "empty file: no header")])
    return rows


def _swallowed(lines: list[str], source: str, start: int, end: int, detail: str, delimiter: str,
               quotechar: str) -> RawRow:
    """A record (`lines`: its lines, `start` to `end`) that could not be split into rows, counted as
    every non-blank line it covers, so a summary says how many rows it cost, with the quoting rule
    that made it."""
    covers = max(1, sum(1 for line in lines if line.strip()))
    if end > start:
        detail += f"; lines {start}-{end} ({covers} rows) are dropped together"
    opening = [i for i, f in enumerate(lines[0].rstrip("\r\n").split(delimiter), 1) if f.startswith(quotechar)]
    if opening:
        detail += (f"; field {opening[0]} of line {start} starts with {quotechar}, which opens a quoted field "
                   f"that runs to the next lone {quotechar} (a literal {quotechar} starting a field is written "
                   f"quoted and doubled: {quotechar * 3}...{quotechar})")
    return RawRow(source, start, None, None, (), ("bad row", detail), covers)


def _delimited_row(fields, columns, n_fields, source, start, encoding, path, image_dir) -> RawRow:
    uid_col, text_col, image_col = columns
    uid = fields[uid_col].strip() if uid_col < len(fields) else None
    if encoding:
        return RawRow(source, start, uid, None, (), ("bad encoding", encoding))
    if len(fields) != n_fields:
        hint = "; an unquoted delimiter inside the text?" if len(fields) > n_fields else ""
        detail = f"expected {n_fields} fields, got {len(fields)}{hint}"
        return RawRow(source, start, uid, None, (), ("bad row", detail))
    image = fields[image_col].strip() if image_col is not None else None
    error = _uid_error(uid, image)
    if error:
        return RawRow(source, start, uid or None, None, (), ("bad row", error))
    caption = fields[text_col].strip()
    return RawRow(source, start, uid, _image_path(uid, image, path, image_dir), (caption,))


def _uid_error(uid: str | None, image: str | None) -> str | None:
    if not uid:
        return "empty uid"
    # Without an image column the uid becomes a file name, so it must not climb out of images/.
    if not image and (re.search(r"[/\\]", uid) or uid in (".", "..")):
        return f"uid {uid!r} cannot name an image file"
    return None


def _read_jsonl(path: Path, image_dir) -> list[RawRow]:
    source = str(path)
    lines = _Lines(path)
    rows = []
    for number, line in enumerate(lines, start=1):
        if number in lines.bad:
            rows.append(RawRow(source, number, None, None, (), ("bad encoding", lines.bad[number])))
        elif line.strip():
            rows.append(_json_row(line, source, number, path, image_dir))
    return rows


def _json_row(line: str, source: str, number: int, path: Path, image_dir) -> RawRow:
    def bad(detail: str, uid: str | None = None) -> RawRow:
        return RawRow(source, number, uid, None, (), ("bad row", detail))

    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return bad(f"invalid JSON: {e}")
    if not isinstance(obj, dict):
        return bad(f"expected a JSON object, got {type(obj).__name__}")
    uid = obj.get("uid")
    uid = str(uid).strip() if isinstance(uid, (str, int)) and not isinstance(uid, bool) else None
    image = obj.get("image")
    if image is not None and not isinstance(image, str):
        return bad("'image' must be a path string", uid)
    error = _uid_error(uid, image)
    if error:
        return bad(error, uid)
    if "captions" in obj:
        captions = obj["captions"]
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            return bad("'captions' must be a list of strings", uid)
    else:
        text = obj.get("text", obj.get("caption"))
        if not isinstance(text, str):
            return bad("needs a 'text' or 'caption' string or a 'captions' list", uid)
        captions = [text]
    captions = tuple(c.strip() for c in captions)
    return RawRow(source, number, uid, _image_path(uid, image, path, image_dir), captions)


def read_hf_dataset(
    path_or_id: str,
    split: str = "train",
    image_column: str = "image",
    text_column: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[RawRow]:
    """Read a Hugging Face dataset: `imagefolder:<dir>` (local, with metadata.jsonl/csv) or a Hub id.

    Images without a local file are written once to `cache_dir/hf_images/<fingerprint>/`.
    `line` in the rows is the 1-based row number in the split.
    """
    import datasets  # slow to import; only this reader needs it

    cache_dir = Path(cache_dir or DEFAULT_CACHE)
    source = f"hf:{path_or_id}@{split}"
    # A local folder is cheap to re-index, so keep its arrow cache out of the user's HF cache.
    local_cache = str(cache_dir / "hf_datasets")
    if path_or_id.startswith("imagefolder:"):
        data_dir = path_or_id[len("imagefolder:"):]
        ds = datasets.load_dataset("imagefolder", data_dir=data_dir, split=split, cache_dir=local_cache)
    elif Path(path_or_id).is_dir():
        ds = datasets.load_dataset(path_or_id, split=split, cache_dir=local_cache)
    else:
        ds = datasets.load_dataset(path_or_id, split=split)
    names = ds.column_names
    text_column = text_column or next((c for c in TEXT_COLUMNS if c in names), None)
    if image_column not in names or text_column not in names:
        raise DataError([Problem(source, 1, None, "bad header",
                                 f"columns {names}: need image column {image_column!r} and a text "
                                 f"column ({text_column or ' / '.join(TEXT_COLUMNS)})")])
    uid_column = next((c for c in UID_COLUMNS if c in names), None)
    image_root = cache_dir / "hf_images" / ds._fingerprint
    # Undecoded images keep their original path and bytes: no re-encoding, no PIL objects in memory.
    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    rows = []
    for i, record in enumerate(ds):
        image = record[image_column] or {}
        local = image.get("path")
        uid = str(record[uid_column]) if uid_column else (Path(local).stem if local else str(i))
        text = record[text_column]
        captions = tuple(c.strip() for c in text) if isinstance(text, list) else ((text or "").strip(),)
        if local and Path(local).is_file():
            rows.append(RawRow(source, i + 1, uid, Path(local), captions))
        elif image.get("bytes"):
            rows.append(RawRow(source, i + 1, uid, _materialise(image["bytes"], image_root, i), captions))
        else:
            missing = ("missing image", f"no image in column {image_column!r}")
            rows.append(RawRow(source, i + 1, uid, None, captions, missing))
    return rows


def _materialise(data: bytes, root: Path, index: int) -> Path:
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            suffix = "." + (img.format or "img").lower()
    except (OSError, ValueError):
        suffix = ".img"  # validation will report it as unreadable
    path = root / f"{index:07d}{suffix}"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic, so a second process never sees half a file
    return path


def load_split(
    path: str | os.PathLike,
    *,
    image_dir: str | os.PathLike | None = None,
    on_bad_row: str = "error",
    max_rows: int | None = None,
    check_images: bool = True,
    cache_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = print,
    check_cache: str | os.PathLike | None = None,
    check: str = "full",
    check_sample: int = 1000,
) -> tuple[list[Example], ValidationReport]:
    """Read a table or `hf:<id>[@split]` (`hf:imagefolder:/data/memes@train`), validate, group.

    `max_rows` keeps the rows of the first N uids (all captions of each). Bad rows raise
    `DataError` listing every problem, or with `on_bad_row="skip"` are dropped and logged.
    `check_cache`: where the image check keeps its results, and the whole table's check its record
    (data/table_checks.py: an unchanged table with unchanged images is not checked again); none kept if None.
    `check`, `check_sample`: which images are decoded now (`data.check`: full | sample | off).
    """
    spec = str(path)
    if spec.startswith("hf:"):
        if image_dir is not None:
            raise ValueError("image_dir does not apply to hf: datasets; their images come with them")
        ident, split = _parse_hf(spec[3:])
        rows = read_hf_dataset(ident, split, cache_dir=cache_dir)
        source = f"hf:{ident}@{split}"
    else:
        rows = read_table(path, image_dir)
        source = str(path)
    if max_rows is not None:
        keep = list(dict.fromkeys(r.uid for r in rows))[:max_rows]
        keep_set = set(keep)
        rows = [r for r in rows if r.uid in keep_set]
    record = None
    if check_cache is not None and not spec.startswith("hf:"):
        settings = {"on_bad_row": on_bad_row, "check": check, "check_images": check_images, "max_rows": max_rows,
                    "check_sample": check_sample if check == "sample" else None,
                    "image_dir": None if image_dir is None else str(image_dir)}
        record = TableCheck(Path(check_cache), source, Path(path), rows, settings)
        known = record.recall(rows, log)
        if known is not None:
            return group_examples(known[0]), known[1]
    said: list[str] = []  # which images a sample checks, said again when the record is used

    def heard(line: str) -> None:
        said.append(line)
        if log is not None:
            log(line)

    kept, report = validate_rows(rows, source=source, on_bad_row=on_bad_row,
                                 check_images=check_images, log=log,
                                 check_cache=Path(check_cache) if check_cache is not None else None,
                                 decode=images_to_check(check, check_sample, heard))
    report.notes[:0] = said
    if record is not None:
        record.keep(rows, kept, report)
    return group_examples(kept), report


def _parse_hf(spec: str) -> tuple[str, str]:
    # `@split` is only a split when it has no path separator, so `/data/a@b/x` stays a path.
    ident, at, split = spec.rpartition("@")
    if at and split and "/" not in split and "\\" not in split:
        return ident, split
    return spec, "train"


def group_examples(rows: list[RawRow]) -> list[Example]:
    """Merge valid rows with the same uid (several references per image) into Examples."""
    # A uid's row, or the list of its rows where it has several; a lone row's captions are used as
    # they are (most uids have one row: no list and no new tuple per image).
    groups: dict[str, RawRow | list[RawRow]] = {}
    for r in rows:
        first = groups.setdefault(r.uid, r)
        if isinstance(first, list):
            first.append(r)
        elif first is not r:
            groups[r.uid] = [first, r]
    return [
        Example(uid, g.image_path, g.captions, g.source, g.line) if isinstance(g, RawRow) else
        Example(uid, g[0].image_path, tuple(c for r in g for c in r.captions), g[0].source, g[0].line)
        for uid, g in groups.items()
    ]
