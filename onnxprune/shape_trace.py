"""Follow a shape tensor computed at run time back to where each entry comes from.

Exporters build Reshape targets as Shape -> Gather -> Unsqueeze -> Concat chains. `trace_vector`
evaluates such a chain on static shapes and returns, for each entry, its value (None when dynamic) and
its origin: ("const", initializer, index), ("shape", tensor, axis), ("product", ...) for a product of
sizes read by Shape and constants, floor-divided by a constant last (the C*H of `x.view(n, c * h, w)`,
the C/g of a channel shuffle), or ("op", None, None) for any other arithmetic.

FOLLOWED is the one list of ops a run-time size flows through: what trace_vector follows here is what
the Shape rule (ops_reindex.shape) lets a channel count flow through, and the rules of the shape inputs
it reaches (Reshape, Expand, Resize) check each entry with these origins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .nodes import attributes

if TYPE_CHECKING:
    from .graph import GraphIndex


@dataclass(frozen=True)
class Entry:
    """One entry of a traced shape vector. A "product" entry is
    (prod of sizes[reads] * multiplier) // divisor, a "shape" entry the single read (source, index)."""

    value: int | None
    origin: str
    source: str | None = None
    index: int | None = None
    reads: tuple[tuple[str, int], ...] = ()
    multiplier: int = 1
    divisor: int = 1

    def monomial(self) -> tuple[tuple[tuple[str, int], ...], int, int] | None:
        """(reads, multiplier, divisor) of a const, shape or product entry; None for other arithmetic."""
        if self.origin == "const":
            return ((), self.value, 1) if self.value is not None else None
        if self.origin == "shape":
            return ((self.source, self.index),), 1, 1
        if self.origin == "product":
            return self.reads, self.multiplier, self.divisor
        return None


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


def resolve_reshape(index: GraphIndex, node) -> tuple | None:
    """The output shape of Reshape `node` with the dims shape inference left unknown filled in from
    the traced target: a constant, a 0 (copy of the input dim), a size read by Shape (its symbol), and
    the one -1 (elements left over, when the symbols of input and output cancel):
    x.view(x.size(0), -1) on (N, C, H, W) gives (N, C*H*W). None when nothing can be resolved."""
    in_shape, out_shape = index.shape(node.input[0]), index.shape(node.output[0])
    entries = trace_vector(index, node.input[1]) if len(node.input) > 1 else None
    if in_shape is None or entries is None or (out_shape is not None and len(entries) != len(out_shape)):
        return None
    allow_zero = attributes(node).get("allowzero", 0)
    dims: list = []
    for axis, entry in enumerate(entries):
        known = out_shape[axis] if out_shape is not None else None
        source = index.shape(entry.source) if entry.origin == "shape" else None
        if isinstance(known, int):
            dims.append(known)
        elif entry.value == 0 and not allow_zero:
            dims.append(in_shape[axis] if axis < len(in_shape) else None)
        elif entry.value is not None and entry.value >= -1:
            dims.append(entry.value)
        elif source is not None and entry.index < len(source):
            dims.append(source[entry.index])
        else:  # computed at run time (T * 1 of a [T, 1, C] -> [T*1, C] reshape): a dim of its own name
            dims.append(_product_symbol(index, entry) or f"{node.output[0]}:{axis}")
    if None in dims or dims.count(-1) > 1:
        return None
    if -1 in dims:
        rest = _cancel(list(in_shape), [d for d in dims if d != -1])
        if rest is None:
            return None
        dims[dims.index(-1)] = rest
    return tuple(dims)


def _product_symbol(index: GraphIndex, entry: Entry) -> str | None:
    """The symbol of a product entry that is one symbolic size times static sizes multiplying to 1."""
    terms = entry.monomial() if entry.origin == "product" else None
    if terms is None or terms[2] != 1:
        return None
    dims = [
        (index.shape(source) or ())[axis] if axis < len(index.shape(source) or ()) else None
        for source, axis in terms[0]
    ]
    symbols = [d for d in dims if isinstance(d, str)]
    static = int(np.prod([d for d in dims if isinstance(d, int)], dtype=np.int64)) * terms[1]
    return symbols[0] if len(symbols) == 1 and None not in dims and static == 1 else None


def _cancel(numerator: list, denominator: list) -> int | None:
    """prod(numerator) / prod(denominator) when the symbolic dims cancel and the integers divide."""
    if None in numerator or None in denominator:
        return None
    symbols = [d for d in numerator if not isinstance(d, int)]
    for d in denominator:
        if not isinstance(d, int):
            if d not in symbols:
                return None
            symbols.remove(d)
    if symbols:
        return None
    top = int(np.prod([d for d in numerator if isinstance(d, int)], dtype=np.int64))
    bottom = int(np.prod([d for d in denominator if isinstance(d, int)], dtype=np.int64))
    return top // bottom if bottom and top % bottom == 0 else None


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
        out.append(_product(node.op_type, x, y, value) or Entry(value, "op"))
    return out


def _product(op: str, x: Entry, y: Entry, value: int | None) -> Entry | None:
    """x * y or x // y as a product entry, when both are products so far (no division yet) and a
    divisor is a positive constant; None otherwise."""
    a, b = x.monomial(), y.monomial()
    if a is None or b is None or a[2] != 1 or b[2] != 1 or not (a[0] or b[0]):
        return None
    if op == "Mul":
        return Entry(value, "product", reads=a[0] + b[0], multiplier=a[1] * b[1])
    if op == "Div" and not b[0] and b[1] > 0:
        return Entry(value, "product", reads=a[0], multiplier=a[1], divisor=b[1])
    return None


def _constant_of_shape(index: GraphIndex, node, depth):
    """ConstantOfShape(n): n copies of its value (torch's expand(-1) writes Where(Equal(shape,
    ConstantOfShape(Shape(shape)) * -1), 1, shape)); the copies are computed, not rewritable, constants."""
    count = trace_vector(index, node.input[0], depth)
    if count is None or len(count) != 1 or count[0].value is None or count[0].value > 64:
        return None
    tensor = attributes(node).get("value")
    value = 0 if tensor is None else onnx.numpy_helper.to_array(tensor).reshape(-1)[0].item()
    return [Entry(int(value), "op")] * count[0].value if float(value).is_integer() else None


def _equal(index: GraphIndex, node, depth):
    """Equal of two shape vectors, where both values are known, or where one side is a size read by
    Shape (never negative) and the other a negative number (never equal): 1 or 0, a computed value."""
    left, right = trace_vector(index, node.input[0], depth), trace_vector(index, node.input[1], depth)
    if left is None or right is None or len(left) != len(right):
        return None
    out = []
    for x, y in zip(left, right, strict=True):
        if x.value is not None and y.value is not None:
            out.append(Entry(int(x.value == y.value), "op"))
        elif _never_negative(x) and y.value is not None and y.value < 0 or _never_negative(y) and (x.value or 0) < 0:
            out.append(Entry(0, "op"))
        else:
            return None
    return out


def _never_negative(entry: Entry) -> bool:
    terms = entry.monomial()
    return entry.origin in ("shape", "product") and terms is not None and terms[1] >= 0


def _where(index: GraphIndex, node, depth):
    """Where(cond, x, y) with every condition known: the entries picked from x or y."""
    cond, x, y = (trace_vector(index, name, depth) for name in node.input[:3])
    if cond is None or x is None or y is None or any(c.value is None for c in cond):
        return None
    size = max(len(cond), len(x), len(y))
    if any(len(v) not in (1, size) for v in (cond, x, y)):
        return None
    pick = lambda v, i: v[i if len(v) > 1 else 0]  # noqa: E731
    return [pick(x, i) if pick(cond, i).value else pick(y, i) for i in range(size)]


#: ops a traced size flows through (trace_vector follows them; so does the Shape rule)
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
    "ConstantOfShape": _constant_of_shape,
    "Equal": _equal,
    "Where": _where,
}

FOLLOWED = frozenset(_HANDLERS)
