"""Which nonlinearity sits between a group's producers and its consumers, and what it allows.

Srinivas & Babu's bound (Lemma 1) holds when the activation h is monotone with max h' <= 1: the change of
the next layer from merging j into i is then at most <a_j^2> ||W_i - W_j||^2 E||x||^2. The normalized variant
(compare W / |W|, surgery a_i += (|W_j| / |W_i|) a_j) needs h positively homogeneous, h(r z) = r h(z) for r > 0.

The walk starts at every producer's output and follows the tensors that carry the group's channels, op by op,
until it reaches one of the group's consumers. Each op it meets is classified by the table below:

- linear, exact, homogeneous: reshaping/pooling ops, residual Add/Sub of two channel tensors, Mul/Div by a
  scalar, a bias Add right after a producer;
- activations: Relu, LeakyRelu/PRelu with slope in [0, 1] (exact, homogeneous); Tanh, Sigmoid, Clip, HardSigmoid,
  Softplus, Softsign, Elu with alpha <= 1 (exact, not homogeneous); Gelu, HardSwish, Mish, Selu, and the self-gated
  patterns x * sigmoid(x) (SiLU), x * Phi(x) with Erf (GELU), x * clip(x + 3) / 6 (HardSwish) ("bound not
  guaranteed": max h' is about 1.1 to 1.5, the ranking still works);
- anything else (unfolded BatchNormalization, per-channel Mul, gating by another tensor as in squeeze-excitation,
  attention products, ops without a rule here): "unknown", and the walk stops there.

A group's bound is the worst of its ops; it is homogeneous when every op is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..analysis import Group
from ..graph import GraphIndex, attributes

EXACT, NOT_GUARANTEED, UNKNOWN = "exact", "not guaranteed", "unknown"
_RANK = {EXACT: 0, NOT_GUARANTEED: 1, UNKNOWN: 2}

#: ops that move, select or average positions of each channel: linear, 1-Lipschitz, positively homogeneous
_LINEAR = frozenset(
    "Identity Dropout Reshape Flatten Transpose Squeeze Unsqueeze Concat Split Slice Gather MaxPool AveragePool "
    "GlobalAveragePool GlobalMaxPool Pad Resize Upsample Cast Expand Tile SpaceToDepth DepthToSpace".split()
)

#: op -> (activation name, bound, positively homogeneous)
_ACTIVATIONS = {
    "Relu": ("relu", EXACT, True),
    "Tanh": ("tanh", EXACT, False),
    "Sigmoid": ("sigmoid", EXACT, False),
    "HardSigmoid": ("hardsigmoid", EXACT, False),
    "Softplus": ("softplus", EXACT, False),
    "Softsign": ("softsign", EXACT, False),
    "Gelu": ("gelu", NOT_GUARANTEED, False),
    "HardSwish": ("hardswish", NOT_GUARANTEED, False),
    "Mish": ("mish", NOT_GUARANTEED, False),
    "Selu": ("selu", NOT_GUARANTEED, False),
    "Erf": ("erf", NOT_GUARANTEED, False),
}

#: ops a self-gate x * g(x) may apply to x on the way to g(x) (elementwise with scalar constants)
_GATE_PATH = frozenset("Sigmoid HardSigmoid Clip Erf Add Sub Mul Div Identity Cast Tanh Softplus".split())

#: self-gate pattern: an op on the gate path -> the activation it makes
_GATES = (("Erf", "gelu"), ("Softplus", "mish"), ("Tanh", "mish"), ("Sigmoid", "silu"))


@dataclass(frozen=True)
class Activation:
    """What the walk found for a group: activation names, bound class, positive homogeneity."""

    names: tuple[str, ...]
    bound: str
    homogeneous: bool
    reason: str = ""

    @property
    def label(self) -> str:
        return "+".join(self.names) if self.names else "identity"


@dataclass(frozen=True)
class _Kind:
    name: str | None  # None: linear
    bound: str
    homogeneous: bool
    walk_on: bool = True


_LINEAR_KIND = _Kind(None, EXACT, True)


def group_activation(index: GraphIndex, group: Group) -> Activation:
    """Classify every op between the producers of `group` and its consumers."""
    stops = {c.node for c in group.consumers} | {p.node for p in group.producers}
    starts = {p.output for p in group.producers}
    kinds: dict[str, _Kind] = {}
    absorbed: set[str] = set()
    queue, seen = list(starts), set(starts)
    while queue:
        tensor = queue.pop()
        for position, _ in index.consumers.get(tensor, []):
            node = index.nodes[position]
            if node.name in stops or node.name in kinds:
                continue
            kind, gate_nodes = _classify(index, node, starts)
            kinds[node.name] = kind
            absorbed |= gate_nodes
            if kind.walk_on:
                fresh = [o for o in node.output if o and o not in seen]
                seen.update(fresh)
                queue.extend(fresh)
    found = [k for name, k in kinds.items() if name not in absorbed]
    return _summary(found)


def _summary(found: list[_Kind]) -> Activation:
    bound = max((k.bound for k in found), key=_RANK.__getitem__, default=EXACT)
    names = tuple(sorted({k.name for k in found if k.name}))
    homogeneous = all(k.homogeneous for k in found)
    reasons = sorted({k.name for k in found if k.bound == UNKNOWN and k.name})
    reason = f"no bound for {', '.join(reasons)}" if reasons else ""
    return Activation(names, bound, homogeneous, reason)


def _classify(index: GraphIndex, node, starts: set[str]) -> tuple[_Kind, set[str]]:
    """The kind of `node`, and the names of gate-path nodes a self-gate pattern absorbs."""
    op = node.op_type
    if op in _LINEAR:
        return _LINEAR_KIND, set()
    if op in _ACTIVATIONS:
        return _Kind(*_ACTIVATIONS[op]), set()
    if op in ("Shape", "Size"):
        return _Kind(None, EXACT, True, walk_on=False), set()
    handler = _HANDLERS.get(op)
    if handler is not None:
        return handler(index, node, starts)
    return _Kind(op.lower(), UNKNOWN, False, walk_on=False), set()


def _slope_kind(name: str, slopes: np.ndarray | None) -> _Kind:
    if slopes is None:
        return _Kind(name, UNKNOWN, False, walk_on=False)
    lo, hi = float(np.min(slopes)), float(np.max(slopes))
    if 0.0 <= lo and hi <= 1.0:
        return _Kind(name, EXACT, True)
    return _Kind(name, NOT_GUARANTEED if lo >= 0.0 else UNKNOWN, True)


def _leaky(index, node, starts):
    return _slope_kind("leakyrelu", np.array([attributes(node).get("alpha", 0.01)])), set()


def _prelu(index, node, starts):
    return _slope_kind("prelu", index.constant(node.input[1])), set()


def _elu(index, node, starts):
    alpha = float(attributes(node).get("alpha", 1.0))
    return _Kind("elu", EXACT if 0.0 <= alpha <= 1.0 else NOT_GUARANTEED, False), set()


def _clip(index, node, starts):
    low = _scalar(index, node.input[1]) if len(node.input) > 1 and node.input[1] else attributes(node).get("min")
    high = _scalar(index, node.input[2]) if len(node.input) > 2 and node.input[2] else attributes(node).get("max")
    relu_like = low == 0.0 and (high is None or high >= 3.4e38)
    return _Kind("relu" if relu_like else "clip", EXACT, relu_like), set()


def _scalar(index: GraphIndex, name: str) -> float | None:
    value = index.constant(name) if name else None
    if value is None or value.size != 1:
        return None
    return float(value.reshape(-1)[0])


def _add_sub(index, node, starts):
    """Residual join (two channel tensors): linear. Constant: bias right after a producer, else a shift."""
    constants = [n for n in node.input if n and index.is_constant(n)]
    if not constants:
        return _LINEAR_KIND, set()
    value = index.constant(constants[0])
    if value.size == 1:
        return _Kind("shift", EXACT, False), set()
    after_producer = any(n in starts for n in node.input if n and not index.is_constant(n))
    if after_producer and node.op_type == "Add":
        return _LINEAR_KIND, set()  # the layer's bias: part of the weight-set, scaled with it
    return _Kind("shift", EXACT, False), set()


def _mul_div(index, node, starts):
    """Scalar factor: linear. Per-channel constant: unknown. Two channel tensors: a (self-)gate."""
    inputs = [n for n in node.input if n]
    constants = [n for n in inputs if index.is_constant(n)]
    if constants:
        if index.constant(constants[0]).size == 1 and (node.op_type == "Mul" or constants[0] == inputs[-1]):
            return _LINEAR_KIND, set()
        return _Kind("per-channel " + node.op_type.lower(), UNKNOWN, False), set()
    if node.op_type == "Div" or len(inputs) != 2:
        return _Kind("division by a channel tensor", UNKNOWN, False, walk_on=False), set()
    return _gate(index, inputs)


def _gate(index: GraphIndex, inputs: list[str]) -> tuple[_Kind, set[str]]:
    (origin_a, path_a), (origin_b, path_b) = (_origin(index, n) for n in inputs)
    if origin_a != origin_b:
        return _Kind("gated by another tensor", UNKNOWN, False), set()
    ops = {index.nodes[index.producer[t]].op_type for t in path_a + path_b}
    name = next((act for op, act in _GATES if op in ops), "hardswish")
    nodes = {index.nodes[index.producer[t]].name for t in path_a + path_b}
    return _Kind(name, NOT_GUARANTEED, False), nodes


def _origin(index: GraphIndex, tensor: str, limit: int = 8) -> tuple[str, list[str]]:
    """Follow `tensor` back through elementwise ops with scalar operands; the first other tensor, and the path."""
    path: list[str] = []
    for _ in range(limit):
        position = index.producer.get(tensor)
        if position is None:
            break
        node = index.nodes[position]
        others = [n for n in node.input if n and not index.is_constant(n)]
        scalars_only = all(index.constant(n).size == 1 for n in node.input if n and index.is_constant(n))
        if node.op_type not in _GATE_PATH or len(others) != 1 or not scalars_only:
            break
        path.append(tensor)
        tensor = others[0]
    return tensor, path


def _matmul(index, node, starts):
    return _Kind("data-dependent product", UNKNOWN, True), set()


def _batchnorm(index, node, starts):
    return _Kind("batchnorm (not folded)", UNKNOWN, False), set()


_HANDLERS = {
    "LeakyRelu": _leaky,
    "PRelu": _prelu,
    "Elu": _elu,
    "Clip": _clip,
    "Add": _add_sub,
    "Sub": _add_sub,
    "Mul": _mul_div,
    "Div": _mul_div,
    "MatMul": _matmul,
    "BatchNormalization": _batchnorm,
    "InstanceNormalization": _batchnorm,
}
