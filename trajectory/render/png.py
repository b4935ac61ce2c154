"""Static PNG of a trajectory graph (matplotlib, Agg; no pyplot global state).

Tokens run along x (one column per token, BOS left out unless the graph includes it),
layers up y (``emb`` = the token embeddings, input of layer 0). An edge
``(t, L-1) → (q, L)`` is a line coloured by its best final rank (red = rank 1 →
purple → blue = rank T, with a colour bar) and as wide as its number of trajectories.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any, Callable

from trajectory.io import atomic_path
from trajectory.render.style import (
    GraphView,
    display_token,
    layer_label,
    prompt_text,
    rank_colour_stops,
    rank_ticks,
    wrap,
)

#: Font families tried in order; matplotlib falls back along the list per glyph.
_FONT_CANDIDATES = (
    "DejaVu Sans",
    "Noto Sans",
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Droid Sans Fallback",
    "WenQuanYi Zen Hei",
    "Liberation Sans",
)


@functools.lru_cache(maxsize=1)
def _fonts() -> tuple[list[str], frozenset[int]]:
    """Installed font families from the candidates, and the code points they can draw."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    installed = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    families, chars = [], set()
    for name in _FONT_CANDIDATES:
        if name in installed:
            families.append(name)
            try:
                chars |= set(FT2Font(installed[name]).get_charmap())
            except Exception:  # an unreadable font file only costs us its glyphs
                pass
    if not families:  # matplotlib's bundled DejaVu Sans is always there
        families = ["DejaVu Sans"]
        chars = set(FT2Font(font_manager.findfont("DejaVu Sans")).get_charmap())
    return families, frozenset(chars)


def _renderable(c: str) -> bool:
    return ord(c) in _fonts()[1]


def png_token_label(token: str, max_len: int = 18) -> str:
    """A token as a PNG tick label: visible escapes, and ``\\uXXXX`` for glyphs no font has."""
    return display_token(token, max_len=max_len, renderable=_renderable)


def figure_size(n_columns: int, n_rows: int) -> tuple[float, float]:
    """Figure size in inches that keeps every token label and layer row readable.

    About 0.42 in per token column and 0.36 in per layer row, plus room for labels,
    title and colour bar; at least 8 x 5 in, at most 80 x 50 in.
    """
    width = min(80.0, max(8.0, 3.2 + 0.42 * n_columns))
    height = min(50.0, max(5.0, 3.0 + 0.36 * n_rows))
    return width, height


def render_png(g, path: str | Path, *, title: str | None = None, dpi: int = 150) -> Path:
    """Draw a trajectory graph to a PNG file (written atomically); returns the path.

    Parameters
    ----------
    g: a trajectory graph (``networkx.DiGraph`` following the schema in
        ``trajectory.graph``); an empty graph gives a picture that says so.
    path: output file.
    title: first title line; default: the prompt. A second line always names the
        model, preset, T and newcomer mode.
    dpi: resolution; the figure size in inches grows with tokens and layers
        (:func:`figure_size`), so the pixel size is ``figure_size(...) * dpi``.
    """
    return save_png(lambda: png_figure(g, title=title, dpi=dpi), path, dpi=dpi)


def save_png(draw: Callable[[], Any], path: str | Path, *, dpi: int) -> Path:
    """Build a figure with ``draw()`` under the pictures' settings (:func:`_rc`; warnings
    of glyphs no font has are silenced: such tokens are drawn as escapes) and save it as
    a 256-colour PNG, atomically; returns the path.

    The picture holds few colours (the rank scale, a palette, greys and their
    anti-aliased edges), so an adaptive 256-colour palette looks the same as full RGB and
    takes about a quarter of the bytes: a graph folder with 18 evolution plots stays small.
    """
    import io

    import matplotlib
    from PIL import Image

    path = Path(path)
    with matplotlib.rc_context(_rc()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        fig = draw()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    buf.seek(0)
    with Image.open(buf) as im:
        # no dithering: it would speckle the flat areas and cost bytes
        small = im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    with atomic_path(path) as tmp:
        small.save(tmp, format="PNG")
    return path


def _rc() -> dict:
    """Matplotlib settings of every picture: no mathtext from token text, fonts with fallbacks."""
    return {"text.parse_math": False, "font.family": _fonts()[0], "svg.fonttype": "none"}


def png_figure(g, *, title: str | None = None, dpi: int = 150):
    """The matplotlib ``Figure`` that :func:`render_png` saves (no pyplot state), for
    callers that want to inspect or add to it; ``save_png(lambda: png_figure(g), path,
    dpi=dpi)`` is :func:`render_png`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    view = GraphView(g)
    fig = Figure(figsize=figure_size(len(view.columns), len(view.rows)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # faint grid of every (token, layer) position, for orientation
    gx = [x for x in view.columns for _ in view.rows]
    gy = [y for _ in view.columns for y in range(len(view.rows))]
    ax.scatter(gx, gy, s=6, c="#d9d9d9", zorder=1, linewidths=0)
    if view.edges():
        _draw_edges(fig, ax, view)
    else:
        T = f" with final rank ≤ {view.T}" if view.T is not None else ""
        ax.text(0.5, 0.5, f"no newcomer trajectories{T}\n(empty trajectory graph)", transform=ax.transAxes,
                ha="center", va="center", fontsize=13, color="#444444",
                bbox=dict(boxstyle="round,pad=0.6", fc="#f4f4f4", ec="#bbbbbb"))
    if g.number_of_nodes():
        _draw_nodes(fig, ax, g, view)
    _draw_axes(fig, ax, view, title)
    return fig


def _draw_edges(fig, ax, view: GraphView) -> None:
    """Edges coloured by best final rank (with a colour bar), widths by trajectory count (with a legend)."""
    import matplotlib
    from matplotlib.collections import LineCollection
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.lines import Line2D

    cmap = LinearSegmentedColormap.from_list("rank", rank_colour_stops())
    norm = Normalize(vmin=1, vmax=view.rank_max())
    wmax = view.width_max()
    segs, colours, widths = [], [], []
    for u, v, d in view.edges():
        segs.append([view.xy(u), view.xy(v)])
        colours.append(cmap(norm(int(d.get("best_rank", 1) or 1))))
        widths.append(0.8 + 4.2 * view.width_value(d) / wmax)
    ax.add_collection(LineCollection(segs, colors=colours, linewidths=widths, alpha=0.85, zorder=2, capstyle="round"))
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    cbar = fig.colorbar(sm, ax=ax, pad=0.01, fraction=0.03 if len(view.columns) > 20 else 0.05)
    cbar.set_ticks(rank_ticks(view.rank_max()))
    cbar.set_label("best final rank (1 = strongest)")
    cbar.ax.invert_yaxis()  # rank 1 (red) at the top
    legend = view.width_legend()
    handles = [Line2D([], [], color="#555555", lw=0.8 + 4.2 * c / wmax) for c, _ in legend]
    fig.legend(handles, [label for _, label in legend],
               loc="outside upper right", ncols=len(legend), fontsize=8, frameon=False,
               title=view.width_title(), title_fontsize=8)


def _node_area(n_newcomers: int) -> float:
    """Marker area (pt²) of a node where ``n_newcomers`` features arrive (12 or more: the largest)."""
    return 18 + 10 * min(n_newcomers, 12)


def _draw_nodes(fig, ax, g, view: GraphView) -> None:
    """Nodes sized by their newcomer count, grey where none arrived, with a legend saying so."""
    from matplotlib.lines import Line2D

    xs, ys, sizes, colours = [], [], [], []
    for node, d in g.nodes(data=True):
        x, y = view.xy(node)
        n_new = int(d.get("n_newcomers", len(d.get("newcomers") or [])) or 0)
        xs.append(x)
        ys.append(y)
        sizes.append(_node_area(n_new))
        colours.append("#222222" if n_new else "#8c8c8c")
    ax.scatter(xs, ys, s=sizes, c=colours, zorder=3, edgecolors="white", linewidths=0.6)
    # Line2D's markersize is a diameter in points, scatter's s an area in points²
    handles = [Line2D([], [], ls="", marker="o", color=c, markersize=_node_area(n) ** 0.5, markeredgecolor="white")
               for n, c in ((1, "#222222"), (6, "#222222"), (12, "#222222"), (0, "#8c8c8c"))]
    labels = ["1 newcomer", "6 newcomers", "12 or more", "grey: none (a source that passes features on)"]
    fig.legend(handles, labels, loc="outside lower right", ncols=4, fontsize=8, frameon=False,
               title="node size = newcomer features arriving at that (token, layer)", title_fontsize=8)


def _draw_axes(fig, ax, view: GraphView, title: str | None) -> None:
    """Tokens on x, layers on y, and a two-line title (prompt; model, preset, T)."""
    rotation = 90 if len(view.columns) > 40 else 55
    ax.set_xticks(view.columns, [f"{png_token_label(view.token(i))}" for i in view.columns],
                  rotation=rotation, ha="right" if rotation != 90 else "center",
                  rotation_mode="anchor" if rotation != 90 else "default", fontsize=9)
    ax.set_yticks(range(len(view.rows)), [layer_label(L) for L in view.rows], fontsize=9)
    ax.set_xlim((view.columns[0] - 0.7) if view.columns else -0.7, (view.columns[-1] + 0.7) if view.columns else 0.7)
    ax.set_ylim(-0.7, len(view.rows) - 0.3)
    ax.set_xlabel("token (position in the prompt)")
    ax.set_ylabel("layer")
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    ax.grid(axis="y", color="#eeeeee", lw=0.6, zorder=0)
    head = title if title is not None else (prompt_text(view.tokens, max_len=240) or "trajectory graph")
    head = display_token(head, max_len=400, renderable=_renderable, mark_spaces=False)
    lines = wrap(head, int(fig.get_figwidth() * 9.5))
    head = "\n".join(lines[:2]) + (" …" if len(lines) > 2 else "")
    ax.set_title(f"{head}\n{view.subtitle()}", fontsize=11, loc="left")
