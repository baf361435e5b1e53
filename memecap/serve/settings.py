"""What `memecap serve` accepts: limits that keep one client from taking the server down."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"  # 0.0.0.0 to answer other machines (then set an API key)
    port: int = 8000  # 0: any free port (the one taken is printed)
    max_batch: int = 8  # images captioned together at most
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for others
    max_queue: int = 64  # requests waiting beyond it are refused with 503 (the client retries later)
    max_body_bytes: int = 10 * 1024 * 1024  # an upload above it is refused with 413
    max_pixels: int = 40_000_000  # an image with more pixels is refused with 413 before it is decoded
    max_new_tokens: int = 256  # the most a request may ask for (generation.max_new_tokens)
    max_beams: int = 8  # the most beams or returned captions a request may ask for
    api_key_env: str = "MEMECAP_API_KEY"  # when this variable is set, /caption and /metrics need its value
    allow_files: Optional[Path] = None  # a folder whose files a request may name by path (off: uploads only)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port {self.port}: must be 0..65535")
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_pixels", "max_new_tokens", "max_beams"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.max_wait_ms < 0:
            raise ValueError("--max-wait-ms must be >= 0")
        if self.allow_files is not None and not Path(self.allow_files).is_dir():
            raise ValueError(f"--allow-files {self.allow_files}: no such folder")

    def api_key(self) -> Optional[str]:
        """The key clients must send, read from the environment at each request: never stored,
        logged or written anywhere."""
        return os.environ.get(self.api_key_env) or None
