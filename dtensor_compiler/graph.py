"""The dataflow graph of an IR function, for drawing.

`dataflow_graph` turns a function into a networkx `MultiDiGraph`: a node per argument, per op
and one for the return; an edge per operand use, labelled with the type of the value it
carries (shape and layout), so a layout change shows on the edges around the op that made
it. Node attribute ``kind`` is ``argument``, ``op``, ``collective`` or ``return``; edge
attribute ``partial`` says whether the value carries a pending reduction.

`to_dot` writes the graph as Graphviz DOT text with collectives filled and partial values
dashed. Both are deterministic: nodes come in program order, edges grouped by their source
in that order.
"""

from __future__ import annotations

import networkx as nx

from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.core import Function, Value
from dtensor_compiler.ir.printer import Namer, format_reason
from dtensor_compiler.ir.types import TensorType

_NODE_STYLE: dict[str, dict[str, str]] = {
    "argument": {"shape": "ellipse"},
    "op": {"shape": "box"},
    "collective": {"shape": "box", "style": "filled,bold", "fillcolor": "#f4a261"},
    "return": {"shape": "ellipse", "style": "dashed"},
}
_PARTIAL_EDGE_STYLE = {"style": "dashed", "color": "#c0392b"}


def dataflow_graph(func: Function) -> nx.MultiDiGraph[str]:
    """One node per argument and op, one for the return; one edge per use of a value."""
    name = Namer(func)
    graph: nx.MultiDiGraph[str] = nx.MultiDiGraph(name=func.name)
    producer: dict[Value, str] = {}
    for i, arg in enumerate(func.args):
        node = f"arg{i}"
        graph.add_node(node, kind="argument", label=f"{name(arg)}: {arg.type.text()}", why="")
        producer[arg] = node
    for i, op in enumerate(func.ops):
        node = f"op{i}"
        label = op.name if not op.results else (
            ", ".join(name(r) for r in op.results) + f" = {op.name}")
        kind = "collective" if opdef.lookup(op.name).collective is not None else "op"
        if kind == "collective":
            mesh_dims = op.attrs["mesh_dims"]
            assert isinstance(mesh_dims, tuple)
            label += " [" + ", ".join(mesh_dims) + "]"
        why = "" if op.why is None else format_reason(op.why)
        graph.add_node(node, kind=kind, label=label, why=why)
        for value in op.operands:
            _add_use(graph, producer[value], node, value.type)
        for result in op.results:
            producer[result] = node
    graph.add_node("return", kind="return", label="return", why="")
    for value in func.results:
        _add_use(graph, producer[value], "return", value.type)
    return graph


def _add_use(graph: nx.MultiDiGraph[str], src: str, dst: str, type_: TensorType) -> None:
    partial = type_.sharding is not None and type_.sharding.is_partial
    graph.add_edge(src, dst, label=type_.text(), partial=partial)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attrs(items: dict[str, str]) -> str:
    return "[" + ", ".join(f"{k}={_quote(v)}" for k, v in items.items()) + "]"


def to_dot(graph: nx.MultiDiGraph[str]) -> str:
    """Graphviz DOT text for a graph made by `dataflow_graph`."""
    lines = [f"digraph {_quote(graph.graph['name'])} {{",
             '  node [fontname="monospace", fontsize=10];',
             '  edge [fontname="monospace", fontsize=9];']
    for node, data in graph.nodes(data=True):
        attrs = {"label": data["label"], **_NODE_STYLE[data["kind"]]}
        if data["why"]:
            attrs["tooltip"] = data["why"]
        lines.append(f"  {node} {_attrs(attrs)};")
    for src, dst, data in graph.edges(data=True):
        attrs = {"label": data["label"], **(_PARTIAL_EDGE_STYLE if data["partial"] else {})}
        lines.append(f"  {src} -> {dst} {_attrs(attrs)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
