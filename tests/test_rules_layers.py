"""Golden tests of the layer rules (analysis/ops_layers.py): Conv, ConvTranspose, Gemm, MatMul.

Each test builds a tiny graph, asserts the exact groups (producers, consumers, sizes, frozen reasons)
and, where channels are free, that the physical shrink equals masking in onnxruntime.
"""

from __future__ import annotations

import numpy as np
import pytest
from graphs import Builder, G, assert_groups, group_of, labels_of, run_analysis, shrink_matches_mask

from onnxprune import PruneOptions, prune
from onnxprune.analysis.rewrites import ConvGroups

OUT = "reaches graph output '{}'"


@pytest.mark.parametrize("spatial", [(7,), (5, 5), (3, 4, 4)], ids=["conv1d", "conv2d", "conv3d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv_chain(spatial, bias):
    b = Builder()
    x = b.input("x", ["N", 3, *spatial])
    k = (3,) * len(spatial)
    y = b.conv(x, 3, 4, k, bias=bias, name="c1")
    y = b.conv(b.relu(y), 4, 5, (1,) * len(spatial), bias=bias, name="c2")
    b.output(y)
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["c2"], 4), G(["c2"], [], 5, frozen=OUT.format(y)))
    c1, c2 = labels_of(a, "c1.w", 0), labels_of(a, "c2.w", 0)
    assert labels_of(a, "c2.w", 1) == c1 and len(set(c1)) == 4 and not set(c1) & set(c2)
    assert ("c1.b" in a.const_labels) == bias
    if bias:
        assert labels_of(a, "c1.b", 0) == c1
    new, removed = shrink_matches_mask(model)
    assert removed and new.graph.initializer[0].dims[0] < 4


def test_grouped_conv_ties_inputs_and_outputs_of_each_group():
    b = Builder()
    x = b.input("x", ["N", 3, 5, 5])
    y = b.relu(b.conv(x, 3, 4, 3, name="c1"))
    y = b.relu(b.conv(y, 4, 6, 3, group=2, name="g"))
    b.output(b.conv(y, 6, 3, 1, name="c3"))
    model = b.model()
    a = run_analysis(model)
    # one channel per conv group: 2 input atoms of c1 and 3 output atoms of g
    assert_groups(a, G(["c1", "g"], ["c3"], 2), G(["c3"], [], 3, frozen=OUT.format("c3_out")))
    c1 = labels_of(a, "c1.w", 0)
    assert c1[0] == c1[1] != c1[2] == c1[3]
    assert labels_of(a, "g.w", 0) == [c1[0]] * 3 + [c1[2]] * 3
    assert ConvGroups("g", "g.w", 2) in a.rewrites
    new, _ = shrink_matches_mask(model, removed={c1[0]})
    group = next(n for n in new.graph.node if n.name == "g").attribute
    assert [att.i for att in group if att.name == "group"] == [1]


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv(multiplier):
    b = Builder()
    x = b.input("x", ["N", 2, 5, 5])
    y = b.relu(b.conv(x, 2, 4, 1, name="c1"))
    y = b.relu(b.conv(y, 4, 4 * multiplier, 3, group=4, name="dw"))
    b.output(b.conv(y, 4 * multiplier, 3, 1, name="c3"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1", "dw"], ["c3"], 4), G(["c3"], [], 3, frozen=OUT.format("c3_out")))
    assert labels_of(a, "dw.w", 0) == np.repeat(labels_of(a, "c1.w", 0), multiplier).tolist()
    shrink_matches_mask(model, seed=multiplier)


def test_grouped_conv_on_graph_input_is_frozen():
    b = Builder()
    x = b.input("x", ["N", 4, 5, 5])
    y = b.relu(b.conv(x, 4, 4, 3, group=2, name="g"))
    b.output(b.conv(y, 4, 3, 1, name="c2"))
    a = run_analysis(b.model())
    assert_groups(
        a,
        G(["g"], ["c2"], 2, frozen="grouped Conv 'g' reads the graph input"),
        G(["c2"], [], 3, frozen=OUT.format("c2_out")),
    )


def test_conv_transpose():
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    y = b.relu(b.conv(x, 3, 4, 3, name="c1"))
    w = b.rand((4, 5, 2, 2), "ct.w")
    y = b.relu(b.node("ConvTranspose", [y, w, b.rand((5,), "ct.b")], name="ct", strides=[2, 2]))
    b.output(b.conv(y, 5, 2, 1, name="c3"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["ct"], 4), G(["ct"], ["c3"], 5), G(["c3"], [], 2, frozen=OUT.format("c3_out")))
    assert labels_of(a, "ct.w", 0) == labels_of(a, "c1.w", 0)
    assert labels_of(a, "ct.w", 1) == labels_of(a, "ct.b", 0) == labels_of(a, "c3.w", 1)
    shrink_matches_mask(model)


def test_grouped_conv_transpose_freezes_its_input():
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    y = b.relu(b.conv(x, 3, 4, 3, name="c1"))
    b.output(b.node("ConvTranspose", [y, b.rand((4, 2, 2, 2), "ct.w")], name="ct", group=2))
    a = run_analysis(b.model())
    assert_groups(a, G(["c1"], [], 4, frozen="ConvTranspose 'ct': grouped ConvTranspose has no rule"))


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_chain(trans_b):
    b = Builder()
    x = b.input("x", ["N", 6])
    y = b.relu(b.gemm(x, 6, 5, trans_b, name="g1"))
    b.output(b.gemm(y, 5, 4, trans_b, name="g2"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["g1"], ["g2"], 5), G(["g2"], [], 4, frozen=OUT.format("g2_out")))
    out_axis, in_axis = (0, 1) if trans_b else (1, 0)
    assert labels_of(a, "g2.w", in_axis) == labels_of(a, "g1.w", out_axis) == labels_of(a, "g1.b", 0)
    assert a.groups[0].producers[0].axis == out_axis
    assert a.groups[0].consumers[0].axis == in_axis
    shrink_matches_mask(model)


def test_gemm_trans_a_reads_channels_on_axis_0():
    b = Builder()
    x = b.input("x", [3, 6])
    y = b.relu(b.gemm(x, 6, 5, name="g1"))  # [3, 5]
    y = b.node("Transpose", [y], perm=[1, 0])  # [5, 3]
    b.output(b.gemm(y, 5, 4, name="g2", transA=1))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["g1"], ["g2"], 5), G(["g2"], [], 4, frozen=OUT.format("g2_out")))
    shrink_matches_mask(model)


def test_gemm_trans_a_on_channel_axis_is_frozen():
    b = Builder()
    x = b.input("x", [5, 6])
    y = b.relu(b.gemm(x, 6, 5, name="g1"))  # [5, 5]: A^T puts the channels on the contracted rows
    b.output(b.gemm(y, 5, 4, name="g2", transA=1))
    a = run_analysis(b.model())
    reason = "Gemm 'g2': input A carries channels on an axis the layer mixes"
    # g2 had created its own atoms (and labeled its weight) before the rule gave up: frozen too
    assert_groups(a, G(["g1"], [], 5, frozen=reason), G(["g2"], [], 4, frozen=reason))


def test_gemm_alpha_beta():
    b = Builder()
    x = b.input("x", ["N", 6])
    y = b.relu(b.gemm(x, 6, 5, 1, name="g1", alpha=0.5, beta=2.0))
    b.output(b.gemm(y, 5, 4, 0, name="g2", alpha=1.5, beta=0.25))
    model = b.model()
    assert_groups(run_analysis(model), G(["g1"], ["g2"], 5), G(["g2"], [], 4, frozen=OUT.format("g2_out")))
    shrink_matches_mask(model)


@pytest.mark.parametrize("shape", [(5,), (1, 5), (1,), ()], ids=["n", "1xn", "one", "scalar"])
def test_gemm_bias_shapes(shape):
    b = Builder()
    x = b.input("x", [3, 6])
    bias = b.const(np.arange(1, 1 + int(np.prod(shape))).reshape(shape) * 0.1, "g1.c")
    y = b.relu(b.gemm(x, 6, 5, bias=bias, name="g1"))
    b.output(b.gemm(y, 5, 2, name="g2"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["g1"], ["g2"], 5), G(["g2"], [], 2, frozen=OUT.format("g2_out")))
    assert ("g1.c" in a.const_labels) == (shape in [(5,), (1, 5)])
    # ProducerRole.bias names only a bias sliced on axis 0 (what methods may rely on)
    assert group_of(a, "g1").producers[0].bias == ("g1.c" if shape == (5,) else None)
    shrink_matches_mask(model)
    result = prune(model, "magnitude", PruneOptions(ratio=0.5), providers="cpu")
    assert result.report["params_after"] < result.report["params_before"]


def test_gemm_full_bias_matrix_is_frozen():
    b = Builder()
    x = b.input("x", [3, 6])
    y = b.relu(b.gemm(x, 6, 5, bias=b.rand((3, 5), "g1.c"), name="g1"))
    b.output(b.gemm(y, 5, 2, name="g2"))
    a = run_analysis(b.model())
    reason = "Gemm 'g1' has a bias C of shape (3, 5) that cannot be sliced"
    assert_groups(a, G(["g1"], ["g2"], 5, frozen=reason), G(["g2"], [], 2, frozen=OUT.format("g2_out")))


def test_gemm_with_run_time_b_is_frozen():
    b = Builder()
    x = b.input("x", ["N", 6])
    w = b.input("w", [5, 3])
    y = b.relu(b.gemm(x, 6, 5, name="g1"))
    b.output(b.node("Gemm", [y, w], name="g2"))
    a = run_analysis(b.model())
    assert_groups(a, G(["g1"], [], 5, frozen="Gemm 'g2': B is not a constant"))


def test_matmul_constant_weight_on_sequence():
    b = Builder()
    x = b.input("x", ["B", "T", 6])
    y = b.relu(b.matmul(x, 6, 5, name="m1"))
    b.output(b.matmul(y, 5, 4, name="m2"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["m1"], ["m2"], 5), G(["m2"], [], 4, frozen=OUT.format("m2.add_out")))
    assert labels_of(a, "m1.b", 0) == labels_of(a, "m1.w", 1) == labels_of(a, "m2.w", 0)
    shrink_matches_mask(model)


def test_matmul_between_activations_attention():
    """softmax(Q K^T) V: Q and K columns are contracted together (one group, no consumer weight);
    V's columns reach the output projection through the second product."""
    b = Builder()
    x = b.input("x", ["B", 5, 6])
    q, k, v = (b.matmul(x, 6, 4, name=n) for n in ("q", "k", "v"))
    scores = b.node("MatMul", [q, b.node("Transpose", [k], perm=[0, 2, 1])], name="qk")
    attn = b.node("Softmax", [b.node("Mul", [scores, b.const(np.array(0.5))])], axis=-1)
    ctx = b.node("MatMul", [attn, v], name="av")
    b.output(b.node("Add", [b.matmul(ctx, 4, 6, name="o"), x], name="res"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(
        a,
        G(["k", "q"], [], 4),
        G(["v"], ["o"], 4),
        G(["o"], [], 6, frozen="Add 'res' joins channels with positions that cannot be removed"),
    )
    assert labels_of(a, "q.w", 1) == labels_of(a, "k.w", 1)
    shrink_matches_mask(model)


def test_matmul_batched_constant_weight_is_frozen():
    b = Builder()
    x = b.input("x", [2, 3, 6])
    y = b.relu(b.matmul(x, 6, 5, bias=False, name="m1"))
    b.output(b.node("MatMul", [y, b.rand((2, 5, 3))], name="m2"))
    a = run_analysis(b.model())
    assert_groups(a, G(["m1"], [], 5, frozen="MatMul 'm2': constant operand of rank 3 (batched weights) has no rule"))


@pytest.mark.parametrize("op", ["BatchNormalization", "InstanceNormalization"])
def test_channel_norms(op):
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    y = b.conv(x, 3, 5, 3, name="c1")
    if op == "BatchNormalization":
        y = b.bn(y, 5, name="n")
    else:
        y = b.node(op, [y, b.const(b.rng.uniform(0.5, 1.5, 5), "n.scale"), b.rand((5,), "n.bias")], name="n")
    b.output(b.conv(b.relu(y), 5, 2, 1, name="c2"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["c2"], 5), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    params = [name for name in a.const_labels if name.startswith("n.")]
    assert len(params) == (4 if op == "BatchNormalization" else 2)
    assert all(labels_of(a, name, 0) == labels_of(a, "c1.w", 0) for name in params)
    shrink_matches_mask(model)
