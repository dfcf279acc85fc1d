"""passes/fold.py: BatchNormalization folded into the layer before it, Gemm alpha/beta into its constants.

Oracle: the folded model computes what the original computes (onnxruntime, random inputs), and the BN node or
the alpha/beta attributes are gone. Cases that must not fold leave the model as it was.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from graphs import Builder

from onnxprune import runtime
from onnxprune.graph import attributes
from onnxprune.methods.merge import MERGE
from onnxprune.passes import PASSES
from onnxprune.passes.fold import fold
from onnxprune.validate import random_feeds


def _folded(model: onnx.ModelProto):
    """(original outputs, folded outputs, folded model, modified flag) on the same random inputs."""
    feeds = random_feeds(model, batch=3, seed=4)
    before = runtime.run(runtime.session(model), feeds)
    result = fold(copy.deepcopy(model))
    onnx.checker.check_model(result.model, full_check=True)
    after = runtime.run(runtime.session(result.model), feeds)
    return before, after, result.model, result.modified


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _assert_same(before, after) -> None:
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_folds(bias):
    b = Builder(seed=1)
    x = b.input("x", [2, 3, 6, 6])
    y = b.bn(b.conv(x, 3, 5, k=3, bias=bias), 5)
    b.output(b.relu(y))
    before, after, model, modified = _folded(b.model())
    assert modified and "BatchNormalization" not in _ops(model)
    _assert_same(before, after)


def test_grouped_conv_transpose_bn_folds():
    b = Builder(seed=2)
    x = b.input("x", [2, 4, 5, 5])
    w = b.rand((4, 3, 3, 3), "ct.w")
    y = b.node("ConvTranspose", [x, w], name="ct", group=2)
    b.output(b.bn(y, 6))
    before, after, model, modified = _folded(b.model())
    assert modified and _ops(model) == ["ConvTranspose"]
    _assert_same(before, after)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn_folds(trans_b):
    b = Builder(seed=3)
    x = b.input("x", [4, 6])
    b.output(b.bn(b.gemm(x, 6, 5, trans_b=trans_b), 5))
    before, after, model, modified = _folded(b.model())
    assert modified and _ops(model) == ["Gemm"]
    _assert_same(before, after)


@pytest.mark.parametrize("with_add", [True, False])
def test_matmul_bn_folds(with_add):
    """MatMul (+ Add bias) on a rank-2 output; without a bias the BN becomes an Add of the folded bias."""
    b = Builder(seed=4)
    x = b.input("x", [4, 6])
    b.output(b.bn(b.matmul(x, 6, 5, bias=with_add), 5))
    before, after, model, modified = _folded(b.model())
    assert modified and _ops(model) == ["MatMul", "Add"]
    _assert_same(before, after)


def test_gemm_alpha_beta_fold():
    b = Builder(seed=5)
    x = b.input("x", [4, 6])
    b.output(b.gemm(x, 6, 5, trans_b=1, alpha=0.5, beta=2.0))
    before, after, model, modified = _folded(b.model())
    assert modified
    assert "alpha" not in attributes(model.graph.node[0]) and "beta" not in attributes(model.graph.node[0])
    _assert_same(before, after)


def test_shared_weight_gets_private_copy():
    """Two Convs read one weight; folding the BN after one of them must not change the other."""
    b = Builder(seed=6)
    x = b.input("x", [2, 3, 5, 5])
    w = b.rand((3, 3, 1, 1), "shared.w")
    first = b.node("Conv", [x, w], name="c1")
    second = b.node("Conv", [b.bn(first, 3), w], name="c2")
    b.output(second)
    before, after, model, modified = _folded(b.model())
    assert modified and "BatchNormalization" not in _ops(model)
    weights = [n.input[1] for n in model.graph.node]
    assert weights[0] != weights[1] and "shared.w" in weights
    _assert_same(before, after)


def test_bn_input_used_twice_is_left_alone():
    b = Builder(seed=7)
    x = b.input("x", [2, 3, 5, 5])
    y = b.conv(x, 3, 4)
    b.output(b.bn(y, 4))
    b.output(b.relu(y))
    before, after, model, modified = _folded(b.model())
    assert not modified and "BatchNormalization" in _ops(model)
    _assert_same(before, after)


def test_bn_on_rank3_matmul_is_left_alone():
    """BN normalizes axis 1 (tokens here), not the MatMul's output channels: no fold."""
    b = Builder(seed=8)
    x = b.input("x", [2, 4, 6])
    b.output(b.bn(b.matmul(x, 6, 4, bias=False), 4))
    before, after, model, modified = _folded(b.model())
    assert not modified and "BatchNormalization" in _ops(model)
    _assert_same(before, after)


def test_fold_is_the_merge_prepass():
    assert MERGE.prepasses == ("fold",)
    assert PASSES["fold"].run is fold
