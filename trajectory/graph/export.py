"""Write graphs to GraphML, GEXF and node-link JSON, and read them back *equal*.

``export_graph(g, path)`` picks the format from the suffix (``.graphml``, ``.gexf``,
``.json``); ``read_graph(path)`` returns a graph equal to ``g``: same graph type,
node ids, edges and graph/node/edge attributes with their Python types (int, float,
bool, str, None, lists and dicts). Writes are atomic (:mod:`trajectory.io`).

How each format keeps what it cannot express natively
------------------------------------------------------
- **GraphML / GEXF** only hold scalar attributes of one declared type per name and
  string node ids. Node ids are written as JSON (``(3, 5)`` → ``"[3, 5]"``; on read
  JSON lists become tuples again). An attribute whose values are not all of one
  scalar type (str, int, float or bool) — lists, dicts, None, or a mix of types — is
  JSON-encoded for every element of that scope. The names of the encoded attributes
  are recorded in the graph attribute ``trajectory_export`` (a JSON object:
  ``{"format": "trajectory-graph-export", "format_version": 1, "node_ids": "json",
  "encoded": {"graph": [...], "node": [...], "edge": [...]}, ...}``), which
  :func:`read_graph` uses to decode them and then removes. Other tools (Gephi,
  yEd, Cytoscape) see plain strings for those attributes.
- **GEXF** has no graph attributes and reserves some names (``id``, ``label``,
  ``weight``, ``start``, ...): the graph attributes and the export record live as
  JSON in ``<meta><description>``; reserved attribute names are written as
  ``_attr_<name>`` and renamed back on read.
- **Node-link JSON** (``networkx.node_link_data`` with ``edges="edges"``) keeps
  every JSON type; node ids that are tuples come back as tuples (JSON writes them as
  lists; lists cannot be node ids, so every list id is a tuple). Tuples *inside*
  attribute values come back as lists. When an attribute is itself called ``id``,
  ``source`` or ``target``, the ids go under ``_id`` (etc.) and a top-level
  ``trajectory_export`` object names the keys used.

Files without the export record (written by other tools) are read as the format gives
them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import networkx as nx

from trajectory.io import atomic_path, atomic_write, jsonable

__all__ = ["export_graph", "read_graph", "FORMATS"]

#: suffix -> format name
FORMATS = {".graphml": "graphml", ".gexf": "gexf", ".json": "json"}
MARKER = "trajectory_export"
FORMAT_VERSION = 1
_RECORD = {"format": "trajectory-graph-export", "format_version": FORMAT_VERSION, "node_ids": "json"}
_SCALARS = (str, int, float, bool)
_GEXF_RESERVED = {
    "node": {"id", "label", "pid", "start", "end", "viz", "parents", "spells", "slices"},
    "edge": {"id", "label", "weight", "type", "start", "end", "key", "spells", "slices"},
}


_LINK_KEYS = {"name": "id", "source": "source", "target": "target"}


def _link_keys(g: nx.Graph) -> dict[str, str]:
    """node-link key names that no node/edge attribute uses ("id", else "_id", "__id", ...)."""
    node_attrs = {k for _, d in g.nodes(data=True) for k in d}
    edge_attrs = {k for *_, d in g.edges(data=True) for k in d}
    keys = {}
    for role, base in _LINK_KEYS.items():
        taken = node_attrs if role == "name" else edge_attrs
        name = base
        while name in taken:
            name = "_" + name
        keys[role] = name
    return keys


def _format_of(path: Path, format: str | None) -> str:
    if format is not None:
        fmt = format.lower().lstrip(".")
        if fmt not in FORMATS.values():
            raise ValueError(f"unknown graph format {format!r}; use one of {sorted(FORMATS.values())}")
        return fmt
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the graph format of {path} from its suffix; use one of {sorted(FORMATS)} or pass format="
        )
    return fmt


def _checked_record(record: dict[str, Any], path: Path) -> dict[str, Any]:
    """The export record, refused when a newer trajectory wrote it (``version``: the old key)."""
    version = record.get("format_version", record.get("version", FORMAT_VERSION))
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer trajectory (graph export format {version!r}; this one reads "
                         f"up to {FORMAT_VERSION}): upgrade trajectory")
    return record


def _dumps(value: Any) -> str:
    return json.dumps(jsonable(value, strict=True), ensure_ascii=False, allow_nan=True)


def _tuples(value: Any) -> Any:
    """JSON lists -> tuples, recursively (for node ids)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _check_graph(g: nx.Graph) -> None:
    if not isinstance(g, nx.Graph):
        raise TypeError(f"export_graph needs a networkx graph, not {type(g).__name__}")
    if g.is_multigraph():
        raise ValueError("export_graph writes Graph and DiGraph; convert a multigraph first (nx.DiGraph(g))")
    scopes = {
        "graph": [g.graph],
        "node": (d for _, d in g.nodes(data=True)),
        "edge": (d for *_, d in g.edges(data=True)),
    }
    for scope, items in scopes.items():
        for d in items:
            bad = [k for k in d if not isinstance(k, str)]
            if bad:
                raise ValueError(f"{scope} attribute names must be strings, found {bad[:3]!r}")
    if MARKER in g.graph:
        raise ValueError(f"graph attribute {MARKER!r} is reserved by trajectory.graph.export")


def _to_encode(dicts: list[dict]) -> set[str]:
    """Names whose values are not all of one scalar type: they get JSON-encoded."""
    types: dict[str, set[type]] = {}
    for d in dicts:
        for k, v in d.items():
            types.setdefault(k, set()).add(type(jsonable(v, strict=True)))
    return {k for k, ts in types.items() if len(ts) != 1 or next(iter(ts)) not in _SCALARS}


def _encoded_copy(g: nx.Graph, *, gexf: bool) -> tuple[nx.Graph, dict[str, Any]]:
    """A copy with string node ids and scalar attributes, plus the export record."""
    node_data = [d for _, d in g.nodes(data=True)]
    edge_data = [d for *_, d in g.edges(data=True)]
    enc = {
        "graph": set() if gexf else _to_encode([g.graph]),  # GEXF keeps graph attributes as JSON in <meta>
        "node": _to_encode(node_data),
        "edge": _to_encode(edge_data),
    }
    renamed: dict[str, dict[str, str]] = {"node": {}, "edge": {}}
    if gexf:
        for scope, dicts in (("node", node_data), ("edge", edge_data)):
            for name in {k for d in dicts for k in d} & _GEXF_RESERVED[scope]:
                renamed[scope][name] = f"_attr_{name}"

    def convert(scope: str, d: dict) -> dict:
        out = {}
        for k, v in d.items():
            v = _dumps(v) if k in enc[scope] else jsonable(v, strict=True)
            out[renamed.get(scope, {}).get(k, k)] = v
        return out

    h = g.__class__()
    ids = {n: _dumps(n) for n in g.nodes}
    if len(set(ids.values())) != len(ids):
        raise ValueError("two node ids have the same JSON text; give the nodes distinct ids")
    for n, d in g.nodes(data=True):
        h.add_node(ids[n], **convert("node", d))
    for u, v, d in g.edges(data=True):
        h.add_edge(ids[u], ids[v], **convert("edge", d))
    record = dict(_RECORD, encoded={s: sorted(names) for s, names in enc.items()}, graph_keys=sorted(g.graph))
    if gexf:
        record["renamed"] = renamed
        record["graph"] = jsonable(dict(g.graph), strict=True)
    else:
        h.graph.update(convert("graph", g.graph))
        h.graph[MARKER] = _dumps(record)
    return h, record


def _decoded(h: nx.Graph, record: dict[str, Any]) -> nx.Graph:
    enc = {s: set(v) for s, v in record.get("encoded", {}).items()}
    back = {s: {new: old for old, new in m.items()} for s, m in record.get("renamed", {}).items()}

    def convert(scope: str, d: dict) -> dict:
        out = {}
        for k, v in d.items():
            k = back.get(scope, {}).get(k, k)
            out[k] = json.loads(v) if k in enc.get(scope, ()) else v
        return out

    g = h.__class__()
    if "graph" in record:
        g.graph.update(record["graph"])
    else:
        # the GraphML reader adds node_default/edge_default; keep only what was written
        keep = set(record.get("graph_keys", h.graph)) - {MARKER}
        g.graph.update(convert("graph", {k: v for k, v in h.graph.items() if k in keep}))
    ids = {n: _tuples(json.loads(n)) for n in h.nodes}
    for n, d in h.nodes(data=True):
        g.add_node(ids[n], **convert("node", d))
    for u, v, d in h.edges(data=True):
        g.add_edge(ids[u], ids[v], **convert("edge", d))
    return g


def export_graph(g: nx.Graph, path: str | Path, format: str | None = None) -> Path:
    """Write ``g`` to ``path`` (atomically) as GraphML, GEXF or node-link JSON.

    Parameters
    ----------
    g : networkx.Graph or DiGraph, e.g. from :func:`trajectory.graph.trajectory_graph`.
    path : output file; its suffix (``.graphml``, ``.gexf``, ``.json``) picks the format
        unless ``format`` is given.
    format : ``"graphml"``, ``"gexf"`` or ``"json"``.

    Returns
    -------
    The path written.

    Examples
    --------
    >>> import networkx as nx, tempfile, os
    >>> g = nx.DiGraph(tokens=["<bos>", "a"])
    >>> g.add_edge((0, -1), (1, 0), features=[{"feature": 7, "rank": 1}], best_rank=1)
    >>> path = os.path.join(tempfile.mkdtemp(), "g.graphml")
    >>> h = read_graph(export_graph(g, path))
    >>> nx.utils.graphs_equal(g, h) and h.edges[(0, -1), (1, 0)]["features"][0]["feature"] == 7
    True
    """
    _check_graph(g)
    path = Path(path)
    fmt = _format_of(path, format)
    if fmt == "json":
        keys = _link_keys(g)
        data = nx.node_link_data(g, edges="edges", **keys)
        if keys != _LINK_KEYS:  # an attribute is called "id"/"source"/"target": say which keys hold the ids
            data[MARKER] = dict(_RECORD, link_keys=keys)
        with atomic_write(path) as fh:
            json.dump(jsonable(data, strict=True), fh, ensure_ascii=False, allow_nan=True)
        return path
    if fmt == "graphml":
        h, _ = _encoded_copy(g, gexf=False)
        with atomic_path(path) as tmp:
            nx.write_graphml(h, str(tmp), encoding="utf-8")
        return path
    from xml.etree.ElementTree import SubElement

    from networkx.readwrite.gexf import GEXFWriter

    h, record = _encoded_copy(g, gexf=True)
    writer = GEXFWriter(encoding="utf-8", prettyprint=True, version="1.2draft")
    writer.add_graph(h)
    meta = writer.xml.find("meta")
    SubElement(meta, "description").text = _dumps({MARKER: record})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            writer.write(fh)
    return path


def read_graph(path: str | Path, format: str | None = None) -> nx.Graph:
    """Read a graph written by :func:`export_graph` (format from the suffix unless given).

    Returns a graph equal to the one written (see the module docstring for what each
    format preserves). Files written by other tools are read as the format gives them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no graph file at {path}")
    fmt = _format_of(path, format)
    try:
        if fmt == "json":
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            keys = dict(_checked_record(data.pop(MARKER, {}), path).get("link_keys", _LINK_KEYS))
            name, source, target = keys["name"], keys["source"], keys["target"]
            for node in data.get("nodes", []):
                node[name] = _tuples(node[name])
            for edge in data.get("edges", []):
                edge[source], edge[target] = _tuples(edge[source]), _tuples(edge[target])
            return nx.node_link_graph(data, edges="edges", **keys)
        if fmt == "graphml":
            h = nx.read_graphml(str(path), node_type=str)
            if MARKER not in h.graph:
                return h
            return _decoded(h, _checked_record(json.loads(h.graph[MARKER]), path))
        return _read_gexf(path)
    except (json.JSONDecodeError, nx.NetworkXError, KeyError) as exc:
        raise ValueError(f"{path} is not a readable {fmt} graph file ({type(exc).__name__}: {exc})") from None
    except Exception as exc:
        if type(exc).__name__ == "ParseError":  # xml.etree's malformed-XML error
            raise ValueError(f"{path} is not a readable {fmt} graph file (malformed XML: {exc})") from None
        raise


def _read_gexf(path: Path) -> nx.Graph:
    from xml.etree.ElementTree import parse

    record = None
    root = parse(str(path)).getroot()
    for elem in root.iter():
        if elem.tag.endswith("description") and elem.text and MARKER in elem.text:
            record = json.loads(elem.text)[MARKER]
            break
    h = nx.read_gexf(str(path), node_type=str)
    if record is None:
        return h
    # the GEXF reader adds what its writer put in reserved fields; user attributes of
    # those names were renamed on write, so these are the writer's own
    for _, d in h.nodes(data=True):
        d.pop("label", None)
    for *_, d in h.edges(data=True):
        for reserved in ("id", "label", "weight", "type"):
            d.pop(reserved, None)
    h.graph.clear()
    return _decoded(h, _checked_record(record, path))
