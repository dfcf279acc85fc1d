"""One Layer for both views: where the OBS and the masking notions of a layer differ, both are kept."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import Builder

from onnxprune.graph import GraphIndex
from onnxprune.layers import find_layers, masking_layers, obs_layers, select
from onnxprune.methods.lobs_bn import batchnorm_view


def _index(b: Builder) -> GraphIndex:
    return GraphIndex.build(b.model())


def test_a_shared_weight_is_found_flagged_and_left_to_the_masking_methods():
    b = Builder(seed=0)
    x = b.input("x", ["N", 4])
    w = b.rand((4, 4), "shared")
    b.output(b.node("MatMul", [b.node("MatMul", [x, w], name="a"), w], name="b"))
    index = _index(b)
    found, skipped = find_layers(index)
    assert sorted(found) == ["a", "b"] and skipped == {}
    assert found["a"].shared and found["b"].shared
    layers, reasons = obs_layers(index)
    assert layers == {} and "shared" in reasons["a"] and "shared" in reasons["b"]
    assert sorted(masking_layers(index)) == ["a", "b"]


def test_matmul_add_bias_moves_the_obs_output_but_not_the_node_output():
    b = Builder(seed=1)
    x = b.input("x", ["N", 4])
    b.output(b.matmul(x, 4, 3, name="mm"))
    layer = find_layers(_index(b))[0]["mm"]
    assert layer.output == "mm_out" and layer.obs_output == "mm.add_out"
    assert layer.tail.own == "mm.b" and layer.obs_bias == "mm.b" and layer.width == layer.inputs + 1


def test_a_bias_read_by_two_layers_is_a_masking_shift_but_no_obs_column():
    b = Builder(seed=2)
    x = b.input("x", ["N", 4])
    bias = b.rand((3,), "b")
    left = b.node("Add", [b.node("MatMul", [x, b.rand((4, 3))], name="l"), bias])
    right = b.node("Add", [b.node("MatMul", [x, b.rand((4, 3))], name="r"), bias])
    b.output(b.node("Add", [left, right]))
    layer = find_layers(_index(b))[0]["l"]
    assert layer.tail.own == "b" and layer.obs_bias is None and layer.obs_output == "l_out"


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_gemm_beta_scales_both_biases_and_zero_beta_gives_no_obs_column(beta):
    b = Builder(seed=3)
    x = b.input("x", ["N", 4])
    b.output(b.gemm(x, 4, 3, trans_b=1, name="fc", alpha=2.0, beta=beta))
    index = _index(b)
    layer = find_layers(index)[0]["fc"]
    assert layer.tail.own == "fc.b" and layer.tail.own_factor == beta and layer.beta == beta
    assert (layer.obs_bias is None) == (beta == 0.0)
    weight, bias = index.constant("fc.w"), index.constant("fc.b")
    m = layer.obs_matrix(weight, bias)
    np.testing.assert_allclose(m[:, :4], 2.0 * weight)
    back_w, back_b = layer.from_obs_matrix(m)
    np.testing.assert_allclose(back_w, weight, rtol=1e-6)
    if beta:
        np.testing.assert_allclose(back_b, bias, rtol=1e-6)
    np.testing.assert_array_equal(layer.from_oik(layer.oik(weight)), weight)


def test_conv_bias_from_a_graph_input_is_a_masking_shift_but_no_obs_column():
    b = Builder(seed=4)
    x = b.input("x", ["N", 2, 5, 5])
    bias = b.input("bias", [3])
    b.output(b.node("Conv", [x, b.rand((3, 2, 3, 3), "c.w"), bias], name="c", pads=[1, 1, 1, 1]))
    layer = find_layers(_index(b))[0]["c"]
    assert layer.tail.own == "bias" and layer.obs_bias is None and layer.kernel == (3, 3)


def test_one_batchnorm_follower_for_the_tail_and_the_obs_view():
    b = Builder(seed=5)
    x = b.input("x", ["N", 2, 5, 5])
    b.output(b.relu(b.bn(b.conv(x, 2, 3, 3, bias=False, name="c"), 3, name="bn")))
    index = _index(b)
    layer = find_layers(index)[0]["c"]
    assert layer.tail.norm == ("bn.scale", "bn.bias", "bn.mean", "bn.var")
    view = batchnorm_view(index, layer)
    assert view.mean == "bn.mean" and view.scale is not None


def test_select_filters_node_names_by_regular_expressions():
    b = Builder(seed=6)
    x = b.input("x", ["N", 4])
    b.output(b.gemm(b.gemm(b.gemm(x, 4, 4, name="enc.0"), 4, 4, name="enc.1"), 4, 2, name="head"))
    layers = find_layers(_index(b))[0].values()
    assert [layer.node for layer in select(layers, r"^enc", r"\.1$")] == ["enc.0"]
    assert [layer.node for layer in select(layers, None, None)] == ["enc.0", "enc.1", "head"]
