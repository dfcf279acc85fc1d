"""Rules for the layers that own weights: Conv, ConvTranspose, Gemm and MatMul.

A layer with a constant weight is a *producer* (its output channels are new atoms, one per slice of
the weight's output axis and of the bias) and a *consumer* (the labels of its input's channel axis
label the weight's input axis).
"""

from __future__ import annotations

import numpy as np

from . import ops_heads as heads
from .context import ConsumerRole, ProducerRole, Propagation
from .labels import Unsupported, along, varying_axes, with_rank
from .rewrites import ConvGroups


def _weight(p: Propagation, node, slot: int) -> np.ndarray:
    name = node.input[slot] if len(node.input) > slot else ""
    value = p.constant(name)
    if value is None:
        raise Unsupported(f"weight '{name}' is not a constant")
    return value


def _channel_labels(p: Propagation, name: str, axis: int, size: int, what: str) -> np.ndarray | None:
    ids = p.get(name)
    if ids is None:
        return None
    if [a for a in varying_axes(ids) if a != axis]:
        raise Unsupported(f"{what} carries channels on an axis the layer mixes")
    return along(ids, axis, size)


def conv(p: Propagation, node, attrs, opset) -> None:
    """Conv: Y[n, o] = sum_c W[o, c] * X[n, g(o)*C/g + c] + B[o]; W is [O, C/g, k...]."""
    weight = _weight(p, node, 1)
    out_channels, per_group = weight.shape[0], weight.shape[1]
    groups = int(attrs.get("group", 1))
    rank = p.rank(node.output[0])
    atoms = p.new_atoms(node.input[1], 0, out_channels)
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    p.add_producer(ProducerRole(node.name, node.op_type, node.input[1], 0, bias, node.output[0]))
    if bias:
        if not p.index.is_constant(bias):
            raise Unsupported(f"bias '{bias}' is not a constant")
        p.label_const(bias, 0, atoms, node, 2)
    p.label_const(node.input[1], 0, atoms, node, 1)
    inputs = _channel_labels(p, node.input[0], 1, per_group * groups, "the input")
    if groups == 1:
        if inputs is not None:
            p.label_const(node.input[1], 1, inputs, node, 1)
            p.add_consumer(ConsumerRole(node.name, node.op_type, node.input[1], 1, node.input[0]))
    else:
        _tie_groups(p, node, inputs, atoms, groups, per_group)
    p.set(node.output[0], with_rank(atoms, 2).reshape((1, out_channels) + (1,) * (rank - 2)))


def _tie_groups(p: Propagation, node, inputs, atoms, groups: int, per_group: int) -> None:
    """Grouped/depthwise Conv: a group's input and output channels are removed together, so that every
    remaining group keeps C/g inputs and O/g outputs; `group` shrinks by the groups removed."""
    out_per_group = len(atoms) // groups
    reason = f"grouped Conv '{node.name}' reads input channels that cannot be removed"
    for g in range(groups):
        outs = atoms[g * out_per_group : (g + 1) * out_per_group]
        for atom in outs[1:]:
            p.uf.union(int(outs[0]), int(atom))
        ins = None if inputs is None else inputs[g * per_group : (g + 1) * per_group]
        if ins is None or (ins < 0).any():
            p.freeze(outs, reason if ins is not None else f"grouped Conv '{node.name}' reads the graph input")
        if ins is not None:
            for atom in ins[ins >= 0].tolist():
                p.uf.union(int(outs[0]), atom)
    p.rewrite(ConvGroups(node.name, node.input[1], groups))


def conv_transpose(p: Propagation, node, attrs, opset) -> None:
    """ConvTranspose: W is [C, O/g, k...]; channels in on axis 0, out on axis 1 (group 1 only)."""
    weight = _weight(p, node, 1)
    if int(attrs.get("group", 1)) != 1:
        raise Unsupported("grouped ConvTranspose has no rule")
    rank = p.rank(node.output[0])
    atoms = p.new_atoms(node.input[1], 1, weight.shape[1])
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    p.add_producer(ProducerRole(node.name, node.op_type, node.input[1], 1, bias, node.output[0]))
    p.label_const(node.input[1], 1, atoms, node, 1)
    if bias:
        p.label_const(bias, 0, atoms, node, 2)
    inputs = _channel_labels(p, node.input[0], 1, weight.shape[0], "the input")
    if inputs is not None:
        p.label_const(node.input[1], 0, inputs, node, 1)
        p.add_consumer(ConsumerRole(node.name, node.op_type, node.input[1], 0, node.input[0]))
    p.set(node.output[0], atoms.reshape((1, len(atoms)) + (1,) * (rank - 2)))


def gemm(p: Propagation, node, attrs, opset) -> None:
    """Gemm: Y = alpha * A' B' + beta * C, A' = A or A^T, B' = B or B^T; B constant."""
    if p.constant(node.input[1]) is None:
        raise Unsupported("B is not a constant")
    weight = p.constant(node.input[1])
    trans_a, trans_b = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    out_axis, in_axis = (0, 1) if trans_b else (1, 0)
    atoms = p.new_atoms(node.input[1], out_axis, weight.shape[out_axis])
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    # the role's bias is a constant [N] vector sliced on axis 0; C of shape [1, N] is labeled on its
    # axis 1 (const_labels has it) and a broadcast C is not sliced at all
    sliced = bias if bias and _is_bias_vector(p, bias, weight.shape[out_axis]) else None
    p.add_producer(ProducerRole(node.name, node.op_type, node.input[1], out_axis, sliced, node.output[0]))
    p.label_const(node.input[1], out_axis, atoms, node, 1)
    inputs = _channel_labels(p, node.input[0], 0 if trans_a else 1, weight.shape[in_axis], "input A")
    if inputs is not None:
        p.label_const(node.input[1], in_axis, inputs, node, 1)
        p.add_consumer(ConsumerRole(node.name, node.op_type, node.input[1], in_axis, node.input[0]))
    out = atoms.reshape(1, -1)
    if bias:
        out = _gemm_bias(p, node, bias, out)
    p.set(node.output[0], out)


def _is_bias_vector(p: Propagation, bias: str, size: int) -> bool:
    return p.index.is_constant(bias) and p.index.shape(bias) == (size,) and size > 1


def _gemm_bias(p: Propagation, node, bias: str, out: np.ndarray) -> np.ndarray:
    shape = p.index.shape(bias)
    if shape is None:
        raise Unsupported(f"the shape of bias '{bias}' is unknown")
    if p.get(bias) is not None:
        return p.unify(out, with_rank(p.get(bias), 2), f"Gemm '{node.name}' adds a run-time tensor")
    if len(shape) == 0 or shape[-1] == 1:
        return out
    if not p.index.is_constant(bias) or (len(shape) == 2 and shape[0] != 1):
        p.freeze(out, f"Gemm '{node.name}' has a bias C of shape {shape} that cannot be sliced")
        return out
    p.label_const(bias, len(shape) - 1, out.reshape(-1), node, 2)
    return out


def matmul(p: Propagation, node, attrs, opset) -> None:
    """MatMul: with a constant 2-D right operand W [K, N] it is a layer on the last axis;
    between two run-time tensors it contracts A's last axis with B's second-to-last."""
    right = p.constant(node.input[1])
    if right is None:
        return matmul_activations(p, node)
    if right.ndim != 2:
        raise Unsupported(f"constant operand of rank {right.ndim} (batched weights) has no rule")
    rank = p.rank(node.output[0])
    atoms = p.new_atoms(node.input[1], 1, right.shape[1])
    p.add_producer(ProducerRole(node.name, node.op_type, node.input[1], 1, None, node.output[0]))
    p.label_const(node.input[1], 1, atoms, node, 1)
    left_rank = p.rank(node.input[0])
    if left_rank < 2:
        raise Unsupported("a 1-D left operand has no rule")
    inputs = _channel_labels(p, node.input[0], left_rank - 1, right.shape[0], "the left operand")
    if inputs is not None:
        p.label_const(node.input[1], 0, inputs, node, 1)
        p.add_consumer(ConsumerRole(node.name, node.op_type, node.input[1], 0, node.input[0]))
    p.set(node.output[0], atoms.reshape((1,) * (rank - 1) + (-1,)))


def matmul_activations(p: Propagation, node) -> None:
    """A [..., M, K] @ B [..., K, N] between run-time tensors (attention): the K positions of A and B
    are unified (a dimension is removed from both or neither); output rows carry A's M labels and
    output columns B's N labels (not both at once)."""
    a, b = p.get(node.input[0]), p.get(node.input[1])
    if a is None and b is None:
        return
    ra, rb = p.rank(node.input[0]), p.rank(node.input[1])
    if ra < 2 or rb < 2:
        raise Unsupported("1-D operands have no rule")
    rank = max(ra, rb)
    a = np.full((1,) * rank, -1) if a is None else with_rank(a, rank)
    b = np.full((1,) * rank, -1) if b is None else with_rank(b, rank)
    if any(axis < rank - 2 for ids in (a, b) for axis in varying_axes(ids)):
        return heads.batched_matmul(p, node, a, b, rank)  # attention heads on a batch axis
    for ids in (a, b):
        if not varying_axes(ids) and (ids >= 0).any():
            raise Unsupported("one channel broadcast over a whole operand")
    a_rows, a_k = a.shape[-2] > 1, a.shape[-1] > 1
    b_k, b_cols = b.shape[-2] > 1, b.shape[-1] > 1
    if (a_rows and a_k) or (b_k and b_cols) or (a_rows and b_cols):
        raise Unsupported("channels on two axes of the product")
    if a_k or b_k:
        size = a.shape[-1] if a_k else b.shape[-2]
        left = a.reshape(-1) if a_k else np.full(size, -1)
        right = b.reshape(-1) if b_k else np.full(size, -1)
        p.unify(left, right, f"MatMul '{node.name}' contracts channels with positions that cannot be removed")
    if a_rows:
        p.set(node.output[0], a.reshape((1,) * (rank - 2) + (-1, 1)))
    elif b_cols:
        p.set(node.output[0], b.reshape((1,) * (rank - 1) + (-1,)))
