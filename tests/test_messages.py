"""What memecap prints about a failure is safe to show: no credential a server echoed back, and
file names with newlines or terminal escapes shown escaped on one line."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from memecap import cli
from memecap.outputs.redact import redact
from tests.hub_standin import online

USER_TOKEN = "hf_" + "UserTokenThatMustNotBePrinted1234"  # split: a scanner must not take it for a real one
OTHER_TOKEN = "hf_" + "AnotherTokenTheServerMentions99"


class EchoingServer(BaseHTTPRequestHandler):
    """A misbehaving endpoint: every request is refused with the request's headers in the error."""

    def _refuse(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = json.dumps({"error": f"invalid credentials. Request headers: {dict(self.headers)}; "
                                    f"the token {OTHER_TOKEN} was revoked"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _refuse

    def log_message(self, *args) -> None:
        pass


def test_a_token_the_server_echoes_is_not_printed(tiny_lora_run, capsys):
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with online(endpoint=f"http://127.0.0.1:{server.server_port}", token=USER_TOKEN):
            code = cli.main(["push", str(tiny_lora_run / "best"), "--repo", "alice/memes"])
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert code == 1
    assert "pushing to alice/memes failed" in err and "invalid credentials" in err  # the server's words stay
    assert "Bearer [redacted]" in err
    assert USER_TOKEN not in err and OTHER_TOKEN not in err and "UserTokenThat" not in err


def test_redaction_of_the_shapes_a_credential_takes(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_API_KEY", "s3cr3t-value-42")
    assert redact("Authorization: Bearer abc.def-ghi") == "Authorization: Bearer [redacted]"
    assert redact("{'authorization': 'Basic dXNlcjpwYXNz'}") == "{'authorization': 'Basic [redacted]'}"
    assert redact(f"revoked: {OTHER_TOKEN}.") == "revoked: [redacted]."
    assert redact("GET /x?token=abc123&page=2") == "GET /x?token=[redacted]&page=2"
    assert redact('{"access_token": "abc", "n": 1}') == '{"access_token": "[redacted]", "n": 1}'
    assert redact("the server said s3cr3t-value-42") == "the server said [redacted]"
    # Words about tokens, and names that only start like one, are left alone.
    for text in ("no Hugging Face token: set HF_TOKEN or run `hf auth login`", "hf_hub_download failed",
                 "model.decoder.name=hf_tiny"):
        assert redact(text) == text


def test_file_names_with_newlines_and_escapes_are_shown_escaped(tmp_path, capsys):
    assert cli.main(["config", "x\n\x1b[2J.yaml"]) == 2
    assert capsys.readouterr().err == "memecap: recipe file not found: x\\n\\x1b[2J.yaml\n"

    table = tmp_path / "t.tsv"
    table.write_text("uid\ttext\nab\x1b]0;owned\x07c\tподпись\n", encoding="utf-8")
    assert cli.main(["eval", "ocr_template", f"cache.dir={tmp_path / 'cache'}", "--data", str(table)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert err.splitlines()[1] == (f"  {table}:2 uid=ab\\x1b]0;owned\\x07c: image not found: "
                                   f"{tmp_path / 'images' / 'ab'}\\x1b]0;owned\\x07c.jpg")
