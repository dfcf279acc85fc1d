"""Gated FFNs (SwiGLU, GeGLU: Mul(act(x W_gate), x W_up) W_down) prune one hidden neuron as one group of
gate and up columns; RMSNorm, fused or decomposed (Pow, ReduceMean, Add, Sqrt, Div, Mul), freezes the
channels of its normalized axis and passes the others. Both come from existing rules: the Mul join ties
gate and up position by position, and ReduceMean blocks the axis it reduces."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import Builder, G, assert_groups, run_analysis, shrink_matches_mask

B, S, D, F = 3, 4, 8, 12
OUT = "reaches graph output '{}'"


def _activation(b: Builder, kind: str, x: str) -> str:
    if kind == "swiglu":  # SiLU as exported: x * sigmoid(x)
        return b.node("Mul", [x, b.node("Sigmoid", [x])])
    if kind == "geglu":  # erf GELU as exported: 0.5 x (1 + erf(x / sqrt 2))
        erf = b.node("Erf", [b.node("Div", [x, b.const(np.array(np.sqrt(2.0)))])])
        return b.node("Mul", [b.node("Mul", [x, b.node("Add", [erf, b.const(np.array(1.0))])]), b.const(np.array(0.5))])
    return b.node("Gelu", [x], approximate="tanh")


def _rms_norm(b: Builder, x: str, width: int, axis: int = -1) -> str:
    """x / sqrt(mean(x^2) + eps) * scale, as torch exports LlamaRMSNorm."""
    mean = b.node(
        "ReduceMean", [b.node("Pow", [x, b.const(np.array(2.0))]), b.ints([axis])], name="rms_mean", keepdims=1
    )
    root = b.node("Sqrt", [b.node("Add", [mean, b.const(np.array(1e-6))])])
    return b.node("Mul", [b.node("Div", [x, root]), b.const(np.linspace(0.5, 1.5, width))])


@pytest.mark.parametrize("kind", ["swiglu", "geglu", "gelu_tanh"])
def test_gated_ffn_is_one_group_per_hidden_neuron(kind):
    b = Builder(opset=20 if kind == "gelu_tanh" else 18)
    x = b.input("x", [B, S, D])
    h = _rms_norm(b, b.node("MatMul", [x, b.rand((D, D), "w_in")], name="inp"), D)
    gate = _activation(b, kind, b.node("MatMul", [h, b.rand((D, F), "w_gate")], name="gate"))
    up = b.node("MatMul", [h, b.rand((D, F), "w_up")], name="up")
    y = b.node("MatMul", [b.node("Mul", [gate, up]), b.rand((F, D), "w_down")], name="down")
    b.output(b.node("Add", [y, x], name="residual"), [B, S, D])
    model = b.model(ir_version=9 if kind == "gelu_tanh" else 8)
    a = run_analysis(model)
    assert_groups(
        a,
        G(["gate", "up"], ["down"], F),
        G(["inp"], ["gate", "up"], D, frozen="ReduceMean 'rms_mean': ReduceMean reduces over labeled axis [2]"),
        G(["down"], [], D, frozen="Add 'residual' joins channels with positions that cannot be removed"),
    )
    assert a.const_labels["w_gate"][1].tolist() == a.const_labels["w_up"][1].tolist()
    shrink_matches_mask(model)


def test_rms_norm_over_the_last_axis_passes_the_channel_axis():
    """Decomposed RMSNorm over W of a [B, C, H, W] map: the mean square is per channel, so C stays free."""
    b = Builder(opset=18)
    x = b.input("x", [B, 3, 4, 4])
    y = _rms_norm(b, b.conv(x, 3, 6, 1, name="c1"), 4)
    b.output(b.conv(y, 6, 2, 1, name="c2"), [B, 2, 4, 4])
    model = b.model()
    assert_groups(run_analysis(model), G(["c1"], ["c2"], 6), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    shrink_matches_mask(model)
