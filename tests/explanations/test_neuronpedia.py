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
    request (the last one repeats): ``(status, body, headers, delay_s)``. A callable body
    yields byte chunks sent without ``Content-Length`` (HTTP/1.0: the body ends when the
    connection closes); ``sent[path]`` counts the bytes that went out."""

    def __init__(self) -> None:
        self.script: dict[str, list[tuple]] = {}
        self.requests: list[tuple[str, float, dict]] = []
        self.sent: dict[str, int] = {}
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
                        if not callable(body):
                            self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        for chunk in body() if callable(body) else [body]:
                            self.wfile.write(chunk)
                            with outer.lock:
                                outer.sent[self.path] = outer.sent.get(self.path, 0) + len(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # a short poll interval: shutdown() waits for it, at every test's teardown
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def hits(self, path: str) -> list[float]:
        return [t for p, t, _ in self.requests if p == path]

    def keys_seen(self) -> list[str | None]:
        """The ``x-api-key`` of every request, whatever the header's case."""
        return [next((v for k, v in h.items() if k.lower() == "x-api-key"), None) for _, _, h in self.requests]

    def wait_idle(self, limit_s: float = 5.0) -> None:
        """Wait (bounded) until no handler is running, so ``sent`` is final."""
        deadline = time.monotonic() + limit_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)

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
    monkeypatch.delenv("NEURONPEDIA_URL", raising=False)

    def make(**kw):
        kw.setdefault("cache_dir", tmp_path / "cache")
        kw.setdefault("timeout", 2.0)
        kw.setdefault("backoff", 0.05)
        kw.setdefault("max_retries", 3)
        return NeuronpediaClient(server.url, **kw)

    return make


P = "/api/feature/gemma-2-2b/20-gemmascope-res-16k/10956"
KEY = ("gemma-2-2b", "20-gemmascope-res-16k", 10956)


def test_success_keeps_only_the_explanations(server, client_factory, tmp_path):
    body = feature_json("words about cats")
    body["explanations"].append({"description": "  second text ", "typeName": "human"})
    body["explanations"].append({"description": "   "})  # blank: dropped
    server.script[P] = [(200, body, {}, 0)]
    c = client_factory()
    only_texts = {"descriptions": ["words about cats", "second text"], "description": "words about cats"}
    assert c.feature(*KEY) == only_texts  # statistics and activations are not used: not kept
    assert c.explanation(*KEY) == "words about cats"
    assert len(server.hits(P)) == 1  # second call was a cache hit
    assert json.loads(c.cache_file(*KEY).read_text()) == {"cache_format": 1, "feature": only_texts}
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


def test_default_concurrency_reaches_four(server, client_factory):
    # The documented bound (README: "at most 4 requests at a time"): with more features
    # than that and a slow server, the default client keeps exactly 4 in flight.
    items = [("m", "src", i) for i in range(16)]
    for _, _, i in items:
        server.script[f"/api/feature/m/src/{i}"] = [(200, feature_json(f"feature {i}"), {}, 0.3)]
    got = client_factory(timeout=5.0).explanations(items, progress=False)
    assert got == {k: f"feature {k[2]}" for k in items}
    assert server.max_in_flight == 4


# ------------------------------------------------------------------ body size cap
def padded_feature(text: str, pad_bytes: int) -> bytes:
    """A valid feature JSON of more than ``pad_bytes`` bytes, its explanation first."""
    return json.dumps({"explanations": [{"description": text}], "activations": "a" * pad_bytes}).encode()


def test_oversized_declared_body_is_refused_and_not_cached(server, client_factory, caplog):
    server.script[P] = [(200, padded_feature("too big", 5_000_000), {}, 0)]  # 5 MB > 2 MiB default
    c = client_factory()
    with caplog.at_level(logging.WARNING):
        assert c.feature(*KEY) is None
    assert "2097152-byte limit" in caplog.text and "max_response_bytes" in caplog.text
    assert len(server.hits(P)) == 1  # a size refusal is not retried
    assert not c.cache_file(*KEY).exists()


def test_endless_stream_is_cut_at_the_limit(server, client_factory, caplog):
    # No Content-Length: the client must count while reading and hang up, not read 64 MiB.
    total = 64 * 1024 * 1024
    chunk = b"a" * 65536

    def stream():
        yield b'{"explanations": [{"description": "streamed"}], "activations": "'
        for _ in range(total // len(chunk)):
            yield chunk
        yield b'"}'

    server.script[P] = [(200, stream, {}, 0)]
    c = client_factory()
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert c.explanation(*KEY) is None
    assert time.monotonic() - t0 < 10
    server.wait_idle()
    # what went out: the 2 MiB read plus what the kernel's socket buffers held
    assert server.sent[P] < total // 2
    assert "byte limit" in caplog.text
    assert not c.cache_file(*KEY).exists()


@pytest.mark.parametrize("streamed", [False, True])
def test_limit_is_configurable_and_exact(server, client_factory, streamed):
    body = padded_feature("fits", 10_000)
    server.script[P] = [(200, (lambda: [body]) if streamed else body, {}, 0)]
    assert client_factory(max_response_bytes=len(body) - 1).explanation(*KEY) is None
    assert client_factory(max_response_bytes=len(body)).explanation(*KEY) == "fits"


def test_bad_limit_is_a_clear_error(client_factory):
    with pytest.raises(ValueError, match="max_response_bytes"):
        client_factory(max_response_bytes=0)


# ------------------------------------------------------------------ cache files of before
def test_cache_file_of_the_previous_version_is_read(server, client_factory):
    c = client_factory()
    file = c.cache_file(*KEY)
    file.parent.mkdir(parents=True)
    # as the client wrote it when it kept statistics too
    old = {"descriptions": ["old text"], "description": "old text", "pos_str": ["good"], "pos_values": [1.5],
           "neg_str": ["bad"], "neg_values": [-1.0], "frac_nonzero": 0.01}
    file.write_text(json.dumps({"cache_format": 1, "feature": old}))
    assert c.feature(*KEY) == {"descriptions": ["old text"], "description": "old text"}
    assert server.requests == []


@pytest.mark.parametrize("content", [
    {"cache_format": 1, "feature": ["not", "a", "dict"]},
    {"cache_format": 1, "feature": {"description": "no list of descriptions"}},
    {"cache_format": 1, "feature": {"descriptions": [1, 2]}},
])
def test_malformed_cache_file_is_fetched_again(server, client_factory, caplog, content):
    server.script[P] = [(200, feature_json("fresh"), {}, 0)]
    c = client_factory()
    c.cache_file(*KEY).parent.mkdir(parents=True)
    c.cache_file(*KEY).write_text(json.dumps(content))
    with caplog.at_level(logging.WARNING):
        assert c.explanation(*KEY) == "fresh"
    assert "malformed Neuronpedia cache file" in caplog.text
    assert len(server.hits(P)) == 1
    assert json.loads(c.cache_file(*KEY).read_text())["feature"]["description"] == "fresh"


# ------------------------------------------------------------------ redirects and the key
@pytest.fixture
def other_server():
    s = FakeNeuronpedia()
    yield s
    s.close()


def test_cross_origin_redirect_never_carries_the_key(server, other_server, client_factory, caplog):
    server.script[P] = [(302, b"", {"Location": f"{other_server.url}/elsewhere"}, 0)]
    other_server.script["/elsewhere"] = [(200, feature_json("from the other server"), {}, 0)]
    c = client_factory(api_key=SECRET)
    with caplog.at_level(logging.DEBUG):
        assert c.explanation(*KEY) == "from the other server"
    assert server.keys_seen() == [SECRET]
    assert [p for p, _, _ in other_server.requests] == ["/elsewhere"]
    assert other_server.keys_seen() == [None]  # the other origin never saw the key
    assert "another server" in caplog.text and SECRET not in caplog.text


def test_same_origin_redirect_keeps_the_key(server, client_factory):
    moved = "/api/feature/gemma-2-2b/20-gemmascope-res-16k/moved"
    server.script[P] = [(301, b"", {"Location": moved}, 0)]  # relative Location
    server.script[moved] = [(200, feature_json("moved here"), {}, 0)]
    c = client_factory(api_key=SECRET)
    assert c.explanation(*KEY) == "moved here"
    assert [p for p, _, _ in server.requests] == [P, moved]
    assert server.keys_seen() == [SECRET, SECRET]


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/x", "http://127.0.0.1:notaport/x"])
def test_redirect_to_a_non_http_url_is_refused(server, client_factory, caplog, location):
    server.script[P] = [(302, b"", {"Location": location}, 0)]
    with caplog.at_level(logging.WARNING):
        assert client_factory().explanations([KEY], progress=False) == {KEY: None}  # no exception
    assert "not http(s)" in caplog.text
    assert len(server.hits(P)) == 1


def test_redirect_loop_is_bounded(server, client_factory, caplog):
    from trajectory.explanations.neuronpedia import MAX_REDIRECTS

    server.script[P] = [(302, b"", {"Location": P}, 0)]
    c = client_factory()
    with caplog.at_level(logging.WARNING):
        assert c.feature(*KEY) is None
    assert len(server.hits(P)) == MAX_REDIRECTS + 1  # not retried either
    assert "redirects" in caplog.text
    assert not c.cache_file(*KEY).exists()


# ------------------------------------------------------------------ which server
def test_neuronpedia_url_environment_picks_the_server(server, client_factory, monkeypatch, tmp_path):
    server.script[P] = [(200, feature_json("self-hosted"), {}, 0)]
    monkeypatch.setenv("NEURONPEDIA_URL", server.url + "/")
    c = NeuronpediaClient(cache_dir=tmp_path / "env", timeout=2.0, max_retries=0)
    assert c.base_url == server.url
    assert c.explanation(*KEY) == "self-hosted"
    assert len(server.hits(P)) == 1
    # an explicit base_url wins over the environment (port 9: nothing listens there)
    monkeypatch.setenv("NEURONPEDIA_URL", "http://127.0.0.1:9")
    assert NeuronpediaClient(server.url, cache_dir=tmp_path / "arg", max_retries=0).explanation(*KEY) == "self-hosted"
    assert len(server.hits(P)) == 2


def test_default_server_is_the_public_one(client_factory, tmp_path):
    c = NeuronpediaClient(cache_dir=tmp_path, offline=True)  # the fixture cleared NEURONPEDIA_URL
    assert c.url(*KEY) == "https://www.neuronpedia.org/api/feature/gemma-2-2b/20-gemmascope-res-16k/10956"


@pytest.mark.parametrize("url", ["localhost:3000", "ftp://example.org", "https://", "http://127.0.0.1:port"])
def test_bad_server_url_is_a_clear_error(client_factory, monkeypatch, url):
    monkeypatch.setenv("NEURONPEDIA_URL", url)
    with pytest.raises(ValueError, match="NEURONPEDIA_URL"):
        NeuronpediaClient(offline=True)
    with pytest.raises(ValueError, match="not an http"):
        NeuronpediaClient(url, offline=True)
