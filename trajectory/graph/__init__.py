"""Stage 3: newcomer features linked into NetworkX graphs, exported and analysed.

- :mod:`~trajectory.graph.build`: :func:`trajectory_graph` and :func:`feature_graph` (the
  graph schema is documented there);
- :mod:`~trajectory.graph.export`: GraphML / GEXF / node-link JSON that read back equal;
- :mod:`~trajectory.graph.analysis`: paths, per-layer flow, recurring features, comparisons;
- :mod:`~trajectory.graph.aggregate`: the feature-flow graph aggregated over many prompts;
- :mod:`~trajectory.graph.diff`: the contrastive graph of two prompts.

No torch here: graphs build from saved evolution files.
"""
from trajectory import lazy_exports

_MODULES = {
    "build": ("trajectory_graph", "feature_graph", "graph_for_prefix", "graph_features", "attach_explanations"),
    "export": ("export_graph", "read_graph"),
    "analysis": ("strongest_paths", "layer_flow", "recurring_features", "compare_graphs"),
    "aggregate": ("aggregate", "aggregate_folder", "top_flows", "consistent_features", "shared_flow_prompts"),
    "diff": ("diff_graph",),
}
__getattr__, __dir__, __all__ = lazy_exports(globals(), _MODULES)
