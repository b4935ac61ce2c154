"""Pictures of trajectory graphs and evolutions: static PNG (matplotlib) and
interactive HTML (plotly) that opens offline.

- :func:`render_png` / :func:`render_html`: a trajectory graph (``trajectory.graph``);
- :func:`evolution_plot_png` / :func:`evolution_plot_html`: the rank of each feature
  across the steps of one (layer, prefix length), newcomers highlighted;
- :mod:`~trajectory.render.feature_links`: links from feature ids to feature dashboard
  cards (``render_html(..., dashboard=DIR)``);
- :mod:`~trajectory.render.aggregate` / :mod:`~trajectory.render.diff`: the aggregated
  feature-flow graph and the diff graph of two prompts.

HTML pages load plotly.js per their ``plotly_js`` argument (:mod:`trajectory.render.page`):
``"directory"`` (default: one shared ``plotly.min.js`` beside the pages), ``"inline"``,
``"cdn"``, or a path to a shared copy (pages in sub-folders).

No torch here, and matplotlib / plotly load only when a function runs, so rendering
saved graphs stays fast. Every text from tokens, corpora or the network is escaped in
HTML output (:func:`trajectory.render.style.html_text`).
"""
from trajectory.render.evolution_plot import evolution_plot_html, evolution_plot_png, rank_lines
from trajectory.render.html import render_html
from trajectory.render.png import render_png

__all__ = ["render_png", "render_html", "evolution_plot_png", "evolution_plot_html", "rank_lines"]
