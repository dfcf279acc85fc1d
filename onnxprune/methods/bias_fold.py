"""Fold the constant activation of removed input channels into a consumer layer's bias.

When input position p of a consumer layer always carries the same value v_p, removing p changes the
consumer's product alpha * W x by

    delta_o = alpha * sum_p sum_k W[o, p, k] v_p

for every output o (k runs over the kernel positions of a Conv, K = 1 for a dense layer). Adding delta
to the consumer's shift (its bias, or subtracting it from the mean of the BatchNormalization right
after it) leaves the consumer's output unchanged.

For a Conv the fold is exact only when v is the same over the whole spatial map and no output window
covers zero padding: at a padded border the window reads zeros, not v, so the contribution is not a
constant. Such channels are not folded (the caller keeps them) and the reason says why.
"""

from __future__ import annotations

import numpy as np

from ..graph import GraphIndex
from ..layers import Layer, Workspace, add_to_shift


def contribution(layer: Layer, weight: np.ndarray, positions: np.ndarray, values: np.ndarray, index: GraphIndex):
    """delta (per output) of removing input `positions` whose constant activations are `values`, or a
    string saying why it cannot be folded exactly.

    `weight` is the layer's current weight (original shape); `values` holds one entry per position for a
    dense layer, one spatial map per position ([len(positions), *spatial]) for a Conv.
    """
    values = np.asarray(values, dtype=np.float64)
    matrix = layer.oik(np.asarray(weight, dtype=np.float64))[:, positions, :]  # [O, P, K]
    if not values.size or not np.any(values) or not np.any(matrix):
        return np.zeros(layer.outputs)
    if not layer.is_conv:
        return layer.alpha * (matrix[:, :, 0] @ values.reshape(len(positions)))
    if layer.groups != 1:
        return f"grouped Conv '{layer.node}' reads the channel"
    maps = values.reshape(len(positions), -1)
    if not (maps == maps[:, :1]).all():
        return f"the constant varies over the spatial map read by '{layer.node}'"
    if not layer.zero_padding(index):
        return f"'{layer.node}' pads its input with zeros, so a constant channel is not a constant at the borders"
    return layer.alpha * (matrix.sum(2) @ maps[:, 0])


def fold(layer: Layer | None, space: Workspace, delta) -> str | None:
    """Add `delta` (from contribution()) to the layer's shift; None when done, else why it cannot be."""
    reason = foldable(layer, delta)
    if reason is None and np.any(delta):
        add_to_shift(layer, space, delta)
    return reason


def foldable(layer: Layer | None, delta) -> str | None:
    """Why `delta` cannot be folded into `layer` (None when it can), without changing anything."""
    if isinstance(delta, str):
        return delta
    if not np.any(delta):
        return None
    if layer is None:
        return "the consumer is not a Conv/Gemm/MatMul layer with a bias"
    if not np.isfinite(delta).all():
        return f"the constant folded into '{layer.node}' is not finite"
    if (layer.tail.own is None or layer.tail.own_factor == 0) and layer.tail.norm is None:
        return f"'{layer.node}' has no bias to take the constant"
    return None
