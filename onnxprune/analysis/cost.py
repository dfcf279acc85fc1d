"""Parameters and multiply-accumulates (MACs) per node, from static shapes (batch counted as 1)."""

from __future__ import annotations

import numpy as np

from ..graph import GraphIndex, attributes


def _per_sample(shape) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else 1 for d in shape)


def node_macs(index: GraphIndex, node) -> int:
    """MACs of one sample through `node` (0 for ops without weights)."""
    out_shape = index.shape(node.output[0]) if node.output else None
    if out_shape is None:
        return 0
    out = _per_sample(out_shape)
    if node.op_type in ("Conv", "ConvTranspose"):
        weight = index.shape(node.input[1])
        if weight is None:
            return 0
        spatial = int(np.prod(out[2:], dtype=np.int64))
        if node.op_type == "Conv":
            return int(out[1]) * spatial * int(np.prod(weight[1:], dtype=np.int64))
        in_shape = index.shape(node.input[0])
        in_spatial = int(np.prod(_per_sample(in_shape)[2:], dtype=np.int64)) if in_shape else spatial
        return int(np.prod(weight, dtype=np.int64)) * in_spatial
    if node.op_type in ("Gemm", "MatMul"):
        weight = index.shape(node.input[1])
        if weight is None or len(weight) < 2:
            return 0
        if node.op_type == "Gemm":
            k = weight[1] if attributes(node).get("transB", 0) else weight[0]
        else:
            k = weight[-2]
        rows = int(np.prod(out[1:-1], dtype=np.int64)) if len(out) > 2 else 1
        return rows * int(out[-1]) * int(k if isinstance(k, int) else 1)
    if node.op_type in ("LSTM", "GRU", "RNN"):
        return _recurrent_macs(index, node)
    if node.op_type == "Attention" and node.domain == "com.microsoft":
        return _fused_attention_macs(index, node, out)
    return 0


def _recurrent_macs(index: GraphIndex, node) -> int:
    """seq * (W [D, G*H, I] + R [D, G*H, H]) per sample: every step multiplies x_t by W and h by R."""
    x, w, r = (index.shape(name) for name in node.input[:3])
    if x is None or w is None or r is None:
        return 0
    seq = _per_sample(x)[int(attributes(node).get("layout", 0))]
    return int(seq) * int(np.prod(w, dtype=np.int64) + np.prod(r, dtype=np.int64))


def _fused_attention_macs(index: GraphIndex, node, out) -> int:
    """com.microsoft Attention on [B, S, C]: the packed projection (S C (q+k+v)) plus Q K^T and the
    weighted sum of V (S S q + S S v), the same terms the decomposed form's MatMuls count."""
    weight = index.shape(node.input[1])
    if weight is None or len(out) != 3 or not all(isinstance(d, int) for d in weight):
        return 0
    sizes = attributes(node).get("qkv_hidden_sizes") or [weight[1] // 3] * 3
    seq = int(out[1])
    return seq * int(weight[0]) * int(weight[1]) + seq * seq * (int(sizes[0]) + int(sizes[2]))


def model_macs(index: GraphIndex) -> int:
    return sum(node_macs(index, node) for node in index.nodes)
