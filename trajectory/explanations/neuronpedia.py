"""A small, careful client for the Neuronpedia feature API.

``GET {base_url}/api/feature/{model_id}/{source}/{index}`` (for example
``/api/feature/gemma-2-2b/20-gemmascope-res-16k/10956``) returns a JSON object whose
``explanations[i].description`` are the feature's text explanations, plus top
activations and statistics (which can make the body tens of MB). This client reads at
most ``max_response_bytes`` of a body (a longer one is a failure for that feature), keeps
only the explanation texts, caches them on disk (one small JSON file per feature, written
atomically), asks for many features with bounded concurrency, retries 429 and 5xx answers
with exponential back-off (honouring ``Retry-After`` in seconds, capped), and degrades every
failure (404, timeout, bad JSON, oversized body) to ``None`` with a logged warning.
``offline=True`` (or ``TRAJECTORY_OFFLINE=1``) never touches the network: only the cache
answers.

The server is ``base_url``, default ``$NEURONPEDIA_URL``, else ``https://www.neuronpedia.org``
(a self-hosted Neuronpedia works the same way). The API key (``api_key`` or
``$NEURONPEDIA_API_KEY``) is sent as the ``x-api-key`` header, and only to the origin
(scheme, host, port) of ``base_url``: redirects are followed by hand (at most
:data:`MAX_REDIRECTS`), without the key when they lead elsewhere. The key is never written
to cache files, logs, exception messages or ``repr``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urljoin, urlsplit

import requests

from trajectory.io import atomic_write, cache_dir

log = logging.getLogger(__name__)

#: The public Neuronpedia server, used when neither ``base_url`` nor ``$NEURONPEDIA_URL`` is set.
DEFAULT_BASE_URL = "https://www.neuronpedia.org"
#: Default cap on the bytes read of one answer (a feature's JSON with its activations).
DEFAULT_MAX_RESPONSE_BYTES = 2 * 1024 * 1024
#: Most redirects followed for one request.
MAX_REDIRECTS = 5
#: Longest wait honoured from a ``Retry-After`` header, in seconds.
MAX_RETRY_AFTER = 30.0
# Files written before only explanations were cached have the same format number: their
# extra statistics fields are ignored when read.
_CACHE_FORMAT = 1
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# A dropped or garbled stream is as transient as a timeout: retried.
_TRANSIENT = (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError)

FeatureKey = tuple[str, str, int]


class _Refused(Exception):
    """An answer this client will not use (too large, too many redirects); not retried."""


def _truthy_env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _safe(part: str) -> str:
    """A file-name-safe version of a model or source id."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(part)) or "_"


def _origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of a URL, the port made explicit for http and https."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def _is_http(url: str) -> bool:
    """Whether ``url`` is an http(s) URL with a host and a valid port."""
    try:
        scheme, host, _ = _origin(url)
    except ValueError:  # a port that is not a number, or out of range
        return False
    return scheme in ("http", "https") and bool(host)


def _base_url(base_url: str | None) -> str:
    """The server to ask: ``base_url``, else ``$NEURONPEDIA_URL``, else the public one."""
    url = (base_url if base_url is not None else os.environ.get("NEURONPEDIA_URL") or DEFAULT_BASE_URL).strip()
    if not _is_http(url):
        raise ValueError(
            f"the Neuronpedia server {url!r} is not an http(s) URL; pass base_url= (or set "
            f"NEURONPEDIA_URL / --neuronpedia-url) to a URL such as {DEFAULT_BASE_URL}"
        )
    return url.rstrip("/")


class NeuronpediaClient:
    """Fetch and cache Neuronpedia feature explanations.

    Parameters
    ----------
    base_url : the Neuronpedia server (no trailing ``/api``); default ``$NEURONPEDIA_URL``,
        else ``https://www.neuronpedia.org``.
    api_key : sent as ``x-api-key`` to ``base_url``'s origin only; default
        ``$NEURONPEDIA_API_KEY`` (optional).
    cache_dir : folder of the disk cache; default ``trajectory.io.cache_dir("neuronpedia")``.
    offline : never use the network (also when ``$TRAJECTORY_OFFLINE=1``).
    max_workers : most requests in flight at once in :meth:`explanations`.
    timeout : seconds per request (connect, and each read of the body).
    max_retries : retries after the first try for 429, 5xx, timeouts and connection errors.
    backoff : first back-off in seconds; doubled after every retry.
    max_response_bytes : most bytes read of one answer; a longer one gives no explanation.
    session : a ``requests.Session`` to use (one is made otherwise).

    Examples
    --------
    >>> c = NeuronpediaClient(offline=True, cache_dir=__import__("tempfile").mkdtemp())
    >>> c.explanation("gemma-2-2b", "20-gemmascope-res-16k", 10956) is None  # not cached
    True
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        offline: bool = False,
        max_workers: int = 4,
        timeout: float = 10.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        session: requests.Session | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be at least 1, got {max_response_bytes}")
        self.base_url = _base_url(base_url)
        self.__api_key = api_key if api_key is not None else (os.environ.get("NEURONPEDIA_API_KEY") or None)
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.offline = bool(offline) or _truthy_env("TRAJECTORY_OFFLINE")
        self.max_workers = int(max_workers)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_response_bytes = int(max_response_bytes)
        self._session = session
        self._session_lock = threading.Lock()
        self._warned_cross_origin = False

    def __repr__(self) -> str:
        return (
            f"NeuronpediaClient(base_url={self.base_url!r}, api_key={'set' if self.__api_key else 'unset'}, "
            f"cache_dir={str(self.cache_dir)!r}, offline={self.offline}, max_workers={self.max_workers})"
        )

    # ------------------------------------------------------------------ cache
    @property
    def cache_dir(self) -> Path:
        if self._cache_dir is None:
            self._cache_dir = cache_dir("neuronpedia")
        return self._cache_dir

    def cache_file(self, model_id: str, source: str, index: int) -> Path:
        """Where the cached explanations of one feature live."""
        return self.cache_dir / _safe(model_id) / _safe(source) / f"{int(index)}.json"

    def _read_cache(self, key: FeatureKey) -> dict | None:
        file = self.cache_file(*key)
        if not file.is_file():
            return None
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.warning("ignoring unreadable Neuronpedia cache file %s (%s); it will be fetched again", file, exc)
            return None
        if not isinstance(data, dict) or data.get("cache_format") != _CACHE_FORMAT:
            return None
        feature = data.get("feature")
        descriptions = feature.get("descriptions") if isinstance(feature, dict) else None
        if not isinstance(descriptions, list) or not all(isinstance(d, str) for d in descriptions):
            log.warning("ignoring malformed Neuronpedia cache file %s; it will be fetched again", file)
            return None
        return _feature(descriptions)

    def _write_cache(self, key: FeatureKey, feature: dict) -> None:
        file = self.cache_file(*key)
        try:
            with atomic_write(file) as fh:
                json.dump({"cache_format": _CACHE_FORMAT, "feature": feature}, fh, ensure_ascii=False)
        except OSError as exc:
            log.warning("could not write Neuronpedia cache file %s (%s)", file, exc)

    # ---------------------------------------------------------------- network
    def _get_session(self) -> requests.Session:
        with self._session_lock:
            if self._session is None:
                self._session = requests.Session()
            return self._session

    def url(self, model_id: str, source: str, index: int) -> str:
        return f"{self.base_url}/api/feature/{model_id}/{source}/{int(index)}"

    def _headers(self, url: str) -> dict[str, str]:
        """Request headers for ``url``: the key only when it is on ``base_url``'s origin."""
        headers = {"accept": "application/json"}
        if self.__api_key and _origin(url) == _origin(self.base_url):
            headers["x-api-key"] = self.__api_key
        return headers

    def _redirect(self, url: str, location: str) -> str:
        """The URL a redirect from ``url`` leads to; only http(s) is followed."""
        target = urljoin(url, location)
        if not _is_http(target):
            raise _Refused("a redirect to a URL that is not http(s)")
        if _origin(target) != _origin(self.base_url) and not self._warned_cross_origin:
            # Once per client: a graph asks for many features of the same server.
            self._warned_cross_origin = True
            scheme, host, port = _origin(target)
            log.warning("Neuronpedia redirects to another server (%s://%s:%s); following without the API key "
                        "(set NEURONPEDIA_URL to that server to send it)", scheme, host, port)
        return target

    def _get(self, url: str) -> tuple[int, Mapping[str, str], bytes | None]:
        """``(status, headers, body of a 200 answer)`` of a GET, redirects followed by hand so
        the key never leaves ``base_url``'s origin. Raises :class:`_Refused` or ``requests`` errors."""
        session = self._get_session()
        for _ in range(MAX_REDIRECTS + 1):
            with session.get(url, headers=self._headers(url), timeout=self.timeout,
                             stream=True, allow_redirects=False) as response:
                location = response.headers.get("Location")
                if response.status_code in _REDIRECT_STATUSES and location:
                    url = self._redirect(url, location)
                    continue
                body = self._read_body(response) if response.status_code == 200 else None
                return response.status_code, response.headers, body
        raise _Refused(f"more than {MAX_REDIRECTS} redirects")

    def _read_body(self, response: requests.Response) -> bytes:
        """The body, read in chunks and abandoned past ``max_response_bytes`` (the decoded size,
        so a compressed answer cannot blow up either)."""
        limit = self.max_response_bytes
        declared = response.headers.get("Content-Length", "")
        too_big = _Refused(f"an answer over the {limit}-byte limit (raise max_response_bytes to accept it)")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        for chunk in response.iter_content(chunk_size=64 * 1024):
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    def _wait(self, attempt: int, headers: Mapping[str, str] | None) -> float:
        delay = self.backoff * (2**attempt)
        ra = (headers or {}).get("Retry-After")
        if ra is not None:
            try:
                delay = max(delay, min(float(ra), MAX_RETRY_AFTER))
            except ValueError:  # HTTP-date form: fall back to our own back-off
                pass
        return delay

    def _fetch(self, key: FeatureKey) -> dict | None:
        what = "/".join(str(k) for k in key)
        reason = ""
        for attempt in range(self.max_retries + 1):
            headers = None
            try:
                status, headers, body = self._get(self.url(*key))
            except requests.Timeout:
                reason = f"timed out after {self.timeout:g} s"
            except _TRANSIENT as exc:
                reason = f"connection error ({type(exc).__name__})"
            except requests.RequestException as exc:
                log.warning("Neuronpedia request for %s failed (%s); no explanation", what, type(exc).__name__)
                return None
            except _Refused as exc:
                log.warning("Neuronpedia request for %s gave %s; no explanation", what, exc)
                return None
            else:
                if status == 200:
                    return _parse(body or b"", what)
                if status != 429 and status < 500:
                    log.warning("Neuronpedia has no feature %s (HTTP %d); no explanation", what, status)
                    return None
                reason = f"HTTP {status}"
            if attempt < self.max_retries:
                delay = self._wait(attempt, headers)
                log.info("Neuronpedia %s for %s; retrying in %.2f s", reason, what, delay)
                time.sleep(delay)
        log.warning("Neuronpedia gave up on %s after %d tries (%s); no explanation", what, self.max_retries + 1, reason)
        return None

    # ------------------------------------------------------------------ public
    def feature(self, model_id: str, source: str, index: int) -> dict | None:
        """The cached explanations of one feature, ``{"descriptions": [text, ...],
        "description": first text or None}``, or ``None`` when unavailable (offline and not
        cached, 404, network failure, oversized answer)."""
        key = (str(model_id), str(source), int(index))
        cached = self._read_cache(key)
        if cached is not None or self.offline:
            return cached
        feature = self._fetch(key)
        if feature is not None:
            self._write_cache(key, feature)
        return feature

    def explanation(self, model_id: str, source: str, index: int) -> str | None:
        """The first explanation text of one feature, or ``None``."""
        feature = self.feature(model_id, source, index)
        return (feature or {}).get("description") or None

    def explanations(
        self, items: Iterable[tuple[str, str, int]], progress: bool = True
    ) -> dict[tuple[str, str, int], str | None]:
        """Explanations of many features, at most ``max_workers`` requests at once."""
        keys = list(dict.fromkeys((str(m), str(s), int(i)) for m, s, i in items))
        if not keys:
            return {}
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(keys), desc="neuronpedia", unit="feature")

        def one(key: FeatureKey) -> str | None:
            try:
                return self.explanation(*key)
            finally:
                if bar is not None:
                    bar.update(1)

        try:
            with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
                results = list(pool.map(one, keys))
        finally:
            if bar is not None:
                bar.close()
        return dict(zip(keys, results))


def _feature(descriptions: list[str]) -> dict[str, Any]:
    """What is cached of a feature: its explanation texts (the graph uses only these)."""
    return {"descriptions": descriptions, "description": descriptions[0] if descriptions else None}


def _parse(body: bytes, what: str) -> dict[str, Any] | None:
    """The explanation texts of a feature's JSON body, or ``None`` (logged) when malformed."""
    try:
        payload = json.loads(body)
    except ValueError:  # also a body that is not UTF-8
        log.warning("Neuronpedia answered malformed JSON for %s; no explanation", what)
        return None
    if not isinstance(payload, dict):
        log.warning("Neuronpedia answered unexpected JSON for %s; no explanation", what)
        return None
    explanations = payload.get("explanations")
    return _feature([
        e["description"].strip()
        for e in (explanations if isinstance(explanations, list) else [])
        if isinstance(e, dict) and isinstance(e.get("description"), str) and e["description"].strip()
    ])
