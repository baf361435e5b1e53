"""Loading the model and running the HTTP server until SIGTERM or Ctrl-C, which stop it
gracefully: no new connections, the requests in flight and queued are answered, then exit."""
from __future__ import annotations

import socket
import sys
from typing import Optional, Sequence

import torch
from PIL import Image

from memecap.config import GenerationConfig
from memecap.data.datasets import CaptionEvalSet
from memecap.inference.exported import caption_batch
from memecap.serve.batching import Batcher, Captioned, RunBatch
from memecap.serve.settings import ServeSettings
from memecap.serve.stats import ServerStats

SHUTDOWN_GRACE_SECONDS = 60  # the longest a stop waits for open connections before closing them


def model_runner(model, device: torch.device) -> RunBatch:
    """Captions of a batch of images with a model behind the protocol (any family), and the text
    it read on each where it reads text."""

    @torch.no_grad()
    def run(images: list, generation: GenerationConfig) -> list:
        dataset = CaptionEvalSet(model.image_inputs(images, cache_dir=None, device=device, progress=False))
        captions, texts = caption_batch(model, [dataset[i] for i in range(len(dataset))], generation, device=device)
        return [Captioned(list(caps), None if texts is None else texts[i]) for i, caps in enumerate(captions)]

    return run


def serve(target: str, overrides: Sequence[str], settings: ServeSettings, *, device: Optional[str] = None) -> int:
    import uvicorn

    from memecap.inference.exported import default_device, open_model
    from memecap.ocr.run import read_in_this_process
    from memecap.serve.app import create_app

    # A server process runs threads (the event loop, the model's worker): a fork of it for an
    # OCR pool could hang on a lock one of them held. Its batches are small: read them here.
    read_in_this_process()
    loaded = open_model(target, overrides)
    where = torch.device(device) if device else default_device()
    model = loaded.model.to(where).eval()
    generation = loaded.generation or GenerationConfig()
    run = model_runner(model, where)
    run([Image.new("RGB", (64, 64), "white")], generation)  # fails here, not on the first client, if it cannot caption
    stats = ServerStats()
    batcher = Batcher(run, max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000,
                      max_queue=settings.max_queue, on_batch=stats.batch_done)
    app = create_app(batcher, settings, stats, generation=generation, source=target)
    sock = _bound_socket(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS, limit_concurrency=None)
    server = uvicorn.Server(config)
    shown_host = f"[{host}]" if ":" in host else host
    key = " (API key required)" if settings.api_key() else ""
    print(f"memecap: serving {target} on {where} at http://{shown_host}:{port}/{key}; "
          f"POST /caption, GET /health, /metrics; Ctrl-C or SIGTERM stops it", flush=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn hands the stop signal back once it has shut down gracefully
    finally:
        sock.close()
    answered = sum(stats.responses.values())
    print(f"memecap: server stopped after {answered} caption request(s) "
          f"({stats.batched_images} image(s) in {stats.batches} batch(es))", file=sys.stderr, flush=True)
    return 0 if server.started else 1


def _bound_socket(host: str, port: int) -> socket.socket:
    """Bound and listening before uvicorn starts, so port 0 (any free port) is known and printed,
    and a client that connects at once waits in the backlog instead of being refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    return sock
