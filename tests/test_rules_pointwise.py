"""Golden tests of the pointwise rules (analysis/ops_pointwise.py): activations, decomposed activations,
per-channel constants, residual joins, squeeze-excitation, BatchNorm-like parameters."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import Builder, G, assert_groups, labels_of, run_analysis, shrink_matches_mask

from onnxprune.analysis.ops import _UNARY

OUT = "reaches graph output '{}'"


def _sandwich(build_middle, opset: int = 17, channels: int = 5, seed: int = 0):
    """x -> c1 (3->C) -> middle -> c2 (C->2) -> output; returns (model, analysis)."""
    b = Builder(opset=opset, seed=seed)
    x = b.input("x", ["N", 3, 4, 4])
    y = build_middle(b, b.conv(x, 3, channels, 3, name="c1"))
    b.output(b.conv(y, channels, 2, 1, name="c2"))
    model = b.model(ir_version=8 if opset <= 17 else 10)
    return model, run_analysis(model)


def _assert_chain(a, channels: int = 5):
    assert_groups(a, G(["c1"], ["c2"], channels), G(["c2"], [], 2, frozen=OUT.format("c2_out")))


UNARY = [
    ("Relu", {}),
    ("LeakyRelu", {"alpha": 0.1}),
    ("Elu", {}),
    ("Selu", {}),
    ("Sigmoid", {}),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
    ("HardSwish", {}),
    ("Tanh", {}),
    ("Softplus", {}),
    ("Softsign", {}),
    ("Erf", {}),
    ("Abs", {}),
    ("Neg", {}),
    ("Identity", {}),
    ("Dropout", {}),
    ("Cast", {"to": 1}),
]


@pytest.mark.parametrize("op,attrs", UNARY, ids=[op for op, _ in UNARY])
def test_unary_activation_is_transparent(op, attrs):
    model, a = _sandwich(lambda b, y: b.node(op, [y], **attrs))
    _assert_chain(a)
    shrink_matches_mask(model)


#: ops of the table's unary rule that map float to float (Not/IsNaN/IsInf give booleans; Gelu and
#: Mish need newer opsets and have their own tests; Relu6 is not an ONNX op)
_NOT_FLOAT_TO_FLOAT = {"Not", "IsNaN", "IsInf", "Relu6", "Gelu", "Mish", "CastLike", "Cast"}


@pytest.mark.parametrize("op", sorted(set(_UNARY) - _NOT_FLOAT_TO_FLOAT))
def test_every_float_unary_op_of_the_table(op):
    """Each op on a positive input (so Log, Sqrt, Reciprocal stay finite) is transparent."""

    def middle(b, y):
        return b.node(op, [b.node("Add", [b.node("Abs", [y]), b.const(np.array(1.0))])])

    model, a = _sandwich(middle)
    _assert_chain(a)
    shrink_matches_mask(model)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum", "Mean"])
def test_float_joins_of_two_branches(op):
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    left = b.node("Relu", [b.conv(x, 3, 4, 3, name="c1")])
    right = b.node("Add", [b.node("Abs", [b.conv(x, 3, 4, 1, name="c2")]), b.const(np.array(1.0))])
    b.output(b.conv(b.node(op, [left, right]), 4, 2, 1, name="c3"))
    model = b.model()
    assert_groups(run_analysis(model), G(["c1", "c2"], ["c3"], 4), G(["c3"], [], 2, frozen=OUT.format("c3_out")))
    shrink_matches_mask(model)


def test_mish_opset18():
    model, a = _sandwich(lambda b, y: b.node("Mish", [y]), opset=18)
    _assert_chain(a)
    shrink_matches_mask(model)


def test_gelu_op_opset20():
    model, a = _sandwich(lambda b, y: b.node("Gelu", [y], approximate="tanh"), opset=20)
    _assert_chain(a)
    shrink_matches_mask(model)


def test_dropout_with_ratio_and_mask_output():
    def middle(b, y):
        out, _mask = b.node("Dropout", [y, b.const(np.array(0.3, np.float32))], n_out=2)
        return out

    model, a = _sandwich(middle)
    _assert_chain(a)
    shrink_matches_mask(model)


def test_clip_with_constant_bounds():
    model, a = _sandwich(lambda b, y: b.node("Clip", [y, b.const(np.array(0.0)), b.const(np.array(6.0))]))
    _assert_chain(a)
    shrink_matches_mask(model)


def test_cast_round_trip_and_castlike():
    def middle(b, y):
        y = b.node("Cast", [b.node("Cast", [y], to=11)], to=1)
        return b.node("CastLike", [y, b.const(np.zeros(1))])

    model, a = _sandwich(middle)
    _assert_chain(a)
    shrink_matches_mask(model)


def test_clip_with_channel_bound_is_frozen():
    model, a = _sandwich(lambda b, y: b.node("Clip", [y, b.node("Relu", [y], name="r")], name="clip"))
    reason = "Clip 'clip': parameter input 'r_out' carries channels"
    assert_groups(a, G(["c1"], [], 5, frozen=reason), G(["c2"], [], 2, frozen=OUT.format("c2_out")))


@pytest.mark.parametrize("shape", [(5, 1, 1), (1, 5, 1, 1)], ids=["C11", "1C11"])
def test_prelu_per_channel_slope(shape):
    model, a = _sandwich(lambda b, y: b.node("PRelu", [y, b.const(np.linspace(0.1, 0.5, 5).reshape(shape), "slope")]))
    _assert_chain(a)
    axis = len(shape) - 3
    assert labels_of(a, "slope", axis) == labels_of(a, "c1.w", 0)
    shrink_matches_mask(model)


def test_prelu_shared_scalar_slope():
    model, a = _sandwich(lambda b, y: b.node("PRelu", [y, b.const(np.array([0.2]), "slope")]))
    _assert_chain(a)
    assert "slope" not in a.const_labels
    shrink_matches_mask(model)


def test_gelu_as_erf_chain():
    def middle(b, y):
        erf = b.node("Erf", [b.node("Div", [y, b.const(np.array(np.sqrt(2.0)))])])
        half = b.node("Mul", [y, b.node("Add", [erf, b.const(np.array(1.0))])])
        return b.node("Mul", [half, b.const(np.array(0.5))])

    model, a = _sandwich(middle)
    _assert_chain(a)
    assert set(a.const_labels) == {"c1.w", "c1.b", "c2.w", "c2.b"}
    shrink_matches_mask(model)


def test_silu_as_sigmoid_times_input():
    model, a = _sandwich(lambda b, y: b.node("Mul", [y, b.node("Sigmoid", [y])]))
    _assert_chain(a)
    shrink_matches_mask(model)


def test_hardswish_decomposed():
    def middle(b, y):
        gate = b.node(
            "Clip", [b.node("Add", [y, b.const(np.array(3.0))]), b.const(np.array(0.0)), b.const(np.array(6.0))]
        )
        return b.node("Mul", [y, b.node("Div", [gate, b.const(np.array(6.0))])])

    model, a = _sandwich(middle)
    _assert_chain(a)
    shrink_matches_mask(model)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shape", [(5, 1, 1), (1, 5, 1, 1), ()], ids=["C11", "1C11", "scalar"])
def test_elementwise_with_constant(op, shape):
    value = np.linspace(0.5, 1.5, int(np.prod(shape))).reshape(shape)
    model, a = _sandwich(lambda b, y: b.node(op, [y, b.const(value, "k")]))
    _assert_chain(a)
    if shape:
        assert labels_of(a, "k", len(shape) - 3) == labels_of(a, "c1.w", 0)
    else:
        assert "k" not in a.const_labels
    shrink_matches_mask(model)


def test_constant_on_the_left_of_a_join():
    model, a = _sandwich(lambda b, y: b.node("Sub", [b.const(np.ones((5, 1, 1)), "k"), y]))
    _assert_chain(a)
    assert labels_of(a, "k", 0) == labels_of(a, "c1.w", 0)
    shrink_matches_mask(model)


def test_constant_varying_on_spatial_axes_is_not_sliced():
    model, a = _sandwich(lambda b, y: b.node("Add", [y, b.rand((1, 4, 4), "k")]))
    _assert_chain(a)
    assert "k" not in a.const_labels
    shrink_matches_mask(model)


@pytest.mark.parametrize("layer", ["gemm", "matmul"])
def test_per_channel_vector_constant_on_last_axis(layer):
    b = Builder()
    if layer == "gemm":
        x = b.input("x", ["N", 6])
        y = b.gemm(x, 6, 5, bias=False, name="p1")
    else:
        x = b.input("x", ["B", "T", 6])
        y = b.matmul(x, 6, 5, bias=False, name="p1")
    y = b.node("Mul", [b.node("Add", [y, b.rand((5,), "shift")]), b.const(np.linspace(1, 2, 5), "scale")])
    out = b.gemm(y, 5, 3, name="p2") if layer == "gemm" else b.matmul(y, 5, 3, bias=False, name="p2")
    b.output(out)
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["p1"], ["p2"], 5), G(["p2"], [], 3, frozen=OUT.format(out)))
    assert labels_of(a, "shift", 0) == labels_of(a, "scale", 0) == labels_of(a, "p1.w", 1)
    shrink_matches_mask(model)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Max", "Min"])
def test_residual_join_ties_branches(op):
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    left = b.conv(x, 3, 4, 3, name="c1")
    right = b.conv(x, 3, 4, 1, name="c2")
    b.output(b.conv(b.node(op, [left, right]), 4, 2, 1, name="c3"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1", "c2"], ["c3"], 4), G(["c3"], [], 2, frozen=OUT.format("c3_out")))
    assert labels_of(a, "c1.w", 0) == labels_of(a, "c2.w", 0) == labels_of(a, "c3.w", 1)
    shrink_matches_mask(model)


def test_identity_residual_block():
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    stem = b.relu(b.conv(x, 3, 4, 3, name="stem"))
    y = b.relu(b.conv(stem, 4, 6, 3, name="a"))
    y = b.conv(y, 6, 4, 3, name="b")
    y = b.relu(b.node("Add", [y, stem]))
    b.output(b.conv(y, 4, 2, 1, name="head"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(
        a,
        G(["b", "stem"], ["a", "head"], 4),
        G(["a"], ["b"], 6),
        G(["head"], [], 2, frozen=OUT.format("head_out")),
    )
    shrink_matches_mask(model)


def test_join_with_graph_input_is_frozen():
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    y = b.input("y", ["N", 4, 4, 4])
    out = b.node("Add", [b.conv(x, 3, 4, 3, name="c1"), y], name="add")
    b.output(b.conv(out, 4, 2, 1, name="c2"))
    a = run_analysis(b.model())
    reason = "Add 'add' joins channels with positions that cannot be removed"
    assert_groups(a, G(["c1"], ["c2"], 4, frozen=reason), G(["c2"], [], 2, frozen=OUT.format("c2_out")))


def test_join_with_broadcast_run_time_tensor_keeps_channels():
    """Adding a run-time [N,1,H,W] map (spatial attention) does not read channels."""
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    y = b.conv(x, 3, 4, 3, name="c1")
    gate = b.node("Sigmoid", [b.node("ReduceMean", [x], axes=[1], keepdims=1)])
    b.output(b.conv(b.node("Mul", [y, gate]), 4, 2, 1, name="c2"))
    model = b.model()
    assert_groups(run_analysis(model), G(["c1"], ["c2"], 4), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    shrink_matches_mask(model)


@pytest.mark.parametrize("gate", ["Sigmoid", "HardSigmoid"])
def test_squeeze_excitation(gate):
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    y = b.relu(b.conv(x, 3, 6, 3, name="c1"))
    s = b.node("GlobalAveragePool", [y])
    s = b.node(gate, [b.conv(b.relu(b.conv(s, 6, 2, 1, name="se1")), 2, 6, 1, name="se2")])
    y = b.node("Mul", [y, s])
    b.output(b.conv(y, 6, 2, 1, name="c3"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(
        a,
        G(["c1", "se2"], ["c3", "se1"], 6),
        G(["se1"], ["se2"], 2),
        G(["c3"], [], 2, frozen=OUT.format("c3_out")),
    )
    shrink_matches_mask(model)


def test_spatial_gate_from_a_one_channel_conv():
    """Mul of [N,C,H,W] by a [N,1,H,W] gate computed by a 1-channel conv (spatial attention): the gate
    scales every channel, so the trunk's channels stay free and the gate's own channel is frozen."""
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    y = b.relu(b.conv(x, 3, 4, 3, name="c1"))
    gate = b.node("Sigmoid", [b.conv(y, 4, 1, 3, name="sa")], name="sig")
    b.output(b.conv(b.node("Mul", [y, gate], name="gate"), 4, 2, 1, name="c2"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(
        a,
        G(["c1"], ["c2", "sa"], 4),
        G(["sa"], [], 1, frozen="Mul 'gate' broadcasts 'sig_out' over the channels of another input"),
        G(["c2"], [], 2, frozen=OUT.format("c2_out")),
    )
    shrink_matches_mask(model)


def test_shared_constant_ties_the_channels_it_is_added_to():
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    k = b.rand((4, 1, 1), "shared")
    left = b.node("Add", [b.conv(x, 3, 4, 3, name="c1"), k])
    right = b.node("Add", [b.conv(x, 3, 4, 1, name="c2"), k])
    b.output(b.conv(b.node("Concat", [left, right], axis=1), 8, 2, 1, name="c3"))
    model = b.model()
    a = run_analysis(model)
    # the shared [C,1,1] constant can only be sliced once: channel i of c1 and of c2 go together
    assert_groups(a, G(["c1", "c2"], ["c3"], 4), G(["c3"], [], 2, frozen=OUT.format("c3_out")))
    shrink_matches_mask(model)


def test_shared_conv_weight_is_one_producer_group():
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    w = b.rand((4, 3, 1, 1), "w")
    left = b.node("Conv", [x, w], name="c1")
    right = b.node("Conv", [b.node("Neg", [x]), w], name="c2")
    b.output(b.conv(b.node("Concat", [left, right], axis=1), 8, 2, 1, name="c3"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1", "c2"], ["c3"], 4), G(["c3"], [], 2, frozen=OUT.format("c3_out")))
    shrink_matches_mask(model)
