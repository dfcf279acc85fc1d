"""Fold BatchNormalization into the preceding layer, and Gemm alpha/beta into its constants.

BatchNormalization after a layer z = W x + b computes
    y = gamma * (z - mean) / sqrt(var + eps) + beta = (s W) x + (s (b - mean) + beta),  s = gamma / sqrt(var + eps),
so the layer's output channel o becomes W'[o] = s_o W[o], b'[o] = s_o (b_o - mean_o) + beta_o and the BN node
goes away. Producers: Conv (W [O, C/g, k...]), ConvTranspose (W [C, O/g, k...]), Gemm (B [K, N], or [N, K] with
transB), MatMul with a constant [K, N] weight on a rank-2 output, and MatMul followed by an Add of a constant
bias. A BN is folded only when the layer's output feeds nothing but that BN, the BN is in inference mode and
all its parameters are constants.

Gemm computes Y = alpha A' B' + beta C; with constant B and C the pass stores alpha B and beta C and sets
alpha = beta = 1, so every later stage can read the weights as they act.

Weights shared with other nodes get a private copy; results that would not be finite are not written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..graph import attributes
from ..io import make_tensor, tensor_array
from .base import Pass, PassResult
from .cleanup import subgraph_inputs


@dataclass(frozen=True)
class _Affine:
    """Per-output-channel map z -> scale * z + shift (the BN being folded)."""

    scale: np.ndarray
    shift: np.ndarray


class _Model:
    """Initializer lookup and edits on a ModelProto (every edit writes a new tensor)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.refresh()

    def refresh(self) -> None:
        self.inits = {t.name: t for t in self.graph.initializer}
        self.uses: dict[str, int] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in self.graph.node:
            for name in [*node.input, *subgraph_inputs(node)]:
                if name:
                    self.uses[name] = self.uses.get(name, 0) + 1
            for name in node.output:
                self.producer[name] = node
        self.outputs = {o.name for o in self.graph.output}

    def value(self, name: str) -> np.ndarray | None:
        tensor = self.inits.get(name)
        return None if tensor is None else tensor_array(tensor)

    def dtype(self, name: str):
        return onnx.helper.tensor_dtype_to_np_dtype(self.inits[name].data_type)

    def only_user(self, tensor: str) -> bool:
        """`tensor` feeds exactly one node input and is not a graph output."""
        return self.uses.get(tensor, 0) == 1 and tensor not in self.outputs

    def write(self, node: onnx.NodeProto, slot: int, value: np.ndarray, like: str | None) -> None:
        """Store `value` as input `slot` of `node`: in place if that initializer is private, else a new one."""
        dtype = self.dtype(like) if like else np.float32
        value = np.asarray(value).astype(dtype)
        current = node.input[slot] if len(node.input) > slot else ""
        if current and current in self.inits and self.uses.get(current, 0) == 1:
            self.inits[current].CopyFrom(make_tensor(value, current))
            return
        name = self._fresh(f"{current or node.name + '_bias'}__folded")
        self.graph.initializer.append(make_tensor(value, name))
        while len(node.input) <= slot:
            node.input.append("")
        node.input[slot] = name
        self.refresh()

    def _fresh(self, base: str) -> str:
        taken = set(self.inits) | set(self.producer) | {i.name for i in self.graph.input}
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        return name

    def set_attr(self, node: onnx.NodeProto, key: str, value: float) -> None:
        kept = [a for a in node.attribute if a.name != key]
        del node.attribute[:]
        node.attribute.extend(kept)
        if value != 1.0:
            node.attribute.append(onnx.helper.make_attribute(key, value))

    def drop_node(self, node: onnx.NodeProto) -> None:
        kept = [n for n in self.graph.node if n is not node]
        del self.graph.node[:]
        self.graph.node.extend(kept)

    def drop_value_info(self, name: str) -> None:
        kept = [v for v in self.graph.value_info if v.name != name]
        if len(kept) != len(self.graph.value_info):
            del self.graph.value_info[:]
            self.graph.value_info.extend(kept)


def _finite(*arrays: np.ndarray) -> bool:
    return all(np.isfinite(a).all() for a in arrays)


# ---- Gemm alpha/beta ---------------------------------------------------------------------------------


def _fold_gemm_scalars(m: _Model, node: onnx.NodeProto) -> bool:
    """alpha A'B' + beta C  ->  A'(alpha B) + (beta C) where B, C are constants."""
    attrs = attributes(node)
    changed = _scale_constant_input(m, node, 1, "alpha", float(attrs.get("alpha", 1.0)))
    beta = float(attrs.get("beta", 1.0))
    if beta != 1.0 and not (len(node.input) > 2 and node.input[2]):
        m.set_attr(node, "beta", 1.0)  # no C: beta multiplies nothing
        return True
    return _scale_constant_input(m, node, 2, "beta", beta) or changed


def _scale_constant_input(m: _Model, node: onnx.NodeProto, slot: int, attr: str, factor: float) -> bool:
    """Multiply constant input `slot` by `factor` and set attribute `attr` to 1 (if the result is finite)."""
    if factor == 1.0 or len(node.input) <= slot or m.value(node.input[slot]) is None:
        return False
    new = factor * m.value(node.input[slot]).astype(np.float64)
    if not _finite(new):
        return False
    m.write(node, slot, new, node.input[slot])
    m.set_attr(node, attr, 1.0)
    return True


# ---- BatchNormalization ------------------------------------------------------------------------------


def _bn_affine(m: _Model, bn: onnx.NodeProto) -> _Affine | None:
    """s = gamma / sqrt(var + eps), t = beta - s mean; None if BN is not a constant inference-mode BN."""
    attrs = attributes(bn)
    if int(attrs.get("training_mode", 0)) or any(bn.output[1:]):
        return None
    params = [m.value(name) for name in bn.input[1:5]]
    if len(params) < 4 or any(p is None for p in params):
        return None
    gamma, beta, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)
    denom = var + float(attrs.get("epsilon", 1e-5))
    if (denom <= 0).any():
        return None
    scale = gamma / np.sqrt(denom)
    shift = beta - scale * mean
    return _Affine(scale, shift) if _finite(scale, shift) else None


def _scale_weight(op: str, node: onnx.NodeProto, weight: np.ndarray, scale: np.ndarray) -> np.ndarray | None:
    """Multiply output channel o of the layer's weight by scale[o] (None: layout not handled)."""
    w = weight.astype(np.float64)
    if op == "Conv":
        return w * scale.reshape((-1,) + (1,) * (w.ndim - 1)) if w.shape[0] == len(scale) else None
    if op == "ConvTranspose":
        groups = int(attributes(node).get("group", 1))
        c_in, per_group = w.shape[0], w.shape[1]
        if per_group * groups != len(scale) or c_in % groups:
            return None
        out = (np.arange(c_in)[:, None] // (c_in // groups)) * per_group + np.arange(per_group)[None, :]
        return w * scale[out].reshape(w.shape[:2] + (1,) * (w.ndim - 2))
    if op == "Gemm":
        trans_b = int(attributes(node).get("transB", 0))
        axis = 0 if trans_b else 1
    else:  # MatMul [K, N]
        axis = 1
    if w.ndim != 2 or w.shape[axis] != len(scale):
        return None
    return w * (scale[:, None] if axis == 0 else scale[None, :])


def _bias_vector(value: np.ndarray | None, size: int) -> np.ndarray | None:
    """A bias constant as a length-`size` vector, if it broadcasts per output channel; zeros if absent."""
    if value is None:
        return np.zeros(size)
    v = np.asarray(value, dtype=np.float64)
    if v.size == 1:
        return np.full(size, float(v.reshape(-1)[0]))
    if v.shape[-1] == size and v.size == size:
        return v.reshape(-1)
    return None


def _layer_of(m: _Model, tensor: str):
    """(layer node, bias Add node or None) whose output is `tensor`; None if not a foldable layer."""
    node = m.producer.get(tensor)
    if node is None:
        return None
    if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return node, None
    if node.op_type == "Add":
        for slot in (0, 1):
            layer = m.producer.get(node.input[slot])
            other = node.input[1 - slot]
            if layer is not None and layer.op_type == "MatMul" and m.value(other) is not None:
                if m.only_user(node.input[slot]):
                    return layer, node
    return None


def _fold_bn(m: _Model, bn: onnx.NodeProto, ranks: dict[str, int]) -> bool:
    x = bn.input[0]
    found = _layer_of(m, x) if m.only_user(x) else None
    affine = _bn_affine(m, bn) if found else None
    if affine is None:
        return False
    layer, add = found
    op = layer.op_type
    if op in ("Gemm", "MatMul") and ranks.get(x) != 2:
        return False  # BN normalizes axis 1, the layer's channels only for a rank-2 output
    if op == "Gemm" and (attributes(layer).get("alpha", 1.0) != 1.0 or attributes(layer).get("beta", 1.0) != 1.0):
        return False
    if op == "MatMul" and m.value(layer.input[0]) is not None:
        return False  # constant on the left: not a [K, N] weight
    weight = m.value(layer.input[1])
    if weight is None:
        return False
    new_weight = _scale_weight(op, layer, weight, affine.scale)
    bias_node, bias_slot = (
        (add, 1 if add is not None and m.value(add.input[1]) is not None else 0) if add else (layer, 2)
    )
    bias_name = bias_node.input[bias_slot] if len(bias_node.input) > bias_slot else ""
    if bias_name and m.value(bias_name) is None:
        return False
    old_bias = _bias_vector(m.value(bias_name) if bias_name else None, len(affine.scale))
    if new_weight is None or old_bias is None:
        return False
    new_bias = affine.scale * old_bias + affine.shift
    if not _finite(new_weight, new_bias):
        return False
    m.write(layer, 1, new_weight, layer.input[1])
    if op == "MatMul" and add is None:
        return _append_bias_add(m, layer, bn, new_bias)
    m.write(bias_node, bias_slot, new_bias, layer.input[1])
    _bypass(m, bias_node, bn)
    return True


def _append_bias_add(m: _Model, layer: onnx.NodeProto, bn: onnx.NodeProto, bias: np.ndarray) -> bool:
    """MatMul without bias: the BN node becomes Add(MatMul output, folded bias)."""
    name = m._fresh(f"{bn.name}_bias__folded")
    m.graph.initializer.append(make_tensor(bias.astype(m.dtype(layer.input[1])), name))
    add = onnx.helper.make_node("Add", [bn.input[0], name], [bn.output[0]], name=bn.name)
    position = list(m.graph.node).index(bn)
    m.graph.node.insert(position, add)
    m.drop_node(bn)
    m.refresh()
    return True


def _bypass(m: _Model, last: onnx.NodeProto, bn: onnx.NodeProto) -> None:
    """`last` now writes the BN's output; the BN node goes."""
    old = last.output[0]
    last.output[0] = bn.output[0]
    m.drop_node(bn)
    m.drop_value_info(old)
    m.refresh()


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    from ..graph import infer_shapes

    shapes, _ = infer_shapes(model)
    return {name: len(shape) for name, shape in shapes.items()}


def fold(model: onnx.ModelProto) -> PassResult:
    """Fold Gemm alpha/beta and every foldable BatchNormalization, in place."""
    m = _Model(model)
    before = {name for node in m.graph.node for name in node.input if name in m.inits}
    changed = False
    for node in list(m.graph.node):
        if node.op_type == "Gemm" and node.domain in ("", "ai.onnx"):
            changed |= _fold_gemm_scalars(m, node)
    if any(n.op_type == "BatchNormalization" for n in m.graph.node):
        ranks = _ranks(model)
        progress = True
        while progress:
            progress = False
            for node in list(m.graph.node):
                if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx") and _fold_bn(m, node, ranks):
                    changed = progress = True
                    break
    if changed:
        _drop_unused_initializers(m, before)
    return PassResult(model, changed)


def _drop_unused_initializers(m: _Model, candidates: set[str]) -> None:
    """Remove the initializers the folds replaced (BN parameters, old weights), if no node reads them."""
    m.refresh()
    kept = [t for t in m.graph.initializer if t.name not in candidates or t.name in m.uses or t.name in m.outputs]
    if len(kept) != len(m.graph.initializer):
        del m.graph.initializer[:]
        m.graph.initializer.extend(kept)


FOLD = Pass("fold", fold)
