"""File names that are not valid UTF-8 (folders unpacked from old cp1251 or cp866 archives).

Python lists such names with each undecodable byte as a lone surrogate (PEP 383), which every
UTF-8 writer refuses. memecap keeps them as they are for opening the file, writes them into
JSON as `\\udcXX` escapes (Python's `json.loads` gives back the same name, `os.fsencode` the same
bytes), and shows them to people with `\\xXX` escapes.
"""
from __future__ import annotations

import json
import os


def shown(name: str) -> str:
    """`name` for a log or a page: each byte that is not UTF-8 as `\\xXX`, everything else as is."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def json_line(row: dict) -> bytes:
    """One JSON Lines record as UTF-8 bytes; names with undecodable bytes round-trip exactly."""
    # json.dumps escapes backslashes in values, so a surrogate left in its output is never
    # preceded by one, and backslashreplace turns it into the JSON escape of the same code point.
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")
