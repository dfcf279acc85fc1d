"""The weight layers of a model: Conv, Gemm and MatMul with a constant weight. One `Layer` answers every
"what is this layer" question for the statistics (onnxprune.stats) and the methods.

Masking view (relief, wanda, bias folding). Per output j a layer computes

    pre_j = scale_j * sum_{i,k} W[j, i, k] x[i, k] + shift_j,

W the weight seen as [O, I, K] (Layer.oik): O outputs (filters, neurons), I inputs per output (C/g
input channels of a Conv, features of a Gemm/MatMul), K kernel positions (prod(kernel) of a Conv, 1
otherwise). `scale` and `shift` form the layer's affine *tail* (Tail): Gemm alpha and beta*C, a Conv
bias, the bias Add after a MatMul, and a BatchNormalization right after the layer
(s = gamma / sqrt(var + eps), pre -> s * (pre - mean) + beta).

OBS view (lobs, obs). The layer computes pre-activations Z = X~ W~^T with X~ = [X, 1] (the 1 only when
the layer has an OBS bias) and W~ = [W, b] (Layer.obs_matrix), W the weight as [outputs, inputs]:

- Gemm  Y = alpha A' B' + beta C: W = alpha B'^T, b = beta C, rows of X = rows of A' (A^T if transA);
- MatMul Y = X W_onnx (W_onnx [K, N]): W = W_onnx^T; a following Add of a constant [N] is its bias;
  rows of X = every leading index of the input flattened;
- Conv with weight [O, C/g, k...]: W = weight.reshape(O, -1), one row of X per output position of
  every sample (im2col patches, onnxprune.stats.patches), a separate Hessian per group g.

The two views differ in which bias they count, on purpose (see Layer): `tail.own` is where a masking
method finds and edits the shift, `obs_bias` is a bias column the OBS update may rewrite. Eligibility is
explicit: find_layers returns every such layer (shared weights included, `shared` says so),
obs_layers what lobs and obs take and masking_layers what relief and wanda take.

`Workspace` holds working float64 copies of initializers so several rules can edit the same weight and
the plan gets only the arrays that changed, at their original shapes and dtypes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx

from .errors import ValidationError
from .graph import GraphIndex, attributes
from .io import FLOAT_TYPES, make_tensor

#: weight and bias types the OBS methods rewrite (float64 algebra cast back; no bfloat16)
OBS_FLOAT_TYPES = FLOAT_TYPES - {onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Tail:
    """Where the shift of a layer lives, for the masking methods: `own` bias initializer (scaled by
    `own_factor`, Gemm beta) and an optional BatchNormalization (initializer names: scale, bias, mean,
    var; epsilon).

    `own` is any Conv bias, a Gemm C that is a constant [.., O] row (another C makes `removable` False:
    part of the shift cannot be edited), or the constant [.., O] row added right after a MatMul."""

    own: str | None
    own_factor: float
    norm: tuple[str, str, str, str] | None
    epsilon: float
    removable: bool


@dataclass(frozen=True)
class Layer:
    """One layer with a constant weight, in both views (module docstring).

    `output` is the node's own output; `obs_output` the output of the OBS layer Z = X~ W~^T, which for a
    MatMul with an OBS bias is the bias Add's output. `obs_bias` (scaled by `beta`, Gemm beta) is the bias
    column of W~: a constant float initializer of exactly O elements read by this layer only (for a Gemm
    only when beta != 0; for a MatMul the other input of the Add that alone reads its output). The
    masking methods' bias is `tail.own` (Tail), a wider notion. `shared`: the weight is read by several
    nodes (or several inputs)."""

    node: str
    op_type: str
    weight: str
    input: str
    output: str
    weight_shape: tuple[int, ...]
    layout: str  # "conv", "rows" (W [O, I], Gemm transB=1), "cols" (W [I, O]: Gemm transB=0, MatMul)
    feature_axis: int  # axis of the input tensor holding the I features (Gemm/MatMul), 1 for Conv
    groups: int
    kernel: tuple[int, ...]
    attrs: dict = field(compare=False, hash=False)
    alpha: float = 1.0
    tail: Tail = Tail(None, 1.0, None, 1e-5, True)
    shared: bool = False
    dtype: int = onnx.TensorProto.FLOAT  # the weight's ONNX element type
    input_shape: tuple | None = None
    obs_bias: str | None = None
    obs_bias_shape: tuple[int, ...] = ()
    beta: float = 1.0
    obs_output: str = ""

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def outputs(self) -> int:
        """Output neurons (filters) O."""
        return self.weight_shape[0] if self.layout in ("conv", "rows") else self.weight_shape[1]

    @property
    def inputs(self) -> int:
        """Columns of W per group: C/g * prod(kernel) for Conv, K for Gemm/MatMul."""
        if self.layout == "conv":
            return int(np.prod(self.weight_shape[1:]))
        return self.weight_shape[1] if self.layout == "rows" else self.weight_shape[0]

    @property
    def width(self) -> int:
        """Columns of W~ (the OBS bias column last)."""
        return self.inputs + (1 if self.obs_bias else 0)

    @property
    def is_conv(self) -> bool:
        return self.layout == "conv"

    @property
    def output_group(self) -> np.ndarray:
        """Conv group of each output (all zeros for a dense layer): the Hessian of each row of W~."""
        return np.arange(self.outputs) // max(1, self.outputs // self.groups)

    def columns(self, positions: np.ndarray) -> np.ndarray:
        """Columns of W~ that read the given positions of the weight's input axis."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.op_type != "Conv":
            return positions
        taps = int(np.prod(self.kernel))
        return (positions[:, None] * taps + np.arange(taps)[None, :]).reshape(-1)

    # ---- OBS view: W~ <-> initializers ---------------------------------------------------------
    def obs_matrix(self, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """W~ = [W, b] in float64, [O, width], alpha and beta applied."""
        w = np.asarray(weight, dtype=np.float64)
        if self.op_type == "Conv":
            m = w.reshape(self.outputs, -1)
        elif self.op_type == "Gemm":
            m = self.alpha * (w if self.layout == "rows" else w.T)
        else:
            m = w.T
        if not self.obs_bias:
            return np.array(m)
        b = np.asarray(bias, dtype=np.float64).reshape(-1) * self.beta
        return np.concatenate([m, b[:, None]], axis=1)

    def from_obs_matrix(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(weight, bias) at their ONNX shapes (float64) from W~: the inverse of obs_matrix."""
        w = m[:, : self.inputs]
        if self.op_type == "Conv":
            weight = w.reshape(self.weight_shape)
        elif self.op_type == "Gemm":
            weight = (w if self.layout == "rows" else w.T) / self.alpha
        else:
            weight = w.T
        bias = None
        if self.obs_bias:
            bias = (m[:, -1] / self.beta).reshape(self.obs_bias_shape)
        return np.ascontiguousarray(weight), bias

    # ---- masking view: W [O, I, K] -------------------------------------------------------------
    def oik(self, weight: np.ndarray) -> np.ndarray:
        """The weight as [O, I, K] (a view when possible; alpha not applied)."""
        if self.layout == "conv":
            return weight.reshape(weight.shape[0], weight.shape[1], -1)
        if self.layout == "rows":
            return weight[:, :, None]
        return weight.T[:, :, None]

    def from_oik(self, matrix: np.ndarray) -> np.ndarray:
        """Inverse of oik(): the [O, I, K] array back at the weight's shape."""
        if self.layout == "conv":
            return matrix.reshape(self.weight_shape)
        if self.layout == "rows":
            return matrix[:, :, 0]
        return matrix[:, :, 0].T

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


# ---- finding layers ----------------------------------------------------------------------------
def find_layers(index: GraphIndex) -> tuple[dict[str, Layer], dict[str, str]]:
    """Every Conv/Gemm/MatMul with a constant weight of a rank the op reads as a layer, keyed by node
    name (graph order; shared weights included), and why the other nodes of these op types are not."""
    layers, skipped = {}, {}
    for node in index.nodes:
        if node.op_type not in _GEOMETRY:
            continue
        layer = _layer(index, node)
        if isinstance(layer, str):
            skipped[node.name] = layer
        else:
            layers[node.name] = layer
    return layers, skipped


def obs_refusal(layer: Layer) -> str | None:
    """Why lobs and obs leave `layer` alone (None: they take it). They rewrite W~ in float64 and write
    it back: the weight must be a float tensor (not bfloat16) that no other node reads, the input's
    shape known (to lay out the rows of X); a Gemm with alpha 0 does not use its weight."""
    if layer.dtype not in OBS_FLOAT_TYPES:
        return f"weight '{layer.weight}' is not a float tensor"
    if layer.shared:
        return f"weight '{layer.weight}' is shared by several nodes"
    if layer.input_shape is None:
        return f"the shape of input '{layer.input}' is unknown"
    if layer.op_type == "Gemm" and layer.alpha == 0.0:
        return "alpha is 0: the weight is unused"
    return None


def obs_layers(index: GraphIndex) -> tuple[dict[str, Layer], dict[str, str]]:
    """The layers lobs and obs take (obs_refusal), keyed by node name, and why every other
    Conv/Gemm/MatMul is left alone (graph order)."""
    found, skipped = find_layers(index)
    layers, reasons = {}, {}
    for node in index.nodes:
        if node.name in found:
            reason = obs_refusal(found[node.name])
            if reason:
                reasons[node.name] = reason
            else:
                layers[node.name] = found[node.name]
        elif node.name in skipped:
            reasons[node.name] = skipped[node.name]
    return layers, reasons


def masking_layers(index: GraphIndex) -> dict[str, Layer]:
    """The layers relief and wanda take, keyed by node name: every layer of find_layers (shared weights
    and any float type included), except a MatMul whose input rank is unknown or below 2."""
    found, _ = find_layers(index)
    return {
        name: layer
        for name, layer in found.items()
        if layer.op_type != "MatMul" or (layer.input_shape is not None and len(layer.input_shape) >= 2)
    }


def select(layers: Iterable[Layer], include: str | None, exclude: str | None) -> list[Layer]:
    """Layers whose node name matches `include` and not `exclude` (regular expressions, re.search)."""
    inc = re.compile(include) if include else None
    exc = re.compile(exclude) if exclude else None
    return [
        layer for layer in layers if not (inc and not inc.search(layer.node)) and not (exc and exc.search(layer.node))
    ]


def _conv(index: GraphIndex, node, attrs: dict, shape: tuple) -> tuple | str:
    if len(shape) < 3:
        return f"weight of rank {len(shape)} is not a Conv weight [O, C/g, k...]"
    return "conv", 1, int(attrs.get("group", 1)), tuple(shape[2:]), 1.0


def _gemm(index: GraphIndex, node, attrs: dict, shape: tuple) -> tuple | str:
    layout = "rows" if attrs.get("transB", 0) else "cols"
    return layout, (0 if attrs.get("transA", 0) else 1), 1, (), float(attrs.get("alpha", 1.0))


def _matmul(index: GraphIndex, node, attrs: dict, shape: tuple) -> tuple | str:
    if len(shape) != 2:
        return f"weight of rank {len(shape)} (batched MatMul) is not a layer"
    rank = index.rank(node.input[0])
    return "cols", (-1 if rank is None else rank - 1), 1, (), 1.0


#: op_type -> (layout, feature axis of the input, groups, kernel, alpha), or why it is not a layer
_GEOMETRY = {"Conv": _conv, "Gemm": _gemm, "MatMul": _matmul}


def _layer(index: GraphIndex, node) -> Layer | str:
    weight = node.input[1] if len(node.input) > 1 else ""
    if not index.is_constant(weight):
        return f"weight '{weight}' is not a constant"
    attrs = attributes(node)
    shape = tuple(index.shape(weight) or ())
    geometry = _GEOMETRY[node.op_type](index, node, attrs, shape)
    if isinstance(geometry, str):
        return geometry
    layout, feature_axis, groups, kernel, alpha = geometry
    outputs = shape[0] if layout in ("conv", "rows") else shape[1]
    obs_output, obs_bias, beta = _obs_bias(index, node, attrs, outputs)
    input_shape = index.shape(node.input[0])
    return Layer(
        node.name, node.op_type, weight, node.input[0], node.output[0], shape, layout, feature_axis, groups,
        kernel, attrs, alpha, _tail(index, node, outputs), len(index.consumers.get(weight, [])) != 1,
        index.dtypes.get(weight, onnx.TensorProto.UNDEFINED), None if input_shape is None else tuple(input_shape),
        obs_bias, _obs_bias_shape(index, node, obs_bias, outputs), beta, obs_output,
    )  # fmt: skip


def _obs_bias_shape(index: GraphIndex, node, bias: str | None, outputs: int) -> tuple[int, ...]:
    if not bias:
        return ()
    return (outputs,) if node.op_type == "Conv" else tuple(index.shape(bias))


def _obs_bias(index: GraphIndex, node, attrs: dict, outputs: int) -> tuple[str, str | None, float]:
    """(obs_output, obs_bias, beta): the OBS bias is an own constant of `outputs` elements (Layer)."""
    if node.op_type == "MatMul":
        output, bias = node.output[0], None
        users = index.consumers.get(output, [])
        if len(users) == 1 and output not in index.output_names:
            add = index.nodes[users[0][0]]
            other = add.input[1 - users[0][1]] if add.op_type == "Add" and len(add.input) == 2 else ""
            shape = index.shape(other) or ()
            if other and _own_bias(index, other, outputs) and (len(shape) == 0 or shape[-1] == outputs):
                output, bias = add.output[0], other
        return output, bias, 1.0
    beta = float(attrs.get("beta", 1.0)) if node.op_type == "Gemm" else 1.0
    bias = node.input[2] if len(node.input) > 2 else ""
    return node.output[0], (bias if beta != 0.0 and _own_bias(index, bias, outputs) else None), beta


def _own_bias(index: GraphIndex, name: str, size: int) -> bool:
    """`name` is a float constant of `size` elements used by this layer only."""
    return (
        bool(name)
        and index.is_constant(name)
        and int(np.prod(index.shape(name) or (0,))) == size
        and len(index.consumers.get(name, [])) == 1
        and index.dtypes.get(name) in OBS_FLOAT_TYPES
    )


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
    follower = following_batchnorm(index, out)
    if follower is not None:
        norm, epsilon = tuple(follower.input[1:5]), float(attributes(follower).get("epsilon", 1e-5))
    return Tail(own, factor, norm, epsilon, removable)


def following_batchnorm(index: GraphIndex, tensor: str):
    """The BatchNormalization that alone reads `tensor` (as its X; `tensor` is no graph output), with
    constant scale, bias, mean and var and one output; None otherwise."""
    users = index.consumers.get(tensor, [])
    if len(users) != 1 or users[0][1] != 0 or tensor in index.output_names:
        return None
    node = index.nodes[users[0][0]]
    if node.op_type != "BatchNormalization" or len(node.output) != 1:
        return None
    if len(node.input) != 5 or not all(index.is_constant(name) for name in node.input[1:]):
        return None
    return node


def _row_like(shape) -> bool:
    return shape is not None and len(shape) >= 1 and all(d == 1 for d in shape[:-1])


def _single_consumer(index: GraphIndex, name: str):
    if name in index.output_names:
        return None
    users = index.node_consumers(name)
    return users[0] if len(users) == 1 else None


def conv_geometry(attrs: dict, in_spatial: tuple[int, ...], kernel: tuple[int, ...]):
    """(pads_begin, pads_end, strides, dilations) of a Conv, auto_pad resolved."""
    dims = len(kernel)
    strides = list(attrs.get("strides", [1] * dims))
    dilations = list(attrs.get("dilations", [1] * dims))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(in_spatial, kernel, strides, dilations, strict=True):
            out = math.ceil(size / s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else large)
            end.append(large if auto_pad == "SAME_UPPER" else small)
    elif auto_pad == "VALID":
        begin, end = [0] * dims, [0] * dims
    else:
        pads = list(attrs.get("pads", [0] * (2 * dims)))
        begin, end = pads[:dims], pads[dims:]
    return begin, end, strides, dilations


# ---- editing initializers ----------------------------------------------------------------------
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


def with_updates(model: onnx.ModelProto, updates: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose initializers named in `updates` hold the new values (same shapes), cast
    to the initializers' dtypes."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for position, tensor in enumerate(copy.graph.initializer):
        if tensor.name in updates:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            copy.graph.initializer[position].CopyFrom(make_tensor(updates[tensor.name].astype(dtype), tensor.name))
    return copy


def layer_weights(index: GraphIndex, layer: Layer) -> np.ndarray:
    """W~ of `layer` as the model holds it (OBS view)."""
    bias = index.constant(layer.obs_bias) if layer.obs_bias else None
    return layer.obs_matrix(index.constant(layer.weight), bias)


def write_layer(index: GraphIndex, layer: Layer, m: np.ndarray, updates: dict[str, np.ndarray]) -> None:
    """Put W~ = `m` back into `updates` at the initializers' shapes and dtypes; refuse non-finite."""
    weight, bias = layer.from_obs_matrix(m)
    if not np.isfinite(m).all():
        raise ValidationError(
            f"layer '{layer.node}': the OBS update is not finite; nothing is written. "
            "Use more calibration samples or a larger --damping"
        )
    updates[layer.weight] = weight.astype(index.constant(layer.weight).dtype)
    if bias is not None:
        updates[layer.obs_bias] = bias.astype(index.constant(layer.obs_bias).dtype)
