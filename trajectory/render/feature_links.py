"""Links from graph and evolution pages to feature dashboard cards (:mod:`trajectory.dashboard`).

A dashboard folder holds one page per SAE layer, ``layer_06.html``, whose URL fragment
``#f1570`` opens feature 1570's card (the names :func:`trajectory.dashboard.build.target_name`
gives). :class:`DashboardLinks` looks once at such a folder — which layers have a page,
and, from each page's ``layer_XX.json``, which features it holds — and warns (log) about
the layers and features a graph needs that it lacks. :meth:`DashboardLinks.for_page`
then gives the links as seen from one page: **relative** from the page's folder to the
dashboard folder where possible (so the two folders can be moved together), an absolute
``file://`` URL otherwise. A feature whose page or card is missing gets no link (it
would dangle) and its panel says why.

Every href is URL-quoted and HTML-escaped; the page's own text goes through
:func:`trajectory.render.style.html_text`.
"""
from __future__ import annotations

import logging
import mmap
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import quote

from trajectory.render.style import html_text

log = logging.getLogger(__name__)

#: a feature card's id in a dashboard JSON file (``"feature": 123``); an escaped quote
#: inside a string (``\\"feature\\":``) never matches, as the quote must follow ``feature``
_CARD_ID = re.compile(rb'(?<!\\)"feature":\s*(\d+)')


def dashboard_page(layer: int) -> str:
    """File name of the dashboard page of the SAE of block ``layer``: ``layer_06.html``
    (what :func:`trajectory.dashboard.build.target_name` + ``.html`` names it)."""
    return f"layer_{int(layer):02d}.html"


def graph_feature_layers(g) -> dict[int, set[int]]:
    """``{layer: features}`` a trajectory graph names: node newcomers (attention and MLP)
    at the node's layer, edge features at the edge's (target) layer."""
    out: dict[int, set[int]] = {}
    for n, d in g.nodes(data=True):
        for f in list(d.get("newcomers") or []) + list(d.get("mlp_newcomers") or []):
            out.setdefault(int(d.get("layer", n[1])), set()).add(int(f.get("feature", -1)))
    for _, v, d in g.edges(data=True):
        for f in d.get("features") or []:
            out.setdefault(int(d.get("layer", v[1])), set()).add(int(f.get("feature", -1)))
    return out


def page_features(json_path: Path) -> frozenset[int] | None:
    """Feature ids on a dashboard page, read from its ``layer_XX.json`` (memory-mapped,
    not parsed: a 16k-feature file is hundreds of MB); ``None`` when there is no JSON."""
    if not json_path.is_file() or json_path.stat().st_size == 0:
        return None
    with open(json_path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return frozenset(int(m.group(1)) for m in _CARD_ID.finditer(mm))


@dataclass(frozen=True)
class DashboardLinks:
    """What a dashboard folder offers a graph: ``pages`` (layer -> page file name) for the
    layers that have one, ``features`` (layer -> ids on that page; ``None``: unknown, no
    JSON beside it), ``missing`` (asked-for layers with no page). Build with :meth:`open`."""

    folder: Path
    pages: Mapping[int, str] = field(default_factory=dict)
    features: Mapping[int, frozenset[int] | None] = field(default_factory=dict)
    missing: tuple[int, ...] = ()

    @classmethod
    def open(cls, folder: str | Path, layers: Iterable[int]) -> "DashboardLinks":
        """Look at ``folder`` for the pages of ``layers``; warn (log) about missing ones.

        Raises ``FileNotFoundError`` when ``folder`` does not exist and ``ValueError``
        when it is not a folder (both naming the fix).
        """
        folder = Path(folder).expanduser()
        if not folder.exists():
            raise FileNotFoundError(f"no feature dashboard at {folder}; build it first with "
                                    f"`trajectory dashboard --layers ... --out {folder}`, or fix --dashboard")
        if not folder.is_dir():
            raise ValueError(f"--dashboard {folder} is a file; pass the folder that holds its layer_XX.html pages")
        folder = folder.resolve()
        pages, features, missing = {}, {}, []
        for layer in sorted({int(x) for x in layers if int(x) >= 0}):
            name = dashboard_page(layer)
            if (folder / name).is_file():
                pages[layer] = name
                features[layer] = page_features((folder / name).with_suffix(".json"))
            else:
                missing.append(layer)
        if missing:
            log.warning("the feature dashboard %s has no page for layer(s) %s (%s): features there get no link",
                        folder, ", ".join(map(str, missing)), ", ".join(dashboard_page(x) for x in missing))
        return cls(folder, pages, features, tuple(missing))

    def warn_unlinked(self, wanted: Mapping[int, Iterable[int]]) -> int:
        """Log how many of ``wanted`` (layer -> features) have a page but no card on it;
        returns that number."""
        absent = {L: sorted(set(fs) - self.features[L]) for L, fs in wanted.items()
                  if L in self.pages and self.features.get(L) is not None}
        absent = {L: fs for L, fs in absent.items() if fs}
        if absent:
            log.warning("%d feature(s) are not on their dashboard page and get no link (the dashboard was built for "
                        "other features): %s", sum(map(len, absent.values())),
                        "; ".join(f"{dashboard_page(L)}: {', '.join(map(str, fs[:8]))}{' …' if len(fs) > 8 else ''}"
                                  for L, fs in sorted(absent.items())))
        return sum(map(len, absent.values()))

    def for_page(self, page: str | Path) -> "PageLinks":
        """The links as seen from the HTML file ``page``."""
        page_dir = Path(page).expanduser().resolve().parent
        try:
            rel = Path(os.path.relpath(self.folder, page_dir)).as_posix()
            base = "" if rel == "." else quote(rel) + "/"
        except ValueError:  # no relative path (another drive on Windows): an absolute URL
            base = self.folder.as_uri() + "/"
        return PageLinks(self, base)


@dataclass(frozen=True)
class PageLinks:
    """Dashboard links from one page: ``base`` is the URL of the dashboard folder
    relative to the page (``"../dashboard/"``; ``""`` when it is the same folder)."""

    links: DashboardLinks
    base: str

    def href(self, layer: int, feature: int) -> str | None:
        """URL of ``feature``'s card at ``layer`` (``None``: no page, or not on it)."""
        layer, feature = int(layer), int(feature)
        name = self.links.pages.get(layer)
        known = self.links.features.get(layer)
        if name is None or (known is not None and feature not in known):
            return None
        return f"{self.base}{quote(name)}#f{feature}"

    def feature_html(self, layer: int, feature: int) -> str:
        """``feature 123`` as renderer markup: a link to the card when there is one."""
        href = self.href(layer, feature)
        text = f"feature {int(feature)}"
        if href is None:
            return text
        return f'<a href="{html_text(href)}" title="open its card in the feature dashboard">{text}</a>'

    def note(self, layer: int, features: Iterable[int] = ()) -> str | None:
        """Why some of ``features`` at ``layer`` have no link (raw text; escape it), or ``None``."""
        if int(layer) < 0:
            return None
        if int(layer) not in self.links.pages:
            return (f"no dashboard page {dashboard_page(layer)} in {self.links.folder}: "
                    "these features have no link")
        absent = [int(f) for f in features if self.href(layer, f) is None]
        if absent:
            return (f"not on {dashboard_page(layer)} (the dashboard was built for other features): "
                    + ", ".join(map(str, absent)))
        return None
