"""One weight layer as a model of its own, at any number of input and output channels.

The latency cost model (budget/latency.py) times each Conv, ConvTranspose, Gemm and MatMul whose
channels pruning can change on its own, at the node's real activation shape and at several widths.
`LayerShape` holds what that takes: the op and its attributes, the activation shape (batch
included) and the weight's shape; `model(cin, cout)` builds the single-node model with `cin` input
channels and `cout` output channels (random weights: a timing does not depend on their values).

Channel axes per op (x: the activation input, W: the constant weight):

    op             x channels      W shape                     channels in / out
    Conv           x[1]            [O, C/g, k...]              C / O
    ConvTranspose  x[1]            [C, O/g, k...]              C / O
    Gemm           A[-1] (A^T)     [K, N] ([N, K] if transB)   K / N
    MatMul         x[-1]           [K, N]                      K / N

A grouped convolution keeps its group count (each group loses channels) unless it is depthwise
(g = C), where the groups are the channels: then C' input channels give g' = C' and O' = C' O / C.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import GraphIndex, attributes, opset_version

#: the ops whose time the cost model tables (everything else is "the rest" of the model)
TIMED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: IR version of the single-node models (onnxruntime 1.31 reads at most 10 from onnx 1.23 safely)
_IR_VERSION = 8


@dataclass(frozen=True)
class LayerShape:
    """Everything a single-node copy of `node` needs; `cin`/`cout` are its full channel counts."""

    node: str
    op_type: str
    attrs: tuple[tuple[str, object], ...]
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    bias_shape: tuple[int, ...] | None
    dtype: int
    opset: int
    cin: int
    cout: int

    @property
    def key(self) -> tuple:
        """What the timing depends on (not the node's name): tables are cached by it."""
        return (self.op_type, self.attrs, self.x_shape, self.w_shape, self.bias_shape, self.dtype, self.opset)

    @property
    def depthwise(self) -> bool:
        return self.op_type in ("Conv", "ConvTranspose") and int(dict(self.attrs).get("group", 1)) == self.cin > 1

    def widths(self, cin: int, cout: int) -> tuple[int, int]:
        """The channel counts the node really gets for requested (`cin`, `cout`): tied for a depthwise
        conv (by the input), multiples of the group count for a grouped one."""
        cin, cout = max(1, min(self.cin, cin)), max(1, min(self.cout, cout))
        group = int(dict(self.attrs).get("group", 1))
        if self.depthwise:
            return cin, cin * (self.cout // self.cin)
        if group > 1:
            return group * max(1, round(cin / group)), group * max(1, round(cout / group))
        return cin, cout

    def model(self, cin: int, cout: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        """The single-node model at (cin, cout) channels, and a random input for it."""
        cin, cout = self.widths(cin, cout)
        attrs = dict(self.attrs)
        if self.depthwise:
            attrs["group"] = cin
        x_shape, w_shape, y_shape = _shapes(self, cin, cout)
        np_dtype = helper.tensor_dtype_to_np_dtype(self.dtype)
        rng = np.random.default_rng(0)
        weights = [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np_dtype), "w")]
        inputs = ["x", "w"]
        if self.bias_shape is not None:
            last = len(self.bias_shape) - 1
            bias = tuple(cout if d == self.cout and i == last else d for i, d in enumerate(self.bias_shape))
            weights.append(numpy_helper.from_array(rng.standard_normal(bias).astype(np_dtype), "b"))
            inputs.append("b")
        node = helper.make_node(self.op_type, inputs, ["y"], **attrs)
        graph = helper.make_graph(
            [node],
            f"{self.op_type}_{cin}x{cout}",
            [helper.make_tensor_value_info("x", self.dtype, x_shape)],
            [helper.make_tensor_value_info("y", self.dtype, y_shape)],
            weights,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=_IR_VERSION)
        return model, {"x": rng.standard_normal(x_shape).astype(np_dtype)}


def _shapes(layer: LayerShape, cin: int, cout: int):
    """Shapes of x, W and y at (cin, cout); y's non-channel dims are left symbolic (None)."""
    x, w = list(layer.x_shape), list(layer.w_shape)
    if layer.op_type == "Conv":
        x[1] = cin
        w[0], w[1] = cout, cin // int(dict(layer.attrs).get("group", 1)) if not layer.depthwise else 1
        y = [x[0], cout] + [None] * (len(x) - 2)
    elif layer.op_type == "ConvTranspose":
        group = cin if layer.depthwise else int(dict(layer.attrs).get("group", 1))
        x[1] = cin
        w[0], w[1] = cin, cout // group
        y = [x[0], cout] + [None] * (len(x) - 2)
    elif layer.op_type == "Gemm":
        trans_a, trans_b = (int(dict(layer.attrs).get(k, 0)) for k in ("transA", "transB"))
        x[0 if trans_a else 1] = cin
        w = [cout, cin] if trans_b else [cin, cout]
        y = [x[1] if trans_a else x[0], cout]
    else:  # MatMul
        x[-1] = cin
        w = [cin, cout]
        y = x[:-1] + [cout]
    return x, w, y


def layer_shape(index: GraphIndex, node: onnx.NodeProto) -> LayerShape | None:
    """The LayerShape of `node` from the static shapes of `index` (concrete, batch included), or None
    when the node is not a timed op with a constant 2-D/conv weight and fully known shapes."""
    if node.op_type not in TIMED_OPS or len(node.input) < 2 or node.input[1] not in index.initializers:
        return None
    x_shape, w_shape = index.shape(node.input[0]), index.shape(node.input[1])
    if not _concrete(x_shape) or not _concrete(w_shape):
        return None
    attrs = attributes(node)
    cin_cout = _channels(node.op_type, attrs, tuple(x_shape), tuple(w_shape))
    if cin_cout is None:
        return None
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = index.shape(node.input[2])
        if not _concrete(bias):
            return None
    return LayerShape(
        node=node.name,
        op_type=node.op_type,
        attrs=tuple(sorted((k, _hashable(v)) for k, v in attrs.items())),
        x_shape=tuple(int(d) for d in x_shape),
        w_shape=tuple(int(d) for d in w_shape),
        bias_shape=None if bias is None else tuple(int(d) for d in bias),
        dtype=index.initializers[node.input[1]].data_type,
        opset=opset_version(index.model),
        cin=cin_cout[0],
        cout=cin_cout[1],
    )


def _channels(op_type: str, attrs: dict, x: tuple, w: tuple) -> tuple[int, int] | None:
    group = int(attrs.get("group", 1))
    if op_type == "Conv" and len(x) == len(w) >= 3:
        return x[1], w[0]
    if op_type == "ConvTranspose" and len(x) == len(w) >= 3:
        return x[1], w[1] * group
    if op_type == "Gemm" and len(x) == len(w) == 2:
        k = x[0] if attrs.get("transA", 0) else x[1]
        return k, (w[0] if attrs.get("transB", 0) else w[1])
    if op_type == "MatMul" and len(w) == 2 and len(x) >= 2:
        return x[-1], w[1]
    return None


def _concrete(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value
