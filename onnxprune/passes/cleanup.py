"""Remove what a rewrite left unused: initializers nobody reads, and nodes whose outputs nobody reads."""

from __future__ import annotations

import onnx

from .base import Pass, PassResult


def cleanup(model: onnx.ModelProto) -> PassResult:
    graph = model.graph
    needed = {o.name for o in graph.output}
    kept_nodes = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output if out):
            kept_nodes.append(node)
            needed.update(n for n in node.input if n)
            needed.update(subgraph_inputs(node))
    kept_nodes.reverse()
    modified = len(kept_nodes) != len(graph.node)
    if modified:
        nodes = [onnx.NodeProto() for _ in kept_nodes]
        for target, source in zip(nodes, kept_nodes, strict=True):
            target.CopyFrom(source)
        del graph.node[:]
        graph.node.extend(nodes)
    unused = [t for t in graph.initializer if t.name not in needed]
    if unused:
        modified = True
        kept = [t for t in graph.initializer if t.name in needed]
        names = {t.name for t in kept}
        for index in range(len(graph.initializer) - 1, -1, -1):
            if graph.initializer[index].name not in names:
                del graph.initializer[index]
    return PassResult(model, modified)


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names read by the subgraphs (If/Loop/Scan bodies) of `node`, at any depth."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            for inner in sub.node:
                names.update(inner.input)
                names.update(subgraph_inputs(inner))
    return names


CLEANUP = Pass("cleanup", cleanup)
