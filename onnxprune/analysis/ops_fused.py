"""Rules for onnxruntime's fused element-wise and normalization ops (domain com.microsoft, and the
ONNX-domain contrib SimplifiedLayerNormalization), as its transformer optimizer writes them.

- Gelu, QuickGelu (x * sigmoid(alpha x)): position by position, transparent.
- BiasGelu(x, b) = Gelu(x + b), FastGelu(x, b?) = tanh-Gelu(x + b), BiasAdd(x, b, skip) = x + b + skip:
  the additive inputs join like Add (a [C] bias is sliced with the channels of x: the fused MatMul+bias
  form), the activation after it is transparent.
- FusedMatMul(A, B) = alpha * op(A) op(B) (onnxruntime's level-1 optimizations fold a Transpose and a
  scalar Mul into it): without transposes it is a MatMul scaled by a scalar, so the MatMul rule holds.
- SkipLayerNormalization(x, skip, gamma, beta?, bias?) = LayerNorm(x + skip + bias) over the last axis,
  SkipSimplifiedLayerNormalization(x, skip, gamma, bias?) = RMSNorm(x + skip + bias), and
  SimplifiedLayerNormalization(x, scale) = x / sqrt(mean(x^2 over axes [axis:]) + eps) * scale: the mean
  and the mean square run over the normalized axes, so removing a channel there changes every other
  channel's output: a blocker over the normalized axes, transparent over the others. Output 3 of the
  skip forms (x + skip + bias) carries the joined labels.
"""

from __future__ import annotations

from .context import Propagation
from .labels import Unsupported, varying_axes
from .ops_layers import matmul
from .ops_pointwise import join_slots


def bias_activation(p: Propagation, node, attrs, opset) -> None:
    """BiasGelu, FastGelu, BiasAdd, Gelu, QuickGelu: every input is additive (x, bias, skip)."""
    joined = join_slots(p, node, range(len(node.input)))
    if joined is not None:
        p.set(node.output[0], joined)


def fused_matmul(p: Propagation, node, attrs, opset) -> None:
    """com.microsoft FusedMatMul without transposes: the MatMul rule (alpha scales every channel alike)."""
    flags = [f for f in ("transA", "transB", "transBatchA", "transBatchB") if int(attrs.get(f, 0))]
    if flags:
        raise Unsupported(f"FusedMatMul with {', '.join(flags)} has no rule")
    matmul(p, node, attrs, opset)


def skip_norm(p: Propagation, node, attrs, opset) -> None:
    """SkipLayerNormalization (x, skip, gamma, beta, bias) and SkipSimplifiedLayerNormalization
    (x, skip, gamma, bias): normalize x + skip + bias over the last axis."""
    bias = 4 if node.op_type == "SkipLayerNormalization" else 3
    additive = [0, 1, bias]
    _guard_normalized(p, node, [node.input[s] for s in additive if s < len(node.input)], -1)
    joined = join_slots(p, node, additive)
    if joined is None:
        return
    p.set(node.output[0], joined)
    if len(node.output) > 3:
        p.set(node.output[3], joined)


def simplified_norm(p: Propagation, node, attrs, opset) -> None:
    """SimplifiedLayerNormalization / RMSNormalization (opset 23): Y = X / sqrt(mean(X^2 over axes
    [axis:]) + eps) * scale; scale covers only the normalized axes."""
    ids = p.get(node.input[0])
    if ids is None:
        return
    _guard_normalized(p, node, [node.input[0]], int(attrs.get("axis", -1)))
    p.set(node.output[0], ids)


def _guard_normalized(p: Propagation, node, names, axis: int) -> None:
    for name in names:
        ids = p.get(name)
        if ids is None:
            continue
        first = axis + ids.ndim if axis < 0 else axis
        hit = [a for a in varying_axes(ids) if a >= first]
        if hit:
            raise Unsupported(f"{node.op_type} normalizes over labeled axis {hit}")
