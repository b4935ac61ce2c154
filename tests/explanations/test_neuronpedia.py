"""The real Neuronpedia client against a local HTTP server with scripted answers."""
from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from trajectory.explanations.neuronpedia import NeuronpediaClient

SECRET = "sk-np-TEST-SECRET-123"


def feature_json(text: str) -> dict:
    return {
        "modelId": "m",
        "layer": "0-src",
        "index": "1",
        "explanations": [{"description": text, "typeName": "oai_token-act-pair"}],
        "pos_str": ["good", "great"],
        "pos_values": [1.5, 1.2],
        "neg_str": ["bad"],
        "frac_nonzero": 0.01,
        "activations": [{"tokens": ["x"] * 100, "values": [0.0] * 100}],  # bulky, must not be cached
    }


class FakeNeuronpedia:
    """A ThreadingHTTPServer on 127.0.0.1: ``script[path]`` is a list of answers, one per
    request (the last one repeats): ``(status, body, headers, delay_s)``."""

    def __init__(self) -> None:
        self.script: dict[str, list[tuple]] = {}
        self.requests: list[tuple[str, float, dict]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                with outer.lock:
                    outer.requests.append((self.path, time.monotonic(), dict(self.headers)))
                    n = sum(1 for p, _, _ in outer.requests if p == self.path)
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    answers = outer.script.get(self.path) or [(404, b'{"error":"not found"}', {}, 0)]
                    status, body, headers, delay = answers[min(n, len(answers)) - 1]
                    if delay:
                        time.sleep(delay)
                    if isinstance(body, (dict, list)):
                        body = json.dumps(body).encode()
                    try:
                        self.send_response(status)
                        for k, v in headers.items():
                            self.send_header(k, v)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def hits(self, path: str) -> list[float]:
        return [t for p, t, _ in self.requests if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    s = FakeNeuronpedia()
    yield s
    s.close()


@pytest.fixture
def client_factory(server, tmp_path, monkeypatch):
    monkeypatch.delenv("TRAJECTORY_OFFLINE", raising=False)
    monkeypatch.delenv("NEURONPEDIA_API_KEY", raising=False)

    def make(**kw):
        kw.setdefault("cache_dir", tmp_path / "cache")
        kw.setdefault("timeout", 2.0)
        kw.setdefault("backoff", 0.05)
        kw.setdefault("max_retries", 3)
        return NeuronpediaClient(server.url, **kw)

    return make


P = "/api/feature/gemma-2-2b/20-gemmascope-res-16k/10956"
KEY = ("gemma-2-2b", "20-gemmascope-res-16k", 10956)


def test_success_keeps_useful_fields(server, client_factory, tmp_path):
    server.script[P] = [(200, feature_json("words about cats"), {}, 0)]
    c = client_factory()
    f = c.feature(*KEY)
    assert f["description"] == "words about cats"
    assert f["descriptions"] == ["words about cats"]
    assert f["pos_str"] == ["good", "great"] and f["pos_values"] == [1.5, 1.2]
    assert f["neg_str"] == ["bad"] and f["frac_nonzero"] == 0.01
    assert "activations" not in f
    assert c.explanation(*KEY) == "words about cats"
    assert len(server.hits(P)) == 1  # second call was a cache hit
    cached = c.cache_file(*KEY).read_text()
    assert "words about cats" in cached and "activations" not in cached
    assert not list((tmp_path / "cache").rglob("*.tmp*"))  # atomic write left no temp file


def test_retry_after_is_honoured(server, client_factory):
    server.script[P] = [(429, b'{"error":"slow down"}', {"Retry-After": "1"}, 0), (200, feature_json("ok"), {}, 0)]
    c = client_factory(backoff=0.01)
    assert c.explanation(*KEY) == "ok"
    t = server.hits(P)
    assert len(t) == 2
    assert t[1] - t[0] >= 0.95  # waited for Retry-After (1 s), not the 0.01 s back-off


def test_persistent_500_gives_none_after_retries_with_backoff(server, client_factory, caplog):
    server.script[P] = [(500, b"oops", {}, 0)]
    c = client_factory(max_retries=3, backoff=0.05)
    with caplog.at_level(logging.WARNING):
        assert c.feature(*KEY) is None
    t = server.hits(P)
    assert len(t) == 4  # first try + 3 retries
    gaps = [b - a for a, b in zip(t, t[1:])]
    # exponential back-off: 0.05, 0.1, 0.2 s
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.19
    assert gaps[2] > gaps[0]
    assert "gave up" in caplog.text
    assert not c.cache_file(*KEY).exists()  # failures are not cached


def test_timeout_gives_none(server, client_factory):
    server.script[P] = [(200, feature_json("late"), {}, 1.0)]
    c = client_factory(timeout=0.2, max_retries=1, backoff=0.01)
    t0 = time.monotonic()
    assert c.explanation(*KEY) is None
    assert time.monotonic() - t0 < 1.5
    assert len(server.hits(P)) == 2


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]"])
def test_malformed_json_gives_none(server, client_factory, caplog, body):
    server.script[P] = [(200, body, {}, 0)]
    c = client_factory()
    with caplog.at_level(logging.WARNING):
        assert c.feature(*KEY) is None
    assert len(server.hits(P)) == 1  # not retried
    assert "JSON" in caplog.text


def test_404_gives_none(server, client_factory):
    c = client_factory()
    assert c.explanation("m", "src", 3) is None
    assert len(server.requests) == 1


def test_cache_hit_in_a_new_client_makes_no_request(server, client_factory):
    server.script[P] = [(200, feature_json("cached text"), {}, 0)]
    assert client_factory().explanation(*KEY) == "cached text"
    assert len(server.requests) == 1
    assert client_factory().explanation(*KEY) == "cached text"
    assert len(server.requests) == 1


def test_offline_never_touches_the_network(server, client_factory, monkeypatch):
    server.script[P] = [(200, feature_json("x"), {}, 0)]
    assert client_factory(offline=True).explanations([KEY, ("m", "s", 1)], progress=False) == {KEY: None, ("m", "s", 1): None}
    monkeypatch.setenv("TRAJECTORY_OFFLINE", "1")
    c = client_factory()
    assert c.offline
    assert c.explanation(*KEY) is None
    assert server.requests == []


def test_api_key_sent_but_never_written(server, client_factory, tmp_path, caplog, monkeypatch):
    server.script[P] = [(500, b"", {}, 0), (200, feature_json("keyed"), {}, 0)]
    monkeypatch.setenv("NEURONPEDIA_API_KEY", SECRET)
    with caplog.at_level(logging.DEBUG):
        c = client_factory()
        assert c.explanation(*KEY) == "keyed"
        c.explanation("m", "missing", 1)  # a 404 logs a warning too
    assert all(h.get("x-api-key") == SECRET for _, _, h in server.requests)
    assert caplog.records  # there was something to check
    assert SECRET not in caplog.text
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    assert SECRET not in repr(c) and SECRET not in str(c)
    for f in (tmp_path / "cache").rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text()
    # an explicit key wins and is sent as well
    c2 = client_factory(api_key="other-key", cache_dir=tmp_path / "c2")
    c2.explanation(*KEY)
    assert server.requests[-1][2].get("x-api-key") == "other-key"
    assert "other-key" not in repr(c2)


def test_bounded_concurrency(server, client_factory):
    items = [("m", "src", i) for i in range(12)]
    for _, _, i in items:
        server.script[f"/api/feature/m/src/{i}"] = [(200, feature_json(f"feature {i}"), {}, 0.15)]
    c = client_factory(max_workers=3)
    got = c.explanations(items, progress=False)
    assert got == {k: f"feature {k[2]}" for k in items}
    assert len(server.requests) == 12
    assert server.max_in_flight <= 3
    assert server.max_in_flight >= 2  # it did run requests in parallel
