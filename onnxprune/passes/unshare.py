"""Give every reader of a small shared integer constant its own copy.

Exporters share one shape constant between several Reshape/Expand/Concat chains (tf2onnx's
`const_fold_opt__N`, torch's `[-1]`). When one reader's entry counts channels and another's does not,
or when two readers size different tensors, a shared entry cannot take each reader's new size, and
the analysis would have to freeze. A private copy per (node, input slot) changes nothing the model
computes and lets each reader be rewritten on its own. Only integer initializers of at most
MAX_ELEMENTS entries are copied (shape vectors, axes, indices); a graph output keeps the original.

The same holds one step up: a shape vector built by Concat from constants and sizes read at run time
(`Concat(Shape(x)[0], [2], [2], ...)`, dynamo's repeat_kv target) may be shared by the Expand or Reshape
of several layers, whose head counts differ after pruning. `unshare_shape_vectors` gives every such
shape input its own copy of the Concat (and of the vector ops before it), run before the constants are
unshared, so each copy also gets its own constants.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..io import make_tensor, tensor_array
from .base import Pass, PassResult

MAX_ELEMENTS = 64
_INTEGER = frozenset({onnx.TensorProto.INT64, onnx.TensorProto.INT32})


def unshare_small_constants(model: onnx.ModelProto) -> PassResult:
    graph = model.graph
    candidates = {
        t.name: t
        for t in graph.initializer
        if t.data_type in _INTEGER and int(np.prod(t.dims, dtype=np.int64)) <= MAX_ELEMENTS
    }
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name in candidates:
                readers.setdefault(name, []).append((node, slot))
    taken = {t.name for t in graph.initializer} | {v.name for v in graph.input}
    copies = []
    for name, uses in readers.items():
        for position, (node, slot) in enumerate(uses[1:], start=1):
            fresh = _fresh(f"{name}__{node.name or position}_{slot}".replace("/", "_"), taken)
            copies.append(make_tensor(np.array(tensor_array(candidates[name])), fresh))
            node.input[slot] = fresh
    graph.initializer.extend(copies)
    return PassResult(model, bool(copies))


#: (op, slot) of the shape inputs a shared vector is copied for, and the ops that build vectors
_SINKS = {("Reshape", 1), ("Expand", 1)}
_VECTOR_OPS = frozenset({"Concat", "Cast", "Unsqueeze", "Squeeze"})


def unshare_shape_vectors(model: onnx.ModelProto) -> PassResult:
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    taken = {out for node in graph.node for out in node.output} | {t.name for t in graph.initializer}
    added: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if (node.op_type, slot) in _SINKS and readers.get(name, 0) > 1 and name not in outputs:
                copy = _copy_vector(name, producer, readers, taken, added, node.name, depth=3)
                if copy is not None:
                    node.input[slot] = copy
    if not added:
        return PassResult(model, False)
    nodes = [new for node in graph.node for new in [*added.get(node.name, []), node]]
    del graph.node[:]
    graph.node.extend(nodes)
    return PassResult(model, True)


def _copy_vector(name, producer, readers, taken, added, before: str, depth: int) -> str | None:
    """A private copy of the vector op producing `name` (and of its shared vector-op inputs), inserted
    before node `before`; None when `name` is not built by a vector op."""
    node = producer.get(name)
    if node is None or node.op_type not in _VECTOR_OPS or depth < 0 or node.domain not in ("", "ai.onnx"):
        return None
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = _fresh(f"{node.name}__for_{before}".replace("/", "_"), taken)
    for slot, source in enumerate(node.input):
        if readers.get(source, 0) > 1:
            inner = _copy_vector(source, producer, readers, taken, added, before, depth - 1)
            copy.input[slot] = inner or source
    del copy.output[:]
    copy.output.append(_fresh(f"{name}__for_{before}".replace("/", "_"), taken))
    added.setdefault(before, []).append(copy)
    return copy.output[0]


def _fresh(stem: str, taken: set[str]) -> str:
    name, count = stem, 0
    while name in taken:
        count += 1
        name = f"{stem}_{count}"
    taken.add(name)
    return name


UNSHARE_CONSTANTS = Pass("unshare-constants", unshare_small_constants)
UNSHARE_VECTORS = Pass("unshare-shape-vectors", unshare_shape_vectors)
