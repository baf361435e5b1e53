"""File names that are not valid UTF-8 (folders unpacked from old cp1251 or cp866 archives), or
that hold control characters.

Python lists such names with each undecodable byte as a lone surrogate (PEP 383), which every
UTF-8 writer refuses. memecap keeps them as they are for opening the file, writes them into
JSON as `\\udcXX` escapes (Python's `json.loads` gives back the same name, `os.fsencode` the same
bytes), and shows them to people with `\\xXX` escapes. A newline, ESC or other control character
in a name is shown escaped too: printed raw it would split a one-line message or drive the
terminal (clear the screen, retitle the window, hide what follows).
"""
from __future__ import annotations

import json
import os
import re

# C0, DEL and C1 controls, and the invisible characters that reorder or break lines on screen
# (bidirectional overrides and isolates, the Unicode line and paragraph separators).
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def shown(name: str) -> str:
    """`name` for a log or a page: each byte that is not UTF-8 as `\\xXX`, each control character
    as its Python escape (`\\n`, `\\x1b`, `\\u202e`), everything else as is."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        name = os.fsencode(name).decode("utf-8", "backslashreplace")
    return CONTROL.sub(_escape, name)


def _escape(found: re.Match) -> str:
    return found.group().encode("unicode_escape").decode("ascii")


def json_line(row: dict) -> bytes:
    """One JSON Lines record as UTF-8 bytes; names with undecodable bytes round-trip exactly."""
    # json.dumps escapes backslashes in values, so a surrogate left in its output is never
    # preceded by one, and backslashreplace turns it into the JSON escape of the same code point.
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")
