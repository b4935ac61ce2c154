"""The result of stage 2: top-k SAE features per (prefix length, layer, step).

Definitions (see the README, "Method"): for a prompt of N tokens (BOS included) and
a layer L, every prefix length ``n = 2..N`` has ``n + 2`` *steps*, its query being
the last token ``q = n - 1``:

==========  ==========================================================================
step index  SAE_L input
==========  ==========================================================================
0           ``initial``: ``resid_pre_L[q]``
j + 1       after key ``j`` (``j = 0..q``): ``resid_pre_L[q] + postnorm(Σ_{k≤j} c_{q,k})``
n + 1       ``mlp``: ``resid_post_L[q]``
==========  ==========================================================================

Step ``n`` is therefore the *last attention step*. For each step we keep the top-k
features **among active ones** (activation > 0), ordered by activation, descending:
fewer than k when fewer are active; rank 1 is the strongest.

File format (``.safetensors``, one file per prompt)
---------------------------------------------------
Tensors, one group per layer L, rows ordered by ``(n, step)`` with n ascending::

    L{L}.indices   int32   [total]        feature indices, row after row
    L{L}.values    float32 [total]        their activations (same order)
    L{L}.offsets   int64   [rows + 1]     row r is indices[offsets[r]:offsets[r+1]]
    L{L}.n_active  int32   [rows]         number of active features (may exceed k)

with ``rows = Σ_{n=2..N} (n + 2)``. The safetensors header metadata holds one key,
``"trajectory"``: a JSON object with ``format`` (``"trajectory-evolution"``),
``format_version`` (the reader also accepts ``version``, the older name of this key in
the package's file formats), ``tokens`` (strings), ``token_ids``, ``model_name``,
``preset``, ``layers``, ``k``, ``postnorm`` (how partial sums were normalised),
``steps`` (the step labels of every prefix length,
``{"n": ["initial", "key 0 '<bos>'", ..., "mlp"]}``), ``created``, ``versions`` (package
and library versions, :func:`trajectory.io.provenance`), ``settings`` and, from the
engine, ``saes``, ``bank`` and ``prompt`` (and ``bank_model_name`` when the SAEs were made
for another model than ``model_name``, the model that ran: ``allow_other_model``). :meth:`Evolution.load` checks every field's
presence and type. Any safetensors reader (Python, Rust, JS) can open it; no model is
needed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np

from trajectory.evolution.attention import POSTNORMS
from trajectory.io import atomic_path

FORMAT = "trajectory-evolution"
FORMAT_VERSION = 1

#: A step given as its index, or as "initial", "mlp", "last_attention", or ("key", j).
Step = Union[int, str, tuple]


def n_steps(n: int) -> int:
    """Number of steps for prefix length ``n``: initial, n keys, mlp."""
    return n + 2


def row_offset(n: int) -> int:
    """Index of the first row of prefix length ``n`` within a layer (rows of 2..n-1 before it)."""
    # Σ_{m=2}^{n-1} (m + 2)
    return sum(m + 2 for m in range(2, n))


@dataclass
class LayerRows:
    """Ragged top-k lists of one layer; see the module docstring for the layout."""

    indices: np.ndarray  # int32 [total]
    values: np.ndarray  # float32 [total]
    offsets: np.ndarray  # int64 [rows + 1]
    n_active: np.ndarray  # int32 [rows]

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[r]), int(self.offsets[r + 1])
        return self.indices[a:b], self.values[a:b]


@dataclass
class Evolution:
    """Top-k SAE features of every (prefix length, layer, step) of one prompt.

    Attributes:
        tokens: token strings of the full prompt, BOS first; ``len(tokens) == N``.
        token_ids: their ids.
        layers: layers computed, ascending.
        k: the requested top-k size.
        rows: layer -> :class:`LayerRows`.
        model_name / preset: what produced it.
        postnorm: ``"per_partial_sum"`` (the original method) or ``"frozen_scale"`` or ``"none"``.
        metadata: everything else (versions, settings, time), JSON-serialisable.
    """

    tokens: list[str]
    token_ids: list[int]
    layers: list[int]
    k: int
    rows: dict[int, LayerRows]
    model_name: str = ""
    preset: str | None = None
    postnorm: str = "per_partial_sum"
    metadata: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ shape
    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def prefix_lengths(self) -> range:
        """The prefix lengths n = 2..N."""
        return range(2, self.n_tokens + 1)

    def steps(self, n: int) -> list[str]:
        """Human-readable labels of the steps of prefix length ``n``.

        ``["initial", "key 0 '<bos>'", ..., "key n-1 'tok'", "mlp"]``.
        """
        self._check_n(n)
        return ["initial"] + [f"key {j} {self.tokens[j]!r}" for j in range(n)] + ["mlp"]

    def step_index(self, n: int, step: Step) -> int:
        """Resolve a step given as an int, ``"initial"``, ``"mlp"``, ``"last_attention"``,
        ``("key", j)`` or one of the labels :meth:`steps` returns (``"key 3 ' correct'"``)."""
        self._check_n(n)
        if isinstance(step, str):
            named = {"initial": 0, "last_attention": n, "attention": n, "mlp": n + 1}
            if step in named:
                return named[step]
            labels = self.steps(n)
            if step in labels:
                return labels.index(step)
            raise ValueError(
                f"unknown step {step!r}; use an index, 'initial', 'last_attention', 'mlp', ('key', j) "
                f"or a label of evo.steps({n})"
            )
        if isinstance(step, tuple):
            if len(step) != 2 or step[0] != "key" or not 0 <= int(step[1]) < n:
                raise ValueError(f"bad step {step!r}: keys of prefix length {n} are ('key', 0..{n - 1})")
            return int(step[1]) + 1
        step = int(step)
        if not -n_steps(n) <= step < n_steps(n):
            raise ValueError(f"step {step} out of range: prefix length {n} has steps 0..{n + 1}")
        return step % n_steps(n)

    def _check_n(self, n: int) -> None:
        if not 2 <= n <= self.n_tokens:
            raise ValueError(f"prefix length {n} out of range: this prompt has lengths 2..{self.n_tokens}")

    def _check_layer(self, layer: int) -> None:
        if layer not in self.rows:
            raise ValueError(f"layer {layer} was not computed; this evolution has layers {self.layers}")

    # ------------------------------------------------------------- accessors
    def topk(self, n: int, layer: int, step: Step) -> tuple[np.ndarray, np.ndarray]:
        """Feature indices ``int32 [m]`` and activations ``float32 [m]``, strongest first (m ≤ k)."""
        self._check_layer(layer)
        s = self.step_index(n, step)
        return self.rows[layer].row(row_offset(n) + s)

    def n_active(self, n: int, layer: int, step: Step) -> int:
        """Number of active features at that step (before truncation to k)."""
        self._check_layer(layer)
        return int(self.rows[layer].n_active[row_offset(n) + self.step_index(n, step)])

    def step_lists(self, n: int, layer: int) -> list[np.ndarray]:
        """The index lists of all steps of (n, layer), in step order."""
        return [self.topk(n, layer, s)[0] for s in range(n_steps(n))]

    def feature_ranks(self, n: int, layer: int, feature: int) -> list[int | None]:
        """1-based rank of ``feature`` at every step of (n, layer); ``None`` where absent."""
        out: list[int | None] = []
        for idx in self.step_lists(n, layer):
            hit = np.flatnonzero(idx == feature)
            out.append(int(hit[0]) + 1 if hit.size else None)
        return out

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """One dict per (n, layer, step, rank): the tidy form of the whole result."""
        for layer in self.layers:
            for n in self.prefix_lengths:
                labels = self.steps(n)
                for s in range(n_steps(n)):
                    idx, val = self.topk(n, layer, s)
                    for r, (i, v) in enumerate(zip(idx.tolist(), val.tolist()), start=1):
                        yield dict(n=n, layer=layer, step=s, step_label=labels[s], rank=r, feature=i, activation=v)

    def to_table(self, pandas: bool | None = None):
        """The tidy table of :meth:`iter_rows`: a ``pandas.DataFrame`` when pandas is
        installed (or ``pandas=True``), else a list of dicts."""
        rows = list(self.iter_rows())
        if pandas is False:
            return rows
        try:
            import pandas as pd
        except ImportError:
            if pandas:
                raise
            return rows
        return pd.DataFrame(rows, columns=["n", "layer", "step", "step_label", "rank", "feature", "activation"])

    # ----------------------------------------------------------- construction
    @classmethod
    def from_lists(
        cls,
        tokens: Sequence[str],
        lists: dict[tuple[int, int], Sequence[tuple[Iterable[int], Iterable[float]]]],
        *,
        k: int,
        token_ids: Sequence[int] | None = None,
        n_active: dict[tuple[int, int], Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> "Evolution":
        """Build from plain lists: ``lists[(n, layer)]`` is one ``(indices, activations)``
        pair per step (``n + 2`` of them), strongest first. Handy for hand-made tests."""
        layers = sorted({layer for (_, layer) in lists})
        N = len(tokens)
        rows: dict[int, LayerRows] = {}
        for layer in layers:
            idx_parts, val_parts, counts, actives = [], [], [], []
            for n in range(2, N + 1):
                steps = lists.get((n, layer))
                if steps is None or len(steps) != n_steps(n):
                    raise ValueError(f"lists[({n}, {layer})] must hold {n_steps(n)} steps")
                act = (n_active or {}).get((n, layer))
                for s, (i, v) in enumerate(steps):
                    i = np.asarray(list(i), dtype=np.int32)
                    v = np.asarray(list(v), dtype=np.float32)
                    if i.shape != v.shape:
                        raise ValueError(f"indices and activations differ in length at ({n}, {layer}, {s})")
                    idx_parts.append(i)
                    val_parts.append(v)
                    counts.append(len(i))
                    actives.append(len(i) if act is None else int(act[s]))
            offsets = np.zeros(len(counts) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum(counts)
            rows[layer] = LayerRows(
                indices=np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int32),
                values=np.concatenate(val_parts) if val_parts else np.zeros(0, np.float32),
                offsets=offsets,
                n_active=np.asarray(actives, dtype=np.int32),
            )
        return cls(
            tokens=list(tokens),
            token_ids=list(token_ids) if token_ids is not None else list(range(N)),
            layers=layers,
            k=k,
            rows=rows,
            **kwargs,
        )

    # ------------------------------------------------------------------ I/O
    def header(self) -> dict[str, Any]:
        return dict(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            tokens=self.tokens,
            token_ids=[int(t) for t in self.token_ids],
            model_name=self.model_name,
            preset=self.preset,
            layers=[int(x) for x in self.layers],
            k=int(self.k),
            postnorm=self.postnorm,
            steps={str(n): self.steps(n) for n in self.prefix_lengths},
            **{k: v for k, v in self.metadata.items() if k not in _HEADER_KEYS},
        )

    def save(self, path: str | Path) -> Path:
        """Write the documented safetensors file atomically; returns the path."""
        from safetensors.numpy import save_file

        tensors: dict[str, np.ndarray] = {}
        for layer, r in self.rows.items():
            tensors[f"L{layer}.indices"] = np.ascontiguousarray(r.indices, dtype=np.int32)
            tensors[f"L{layer}.values"] = np.ascontiguousarray(r.values, dtype=np.float32)
            tensors[f"L{layer}.offsets"] = np.ascontiguousarray(r.offsets, dtype=np.int64)
            tensors[f"L{layer}.n_active"] = np.ascontiguousarray(r.n_active, dtype=np.int32)
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"trajectory": json.dumps(self.header())})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Evolution":
        """Read a file written by :meth:`save` (no model needed).

        Raises ``ValueError`` with the file name when it is not a readable evolution file,
        naming the header field or tensor that is missing or malformed.
        """
        path = Path(path)
        header, tensors = _read_file(path)
        version = header.get("format_version", header.get("version"))
        if _is_int(version) and version > FORMAT_VERSION:  # before the checks: a newer layout may differ
            raise ValueError(f"{path} has format version {version}; upgrade trajectory to read it")
        try:
            _check_header(header)
            rows = {L: _checked_rows(tensors, L, len(header["tokens"])) for L in header["layers"]}
        except ValueError as exc:
            raise ValueError(
                f"{path} is not a valid trajectory evolution file ({exc}); re-run `trajectory evolve` to recreate it"
            ) from None
        return cls(
            tokens=header["tokens"],
            token_ids=header["token_ids"],
            layers=list(header["layers"]),
            k=header["k"],
            rows=rows,
            model_name=header.get("model_name", ""),
            preset=header.get("preset"),
            postnorm=header.get("postnorm", "per_partial_sum"),
            metadata={k: v for k, v in header.items() if k not in _HEADER_KEYS},
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Evolution):
            return NotImplemented
        if self.header() != other.header() or set(self.rows) != set(other.rows):
            return False
        return all(
            np.array_equal(getattr(self.rows[L], f), getattr(other.rows[L], f))
            for L in self.rows
            for f in ("indices", "values", "offsets", "n_active")
        )


def _checked_rows(tensors: dict[str, np.ndarray], layer: int, N: int) -> LayerRows:
    """One layer's rows from a file's tensors, with the layout checked (see module docstring)."""
    try:
        r = LayerRows(
            indices=tensors[f"L{layer}.indices"],
            values=tensors[f"L{layer}.values"],
            offsets=tensors[f"L{layer}.offsets"],
            n_active=tensors[f"L{layer}.n_active"],
        )
    except KeyError as exc:
        raise ValueError(f"tensor {exc.args[0]} is missing") from None
    n_rows = row_offset(N + 1)
    if r.offsets.shape != (n_rows + 1,) or r.n_active.shape != (n_rows,):
        raise ValueError(f"layer {layer} has {r.offsets.size - 1} rows; {N} tokens need {n_rows}")
    if r.indices.shape != r.values.shape or r.offsets[0] != 0 or r.offsets[-1] != r.indices.size:
        raise ValueError(f"layer {layer}: offsets do not match its {r.indices.size} indices/values")
    if np.any(np.diff(r.offsets) < 0):
        raise ValueError(f"layer {layer}: offsets are not ascending")
    return r


#: Header keys that are fields of :class:`Evolution` (the rest is its ``metadata``);
#: ``version`` is the version key of files from before ``format_version``.
_HEADER_KEYS = {
    "format", "format_version", "version", "tokens", "token_ids", "model_name", "preset", "layers", "k", "postnorm",
    "steps",
}


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON header (a dict of format ``trajectory-evolution``) and the tensors of ``path``."""
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no evolution file at {path}; run `trajectory evolve` first")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            header = json.loads(meta["trajectory"])
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise KeyError("format")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ValueError(
            f"{path} is not a readable trajectory evolution file ({type(exc).__name__}: {exc}); "
            "re-run `trajectory evolve` to recreate it"
        ) from None
    return header, tensors


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: Header fields: (check, what it must be, required). Optional ones default as in :class:`Evolution`.
_FIELD_CHECKS = {
    "tokens": (lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v), "a list of strings", True),
    "token_ids": (lambda v: isinstance(v, list) and all(_is_int(t) for t in v), "a list of integers", True),
    "layers": (lambda v: isinstance(v, list) and all(_is_int(t) and t >= 0 for t in v), "a list of layers", True),
    "k": (lambda v: _is_int(v) and v >= 1, "a positive integer", True),
    "model_name": (lambda v: isinstance(v, str), "a string", False),
    "preset": (lambda v: v is None or isinstance(v, str), "a string or null", False),
    "postnorm": (lambda v: v in POSTNORMS, " or ".join(POSTNORMS), False),
    "steps": (lambda v: isinstance(v, dict), "an object", False),
    "created": (lambda v: isinstance(v, str), "a string", False),
    "versions": (lambda v: isinstance(v, dict), "an object", False),
    "settings": (lambda v: isinstance(v, dict), "an object", False),
}


def _check_header(header: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first header field that is missing or of the wrong type."""
    key = next((key for key in ("format_version", "version") if key in header), None)
    if key is None:
        raise ValueError("header field 'format_version' is missing")
    if not _is_int(header[key]):
        raise ValueError(f"header field {key!r} must be an integer, got {_short(header[key])}")
    for name, (ok, what, required) in _FIELD_CHECKS.items():
        if name not in header:
            if required:
                raise ValueError(f"header field {name!r} is missing")
            continue
        if not ok(header[name]):
            raise ValueError(f"header field {name!r} must be {what}, got {_short(header[name])}")
    n_tokens, n_ids = len(header["tokens"]), len(header["token_ids"])
    if n_ids != n_tokens:
        raise ValueError(f"header fields 'tokens' and 'token_ids' differ in length ({n_tokens} vs {n_ids})")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
