"""Follow a shape tensor computed at run time back to where each entry comes from.

Exporters build Reshape targets as Shape -> Gather -> Unsqueeze -> Concat chains. `trace_vector`
evaluates such a chain on static shapes and returns, for each entry, its value (None when dynamic) and
its origin: ("const", initializer, index), ("shape", tensor, axis), or ("op", None, None) for arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import GraphIndex, attributes


@dataclass(frozen=True)
class Entry:
    value: int | None
    origin: str
    source: str | None = None
    index: int | None = None


def trace_vector(index: GraphIndex, name: str, depth: int = 12) -> list[Entry] | None:
    """Entries of the 1-D (or scalar) integer tensor `name`, or None when the chain is not followed."""
    if depth < 0:
        return None
    value = index.constant(name)
    if value is not None:
        flat = np.asarray(value).reshape(-1)
        if flat.size > 64 or flat.dtype.kind not in "iu":
            return None
        return [Entry(int(v), "const", name, i) for i, v in enumerate(flat.tolist())]
    node = index.node_producer(name)
    if node is None:
        return None
    handler = _HANDLERS.get(node.op_type)
    return None if handler is None else handler(index, node, depth - 1)


def _shape(index: GraphIndex, node, depth):
    shape = index.shape(node.input[0])
    if shape is None:
        return None
    attrs = attributes(node)
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    axes = list(range(len(shape)))[start:end]
    return [Entry(shape[a] if isinstance(shape[a], int) else None, "shape", node.input[0], a) for a in axes]


def _gather(index: GraphIndex, node, depth):
    data = trace_vector(index, node.input[0], depth)
    picks = index.constant(node.input[1])
    if data is None or picks is None:
        return None
    try:
        return [data[int(i)] for i in np.asarray(picks).reshape(-1).tolist()]
    except IndexError:
        return None


def _same(index: GraphIndex, node, depth):
    return trace_vector(index, node.input[0], depth)


def _concat(index: GraphIndex, node, depth):
    parts = [trace_vector(index, name, depth) for name in node.input]
    if any(part is None for part in parts):
        return None
    return [entry for part in parts for entry in part]


def _slice(index: GraphIndex, node, depth):
    data = trace_vector(index, node.input[0], depth)
    bounds = [index.constant(n) if i < len(node.input) else None for i, n in enumerate(node.input[1:5], start=1)]
    if data is None or any(b is None for b in bounds[:2]):
        return None
    start, end = int(np.asarray(bounds[0]).reshape(-1)[0]), int(np.asarray(bounds[1]).reshape(-1)[0])
    step = int(np.asarray(bounds[3]).reshape(-1)[0]) if len(bounds) > 3 and bounds[3] is not None else 1
    return data[slice(start, end, step)]


def _arith(index: GraphIndex, node, depth):
    left, right = trace_vector(index, node.input[0], depth), trace_vector(index, node.input[1], depth)
    if left is None or right is None:
        return None
    if len(left) != len(right):
        if len(right) == 1:
            right = right * len(left)
        elif len(left) == 1:
            left = left * len(right)
        else:
            return None
    ops = {
        "Mul": lambda x, y: x * y,
        "Add": lambda x, y: x + y,
        "Sub": lambda x, y: x - y,
        "Div": lambda x, y: x // y if y else None,
    }
    out = []
    for x, y in zip(left, right, strict=True):
        value = None if x.value is None or y.value is None else ops[node.op_type](x.value, y.value)
        out.append(Entry(value, "op"))
    return out


_HANDLERS = {
    "Shape": _shape,
    "Gather": _gather,
    "Unsqueeze": _same,
    "Squeeze": _same,
    "Cast": _same,
    "Identity": _same,
    "Reshape": _same,
    "Concat": _concat,
    "Slice": _slice,
    "Mul": _arith,
    "Add": _arith,
    "Sub": _arith,
    "Div": _arith,
}
