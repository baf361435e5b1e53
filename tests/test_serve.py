"""`memecap serve`: the real command in a subprocess on 127.0.0.1 (the pinned tiny ClipCap export,
and the OCR template baseline for the meme's text), its limits and errors, dynamic batching,
graceful shutdown under load, and the web page in headless Chromium."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from memecap.config import GenerationConfig
from memecap.serve.batching import Batcher, Captioned, QueueFull, ShuttingDown

ROOT = Path(__file__).resolve().parent.parent
EXPORT = ROOT / "tests" / "data" / "exports" / "clipcap"
IMAGES = ROOT / "tests" / "data" / "exports" / "images"
GREEDY = "strategy=greedy&max_new_tokens=12"


# --- the real command ---------------------------------------------------------------------------

@contextmanager
def serving(*args: str, env: dict | None = None):
    """`memecap serve ...` on a free port: yields (base URL, process); stopped with SIGTERM."""
    command = [sys.executable, "-m", "memecap", "serve", *args, "--port", "0"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
                               cwd=ROOT)
    try:
        line = process.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
        assert match, f"no address in {line!r}; stderr: {process.stderr.read() if process.poll() is not None else ''}"
        yield match.group(1), process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def call(url: str, body: bytes | None = None, *, headers: dict | None = None, method: str = "POST"):
    """(status, decoded JSON or text, headers) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(url, data=body, headers=headers or {},
                                     method=method if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status, raw, got = response.status, response.read(), response.headers
    except urllib.error.HTTPError as err:
        status, raw, got = err.code, err.read(), err.headers
    text = raw.decode()
    return status, (json.loads(text) if got.get("content-type", "").startswith("application/json") else text), got


def jpeg(name: str = "0.jpg") -> bytes:
    return (IMAGES / name).read_bytes()


@pytest.fixture(scope="module")
def allowed(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("allowed")
    shutil.copy(IMAGES / "1.jpg", folder / "meme.jpg")
    return folder


@pytest.fixture(scope="module")
def clipcap_server(allowed):
    with serving(str(EXPORT), "--max-batch", "4", "--max-wait-ms", "300", "--max-body-mb", "0.05",
                 "--max-pixels", "1000000", "--max-new-tokens", "40", "--allow-files", str(allowed)) as (url, _):
        yield url


def test_a_caption_over_http_is_the_captioners_own(clipcap_server):
    from memecap.inference.captioner import Captioner

    status, answer, _ = call(f"{clipcap_server}/caption?{GREEDY}", jpeg(), headers={"Content-Type": "image/jpeg"})
    assert status == 200, answer
    expected = Captioner.from_pretrained(EXPORT, device="cpu")(str(IMAGES / "0.jpg"), strategy="greedy",
                                                                max_new_tokens=12)
    assert answer["caption"] == expected and answer["captions"] == [expected]
    assert answer["ocr_text"] is None  # this model reads no text
    assert answer["seconds"] > 0 and answer["batch_size"] >= 1


def test_concurrent_requests_are_batched_and_get_their_own_captions(clipcap_server):
    names = sorted(p.name for p in IMAGES.glob("*.jpg"))[:8]
    alone = {name: call(f"{clipcap_server}/caption?{GREEDY}", jpeg(name))[1]["caption"] for name in names}
    with ThreadPoolExecutor(len(names)) as pool:
        answers = dict(zip(names, pool.map(lambda n: call(f"{clipcap_server}/caption?{GREEDY}", jpeg(n))[1], names)))
    assert {n: a["caption"] for n, a in answers.items()} == alone  # nobody gets a neighbour's caption
    assert max(a["batch_size"] for a in answers.values()) > 1  # they waited for each other
    assert max(a["batch_size"] for a in answers.values()) <= 4  # --max-batch
    _, metrics, _ = call(f"{clipcap_server}/metrics")
    assert re.search(r"^memecap_largest_batch [234]$", metrics, re.M)
    assert int(re.search(r'^memecap_requests_total\{status="200"\} (\d+)$', metrics, re.M).group(1)) >= 2 * len(names)


def test_bad_requests_get_a_4xx_that_says_what_to_do(clipcap_server, tmp_path):
    big = Image.new("RGB", (1200, 1000), "white")  # 1.2 Mpx, a small PNG
    big.save(tmp_path / "big.png")
    cases = [
        (f"{clipcap_server}/caption", b"", {}, 400, "no body"),
        (f"{clipcap_server}/caption", b"this is not an image", {}, 415, "not an image"),
        (f"{clipcap_server}/caption", b"x" * 60_000, {}, 413, "at most 52,428"),
        (f"{clipcap_server}/caption", (tmp_path / "big.png").read_bytes(), {}, 413, "1200 x 1000 pixels"),
        (f"{clipcap_server}/caption?beams=3", jpeg(), {}, 422, "unknown parameter(s) beams"),
        (f"{clipcap_server}/caption?num_beams=many", jpeg(), {}, 422, "num_beams='many': expected an integer"),
        (f"{clipcap_server}/caption?top_p=2", jpeg(), {}, 422, "generation.top_p"),
        (f"{clipcap_server}/caption?max_new_tokens=41", jpeg(), {}, 422, "at most 40"),
        (f"{clipcap_server}/caption?num_beams=9", jpeg(), {}, 422, "at most 8"),
        (f"{clipcap_server}/caption", b'{"path": "../etc/passwd"}', {"Content-Type": "application/json"}, 403,
         "outside the folder"),
        (f"{clipcap_server}/caption", b'{"path": "nothere.jpg"}', {"Content-Type": "application/json"}, 404,
         "no such file"),
        (f"{clipcap_server}/caption", b'{"file": "meme.jpg"}', {"Content-Type": "application/json"}, 400, '"path"'),
    ]
    for url, body, headers, status, words in cases:
        got, answer, _ = call(url, body, headers=headers)
        assert (got, words in answer["error"]) == (status, True), (url, body[:30], got, answer)
        assert "/tmp/memecap-upload" not in answer["error"]  # the server's own file names are not shown


def test_an_allowed_local_file_is_captioned_by_path(clipcap_server, allowed):
    status, by_path, _ = call(f"{clipcap_server}/caption?{GREEDY}", b'{"path": "meme.jpg"}',
                              headers={"Content-Type": "application/json"})
    _, uploaded, _ = call(f"{clipcap_server}/caption?{GREEDY}", (allowed / "meme.jpg").read_bytes())
    assert status == 200 and by_path["caption"] == uploaded["caption"]


@pytest.fixture(scope="module")
def text_meme(tmp_path_factory) -> Path:
    from tests.ocr_images import draw

    path = tmp_path_factory.mktemp("meme") / "friday.jpg"
    draw(path, ["Когда пятница,", "а ты на работе"], "plain")
    return path


@pytest.fixture(scope="module")
def keyed_ocr_server():
    """The OCR template baseline (it quotes the text it reads), behind an API key."""
    with serving("ocr_template", "--api-key-env", "MEMECAP_TEST_SERVE_KEY",
                 env={"MEMECAP_TEST_SERVE_KEY": "s3cret"}) as (url, process):
        yield url, process


def test_a_key_guards_captions_and_the_text_read_is_returned(keyed_ocr_server, text_meme):
    url, process = keyed_ocr_server
    status, answer, headers = call(f"{url}/caption", text_meme.read_bytes())
    assert status == 401 and "X-API-Key" in answer["error"] and headers["WWW-Authenticate"] == "Bearer"
    assert call(f"{url}/caption", text_meme.read_bytes(), headers={"X-API-Key": "wrong"})[0] == 401
    assert call(f"{url}/metrics")[0] == 401
    status, answer, _ = call(f"{url}/caption", text_meme.read_bytes(), headers={"Authorization": "Bearer s3cret"})
    assert status == 200, answer
    assert "пятница" in answer["ocr_text"].lower() and "пятница" in answer["caption"].lower()
    status, health, _ = call(f"{url}/health")
    assert status == 200 and health["key_required"] is True and "s3cret" not in json.dumps(health)
    assert call(f"{url}/caption", b'{"path": "x.jpg"}', headers={"X-API-Key": "s3cret",
                                                                  "Content-Type": "application/json"})[0] == 403


def test_the_page_captions_an_upload_and_shows_an_error_in_chromium(keyed_ocr_server, text_meme, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = keyed_ocr_server
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("просто текст")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed: apt-get install chromium (scripts/setup.sh does)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{url}/")
            page.wait_for_selector("#key-row:not([hidden])")  # the page asked /health and shows the key field
            page.fill("#key", "s3cret")
            page.set_input_files("#file", str(text_meme))
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            assert "пятница" in page.text_content("#caption").lower()
            assert "пятница" in page.text_content("#ocr").lower()
            assert float(page.text_content("#time")) > 0
            assert page.is_hidden("#error")
            page.set_input_files("#file", str(not_an_image))
            page.wait_for_selector("#error:not([hidden])", timeout=60_000)
            assert "not an image" in page.text_content("#error") and page.is_hidden("#result")
        finally:
            browser.close()


def test_sigterm_under_load_answers_every_request_in_flight(tmp_path):
    names = sorted(p.name for p in IMAGES.glob("*.jpg")) * 2
    # The first request's batch waits 5 s for company (it never fills): all are in flight at the stop.
    with serving(str(EXPORT), "--max-batch", "16", "--max-wait-ms", "5000") as (url, process):
        with ThreadPoolExecutor(len(names)) as pool:
            futures = [pool.submit(call, f"{url}/caption?{GREEDY}", jpeg(n)) for n in names]
            deadline = time.monotonic() + 60
            while call(f"{url}/health")[1]["in_flight"] < len(names):
                assert time.monotonic() < deadline, "the requests never all arrived"
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert process.wait(timeout=60) == 0
        assert [status for status, _, _ in answers] == [200] * len(names)
        assert {answer["batch_size"] for _, answer, _ in answers} == {len(names)}
        assert f"stopped after {len(names)} caption request(s)" in process.stderr.read()
        with pytest.raises(OSError):  # nothing listens after a stop
            socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5).close()


def test_a_wrong_flag_or_a_taken_port_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "memecap", "serve", str(EXPORT),
                           "--allow-files", str(tmp_path / "no")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "--allow-files" in done.stderr and "Traceback" not in done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "memecap", "serve", str(EXPORT), "--port", str(port)],
                              capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


# --- the batcher alone --------------------------------------------------------------------------

def white(n: int = 1) -> list:
    return [Image.new("RGB", (8, 8), (i, i, i)) for i in range(n)]


def shade(image: Image.Image) -> int:
    return image.getpixel((0, 0))[0]


def test_the_queue_is_bounded_and_a_stop_finishes_what_waits():
    gate, seen = threading.Event(), []

    def run(images, generation):
        gate.wait(30)
        seen.append([shade(im) for im in images])
        return [Captioned([f"caption {shade(im)}"], None) for im in images]

    batcher = Batcher(run, max_batch=2, max_wait_s=0.0, max_queue=2).start()
    first = batcher.submit(white(1)[0], GenerationConfig())
    time.sleep(0.2)  # the worker holds the first one at the gate
    waiting = [batcher.submit(im, GenerationConfig()) for im in white(3)[1:]]
    with pytest.raises(QueueFull):
        batcher.submit(white(1)[0], GenerationConfig())
    gate.set()
    batcher.close(timeout=30)
    with pytest.raises(ShuttingDown):
        batcher.submit(white(1)[0], GenerationConfig())
    assert first.result(0).captions == ["caption 0"]
    assert [f.result(0).captions for f in waiting] == [["caption 1"], ["caption 2"]]
    assert seen == [[0], [1, 2]]


def test_one_bad_image_fails_alone_and_settings_are_never_mixed():
    calls = []

    def run(images, generation):
        calls.append(([shade(im) for im in images], generation.strategy))
        if any(shade(im) == 1 for im in images):
            raise ValueError("bad pixels")
        return [Captioned([generation.strategy], None) for _ in images]

    batcher = Batcher(run, max_batch=8, max_wait_s=0.3, max_queue=8).start()
    images = white(4)
    futures = [batcher.submit(images[0], GenerationConfig(strategy="greedy")),
               batcher.submit(images[1], GenerationConfig(strategy="greedy")),
               batcher.submit(images[2], GenerationConfig(strategy="greedy")),
               batcher.submit(images[3], GenerationConfig(strategy="beam"))]
    batcher.close(timeout=30)
    assert futures[0].result(0).captions == ["greedy"] and futures[2].result(0).captions == ["greedy"]
    with pytest.raises(ValueError, match="bad pixels"):
        futures[1].result(0)
    assert futures[3].result(0).captions == ["beam"] and futures[3].result(0).batch_size == 1
    assert calls[0] == ([0, 1, 2], "greedy") and ([3], "beam") in calls  # one call per setting
    assert ([0], "greedy") in calls and ([1], "greedy") in calls and ([2], "greedy") in calls  # retried alone
