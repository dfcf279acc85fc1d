"""Rules for ops that compute along some axes: pooling, reductions, softmax, layer/group norms.

They are transparent while no labeled axis is among the axes they compute along (removing a channel
does not change what the op computes for the others) and freeze the channels otherwise: a softmax or a
mean over channels changes for every channel when one is removed.
"""

from __future__ import annotations

import numpy as np

from .context import Propagation
from .labels import Unsupported, varying_axes


def _guard(ids: np.ndarray, axes, what: str) -> None:
    hit = sorted(set(varying_axes(ids)) & set(axes))
    if hit:
        raise Unsupported(f"{what} over labeled axis {hit}")


def spatial_pool(p: Propagation, node, attrs, opset) -> None:
    """MaxPool, AveragePool, LpPool, and the Global* pools: compute over axes 2.. per channel."""
    ids = p.get(node.input[0])
    if ids is None:
        return
    _guard(ids, range(2, ids.ndim), "pools")
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("the Indices output encodes channel offsets")
    p.set(node.output[0], ids)


def reduce(p: Propagation, node, attrs, opset) -> None:
    """Reduce*: axes from the attribute (old opsets) or the second input (ReduceSum >= 13, all >= 18)."""
    ids = p.get(node.input[0])
    if ids is None:
        return
    rank = ids.ndim
    axes = attrs.get("axes")
    if len(node.input) > 1 and node.input[1]:
        value = p.constant(node.input[1])
        if value is None:
            raise Unsupported("axes are computed at run time")
        axes = np.asarray(value).reshape(-1).tolist()
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return p.set(node.output[0], ids)
        axes = list(range(rank))
    axes = sorted(a + rank if a < 0 else a for a in axes)
    _guard(ids, axes, f"{node.op_type} reduces")
    out = ids if attrs.get("keepdims", 1) else np.squeeze(ids, axis=tuple(axes))
    p.set(node.output[0], out)


def along_axis(p: Propagation, node, attrs, opset) -> None:
    """Softmax, LogSoftmax, Hardmax, CumSum-like ops over one axis (opset < 13 softmax: axis and after)."""
    ids = p.get(node.input[0])
    if ids is None:
        return
    rank = ids.ndim
    axis = int(attrs.get("axis", -1 if opset >= 13 else 1))
    axis = axis + rank if axis < 0 else axis
    axes = range(axis, rank) if node.op_type in ("Softmax", "LogSoftmax", "Hardmax") and opset < 13 else [axis]
    _guard(ids, axes, f"{node.op_type} normalizes")
    p.set(node.output[0], ids)


def layer_norm(p: Propagation, node, attrs, opset) -> None:
    """LayerNormalization normalizes axes [axis:]; its scale/bias cover only those axes. Over a labeled
    axis it blocks exactly the channels that reach it (the reason names it and the tensor)."""
    ids = p.get(node.input[0])
    if ids is None:
        return
    rank = ids.ndim
    axis = int(attrs.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    hit = sorted(set(varying_axes(ids)) & set(range(axis, rank)))
    if hit:
        raise Unsupported(
            f"normalizes '{node.input[0]}' over its channel axis {hit[0]}: removing a channel changes the mean "
            "and variance every other channel is normalized by (channels of the branches that do not reach it "
            "still prune)"
        )
    p.set(node.output[0], ids)


def group_norm(p: Propagation, node, attrs, opset) -> None:
    ids = p.get(node.input[0])
    if ids is None:
        return
    _guard(ids, range(1, ids.ndim), f"{node.op_type} normalizes")
    p.set(node.output[0], ids)


def lp_norm(p: Propagation, node, attrs, opset) -> None:
    ids = p.get(node.input[0])
    if ids is None:
        return
    axis = int(attrs.get("axis", -1))
    _guard(ids, [axis + ids.ndim if axis < 0 else axis], "LpNormalization normalizes")
    p.set(node.output[0], ids)
