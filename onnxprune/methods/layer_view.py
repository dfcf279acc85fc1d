"""A uniform view of the layers that own a constant weight (Conv, Gemm, MatMul), for masking methods.

Every such layer computes, per output j, pre_j = scale_j * sum_{i,k} W[j, i, k] x[i, k] + shift_j, where
W is the weight seen as a [O, I, K] array: O outputs (filters, neurons), I inputs per output (C/g input
channels of a Conv, features of a Gemm/MatMul) and K kernel positions (prod(kernel) of a Conv, 1
otherwise). `scale` and `shift` form the layer's affine *tail*: Gemm alpha and beta*C, a Conv bias, the
bias Add after a MatMul, and a BatchNormalization right after the layer (s = gamma / sqrt(var + eps),
pre -> s * (pre - mean) + beta).

`Workspace` holds working float64 copies of initializers so several rules can edit the same weight and
the plan gets only the arrays that changed, at their original shapes and dtypes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..graph import GraphIndex, attributes
from ..patches import conv_geometry


@dataclass(frozen=True)
class Tail:
    """Where the shift of a layer lives: `own` bias initializer (scaled by `own_factor`, Gemm beta) and
    an optional BatchNormalization (initializer names: scale, bias, mean, var; epsilon)."""

    own: str | None
    own_factor: float
    norm: tuple[str, str, str, str] | None
    epsilon: float
    removable: bool  # False when part of the shift cannot be edited (a scalar or [M, N] Gemm C)


@dataclass(frozen=True)
class Layer:
    """One layer with a constant weight, and how to read its weight and input uniformly."""

    node: str
    op_type: str
    weight: str
    input: str
    output: str
    shape: tuple[int, ...]  # the weight's shape
    layout: str  # "conv", "rows" (W [O, I], Gemm transB=1), "cols" (W [I, O]: Gemm transB=0, MatMul)
    feature_axis: int  # axis of the input tensor holding the I features (Gemm/MatMul), 1 for Conv
    groups: int
    kernel: tuple[int, ...]
    attrs: dict
    alpha: float
    tail: Tail

    @property
    def outputs(self) -> int:
        return self.shape[0] if self.layout in ("conv", "rows") else self.shape[1]

    @property
    def is_conv(self) -> bool:
        return self.layout == "conv"

    def matrix(self, weight: np.ndarray) -> np.ndarray:
        """The weight as [O, I, K] (a view when possible)."""
        if self.layout == "conv":
            return weight.reshape(weight.shape[0], weight.shape[1], -1)
        if self.layout == "rows":
            return weight[:, :, None]
        return weight.T[:, :, None]

    def unmatrix(self, matrix: np.ndarray) -> np.ndarray:
        """Inverse of matrix(): the [O, I, K] array back at the weight's shape."""
        if self.layout == "conv":
            return matrix.reshape(self.shape)
        if self.layout == "rows":
            return matrix[:, :, 0]
        return matrix[:, :, 0].T

    def output_group(self) -> np.ndarray:
        """Conv group of each output (all zeros for a dense layer)."""
        return np.arange(self.outputs) // max(1, self.outputs // self.groups)

    def zero_padding(self, index: GraphIndex) -> bool:
        """True when a Conv reads no padded border (every output sees a full kernel window)."""
        if not self.is_conv:
            return True
        shape = index.shape(self.input)
        spatial = tuple(shape[2:]) if shape is not None else ()
        if not all(isinstance(d, int) for d in spatial):
            return False
        begin, end, _, _ = conv_geometry(self.attrs, spatial, self.kernel)
        return not any(begin) and not any(end)


def find_layers(index: GraphIndex, include: str | None = None, exclude: str | None = None) -> list[Layer]:
    """Every Conv/Gemm/MatMul of the graph with a constant weight, filtered by node-name regexes."""
    inc = re.compile(include) if include else None
    exc = re.compile(exclude) if exclude else None
    result = []
    for node in index.nodes:
        if node.op_type not in _GEOMETRY or len(node.input) < 2 or not index.is_constant(node.input[1]):
            continue
        if (inc and not inc.search(node.name)) or (exc and exc.search(node.name)):
            continue
        layer = _layer(index, node)
        if layer is not None:
            result.append(layer)
    return result


def layers_by_node(index: GraphIndex) -> dict[str, Layer]:
    """All layers of the graph (no name filter), keyed by node name."""
    return {layer.node: layer for layer in find_layers(index)}


def _conv(index: GraphIndex, node, attrs: dict, shape: tuple) -> tuple | None:
    if len(shape) < 3:
        return None
    return "conv", 1, int(attrs.get("group", 1)), tuple(shape[2:]), 1.0


def _gemm(index: GraphIndex, node, attrs: dict, shape: tuple) -> tuple | None:
    layout = "rows" if attrs.get("transB", 0) else "cols"
    return layout, (0 if attrs.get("transA", 0) else 1), 1, (), float(attrs.get("alpha", 1.0))


def _matmul(index: GraphIndex, node, attrs: dict, shape: tuple) -> tuple | None:
    rank = index.rank(node.input[0])
    if len(shape) != 2 or rank is None or rank < 2:
        return None
    return "cols", rank - 1, 1, (), 1.0


#: op_type -> (layout, feature axis of the input, groups, kernel, alpha), or None when not a layer
_GEOMETRY = {"Conv": _conv, "Gemm": _gemm, "MatMul": _matmul}


def _layer(index: GraphIndex, node) -> Layer | None:
    attrs = attributes(node)
    shape = tuple(index.shape(node.input[1]) or ())
    geometry = _GEOMETRY[node.op_type](index, node, attrs, shape)
    if geometry is None:
        return None
    layout, feature_axis, groups, kernel, alpha = geometry
    outputs = shape[0] if layout in ("conv", "rows") else shape[1]
    return Layer(node.name, node.op_type, node.input[1], node.input[0], node.output[0], shape, layout, feature_axis,
                 groups, kernel, attrs, alpha, _tail(index, node, outputs))  # fmt: skip


def _tail(index: GraphIndex, node, outputs: int) -> Tail:
    own, factor, removable, out = None, 1.0, True, node.output[0]
    if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2]:
        bias = node.input[2]
        size = int(np.prod(index.shape(bias) or (0,)))
        if node.op_type == "Conv" or (index.is_constant(bias) and size == outputs and _row_like(index.shape(bias))):
            own = bias
            factor = float(attributes(node).get("beta", 1.0)) if node.op_type == "Gemm" else 1.0
        else:
            removable = False
    elif node.op_type == "MatMul":
        add = _single_consumer(index, out)
        if add is not None and add.op_type == "Add":
            other = add.input[1] if add.input[0] == out else add.input[0]
            if index.is_constant(other) and _row_like(index.shape(other)) and index.shape(other)[-1] == outputs:
                own, out = other, add.output[0]
    norm, epsilon = None, 1e-5
    follower = _single_consumer(index, out)
    if follower is not None and follower.op_type == "BatchNormalization" and follower.input[0] == out:
        params = tuple(follower.input[1:5])
        if len(params) == 4 and all(index.is_constant(p) for p in params) and len(follower.output) == 1:
            norm, epsilon = params, float(attributes(follower).get("epsilon", 1e-5))
    return Tail(own, factor, norm, epsilon, removable)


def _row_like(shape) -> bool:
    return shape is not None and len(shape) >= 1 and all(d == 1 for d in shape[:-1])


def _single_consumer(index: GraphIndex, name: str):
    if name in index.output_names:
        return None
    users = index.node_consumers(name)
    return users[0] if len(users) == 1 else None


class Workspace:
    """Working float64 copies of initializers: read with get(), edit in place, changed() at the end."""

    def __init__(self, index: GraphIndex) -> None:
        self.index = index
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = np.array(self.index.constant(name), dtype=np.float64)
        return self.arrays[name]

    def changed(self) -> dict[str, np.ndarray]:
        """The arrays that differ from the model's initializers, in the initializers' dtypes."""
        result = {}
        for name, value in self.arrays.items():
            original = self.index.constant(name)
            new = value.astype(original.dtype)
            if not np.array_equal(new, original):
                result[name] = new
        return result


def affine(layer: Layer, space: Workspace) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of `layer`'s outputs: pre = scale * (W x) + shift, with the current values."""
    outputs = layer.outputs
    shift = np.zeros(outputs)
    if layer.tail.own is not None:
        shift = shift + layer.tail.own_factor * space.get(layer.tail.own).reshape(-1)
    scale = np.full(outputs, layer.alpha)
    if layer.tail.norm is not None:
        gamma, beta, mean, var = (space.get(n).reshape(-1) for n in layer.tail.norm)
        s = gamma / np.sqrt(var + layer.tail.epsilon)
        scale, shift = scale * s, s * (shift - mean) + beta
    return scale, shift


def zero_shift(layer: Layer, space: Workspace, outputs: np.ndarray) -> None:
    """Make shift_j = 0 for the outputs where `outputs` is True: own bias 0, BatchNorm beta = s * mean."""
    if not outputs.any():
        return
    if layer.tail.own is not None:
        own = space.get(layer.tail.own)
        own.reshape(-1)[outputs] = 0.0
    if layer.tail.norm is not None:
        gamma, beta, mean, var = (space.get(n).reshape(-1) for n in layer.tail.norm)
        s = gamma / np.sqrt(var + layer.tail.epsilon)
        beta[outputs] = (s * mean)[outputs]


def add_to_shift(layer: Layer, space: Workspace, delta: np.ndarray) -> str | None:
    """Add `delta` (per output, in units of the product alpha * W x + beta * C, before any BatchNorm) to
    the layer's shift: own bias += delta / beta, else BatchNorm mean -= delta.

    Returns None on success, else why it cannot be done.
    """
    if layer.tail.own is not None and layer.tail.own_factor != 0:
        own = space.get(layer.tail.own)
        own.reshape(-1)[:] += delta / layer.tail.own_factor
        return None
    if layer.tail.norm is not None:
        mean = space.get(layer.tail.norm[2]).reshape(-1)
        mean[:] -= delta
        return None
    return f"'{layer.node}' has no bias to take the constant (add a zero bias to the layer)"
