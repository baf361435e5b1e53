"""Reading a JSON Lines file memecap may have written, to tell whether it really did: a command
that appends to or replaces a file it is given checks every line first."""
from __future__ import annotations

import json
from typing import Callable, Optional


def rows_or_first_foreign_line(data: bytes, ours: Callable[[dict], bool]) -> tuple[list[dict], Optional[str]]:
    """The rows of `data` when every non-blank line is a JSON object that `ours` accepts; else
    ([], why not) naming the first line that is not."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], "it is not UTF-8 text"
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not (isinstance(row, dict) and ours(row)):
            return [], f"line {number}"
        rows.append(row)
    return rows, None
