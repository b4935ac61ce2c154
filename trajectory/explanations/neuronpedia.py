"""A small, careful client for the Neuronpedia feature API.

``GET {base_url}/api/feature/{model_id}/{source}/{index}`` (for example
``/api/feature/gemma-2-2b/20-gemmascope-res-16k/10956``) returns a JSON object whose
``explanations[i].description`` are the feature's text explanations, plus top
activations and statistics. This client keeps only the useful fields, caches them on
disk (one JSON file per feature, written atomically), asks for many features with
bounded concurrency, retries 429 and 5xx answers with exponential back-off (honouring
``Retry-After`` in seconds, capped), and degrades every failure (404, timeout, bad JSON)
to ``None`` with a logged warning. ``offline=True`` (or ``TRAJECTORY_OFFLINE=1``) never
touches the network: only the cache answers.

The API key (``api_key`` or ``$NEURONPEDIA_API_KEY``) is sent as the ``x-api-key``
header only; it is never written to cache files, logs, exception messages or ``repr``.
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
from typing import Any, Iterable

import requests

from trajectory.io import atomic_write, cache_dir

log = logging.getLogger(__name__)

#: Fields kept from a feature's JSON (everything else is dropped before caching).
CACHED_FIELDS = ("pos_str", "pos_values", "neg_str", "neg_values", "frac_nonzero")
#: Longest wait honoured from a ``Retry-After`` header, in seconds.
MAX_RETRY_AFTER = 30.0
_CACHE_FORMAT = 1

FeatureKey = tuple[str, str, int]


def _truthy_env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _safe(part: str) -> str:
    """A file-name-safe version of a model or source id."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(part)) or "_"


class NeuronpediaClient:
    """Fetch and cache Neuronpedia feature explanations.

    Parameters
    ----------
    base_url : the Neuronpedia server (no trailing ``/api``).
    api_key : sent as ``x-api-key``; default ``$NEURONPEDIA_API_KEY`` (optional).
    cache_dir : folder of the disk cache; default ``trajectory.io.cache_dir("neuronpedia")``.
    offline : never use the network (also when ``$TRAJECTORY_OFFLINE=1``).
    max_workers : most requests in flight at once in :meth:`explanations`.
    timeout : seconds per request (connect and read).
    max_retries : retries after the first try for 429, 5xx, timeouts and connection errors.
    backoff : first back-off in seconds; doubled after every retry.
    session : a ``requests.Session`` to use (one is made otherwise).

    Examples
    --------
    >>> c = NeuronpediaClient(offline=True, cache_dir=__import__("tempfile").mkdtemp())
    >>> c.explanation("gemma-2-2b", "20-gemmascope-res-16k", 10956) is None  # not cached
    True
    """

    def __init__(
        self,
        base_url: str = "https://www.neuronpedia.org",
        *,
        api_key: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        offline: bool = False,
        max_workers: int = 4,
        timeout: float = 10.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        session: requests.Session | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.base_url = base_url.rstrip("/")
        self.__api_key = api_key if api_key is not None else (os.environ.get("NEURONPEDIA_API_KEY") or None)
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.offline = bool(offline) or _truthy_env("TRAJECTORY_OFFLINE")
        self.max_workers = int(max_workers)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self._session = session
        self._session_lock = threading.Lock()

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
        """Where the cached fields of one feature live."""
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
        return data.get("feature")

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

    def _wait(self, attempt: int, response: requests.Response | None) -> float:
        delay = self.backoff * (2**attempt)
        if response is not None:
            ra = response.headers.get("Retry-After")
            if ra is not None:
                try:
                    delay = max(delay, min(float(ra), MAX_RETRY_AFTER))
                except ValueError:  # HTTP-date form: fall back to our own back-off
                    pass
        return delay

    def _fetch(self, key: FeatureKey) -> dict | None:
        url = self.url(*key)
        headers = {"accept": "application/json"}
        if self.__api_key:
            headers["x-api-key"] = self.__api_key
        session = self._get_session()
        what = "/".join(str(k) for k in key)
        for attempt in range(self.max_retries + 1):
            response = None
            reason = ""
            try:
                response = session.get(url, headers=headers, timeout=self.timeout)
            except requests.Timeout:
                reason = f"timed out after {self.timeout:g} s"
            except requests.ConnectionError as exc:
                reason = f"connection error ({type(exc).__name__})"
            except requests.RequestException as exc:
                log.warning("Neuronpedia request for %s failed (%s); no explanation", what, type(exc).__name__)
                return None
            if response is not None:
                status = response.status_code
                if status == 200:
                    try:
                        payload = response.json()
                    except ValueError:
                        log.warning("Neuronpedia answered malformed JSON for %s; no explanation", what)
                        return None
                    if not isinstance(payload, dict):
                        log.warning("Neuronpedia answered unexpected JSON for %s; no explanation", what)
                        return None
                    return _useful_fields(payload)
                if status == 429 or status >= 500:
                    reason = f"HTTP {status}"
                else:
                    log.warning("Neuronpedia has no feature %s (HTTP %d); no explanation", what, status)
                    return None
            if attempt < self.max_retries:
                delay = self._wait(attempt, response)
                log.info("Neuronpedia %s for %s; retrying in %.2f s", reason, what, delay)
                time.sleep(delay)
        log.warning("Neuronpedia gave up on %s after %d tries (%s); no explanation", what, self.max_retries + 1, reason)
        return None

    # ------------------------------------------------------------------ public
    def feature(self, model_id: str, source: str, index: int) -> dict | None:
        """The cached useful fields of one feature (``descriptions``, ``description``,
        ``pos_str``, ``pos_values``, ``neg_str``, ``neg_values``, ``frac_nonzero``), or
        ``None`` when unavailable (offline and not cached, 404, network failure)."""
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


def _useful_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """Keep explanation texts and a few statistics of a feature's JSON."""
    descriptions = []
    for e in payload.get("explanations") or []:
        if isinstance(e, dict) and isinstance(e.get("description"), str) and e["description"].strip():
            descriptions.append(e["description"].strip())
    out: dict[str, Any] = {"descriptions": descriptions, "description": descriptions[0] if descriptions else None}
    for name in CACHED_FIELDS:
        if name in payload:
            out[name] = payload[name]
    return out
