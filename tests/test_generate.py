"""The prompt generator against a real OpenAI-compatible HTTP server on 127.0.0.1 (not a mock)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.cli import main
from bench.core.errors import UserError
from priors.generate import generate_prompt_set
from priors.prompts import PromptSet


class FakeChatServer:
    """Answers /v1/chat/completions from a script of behaviours, then with valid JSON."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                action = server.script.pop(0) if server.script else "ok"
                if action == "429":
                    return self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}})
                if action == "500":
                    return self._send(500, {"error": {"message": "boom", "type": "server"}})
                organ = body["messages"][1]["content"].split("relationship of ")[1].split(" with other")[0]
                content = "this is not json" if action == "malformed" else json.dumps(
                    {"location": f"{organ} sits somewhere.", "shape": f"{organ} has a shape."})
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": content}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api_env(monkeypatch):
    def use(server):
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)

    return use


def _gen(out, **kw):
    return generate_prompt_set("synapse", "gpt-4o", out, backoff=0.001, progress=False, **kw)


def test_happy_path_writes_a_valid_set(tmp_path, api_env):
    with FakeChatServer() as srv:
        api_env(srv)
        ps = _gen(tmp_path / "gen.json")
    assert len(srv.requests) == 14 and srv.requests[0]["response_format"] == {"type": "json_object"}
    assert "Describe shape and structure of spleen" in srv.requests[1]["messages"][1]["content"]
    loaded = PromptSet.load(tmp_path / "gen.json")
    assert loaded.views == ("location", "shape") and len(loaded.classes) == 14
    assert loaded.meta["model"] == "gpt-4o" and "questions" in loaded.meta and "date" in loaded.meta
    assert loaded.texts_for(["liver"])[1] == [["liver has a shape."]]
    assert not (tmp_path / "gen.json.partial.json").exists()
    assert ps.name == "gen"


def test_429_then_success_and_malformed_then_success(tmp_path, api_env):
    with FakeChatServer(["429", "malformed", "500"]) as srv:
        api_env(srv)
        _gen(tmp_path / "gen.json")
    assert len(srv.requests) == 14 + 3
    assert PromptSet.load(tmp_path / "gen.json").texts_for(["background"])[0] == [["background sits somewhere."]]


def test_server_that_keeps_failing_writes_nothing(tmp_path, api_env):
    with FakeChatServer(["500"] * 100) as srv:
        api_env(srv)
        with pytest.raises(UserError, match="failed 3 times for 'background'"):
            _gen(tmp_path / "gen.json", max_retries=2)
    assert not (tmp_path / "gen.json").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_from_partial_run(tmp_path, api_env):
    # the first run dies on the 3rd organ; the second asks only for the rest
    with FakeChatServer(["ok", "ok"] + ["500"] * 3) as srv:
        api_env(srv)
        with pytest.raises(UserError):
            _gen(tmp_path / "gen.json", max_retries=2)
    assert (tmp_path / "gen.json.partial.json").exists()
    with FakeChatServer() as srv2:
        api_env(srv2)
        _gen(tmp_path / "gen.json")
    assert len(srv2.requests) == 12
    assert len(PromptSet.load(tmp_path / "gen.json").classes) == 14


def test_never_overwrites_without_force(tmp_path, api_env):
    out = tmp_path / "gen.json"
    out.write_text("{}")
    with FakeChatServer() as srv:
        api_env(srv)
        with pytest.raises(UserError, match="--force"):
            _gen(out)
        _gen(out, force=True)
    assert PromptSet.load(out).name == "gen"


def test_cli_missing_key_and_unreachable_api(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["priors", "generate", "--labels", "amos", "--out", str(tmp_path / "g.json")]) == 2
    assert "OPENAI_API_KEY is not set" in capsys.readouterr().err
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens on port 9
    assert main(["priors", "generate", "--labels", "amos", "--out", str(tmp_path / "g.json"), "--max-retries", "0"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "127.0.0.1:9" in err[0] and "failed 1 times" in err[0] and "nothing was written" in err[0]
    assert not (tmp_path / "g.json").exists()
