"""Feature dashboards: self-contained offline HTML pages, one per SAE layer, built from
one streaming pass over a corpus.

::

    collect(model, targets, "0-2047", corpus, config=DashboardConfig()) ─► [LayerDashboard] ─► write_pages ─► HTML + JSON
    build_dashboard(DashboardRequest(...))  (what `trajectory dashboard` runs: open model + SAEs, collect, write)

- :mod:`~trajectory.dashboard.collection`: :func:`collect`, :class:`DashboardConfig`, :class:`DashboardTarget`;
- :mod:`~trajectory.dashboard.data`: :class:`LayerDashboard` / :class:`FeatureCard`, the JSON file format;
- :mod:`~trajectory.dashboard.page`: the HTML pages (``<folder>/layer_06.html#f123`` opens feature 123);
- :mod:`~trajectory.dashboard.build`: :func:`build_dashboard`, :class:`DashboardRequest`.

Names are imported lazily (torch loads only when collecting).
"""
from __future__ import annotations

from trajectory import lazy_exports

_MODULES = {
    "collection": ("collect", "DashboardConfig", "DashboardTarget"),
    "data": ("LayerDashboard", "FeatureCard", "CardExample", "Band"),
    "page": ("write_pages", "layer_page", "index_page"),
    "build": ("build_dashboard", "DashboardRequest", "DashboardResult"),
}
__getattr__, __dir__, __all__ = lazy_exports(globals(), _MODULES)
