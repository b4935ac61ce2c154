"""Stage 3: newcomer features linked into NetworkX graphs, exported and analysed.

- :mod:`~trajectory.graph.build`: :func:`trajectory_graph` and :func:`feature_graph` (the
  graph schema is documented there);
- :mod:`~trajectory.graph.export`: GraphML / GEXF / node-link JSON that read back equal;
- :mod:`~trajectory.graph.analysis`: paths, per-layer flow, recurring features, comparisons.

No torch here: graphs build from saved evolution files.
"""
from trajectory import lazy_exports

_EXPORTS = {
    "trajectory_graph": "trajectory.graph.build",
    "feature_graph": "trajectory.graph.build",
    "graph_for_prefix": "trajectory.graph.build",
    "graph_features": "trajectory.graph.build",
    "attach_explanations": "trajectory.graph.build",
    "export_graph": "trajectory.graph.export",
    "read_graph": "trajectory.graph.export",
    "strongest_paths": "trajectory.graph.analysis",
    "layer_flow": "trajectory.graph.analysis",
    "recurring_features": "trajectory.graph.analysis",
    "compare_graphs": "trajectory.graph.analysis",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
