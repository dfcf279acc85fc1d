"""Golden tests of the blockers: what freezes channels, with which reason (analysis/propagate.py and
the rules that raise Unsupported). A frozen group must stay frozen; its neighbours stay free."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import Builder, G, assert_groups, run_analysis, shrink_matches_mask
from onnx import TensorProto, helper

from onnxprune.passes import PassManager
from onnxprune.passes.unshare import UNSHARE_CONSTANTS
from onnxprune.pipeline import inspect_model

OUT = "reaches graph output '{}'"


def _stem(b: Builder, channels: int = 4, shape=("N", 3, 4, 4)):
    x = b.input("x", list(shape))
    return b.relu(b.conv(x, shape[1], channels, 3 if len(shape) == 4 else 1, name="c1"))


def _chain_through(op: str, opset: int = 17, name: str = "blk", **attrs):
    """c1 -> op -> c2 -> output; returns the analysis."""
    b = Builder(opset=opset)
    y = b.node(op, [_stem(b)], name=name, **attrs)
    b.output(b.conv(y, 4, 2, 1, name="c2"))
    return run_analysis(b.model(ir_version=8 if opset <= 17 else 9))


def test_graph_output_freezes_its_channels_but_not_the_next_layer():
    b = Builder()
    y = b.output(_stem(b))
    y = b.relu(b.conv(y, 4, 5, 1, name="c2"))
    b.output(b.conv(y, 5, 2, 1, name="c3"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(
        a,
        G(["c1"], ["c2"], 4, frozen=OUT.format("relu_1_out")),
        G(["c2"], ["c3"], 5),
        G(["c3"], [], 2, frozen=OUT.format("c3_out")),
    )
    shrink_matches_mask(model)


@pytest.mark.parametrize(
    "op,attrs,opset,reason",
    [
        ("Softmax", {"axis": 1}, 17, "Softmax 'blk': Softmax normalizes over labeled axis [1]"),
        ("LogSoftmax", {"axis": -3}, 17, "LogSoftmax 'blk': LogSoftmax normalizes over labeled axis [1]"),
        ("ReduceMean", {"axes": [1], "keepdims": 1}, 17, "ReduceMean 'blk': ReduceMean reduces over labeled axis [1]"),
        ("ReduceMax", {"keepdims": 1}, 17, "ReduceMax 'blk': ReduceMax reduces over labeled axis [1]"),
        ("LpNormalization", {"axis": 1}, 17, "LpNormalization 'blk': LpNormalization normalizes over labeled axis [1]"),
        ("CumSum", {}, 17, "CumSum 'blk' has no rule"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v else None,
)
def test_ops_over_the_channel_axis_freeze(op, attrs, opset, reason):
    if op == "CumSum":
        b = Builder()
        y = b.node(op, [_stem(b), b.ints(2)], name="blk")
        b.output(b.conv(y, 4, 2, 1, name="c2"))
        a = run_analysis(b.model())
    else:
        a = _chain_through(op, opset, **attrs)
    assert_groups(a, G(["c1"], [], 4, frozen=reason), G(["c2"], [], 2, frozen=OUT.format("c2_out")))


def test_layer_norm_over_features_freezes():
    b = Builder()
    x = b.input("x", ["B", "T", 6])
    y = b.matmul(x, 6, 5, name="m1")
    y = b.node("LayerNormalization", [y, b.const(np.ones(5)), b.const(np.zeros(5))], name="ln", axis=-1)
    b.output(b.matmul(y, 5, 3, name="m2"))
    a = run_analysis(b.model())
    reason = f"LayerNormalization 'ln': {LN_REASON.format('m1.add_out')}"
    assert_groups(a, G(["m1"], [], 5, frozen=reason), G(["m2"], [], 3, frozen=OUT.format("m2.add_out")))


LN_REASON = (
    "normalizes '{}' over its channel axis 2: removing a channel changes the mean and variance every other "
    "channel is normalized by (channels of the branches that do not reach it still prune)"
)


def test_layer_norm_blocks_only_the_channels_that_reach_it():
    """m1 feeds a LayerNorm and a direct consumer m3: m1's channels freeze (the reason names the LayerNorm
    and the tensor), the FFN after the LayerNorm (m2) and the branch after m3 still prune."""
    b = Builder()
    x = b.input("x", ["B", "T", 6])
    y = b.matmul(x, 6, 5, name="m1")
    normed = b.node("LayerNormalization", [y, b.const(np.ones(5)), b.const(np.zeros(5))], name="ln", axis=-1)
    ffn = b.matmul(b.relu(b.matmul(normed, 5, 8, name="m2")), 8, 3, name="m4")
    side = b.matmul(b.relu(b.matmul(y, 5, 7, name="m3")), 7, 3, name="m5")
    b.output(b.node("Add", [ffn, side]))
    model = b.model()
    a = run_analysis(model)
    out = OUT.format(model.graph.output[0].name)
    assert_groups(
        a,
        G(["m1"], ["m3"], 5, frozen=f"LayerNormalization 'ln': {LN_REASON.format('m1.add_out')}"),
        G(["m2"], ["m4"], 8),
        G(["m3"], ["m5"], 7),
        G(["m4", "m5"], [], 3, frozen=out),
    )
    shrink_matches_mask(model)


def test_group_norm_freezes():
    b = Builder(opset=18)
    y = _stem(b)
    y = b.node("GroupNormalization", [y, b.const(np.ones(2)), b.const(np.zeros(2))], name="gn", num_groups=2)
    b.output(y, shape=["N", 4, 4, 4])  # ONNX shape inference does not type this function op's output
    a = run_analysis(b.model(ir_version=9))
    reason = "GroupNormalization 'gn': GroupNormalization normalizes over labeled axis [1]"
    assert_groups(a, G(["c1"], [], 4, frozen=reason))


def test_custom_domain_op_freezes():
    b = Builder()
    b.extra_opsets.append(helper.make_opsetid("com.example", 1))
    y = b.node("Relu", [_stem(b)], name="foo", domain="com.example")  # same name as a known op, other domain
    b.output(b.conv(y, 4, 2, 1, name="c2"), shape=["N", 2, 2, 2])
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], [], 4, frozen="Relu 'foo' has no rule"), G(["c2"], [], 2, frozen=OUT.format("c2_out")))


def test_subgraph_read_freezes():
    """A tensor read inside an If branch (outer-scope reference) cannot change shape."""
    b = Builder()
    y = _stem(b)
    then_out = helper.make_tensor_value_info("then_y", TensorProto.FLOAT, None)
    else_out = helper.make_tensor_value_info("else_y", TensorProto.FLOAT, None)
    then_graph = helper.make_graph([helper.make_node("Relu", [y], ["then_y"])], "then", [], [then_out])
    else_graph = helper.make_graph([helper.make_node("Neg", [y], ["else_y"])], "else", [], [else_out])
    cond = b.input("cond", [], TensorProto.BOOL)
    chosen = b.node("If", [cond], name="if", then_branch=then_graph, else_branch=else_graph)
    b.output(chosen, shape=["N", 4, 2, 2])
    b.output(b.conv(y, 4, 2, 1, name="c2"))
    a = run_analysis(b.model())
    assert_groups(
        a,
        G(["c1"], ["c2"], 4, frozen=f"'{y}' is read inside a subgraph (If/Loop/Scan)"),
        G(["c2"], [], 2, frozen=OUT.format("c2_out")),
    )


def test_loop_carrying_channels_freezes():
    b = Builder()
    y = _stem(b)
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Relu", ["v_in"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    looped = b.node("Loop", [b.ints(2), "", y], name="lp", body=body)
    b.output(b.conv(looped, 4, 2, 1, name="c2"), shape=["N", 2, 2, 2])
    a = run_analysis(b.model())
    assert_groups(a, G(["c1"], [], 4, frozen="Loop 'lp' has a subgraph"), G(["c2"], [], 2, frozen=OUT.format("c2_out")))


def test_shared_initializer_read_by_a_node_that_cannot_slice_it():
    b = Builder()
    y = _stem(b)
    k = b.rand((4, 1, 1), "k")
    other = b.input("other", ["N", 4, 2, 2])
    b.output(b.node("Mul", [other, k], name="other_mul"))
    b.output(b.conv(b.node("Add", [y, k]), 4, 2, 1, name="c2"))
    model = b.model()
    a = run_analysis(model)
    reason = "initializer 'k' is also read by node 'other_mul', which cannot slice it"
    assert_groups(a, G(["c1"], ["c2"], 4, frozen=reason), G(["c2"], [], 2, frozen=OUT.format("c2_out")))


def test_run_time_conv_weight_freezes_the_input_channels():
    b = Builder()
    w = b.input("w", [2, 4, 1, 1])
    b.output(b.node("Conv", [_stem(b), w], name="c2"))
    a = run_analysis(b.model())
    assert_groups(a, G(["c1"], [], 4, frozen="Conv 'c2': weight 'w' is not a constant"))


def test_shape_constant_shared_by_two_reshapes_freezes():
    """One constant entry cannot take two new sizes: both reshaped tensors keep their channels."""
    b = Builder()
    x = b.input("x", ["N", 3, 3, 3])
    target = b.node("Concat", [b.ints([-1], "batch"), b.ints([36], "features")], axis=0)
    left = b.node("Reshape", [b.relu(b.conv(x, 3, 4, 3, name="c1")), target], name="rs1")
    right = b.node("Reshape", [b.relu(b.conv(x, 3, 4, 1, name="c2")), target], name="rs2")
    b.output(b.gemm(left, 36, 2, name="fa"))
    b.output(b.gemm(right, 36, 2, name="fb"))
    a = run_analysis(b.model())
    reason = "shape constant 'features'[0] sizes several tensors"
    assert_groups(
        a,
        G(["c1"], ["fa"], 4, frozen=reason),
        G(["c2"], ["fb"], 4, frozen=reason),
        G(["fa"], [], 2, frozen=OUT.format("fa_out")),
        G(["fb"], [], 2, frozen=OUT.format("fb_out")),
    )


def test_shape_constant_sizing_two_tensors_with_the_same_channels_is_rewritten_once():
    """One computed target shape read by two Reshapes of tensors that carry the same channels (an
    exporter's shared BroadcastTo shape): both take the same new size, so the entry is rewritten."""
    b = Builder()
    y = _stem(b, shape=("N", 3, 3, 3))
    target = b.node("Concat", [b.ints([-1], "batch"), b.ints([36], "features")], axis=0)
    left = b.node("Reshape", [y, target], name="rs1")
    right = b.node("Reshape", [b.node("Sigmoid", [y]), target], name="rs2")
    b.output(b.gemm(b.node("Add", [left, right]), 36, 2, name="fc"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["fc"], 4), G(["fc"], [], 2, frozen=OUT.format("fc_out")))
    shrink_matches_mask(model)


def _shared_features_target():
    """Reshape to Concat([-1], features) -> Gemm; `features` is also a graph output."""
    b = Builder()
    y = _stem(b, shape=("N", 3, 3, 3))
    features = b.ints([36], "features")
    target = b.node("Concat", [b.ints([-1]), features], axis=0)
    y = b.node("Reshape", [y, target], name="rs")
    b.output(b.gemm(y, 36, 2, name="fc"))
    b.output(b.node("Identity", [features]), shape=[1], elem_type=onnx.TensorProto.INT64)
    return b, target


def test_shape_constant_read_elsewhere_is_rewritten_in_a_private_copy():
    """The Concat that builds the target reads the shared constant: it gets its own copy, rewritten,
    and the other reader (a graph output here) keeps the original."""
    b, _ = _shared_features_target()
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["fc"], 4), G(["fc"], [], 2, frozen=OUT.format("fc_out")))
    shrink_matches_mask(model)


def test_shape_vector_reaching_another_op_freezes():
    """A target vector built by Concat from a shared constant, also read by an op that is not a shape
    input: a private copy of the constant in the Concat would change that op too."""
    b, target = _shared_features_target()
    b.output(b.node("Identity", [target]))
    a = run_analysis(b.model())
    reason = "shape constant 'features'[0] also reaches ops other than shape inputs"
    assert_groups(a, G(["c1"], ["fc"], 4, frozen=reason), G(["fc"], [], 2, frozen=OUT.format("fc_out")))


def test_frozen_model_still_shrinks_what_is_free():
    """A blocker in one branch leaves the other branch's groups free, and the shrink still matches."""
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    blocked = b.node("Softmax", [b.conv(x, 3, 4, 3, name="c1")], axis=1)
    free = b.relu(b.conv(x, 3, 5, 3, name="c2"))
    y = b.node("Concat", [blocked, free], axis=1)
    b.output(b.conv(y, 9, 2, 1, name="c3"))
    model = b.model()
    a = run_analysis(model)
    assert a.groups[0].frozen and [len(g.free) for g in a.groups] == [0, 5, 0]
    _, removed = shrink_matches_mask(model)
    assert removed and removed <= set(a.groups[1].free)
    onnx.checker.check_model(model, full_check=True)


def test_shared_shape_constant_is_copied_per_reader_before_analysis():
    """The prologue's unshare pass gives each reader of a small integer constant its own copy, so the
    shape constant read elsewhere no longer freezes, and the pruned model still matches the mask."""
    b = Builder()
    y = _stem(b, shape=("N", 3, 3, 3))
    features = b.ints([36], "features")
    y = b.node("Reshape", [y, b.node("Concat", [b.ints([-1]), features], axis=0)], name="rs")
    b.output(b.gemm(y, 36, 2, name="fc"))
    b.output(b.node("Identity", [features]), [1], TensorProto.INT64)
    model = PassManager([UNSHARE_CONSTANTS]).run(b.model())
    readers = [n.input[i] for n in model.graph.node for i, name in enumerate(n.input) if name.startswith("features")]
    assert len(set(readers)) == 2
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["fc"], 4), G(["fc"], [], 2, frozen=OUT.format("fc_out")))
    shrink_matches_mask(model)
    _, totals = inspect_model(b.model())
    assert totals["prunable_groups"] == 1
