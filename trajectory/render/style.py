"""How the renderings show things: token strings, layer names and the rank colour scale.

Shared by the PNG and HTML renderers so that both pictures of one graph agree.
Nothing here imports matplotlib or plotly.

Tokens are shown *visibly*: a newline becomes ``\\n``, a tab ``\\t``, other control and
invisible format characters (zero-width space, BOM, ...) become ``\\u200b``-style
escapes, leading and trailing spaces become ``␣``, an empty token ``''``, and long tokens
are cut with ``…``. This is display only; the graph keeps the raw strings. HTML output
must still pass the result through :func:`html.escape` (the display form may hold ``<``).
"""
from __future__ import annotations

import unicodedata
from typing import Callable, Sequence

#: Colours of the rank scale, best rank (1) first: red → purple → blue, like the original.
RANK_COLOURS: tuple[str, ...] = ("#d7191c", "#8e3bb8", "#2b5fd9")

#: Categories whose characters are invisible or break layout; shown as escapes.
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape_char(c: str) -> str:
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")


def display_token(
    token: str,
    *,
    max_len: int = 24,
    renderable: Callable[[str], bool] | None = None,
    mark_spaces: bool = True,
) -> str:
    """The visible form of one token string (see the module docstring).

    Parameters
    ----------
    token: the raw token string.
    max_len: longer results are cut to ``max_len`` characters ending in ``…`` (0: no limit).
    renderable: optional test ``char -> bool``; characters it rejects (no glyph in the
        fonts at hand) are shown as ``\\uXXXX`` escapes instead of empty boxes.
    mark_spaces: show leading and trailing spaces as ``␣``.

    Examples
    --------
    >>> display_token(" the")
    '␣the'
    >>> display_token("a\\nb")
    'a\\\\nb'
    >>> display_token("")
    "''"
    """
    if token is None:
        return "None"
    token = str(token)
    if token == "":
        return "''"
    out = []
    for c in token:
        if c in _NAMED:
            out.append(_NAMED[c])
        elif c == " ":
            out.append(" ")
        elif unicodedata.category(c) in _INVISIBLE or (unicodedata.category(c) == "Zs"):
            out.append(_escape_char(c))
        elif renderable is not None and not renderable(c):
            out.append(_escape_char(c))
        else:
            out.append(c)
    text = "".join(out)
    # leading / trailing spaces are what distinguishes " the" from "the": show them
    stripped = text.strip(" ")
    if mark_spaces and stripped != text:
        lead = len(text) - len(text.lstrip(" "))
        trail = len(text) - len(text.rstrip(" "))
        text = "␣" * lead + stripped + ("␣" * trail if stripped else "")
    if max_len and len(text) > max_len:
        text = text[: max_len - 1] + "…"
    return text


def layer_label(layer: int) -> str:
    """``"emb"`` for the embeddings row (layer -1), else ``"L{layer}"``."""
    return "emb" if int(layer) < 0 else f"L{int(layer)}"


def trajectories_text(count: int) -> str:
    """``"1 trajectory"`` / ``"6 trajectories"``: a trajectory is one newcomer feature an edge carried."""
    return f"{int(count)} trajector{'y' if int(count) == 1 else 'ies'}"


def rank_colour_stops() -> list[tuple[float, str]]:
    """The rank scale as ``(fraction, colour)`` stops, 0 = best rank."""
    n = len(RANK_COLOURS)
    return [(i / (n - 1), c) for i, c in enumerate(RANK_COLOURS)]


def prompt_text(tokens: Sequence[str], *, skip_bos: bool = True, max_len: int = 160) -> str:
    """The prompt as one visible line (BOS left out), for titles."""
    toks = [str(t) for t in (tokens[1:] if skip_bos and len(tokens) > 1 else tokens)]
    # sub-word tokenizers carry their own spaces (" the", "▁the"); word-level ones do not
    spaced = any(c.isspace() or c == "▁" for t in toks for c in t[:1] + t[-1:])
    body = "".join(toks).replace("▁", " ") if spaced else " ".join(toks)
    body = body.strip(" ") or body
    return display_token(body, max_len=max_len, mark_spaces=False) if body else ""


def wrap(text: str, width: int = 90) -> list[str]:
    """Split a long explanation into lines of at most ``width`` characters."""
    import textwrap

    return textwrap.wrap(str(text), width=width, break_long_words=True, break_on_hyphens=False) or [""]


class GraphView:
    """What both renderers need from a trajectory graph (schema: ``trajectory.graph``).

    Rows are the layers present (the embeddings row ``-1`` included when an edge starts
    there), drawn bottom to top at ``y = row index``; columns are token indices, BOS
    left out unless the graph includes it, drawn at ``x = token index``. Missing graph
    attributes (hand-made graphs) fall back to what the nodes say.
    """

    def __init__(self, g) -> None:
        meta = dict(g.graph)
        self.g = g
        tokens = list(meta.get("tokens") or [])
        node_tokens = {int(d.get("token_index", n[0])): d.get("token", "") for n, d in g.nodes(data=True)}
        if not tokens and node_tokens:
            tokens = [str(node_tokens.get(i, "")) for i in range(max(node_tokens) + 1)]
        self.tokens: list[str] = [str(t) for t in tokens]
        self.include_bos = bool(meta.get("include_bos", False))
        self.T = meta.get("T")
        self.through = meta.get("through", "attention")
        self.model_name = str(meta.get("model_name") or "")
        self.preset = meta.get("preset")
        start = 0 if (self.include_bos or 0 in node_tokens or len(self.tokens) <= 1) else 1
        self.columns: list[int] = list(range(start, len(self.tokens)))
        layers = {int(x) for x in meta.get("layers") or []}
        node_layers = {int(d.get("layer", n[1])) for n, d in g.nodes(data=True)}
        rows = layers | node_layers
        if layers and min(layers) == 0:
            rows.add(-1)
        self.rows: list[int] = sorted(rows) if rows else [-1, 0]
        self._row_of = {L: i for i, L in enumerate(self.rows)}

    def xy(self, node) -> tuple[float, float]:
        """Plot position of a node ``(token_index, layer)``."""
        d = self.g.nodes[node]
        return float(d.get("token_index", node[0])), float(self._row_of[int(d.get("layer", node[1]))])

    def token(self, i: int) -> str:
        return self.tokens[i] if 0 <= i < len(self.tokens) else f"#{i}"

    def edges(self) -> list[tuple]:
        """Edges ``(u, v, data)`` weakest first, so the strongest are drawn on top."""
        es = list(self.g.edges(data=True))
        es.sort(key=lambda e: (-int(e[2].get("best_rank", 0) or 0), int(e[2].get("num_trajectories", 0) or 0)))
        return es

    def rank_max(self) -> int:
        """Top of the colour scale: T, or the worst best-rank present if larger."""
        worst = max((int(d.get("best_rank", 1) or 1) for _, _, d in self.g.edges(data=True)), default=1)
        return max(int(self.T or 1), worst, 2)

    def count_max(self) -> int:
        return max((int(d.get("num_trajectories", 1) or 1) for _, _, d in self.g.edges(data=True)), default=1)

    # What edge width shows: the graph attribute ``edge_width`` — "trajectories" (default)
    # or "knockout_kl" (edges annotated by trajectory.interventions.edge_effects).
    @property
    def width_by(self) -> str:
        return "knockout_kl" if self.g.graph.get("edge_width") == "knockout_kl" else "trajectories"

    def width_value(self, d) -> float:
        """The quantity an edge's width shows (``num_trajectories``, or its ``knockout_kl``)."""
        if self.width_by == "knockout_kl":
            return float(d.get("knockout_kl") or 0.0)
        return float(int(d.get("num_trajectories", 1) or 1))

    def width_max(self) -> float:
        values = [self.width_value(d) for _, _, d in self.g.edges(data=True)]
        return max(values + [1e-12 if self.width_by == "knockout_kl" else 1.0])

    def width_legend(self) -> list[tuple[float, str]]:
        """``(value, label)`` of the widths the legend shows."""
        top = self.width_max()
        if self.width_by == "knockout_kl":
            return [(v, f"KL {v:.2g}") for v in sorted({top / 10, top / 2, top})]
        return [(c, trajectories_text(int(c))) for c in sorted({1, max(1, int(top) // 2), int(top)})]

    def width_title(self, sep: str = " ") -> str:
        if self.width_by == "knockout_kl":
            return f"edge width = knockout KL:{sep}how much cutting the key's{sep}attention moves the next token"
        return f"edge width = trajectories{sep}(a trajectory: one newcomer{sep}feature the edge carried)"

    def subtitle(self) -> str:
        """``model (preset) · T=.. · through ..`` (raw text; escape it for HTML)."""
        parts = []
        if self.model_name or self.preset:
            parts.append(self.model_name + (f" ({self.preset})" if self.preset else ""))
        if self.T is not None:
            parts.append(f"T={self.T}")
        parts.append(f"newcomers through {self.through}")
        parts.append(f"{self.g.number_of_nodes()} nodes, {self.g.number_of_edges()} edges")
        return " · ".join(parts)


def html_text(text: object) -> str:
    """Escape any text for plotly labels, hover text and titles (``html.escape``).

    Plotly draws these strings as a small HTML subset (``<b>``, ``<br>``, ``<a href>``),
    so text from tokens, corpora or the network must never reach it raw. Quotes use
    numeric entities because plotly.js decodes those but not ``&quot;``.
    """
    import html

    return html.escape(str(text), quote=True).replace("&quot;", "&#34;")


def rank_colour(rank: int, top: int) -> str:
    """Hex colour of a best final rank on the scale 1 (red) .. ``top`` (blue), linear in RGB."""
    frac = 0.0 if top <= 1 else min(1.0, max(0.0, (float(rank) - 1.0) / (float(top) - 1.0)))
    stops = rank_colour_stops()
    for (f0, c0), (f1, c1) in zip(stops, stops[1:]):
        if frac <= f1:
            w = 0.0 if f1 == f0 else (frac - f0) / (f1 - f0)
            a = [int(c0[i : i + 2], 16) for i in (1, 3, 5)]
            b = [int(c1[i : i + 2], 16) for i in (1, 3, 5)]
            return "#" + "".join(f"{round(x + (y - x) * w):02x}" for x, y in zip(a, b))
    return stops[-1][1]


def rank_ticks(top: int) -> list[int]:
    """Integer colour-bar ticks from 1 to ``top``: 1, a few round numbers, top."""
    step = next((s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if top / s <= 6), max(1, top // 5))
    ticks = [1] + [t for t in range(step, top, step) if t - 1 >= step / 2 and top - t >= step / 2] + [top]
    return sorted(set(ticks))
