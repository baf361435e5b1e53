"""The HTTP routes, on FastAPI: the page, POST /caption, /health and /metrics.

POST /caption takes the image's bytes as the body (any image type), or, where the server allows
files, `{"path": "relative/to/allowed.jpg"}` as JSON. Decoding settings are query parameters
(`?strategy=beam&num_beams=5`). Every answer is JSON; errors are `{"error": "..."}` with a 4xx
status saying whose fault it is, or 503 (busy, or stopping) with Retry-After.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import fields
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from memecap.config import ConfigError, GenerationConfig
from memecap.generation import with_overrides
from memecap.serve.batching import Batcher, QueueFull, ShuttingDown
from memecap.serve.settings import ServeSettings
from memecap.serve.stats import ServerStats
from memecap.serve.uploads import ImageRefused, image_from_body, image_from_path

_DEFAULTS = GenerationConfig()
DECODING_PARAMETERS = {f.name: type(getattr(_DEFAULTS, f.name)) for f in fields(GenerationConfig)}


class Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def create_app(batcher: Batcher, settings: ServeSettings, stats: ServerStats, *, generation: GenerationConfig,
               source: str) -> FastAPI:
    """The server's app. The batcher starts with the app and, at shutdown (after the requests in
    flight are answered), finishes what is queued."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.close)

    app = FastAPI(title="memecap", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    page = resources.files("memecap.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "model": source, "in_flight": stats.in_flight,
                             "waiting": batcher.waiting(), "key_required": settings.api_key() is not None})

    @app.get("/metrics")
    async def metrics(request: Request):
        try:
            _check_key(request, settings)
        except Refused as err:
            return _refusal(err)
        return PlainTextResponse(stats.prometheus(waiting=batcher.waiting()),
                                 media_type="text/plain; version=0.0.4")

    @app.post("/caption")
    async def caption(request: Request) -> JSONResponse:
        start = time.perf_counter()
        stats.received()
        try:
            answer = await _caption(request, batcher, settings, generation)
        except Refused as err:
            stats.answered(err.status, time.perf_counter() - start)
            return _refusal(err)
        seconds = time.perf_counter() - start
        stats.answered(200, seconds)
        return JSONResponse({**answer, "seconds": round(seconds, 4)})

    return app


async def _caption(request: Request, batcher: Batcher, settings: ServeSettings, base: GenerationConfig) -> dict:
    _check_key(request, settings)
    generation = decoding_settings(dict(request.query_params), base, settings)
    body = await _body(request, settings.max_body_bytes)
    try:
        if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
            image = await run_in_threadpool(image_from_path, _json_path(body), allowed=settings.allow_files,
                                            max_pixels=settings.max_pixels)
        else:
            image = await run_in_threadpool(image_from_body, body, max_pixels=settings.max_pixels)
    except ImageRefused as err:
        raise Refused(err.status, str(err)) from None
    try:
        future = batcher.submit(image, generation)
    except (QueueFull, ShuttingDown) as err:
        raise Refused(503, f"busy: {err}; try again shortly", {"Retry-After": "1"}) from None
    try:
        result = await asyncio.wrap_future(future)
    except Exception as err:  # noqa: BLE001 - the model failed on this image: the client is told, the server lives
        print(f"memecap serve: captioning failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        raise Refused(500, f"captioning failed: {type(err).__name__}: {err}") from None
    return {"caption": result.captions[0], "captions": list(result.captions), "ocr_text": result.ocr_text,
            "batch_size": result.batch_size}


def decoding_settings(query: dict, base: GenerationConfig, settings: ServeSettings) -> GenerationConfig:
    """The model's decoding settings with a request's query parameters applied, within the
    server's limits (a client cannot ask for 10,000 tokens or 500 beams)."""
    unknown = sorted(set(query) - set(DECODING_PARAMETERS))
    if unknown:
        raise Refused(422, f"unknown parameter(s) {', '.join(unknown)}; decoding settings are "
                           f"{', '.join(sorted(DECODING_PARAMETERS))}")
    values = {}
    for name, text in query.items():
        kind = DECODING_PARAMETERS[name]
        try:
            values[name] = kind(text)
        except ValueError:
            raise Refused(422, f"{name}={text!r}: expected {'an integer' if kind is int else 'a number'}") from None
    if values.get("num_beams", 1) > 1 and "strategy" not in values:
        values["strategy"] = "beam"
    try:
        generation = with_overrides(base, **values)
    except ConfigError as err:
        raise Refused(422, str(err)) from None
    if generation.max_new_tokens > settings.max_new_tokens:
        raise Refused(422, f"max_new_tokens={generation.max_new_tokens}: this server allows at most "
                           f"{settings.max_new_tokens}")
    for name in ("num_beams", "num_return_sequences"):
        if getattr(generation, name) > settings.max_beams:
            raise Refused(422, f"{name}={getattr(generation, name)}: this server allows at most {settings.max_beams}")
    return generation


def _check_key(request: Request, settings: ServeSettings) -> None:
    expected = settings.api_key()
    if expected is None:
        return
    sent = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Refused(401, "an API key is required: send it as the X-API-Key header (or Authorization: Bearer KEY)",
                      {"WWW-Authenticate": "Bearer"})


async def _body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` (from its declared
    length, or while it streams in), so an oversized upload is never held whole."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"the body is {int(declared):,} bytes; this server takes at most {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"the body is over {limit:,} bytes, the most this server takes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_path(body: bytes) -> str:
    try:
        path = json.loads(body).get("path")
    except (ValueError, AttributeError):
        path = None
    if not isinstance(path, str) or not path:
        raise ImageRefused(400, 'a JSON body names a file: {"path": "meme.jpg"} (or send the image bytes instead)')
    return path


def _refusal(err: Refused) -> JSONResponse:
    return JSONResponse({"error": str(err)}, status_code=err.status, headers=err.headers)
