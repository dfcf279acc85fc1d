"""Run the op rules over the graph in topological order and apply the global blockers."""

from __future__ import annotations

import numpy as np
import onnx

from ..graph import GraphIndex, attributes, opset_version
from .context import Propagation
from .labels import Unsupported
from .ops import PRODUCERS, rule_for
from .ops_heads import head_output
from .ops_reindex import freeze_count_reads
from .rewrites import DimEntry


def propagate(index: GraphIndex) -> Propagation:
    """Label every tensor with channel atoms, unify coupled atoms and freeze blocked ones."""
    p = Propagation(index)
    opset = opset_version(index.model)
    for node in index.nodes:
        if not _touches_channels(p, node):
            continue
        rule = rule_for(node) if not _has_subgraph(node) else None
        if rule is None:
            what = "has a subgraph" if _has_subgraph(node) else "has no rule"
            p.freeze_inputs(node, f"{node.op_type} '{node.name}' {what}")
            continue
        try:
            rule(p, node, attributes(node), opset)
        except Unsupported as exc:
            p.freeze_inputs(node, f"{node.op_type} '{node.name}': {exc}")
            for out in node.output:
                p.labels.pop(out, None)
    _freeze_unchecked_count_reads(p)
    _freeze_subgraph_reads(p)
    _freeze_graph_outputs(p)
    _freeze_shared_constants(p)
    _freeze_conflicting_shape_entries(p)
    return p


def _touches_channels(p: Propagation, node: onnx.NodeProto) -> bool:
    if node.op_type in PRODUCERS:
        return True
    return any(p.get(name) is not None for name in node.input)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _subgraph_names(graph: onnx.GraphProto, found: set[str]) -> None:
    for node in graph.node:
        found.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                _subgraph_names(sub, found)


def _freeze_subgraph_reads(p: Propagation) -> None:
    names: set[str] = set()
    for node in p.index.nodes:
        if _has_subgraph(node):
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    _subgraph_names(sub, names)
    for name in names:
        p.freeze(p.get(name), f"'{name}' is read inside a subgraph (If/Loop/Scan)")
        if name in p.const_labels:
            p.freeze(np.concatenate(list(p.const_labels[name].values())), f"'{name}' is read inside a subgraph")


def _freeze_unchecked_count_reads(p: Propagation) -> None:
    """Shape inputs reached by a channel count whose node carries no channels: its rule checked nothing."""
    for position, slot in sorted(p.count_sinks):
        node = p.index.nodes[position]
        if p.get(node.input[0]) is None:
            freeze_count_reads(p, node, slot)


def _freeze_graph_outputs(p: Propagation) -> None:
    """Channels that reach a graph output are frozen, except attention heads (a present KV cache):
    that output shrinks with them (ops_heads.head_output records it)."""
    for name in p.index.output_names:
        if not head_output(p, name):
            p.freeze(p.get(name), f"reaches graph output '{name}'")


def _freeze_shared_constants(p: Propagation) -> None:
    """A constant sliced with channels must not be read by any node that does not slice it too."""
    for name, uses in p.const_uses.items():
        readers = {(p.index.nodes[i].name, slot) for i, slot in p.index.consumers.get(name, [])}
        others = sorted(readers - uses)
        if others or name in p.index.output_names:
            where = f"node '{others[0][0]}'" if others else "a graph output"
            labels = np.concatenate(list(p.const_labels[name].values()))
            p.freeze(labels, f"initializer '{name}' is also read by {where}, which cannot slice it")


#: (op, input slot) of the shape inputs whose rules check each entry, and the ops a shape vector is
#: built through (Concat of pieces, casts, reshapes of the vector itself)
_SHAPE_SINKS = {("Reshape", 1), ("Expand", 1), ("Resize", 3)}
_VECTOR_OPS = {"Concat", "Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape"}


def _freeze_conflicting_shape_entries(p: Propagation) -> None:
    """One constant shape entry cannot take two different new sizes: the tensors it sizes must carry
    the same channels on those axes. An entry edited in place (slot < 0) is keyed by its constant, one
    in a node's private copy by that node and slot."""
    by_entry: dict[tuple, list[DimEntry]] = {}
    for record in p.rewrites:
        if isinstance(record, DimEntry):
            key = (record.constant, record.entry) if record.slot < 0 else (record.node, record.slot, record.entry)
            by_entry.setdefault(key, []).append(record)
    for records in by_entry.values():
        constant, entry = records[0].constant, records[0].entry
        sized = _sized_by(p, records[0]) if records[0].slot >= 0 else set()
        missing = sized - {r.tensor for r in records}
        if missing:
            what = "ops other than shape inputs" if "" in missing else f"'{sorted(missing)[0]}', whose size stays"
            reason = f"shape constant '{constant}'[{entry}] also reaches {what}"
            for r in records:
                p.freeze(p.get(r.tensor), reason)
        lines = {_axis_roots(p, r.tensor, r.axis) for r in records}
        if len(lines) > 1:
            for r in records:
                p.freeze(p.get(r.tensor), f"shape constant '{constant}'[{entry}] sizes several tensors")


def _sized_by(p: Propagation, record: DimEntry) -> set[str]:
    """Outputs of the shape sinks that the vector built by `record.node` reaches (itself when it is the
    sink); {""} when the vector also reaches another kind of op."""
    node = next(n for n in p.index.nodes if n.name == record.node)
    if (node.op_type, record.slot) in _SHAPE_SINKS:
        return {node.output[0]}
    sized, frontier, seen = set(), [node.output[0]], set()
    while frontier:
        name = frontier.pop()
        if name in p.index.output_names:
            sized.add("")
        for position, slot in p.index.consumers.get(name, []):
            user = p.index.nodes[position]
            if (user.op_type, slot) in _SHAPE_SINKS:
                sized.add(user.output[0])
            elif user.op_type in _VECTOR_OPS and user.output[0] not in seen:
                seen.add(user.output[0])
                frontier.append(user.output[0])
            else:
                sized.add("")
    return sized


def _axis_roots(p: Propagation, tensor: str, axis: int) -> tuple:
    """The channels along `axis` of `tensor` (tensors with the same ones always keep the same size)."""
    ids = p.get(tensor)
    if ids is None:
        return ()
    moved = np.moveaxis(ids, axis, 0).reshape(ids.shape[axis], -1)
    return (moved.shape, *p.uf.roots(moved).reshape(-1).tolist())
