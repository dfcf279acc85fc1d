"""Golden tests of the rules for ops that compute along axes (analysis/ops_axes.py): pooling and
reductions over spatial axes are transparent; over the channel axis they freeze (see test_blockers.py)."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import Builder, G, assert_groups, run_analysis, shrink_matches_mask

OUT = "reaches graph output '{}'"

POOLS = [
    ("MaxPool", {"kernel_shape": [2, 2]}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ("LpPool", {"kernel_shape": [2, 2], "p": 2}),
    ("GlobalAveragePool", {}),
    ("GlobalMaxPool", {}),
    ("GlobalLpPool", {}),
]


def _chain(middle, opset: int = 17):
    b = Builder(opset=opset)
    x = b.input("x", ["N", 3, 4, 4])
    y = middle(b, b.relu(b.conv(x, 3, 5, 3, name="c1")))
    b.output(b.conv(y, 5, 2, 1, name="c2"))
    model = b.model()
    analysis = run_analysis(model)
    return model, analysis


@pytest.mark.parametrize("op,attrs", POOLS, ids=[op for op, _ in POOLS])
def test_pooling_is_transparent(op, attrs):
    model, a = _chain(lambda b, y: b.node(op, [y], **attrs))
    assert_groups(a, G(["c1"], ["c2"], 5), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    shrink_matches_mask(model)


def test_maxpool_indices_output_freezes():
    def middle(b, y):
        values, indices = b.node("MaxPool", [y], n_out=2, name="pool", kernel_shape=[2, 2])
        b.output(indices)
        return values

    _, a = _chain(middle)
    reason = "MaxPool 'pool': the Indices output encodes channel offsets"
    assert_groups(a, G(["c1"], [], 5, frozen=reason), G(["c2"], [], 2, frozen=OUT.format("c2_out")))


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_over_spatial_axes_attribute_form(keepdims):
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    y = b.node("ReduceMean", [b.relu(b.conv(x, 3, 5, 3, name="c1"))], axes=[2, 3], keepdims=keepdims)
    if keepdims:
        y = b.node("Flatten", [y])
    b.output(b.gemm(y, 5, 2, name="fc"))
    model = b.model()
    assert_groups(run_analysis(model), G(["c1"], ["fc"], 5), G(["fc"], [], 2, frozen=OUT.format("fc_out")))
    shrink_matches_mask(model)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceL2"])
def test_reduce_over_spatial_axes_input_form(op):
    opset = 13 if op == "ReduceSum" else 18
    model, a = _chain(lambda b, y: b.node(op, [y, b.ints([-1, -2])], keepdims=1), opset=opset)
    assert_groups(a, G(["c1"], ["c2"], 5), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    shrink_matches_mask(model)


def test_reduce_noop_with_empty_axes():
    model, a = _chain(lambda b, y: b.node("ReduceSum", [y], noop_with_empty_axes=1))
    assert_groups(a, G(["c1"], ["c2"], 5), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    shrink_matches_mask(model)


def test_softmax_over_spatial_axis_is_transparent():
    model, a = _chain(lambda b, y: b.node("Softmax", [y], axis=-1))
    assert_groups(a, G(["c1"], ["c2"], 5), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    shrink_matches_mask(model)


def test_softmax_opset11_covers_the_trailing_axes():
    """Before opset 13 Softmax normalizes the flattened axes [axis:]: axis=1 reaches the channels."""
    _, a = _chain(lambda b, y: b.node("Softmax", [y], axis=1, name="sm"), opset=11)
    reason = "Softmax 'sm': Softmax normalizes over labeled axis [1]"
    assert_groups(a, G(["c1"], [], 5, frozen=reason), G(["c2"], [], 2, frozen=OUT.format("c2_out")))


def test_layer_norm_over_a_non_channel_axis_is_transparent():
    def middle(b, y):
        return b.node("LayerNormalization", [y, b.const(np.ones(4)), b.const(np.zeros(4))], axis=-1)

    model, a = _chain(middle)
    assert_groups(a, G(["c1"], ["c2"], 5), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    shrink_matches_mask(model)
