"""Rules for ops that act position by position: unary activations, broadcasting joins, and
per-channel normalizations."""

from __future__ import annotations

import numpy as np

from .context import Propagation
from .labels import Unsupported, along, varying_axes, with_rank


def transparent(p: Propagation, node, attrs, opset) -> None:
    """Outputs carry input 0's labels (a Dropout mask too); other inputs are scalar parameters that
    must not carry channels (Relu, Sigmoid, Clip with bounds, Dropout, Cast, Identity, ...)."""
    for name in node.input[1:]:
        if p.get(name) is not None:
            raise Unsupported(f"parameter input '{name}' carries channels")
    ids = p.get(node.input[0])
    for out in node.output:
        p.set(out, ids)


def join(p: Propagation, node, attrs, opset) -> None:
    """Broadcasting n-ary ops (Add, Sub, Mul, Div, Max, Min, Pow, PRelu, Where, comparisons).

    Labeled inputs are unified position by position; a labeled input of size 1 on an axis where
    another's labels vary (a [N,1,H,W] gate) is broadcast over those channels: its own channel is
    frozen and the others stay free. A constant of full size on a labeled axis is sliced with it; a
    run-time tensor of full size on a labeled axis freezes those channels.
    """
    joined = join_slots(p, node, range(len(node.input)))
    if joined is not None:
        p.set(node.output[0], joined)


def join_slots(p: Propagation, node, slots) -> np.ndarray | None:
    """The broadcasting join of `join` over the inputs at `slots` only; returns the joined labels (None
    when none of them is labeled). Fused ops use it for their additive inputs (x + skip + bias)."""
    slots = [s for s in slots if s < len(node.input) and node.input[s]]
    inputs = [node.input[s] for s in slots]
    if not any(p.get(name) is not None for name in inputs):
        return None
    rank = max(p.rank(name) for name in inputs)
    reason = f"{node.op_type} '{node.name}' joins channels with positions that cannot be removed"
    labeled = {name: with_rank(p.get(name), rank) for name in inputs if p.get(name) is not None}
    varying = {axis for ids in labeled.values() for axis in varying_axes(ids)}
    joined = None
    for name, ids in labeled.items():
        if _broadcast_over(p, name, rank, varying):
            # a [N,1,H,W] map scaling every channel: its own channel stays, the others' are untouched
            p.freeze(ids, f"{node.op_type} '{node.name}' broadcasts '{name}' over the channels of another input")
            continue
        joined = ids if joined is None else p.unify(joined, ids, reason)
    if joined is None:
        raise Unsupported("every labeled input is broadcast over the channels of another")
    for slot in slots:
        name = node.input[slot]
        if p.get(name) is None:
            joined = _join_unlabeled(p, node, slot, name, joined, rank, reason)
    return joined


def _broadcast_over(p: Propagation, name: str, rank: int, varying: set[int]) -> bool:
    """True when tensor `name` has size 1 (numpy broadcast) on an axis whose labels vary elsewhere."""
    shape = p.index.shape(name)
    if shape is None:
        return False
    aligned = (1,) * (rank - len(shape)) + tuple(shape)
    return any(aligned[axis] == 1 for axis in varying)


def _join_unlabeled(p: Propagation, node, slot: int, name: str, joined: np.ndarray, rank: int, reason: str):
    shape = p.index.shape(name)
    if shape is None:
        raise Unsupported(f"the shape of input '{name}' is unknown")
    aligned = (1,) * (rank - len(shape)) + tuple(shape)
    offset = rank - len(shape)
    for axis in varying_axes(joined):
        size = aligned[axis]
        if size == 1:
            continue
        if p.index.is_constant(name) and size == joined.shape[axis]:
            p.label_const(name, axis - offset, along(joined, axis), node, slot)
        else:
            line = along(joined, axis) if len(varying_axes(joined)) == 1 else joined
            p.freeze(line, reason)
    if not varying_axes(joined) and any(isinstance(d, int) and d > 1 for d in aligned):
        # labels broadcast over every axis: only a tensor that is broadcast too may join them
        if not p.index.is_constant(name):
            p.freeze(joined, reason)
    return joined


def channel_norm(p: Propagation, node, attrs, opset) -> None:
    """BatchNormalization / InstanceNormalization: per-channel parameters (inputs 1..) on axis 1."""
    ids = p.get(node.input[0])
    if ids is None:
        return
    if len(node.output) > 1 and any(node.output[1:]):
        raise Unsupported("training-mode outputs (running statistics) are used")
    if node.op_type == "InstanceNormalization" and any(a >= 2 for a in varying_axes(ids)):
        raise Unsupported("channels on a normalized (spatial) axis")
    if ids.ndim > 1 and ids.shape[1] > 1:
        line = along(ids, 1) if node.op_type == "InstanceNormalization" else _channel_line(ids)
        for slot, name in enumerate(node.input[1:], start=1):
            if not p.index.is_constant(name):
                raise Unsupported(f"parameter '{name}' is not a constant")
            p.label_const(name, 0, line, node, slot)
    p.set(node.output[0], ids)


def _channel_line(ids: np.ndarray) -> np.ndarray:
    others = [a for a in varying_axes(ids) if a != 1]
    if others:
        raise Unsupported(f"labels vary along axes {others} besides the channel axis")
    return along(ids, 1)
