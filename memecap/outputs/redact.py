"""Secrets out of what memecap prints. A server may echo the request back in its error (its
headers, a URL with `?token=`), and that text reaches memecap's error line, a terminal's
scrollback, a CI log. Every message memecap shows a person goes through `redact` (and
`said`, which also escapes control characters) first."""
from __future__ import annotations

import os
import re

HIDDEN = "[redacted]"
SECRET_ENV = re.compile(r"(TOKEN|_KEY|SECRET|PASSWORD)$")
PATTERNS = (
    # An HTTP header or its Python/JSON repr: `Authorization: Bearer x`, `'authorization': 'Basic x'`.
    (re.compile(r"""(?i)(\b(?:proxy-)?authorization['"]?\s*[:=]\s*['"]?)(?:(bearer|basic|token)\s+)?[^\s'",}]+"""),
     lambda m: m.group(1) + (m.group(2) + " " if m.group(2) else "") + HIDDEN),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), lambda m: m.group(1) + HIDDEN),
    # Hugging Face tokens (user and organisation API tokens) wherever they stand.
    (re.compile(r"\b(?:hf|api_org)_[A-Za-z0-9]{16,}"), lambda m: HIDDEN),
    # `token=...` in a URL query or a form; `"token": "..."` in JSON.
    (re.compile(r"(?i)\b((?:access_|api_|auth_|hf_)?(?:token|key|secret|password)=)[^\s&'\",;]+"),
     lambda m: m.group(1) + HIDDEN),
    (re.compile(r"""(?i)(['"](?:access_|api_|auth_|hf_)?(?:token|key|secret|password)['"]\s*:\s*)(['"])[^'"]*\2"""),
     lambda m: m.group(1) + m.group(2) + HIDDEN + m.group(2)),
)


def redact(text: str) -> str:
    """`text` with credential values replaced by `[redacted]`: authorization headers, bearer
    tokens, Hugging Face tokens, `token=` values, and the value of any environment variable named
    like a secret (HF_TOKEN, ..._API_KEY) that a server may echo in another shape."""
    for name, value in os.environ.items():
        if SECRET_ENV.search(name.upper()) and len(value) >= 8 and value in text:
            text = text.replace(value, HIDDEN)
    for pattern, replace in PATTERNS:
        text = pattern.sub(replace, text)
    return text


def said(message: str) -> str:
    """A message as memecap prints it: no secrets, and the file names in it escaped (one line)."""
    from memecap.outputs.file_names import shown

    return redact(shown(message))
