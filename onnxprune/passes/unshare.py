"""Give every reader of a small shared integer constant its own copy.

Exporters share one shape constant between several Reshape/Expand/Concat chains (tf2onnx's
`const_fold_opt__N`, torch's `[-1]`). When one reader's entry counts channels and another's does not,
or when two readers size different tensors, a shared entry cannot take each reader's new size, and
the analysis would have to freeze. A private copy per (node, input slot) changes nothing the model
computes and lets each reader be rewritten on its own. Only integer initializers of at most
MAX_ELEMENTS entries are copied (shape vectors, axes, indices); a graph output keeps the original.
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


def _fresh(stem: str, taken: set[str]) -> str:
    name, count = stem, 0
    while name in taken:
        count += 1
        name = f"{stem}_{count}"
    taken.add(name)
    return name


UNSHARE_CONSTANTS = Pass("unshare-constants", unshare_small_constants)
