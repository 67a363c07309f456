"""Graph views for networkx and Graphviz."""

from __future__ import annotations

import json

import networkx as nx

from .ir import Graph


def to_networkx(g: Graph) -> nx.DiGraph:
    """A DiGraph with a node per input, param and op; edges carry the value name and type."""
    d = nx.DiGraph()
    for v in g.inputs:
        d.add_node(v.ref, label=f"{v.ref}\\n{v.type}", shape="ellipse")
    for v in g.params.values():
        d.add_node(v.ref, label=f"{v.ref}\\n{v.type}", shape="ellipse", style="dashed")
    for i, op in enumerate(g.ops):
        nid = f"op{i}"
        d.add_node(nid, label=op.kind, shape="box")
        for v in op.inputs:
            src = f"op{_index(g, v)}" if v.producer is not None else v.ref
            d.add_edge(src, nid, label=str(v.type))
    for v in g.outputs:
        d.add_node("return", label="return", shape="doublecircle")
        src = f"op{_index(g, v)}" if v.producer is not None else v.ref
        d.add_edge(src, "return", label=str(v.type))
    return d


def _index(g: Graph, v) -> int:
    cache = g.__dict__.setdefault("_dot_index", {})
    if not cache or v.producer not in cache:
        cache.clear()
        cache.update({op: i for i, op in enumerate(g.ops)})
    return cache[v.producer]


def to_dot(g: Graph) -> str:
    d = to_networkx(g)
    g.__dict__.pop("_dot_index", None)
    lines = [f"digraph {json.dumps(g.name)} {{", "  node [fontname=monospace];"]
    for n, attrs in d.nodes(data=True):
        a = ", ".join(f"{k}={json.dumps(v)}" for k, v in attrs.items())
        lines.append(f"  {json.dumps(n)} [{a}];")
    for u, v, attrs in d.edges(data=True):
        lines.append(f"  {json.dumps(u)} -> {json.dumps(v)} [label={json.dumps(attrs['label'])}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
