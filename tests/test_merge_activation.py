"""merge_activation: the activation between a group's producers and consumers, its bound class and homogeneity."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import Builder, group_of

from onnxprune.analysis import analyze
from onnxprune.graph import GraphIndex
from onnxprune.methods.merge_activation import EXACT, NOT_GUARANTEED, UNKNOWN, group_activation


def _scalar(b: Builder, value: float) -> str:
    return b.const(np.float32(value))


def _between(make) -> tuple:
    """Gemm fc1 -> make(builder, h) -> Gemm fc2; the activation found for fc1's group."""
    b = Builder(seed=21)
    x = b.input("x", [3, 6])
    h = b.gemm(x, 6, 4, trans_b=1, name="fc1")
    b.output(b.gemm(make(b, h), 4, 2, name="fc2"))
    index = GraphIndex.build(b.model())
    act = group_activation(index, group_of(analyze(index), "fc1"))
    return act.label, act.bound, act.homogeneous


def _silu(b, h):
    return b.node("Mul", [h, b.node("Sigmoid", [h])])


def _gelu(b, h):
    erf = b.node("Erf", [b.node("Div", [h, _scalar(b, np.sqrt(2.0))])])
    return b.node("Mul", [b.node("Mul", [h, _scalar(b, 0.5)]), b.node("Add", [erf, _scalar(b, 1.0)])])


def _hardswish(b, h):
    gate = b.node("Clip", [b.node("Add", [h, _scalar(b, 3.0)]), _scalar(b, 0.0), _scalar(b, 6.0)])
    return b.node("Mul", [h, b.node("Div", [gate, _scalar(b, 6.0)])])


CASES = {
    "none": (lambda b, h: h, ("identity", EXACT, True)),
    "relu": (lambda b, h: b.relu(h), ("relu", EXACT, True)),
    "relu then reshape": (
        lambda b, h: b.node("Reshape", [b.relu(h), b.ints([3, 4])]),
        ("relu", EXACT, True),
    ),
    "leaky 0.1": (lambda b, h: b.node("LeakyRelu", [h], alpha=0.1), ("leakyrelu", EXACT, True)),
    "leaky 1.5": (lambda b, h: b.node("LeakyRelu", [h], alpha=1.5), ("leakyrelu", NOT_GUARANTEED, True)),
    "prelu": (lambda b, h: b.node("PRelu", [h, b.const(np.full(4, 0.25))]), ("prelu", EXACT, True)),
    "tanh": (lambda b, h: b.node("Tanh", [h]), ("tanh", EXACT, False)),
    "sigmoid": (lambda b, h: b.node("Sigmoid", [h]), ("sigmoid", EXACT, False)),
    "relu6": (lambda b, h: b.node("Clip", [h, _scalar(b, 0.0), _scalar(b, 6.0)]), ("clip", EXACT, False)),
    "hardswish op": (lambda b, h: b.node("HardSwish", [h]), ("hardswish", NOT_GUARANTEED, False)),
    "silu": (_silu, ("silu", NOT_GUARANTEED, False)),
    "gelu (erf)": (_gelu, ("gelu", NOT_GUARANTEED, False)),
    "hardswish (decomposed)": (_hardswish, ("hardswish", NOT_GUARANTEED, False)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_activation_classes(case):
    make, expected = CASES[case]
    assert _between(make) == expected


def test_gating_by_another_layer_has_no_bound():
    b = Builder(seed=22)
    x = b.input("x", [3, 6])
    h = b.relu(b.gemm(x, 6, 4, trans_b=1, name="fc1"))
    gate = b.node("Sigmoid", [b.gemm(x, 6, 4, trans_b=1, name="gate")])
    b.output(b.gemm(b.node("Mul", [h, gate]), 4, 2, name="fc2"))
    index = GraphIndex.build(b.model())
    act = group_activation(index, group_of(analyze(index), "fc1"))
    assert act.bound == UNKNOWN and not act.homogeneous and "gated" in act.reason


def test_residual_sum_is_linear():
    b = Builder(seed=23)
    x = b.input("x", [2, 4, 5, 5])
    y = b.relu(b.conv(x, 4, 4, name="ca"))
    z = b.relu(b.node("Add", [b.conv(y, 4, 4, name="cb"), y]))
    b.output(b.conv(z, 4, 2, name="cc"))
    index = GraphIndex.build(b.model())
    act = group_activation(index, group_of(analyze(index), "ca"))
    assert (act.label, act.bound, act.homogeneous) == ("relu", EXACT, True)
