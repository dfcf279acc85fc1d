"""Label arrays: which channel atom sits at each position of a tensor.

A label array `ids` has the tensor's rank. On every axis it has either the tensor's full size (labels
vary along that axis) or size 1 (labels are the same at every position of that axis, broadcast). An
entry is an atom id, or -1 for a position that cannot be pruned. An unlabeled tensor has no array.
"""

from __future__ import annotations

import numpy as np

#: a re-indexing op may materialise at most this many label positions before the analysis gives up
#: and freezes (a 2**24 int64 array is 128 MiB).
MAX_MATERIALIZED = 2**24


class Unsupported(Exception):
    """A rule cannot follow the labels through a node; the caller freezes what it touches."""


def compress(ids: np.ndarray) -> np.ndarray:
    """Shrink every axis along which the labels do not change to size 1."""
    for axis in range(ids.ndim):
        if ids.shape[axis] > 1:
            first = np.take(ids, [0], axis=axis)
            if np.array_equal(np.broadcast_to(first, ids.shape), ids):
                ids = first
    return ids


def varying_axes(ids: np.ndarray) -> list[int]:
    return [axis for axis, size in enumerate(ids.shape) if size > 1]


def with_rank(ids: np.ndarray, rank: int) -> np.ndarray:
    """Prepend broadcast axes up to `rank` (numpy broadcasting aligns on the right)."""
    if ids.ndim > rank:
        raise Unsupported(f"label array of rank {ids.ndim} cannot broadcast to rank {rank}")
    return ids.reshape((1,) * (rank - ids.ndim) + ids.shape)


def along(ids: np.ndarray, axis: int, size: int | None = None) -> np.ndarray:
    """The 1-D labels along `axis`, when labels vary along no other axis.

    With `size`, a broadcast axis is expanded to that many positions.
    """
    others = [a for a in varying_axes(ids) if a != axis]
    if others:
        raise Unsupported(f"labels vary along axes {others} as well as axis {axis}")
    line = ids.reshape(-1) if ids.shape[axis] > 1 else ids.reshape(-1)[:1]
    if size is not None and line.size != size:
        if line.size != 1:
            raise Unsupported(f"axis {axis} has {line.size} labels but {size} positions")
        line = np.repeat(line, size)
    return line


def reshape_ids(ids: np.ndarray, in_shape, out_shape) -> np.ndarray:
    """Labels of Reshape(x, out_shape) given the labels `ids` of x with shape `in_shape`.

    Leading axes that carry no labels may be symbolic (batch). From the first labeled axis (or an
    earlier one, when axes are merged into it) on, both shapes must be static and a trailing block of
    each must hold the same number of elements. Trailing axes without labels that both shapes share
    (the same number or the same symbol: [B, G, n, S, d] -> [B, G*n, S, d]) are set aside first.
    """
    shared = 0
    while (
        shared < min(len(in_shape), len(out_shape)) - 1
        and in_shape[-1 - shared] == out_shape[-1 - shared]
        and in_shape[-1 - shared] is not None
        and ids.shape[-1 - shared] == 1
    ):
        shared += 1
    for tail in range(shared, 0, -1):
        head = ids.reshape(ids.shape[: ids.ndim - tail])
        try:
            inner = _reshape_block(head, in_shape[: len(in_shape) - tail], out_shape[: len(out_shape) - tail])
        except Unsupported:
            continue
        return inner.reshape(inner.shape + (1,) * tail)
    return _reshape_block(ids, in_shape, out_shape)


def _reshape_block(ids: np.ndarray, in_shape, out_shape) -> np.ndarray:
    varying = varying_axes(ids)
    if not varying:
        return ids.reshape(-1)[:1].reshape((1,) * len(out_shape))
    for first in range(varying[0], -1, -1):
        tail_in = tuple(in_shape[first:])
        if any(not isinstance(d, int) for d in tail_in):
            break
        count = int(np.prod(tail_in, dtype=np.int64))
        split = _tail_start(out_shape, count)
        if split is None:
            continue
        if count > MAX_MATERIALIZED:
            raise Unsupported(f"reshaping {count} labeled positions is beyond the analysis limit")
        block = np.broadcast_to(ids.reshape(ids.shape[first:]), tail_in)
        out = block.reshape(tuple(out_shape[split:]))
        return compress(out.reshape((1,) * split + out.shape))
    raise Unsupported(f"no block of static axes maps {tuple(in_shape)} onto {tuple(out_shape)} around the labels")


def _tail_start(shape, count: int) -> int | None:
    product = 1
    for start in range(len(shape) - 1, -1, -1):
        dim = shape[start]
        if not isinstance(dim, int):
            break
        product *= dim
        if product == count:
            while start > 0 and shape[start - 1] == 1:
                start -= 1
            return start
        if product > count:
            break
    return None
