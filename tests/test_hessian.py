"""Hessian statistics: im2col order against onnxruntime, W~ conventions, streaming sums, damping."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import Builder

from onnxprune import runtime
from onnxprune.errors import CalibrationError
from onnxprune.feeds import Dataset
from onnxprune.graph import GraphIndex
from onnxprune.io import tensor_array
from onnxprune.layers import obs_layers
from onnxprune.stats import CollectSettings
from onnxprune.stats.hessian import HessianSum, LayerStats, collect_stats, input_rows
from onnxprune.stats.linalg import cholesky_inverse, inverse_and_root, layer_error, prepare
from onnxprune.stats.patches import patches

CONV_CASES = [
    # (spatial input, cin, cout, kernel, attributes)
    ((7, 6), 4, 6, (3, 3), {"pads": [1, 1, 1, 1]}),
    ((9, 8), 4, 6, (3, 2), {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2]}),
    ((8, 8), 6, 4, (3, 3), {"group": 2, "pads": [0, 1, 1, 0], "strides": [2, 2]}),
    ((7, 7), 4, 4, (3, 3), {"group": 4, "auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((6, 7), 3, 5, (2, 3), {"auto_pad": "SAME_LOWER", "strides": [2, 1]}),
    ((6, 6), 3, 2, (3, 3), {"auto_pad": "VALID"}),
    ((11,), 3, 5, (3,), {"pads": [2, 1], "strides": [2], "dilations": [2]}),
    ((10,), 4, 4, (5,), {"group": 2, "auto_pad": "SAME_UPPER"}),
]


def _hessians(model, layers, data, **settings) -> dict[str, np.ndarray]:
    """H of every layer's input on `model` (collect_stats without a reference)."""
    stats = collect_stats(model, layers, data, None, CollectSettings(**settings))
    return {name: s.hessian for name, s in stats.items()}


def _conv_model(spatial, cin, cout, kernel, attrs, bias=True):
    b = Builder(seed=3)
    x = b.input("x", ["N", cin, *spatial])
    attrs = dict(attrs)
    group = attrs.pop("group", 1)
    pads = attrs.pop("pads", None)
    if "auto_pad" in attrs:
        y = b.node(
            "Conv",
            [x, b.rand((cout, cin // group, *kernel), "w")] + ([b.rand((cout,), "b")] if bias else []),
            name="conv",
            group=group,
            **attrs,
        )
    else:
        y = b.conv(x, cin, cout, kernel, group=group, bias=bias, name="conv", pads=pads, **attrs)
    b.output(y)
    return b.model()


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{len(c[0])}d-{c[4]}")
def test_patches_times_weights_reproduce_onnxruntime_conv(case):
    spatial, cin, cout, kernel, attrs = case
    model = _conv_model(spatial, cin, cout, kernel, attrs, bias=False)
    x = np.random.default_rng(0).standard_normal((2, cin, *spatial)).astype(np.float32)
    (y,) = runtime.run(runtime.session(model), {"x": x})
    index = GraphIndex.build(model)
    layer = obs_layers(index)[0]["conv"]
    w = index.constant(layer.weight).astype(np.float64)
    groups = layer.groups
    per = cout // groups
    rows = patches(x.astype(np.float64), layer.attrs, layer.kernel, groups)
    for g, p in enumerate(rows):
        expected = np.moveaxis(y[:, g * per : (g + 1) * per], 1, -1).reshape(-1, per)
        np.testing.assert_allclose(p @ w[g * per : (g + 1) * per].reshape(per, -1).T, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gather_cost", [0, 10**9], ids=["gathered", "windows"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{len(c[0])}d-{c[4]}")
def test_sampled_patches_are_the_rows_of_all_patches_at_the_sampled_positions(case, gather_cost, monkeypatch):
    """Subsampling gives exactly the chosen rows, padding taps included, whether the patches are
    gathered from the unpadded input or cut from windows of the padded one."""
    monkeypatch.setattr("onnxprune.stats.patches.GATHER_COST", gather_cost)
    spatial, cin, cout, kernel, attrs = case
    model = _conv_model(spatial, cin, cout, kernel, attrs, bias=False)
    layer = obs_layers(GraphIndex.build(model))[0]["conv"]
    x = np.random.default_rng(2).standard_normal((3, cin, *spatial))
    every = patches(x, layer.attrs, layer.kernel, layer.groups)
    count = len(every[0]) // 2
    sampled = patches(x, layer.attrs, layer.kernel, layer.groups, count, np.random.default_rng(7))
    chosen = np.sort(np.random.default_rng(7).choice(len(every[0]), count, replace=False))
    for full, part in zip(every, sampled, strict=True):
        np.testing.assert_array_equal(part, full[chosen])


@pytest.mark.parametrize("case", CONV_CASES[:3] + CONV_CASES[6:7], ids=["plain", "strided", "grouped", "1d"])
def test_conv_layer_matrix_gives_onnxruntime_output_with_bias(case):
    """Z = X~ W~^T with X~ = [patches, 1] and W~ = [W.reshape(O, -1), b] per group."""
    spatial, cin, cout, kernel, attrs = case
    model = _conv_model(spatial, cin, cout, kernel, attrs, bias=True)
    x = np.random.default_rng(1).standard_normal((3, cin, *spatial)).astype(np.float32)
    (y,) = runtime.run(runtime.session(model), {"x": x})
    index = GraphIndex.build(model)
    layer = obs_layers(index)[0]["conv"]
    m = layer.obs_matrix(index.constant(layer.weight), index.constant(layer.obs_bias))
    rows = input_rows(layer, x.astype(np.float64), None, np.random.default_rng(0))
    per = cout // layer.groups
    for g, p in enumerate(rows):
        z = np.hstack([p, np.ones((len(p), 1))]) @ m[layer.output_group == g].T
        expected = np.moveaxis(y[:, g * per : (g + 1) * per], 1, -1).reshape(-1, per)
        np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-4)


def _dense_model(kind: str):
    b = Builder(seed=5)
    if kind == "matmul3d":
        x = b.input("x", ["N", 5, 6])
        y = b.matmul(x, 6, 4, name="layer")
    elif kind == "gemm_transA":
        x = b.input("x", [6, "N"])
        y = b.node(
            "Gemm",
            [x, b.rand((4, 6), "layer.w"), b.rand((1, 4), "layer.b")],
            name="layer",
            transA=1,
            transB=1,
            alpha=0.7,
            beta=1.3,
        )
    else:
        x = b.input("x", ["N", 6])
        y = b.gemm(x, 6, 4, trans_b=0, name="layer", alpha=2.0, beta=0.5)
    b.output(y)
    return b.model()


@pytest.mark.parametrize("kind", ["gemm", "gemm_transA", "matmul3d"])
def test_dense_layer_matrix_reproduces_output_and_round_trips(kind):
    model = _dense_model(kind)
    index = GraphIndex.build(model)
    layer = obs_layers(index)[0]["layer"]
    assert layer.obs_bias is not None
    rng = np.random.default_rng(2)
    shape = {"gemm": (7, 6), "gemm_transA": (6, 7), "matmul3d": (3, 5, 6)}[kind]
    x = rng.standard_normal(shape).astype(np.float32)
    (y,) = runtime.run(runtime.session(model), {"x": x})
    weight, bias = index.constant(layer.weight), index.constant(layer.obs_bias)
    m = layer.obs_matrix(weight, bias)
    (rows,) = input_rows(layer, x.astype(np.float64), None, rng)
    z = np.hstack([rows, np.ones((len(rows), 1))]) @ m.T
    np.testing.assert_allclose(z, y.reshape(-1, layer.outputs), rtol=1e-4, atol=1e-4)
    back_w, back_b = layer.from_obs_matrix(m)
    np.testing.assert_allclose(back_w, weight, rtol=1e-6)
    np.testing.assert_allclose(back_b, bias, rtol=1e-6)


def test_hessian_is_streamed_over_batches_and_equals_full_product():
    model = _dense_model("matmul3d")
    index = GraphIndex.build(model)
    layer = obs_layers(index)[0]["layer"]
    x = np.random.default_rng(4).standard_normal((11, 5, 6)).astype(np.float32)
    rows = np.hstack([x.reshape(-1, 6).astype(np.float64), np.ones((55, 1))])
    expected = rows.T @ rows / len(rows)
    for batch in (1, 4, 11):
        h = _hessians(model, [layer], Dataset({"x": x}), batch_size=batch)["layer"]
        np.testing.assert_allclose(h[0], expected, rtol=1e-6, atol=1e-9)


def test_position_subsampling_takes_a_random_subset_of_the_rows():
    model = _conv_model((8, 8), 3, 4, (3, 3), {"pads": [1, 1, 1, 1]})
    layer = obs_layers(GraphIndex.build(model))[0]["conv"]
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    full = input_rows(layer, x, None, np.random.default_rng(0))[0]
    sub = input_rows(layer, x, 20, np.random.default_rng(7))[0]
    assert sub.shape == (20, full.shape[1])
    matches = (np.abs(sub[:, None, :] - full[None]).max(axis=2) == 0).any(axis=1)
    assert matches.all()
    summed = HessianSum(layer, max_positions=20, seed=1)
    summed(x.astype(np.float32))
    assert summed.count == 20


def test_dead_inputs_get_unit_diagonal_and_damping_is_relative_to_the_mean_diagonal():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4))
    x[:, 2] = 0.0
    h = (x.T @ x / 50)[None]
    prep = prepare(h, damping=0.1)
    assert prep.dead[0].tolist() == [False, False, True, False]
    live_mean = np.diag(h[0])[[0, 1, 3]].mean()
    assert prep.hessian[0, 2, 2] == pytest.approx(1.0 + 0.1 * live_mean)
    assert np.all(prep.hessian[0, 2, [0, 1, 3]] == 0)
    np.testing.assert_allclose(prep.inverse[0] @ prep.hessian[0], np.eye(4), atol=1e-10)


def test_singular_hessian_without_damping_falls_back_to_a_small_damping():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 3))
    x = np.hstack([x, x[:, :1] + x[:, 1:2]])  # the 4th input is a combination of two others
    h = (x.T @ x / 30)[None]
    assert cholesky_inverse(h[0]) is None
    prep = prepare(h, damping=0.0)
    assert prep.damping > 0
    assert np.isfinite(prep.inverse).all()
    np.testing.assert_allclose(prep.inverse[0] @ prep.hessian[0], np.eye(4), atol=1e-6)


def test_cholesky_inverse_matches_numpy_inverse():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 12))
    h = a.T @ a
    np.testing.assert_allclose(cholesky_inverse(h), np.linalg.inv(h), rtol=1e-8, atol=1e-10)
    assert cholesky_inverse(-h) is None


def test_layer_error_equals_squared_output_difference():
    rng = np.random.default_rng(0)
    x = np.hstack([rng.standard_normal((40, 5)), np.ones((40, 1))])
    delta = rng.standard_normal((3, 6))
    h = (x.T @ x / 40)[None]
    expected = 0.5 * ((x @ delta.T) ** 2).sum() / 40
    assert layer_error(delta, h, np.zeros(3, dtype=int)) == pytest.approx(expected)


def test_paired_statistics_of_a_model_with_itself_are_all_the_hessian():
    model = _conv_model((6, 6), 3, 4, (3, 3), {"pads": [1, 1, 1, 1]})
    layer = obs_layers(GraphIndex.build(model))[0]["conv"]
    data = Dataset({"x": np.random.default_rng(0).standard_normal((5, 3, 6, 6)).astype(np.float32)})
    alone = collect_stats(model, [layer], data, settings=CollectSettings(batch_size=2))["conv"]
    paired = collect_stats(model, [layer], data, model, CollectSettings(batch_size=2, max_positions=30))["conv"]
    assert isinstance(paired, LayerStats)
    np.testing.assert_allclose(paired.cross, paired.hessian, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(paired.reference, paired.hessian, rtol=1e-6, atol=1e-9)
    full = collect_stats(model, [layer], data, model, CollectSettings(batch_size=2))["conv"]
    np.testing.assert_allclose(full.hessian, alone.hessian, rtol=1e-6, atol=1e-9)


def test_paired_statistics_see_the_other_weights():
    """C = (1/n) X~^T X~_ref pairs the rows of two models that differ upstream."""
    b = Builder(seed=1)
    x = b.input("x", ["N", 4])
    h1 = b.gemm(x, 4, 5, name="first")
    b.output(b.gemm(b.relu(h1), 5, 3, name="second"))
    model = b.model()
    other = onnx.ModelProto()
    other.CopyFrom(model)
    for tensor in other.graph.initializer:
        if tensor.name == "first.w":
            tensor.CopyFrom(onnx.numpy_helper.from_array(tensor_array(tensor) * 0.5, "first.w"))
    layers = obs_layers(GraphIndex.build(model))[0]
    data = Dataset({"x": np.random.default_rng(0).standard_normal((9, 4)).astype(np.float32)})
    stats = collect_stats(other, [layers["second"]], data, model, CollectSettings(batch_size=4))["second"]
    hidden = layers["second"].input
    ref = np.hstack([runtime.run(runtime.session(_exposing(model, hidden)), data.feeds)[1], np.ones((9, 1))])
    mine = np.hstack([runtime.run(runtime.session(_exposing(other, hidden)), data.feeds)[1], np.ones((9, 1))])
    np.testing.assert_allclose(stats.cross[0], mine.T @ ref / 9, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats.reference[0], ref.T @ ref / 9, rtol=1e-5, atol=1e-7)


def _exposing(model, name):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy


def test_collecting_non_finite_activations_is_an_error():
    b = Builder(seed=0)
    x = b.input("x", ["N", 3])
    y = b.gemm(b.node("Log", [x]), 3, 2, name="layer")
    b.output(y)
    model = b.model()
    layer = obs_layers(GraphIndex.build(model))[0]["layer"]
    data = Dataset({"x": -np.ones((4, 3), dtype=np.float32)})
    with pytest.raises(CalibrationError, match="NaN"):
        _hessians(model, [layer], data)


def test_layers_with_shared_or_dynamic_weights_are_skipped_with_a_reason():
    b = Builder(seed=0)
    x = b.input("x", ["N", 4])
    w = b.rand((4, 4), "shared")
    y = b.node("MatMul", [b.node("MatMul", [x, w], name="a"), w], name="b")
    z = b.node("MatMul", [y, b.input("dynamic", [4, 4])], name="c")
    b.output(z)
    layers, skipped = obs_layers(GraphIndex.build(b.model()))
    assert layers == {}
    assert "shared" in skipped["a"] and "shared" in skipped["b"] and "not a constant" in skipped["c"]


@pytest.mark.parametrize("width", [7, 1500], ids=["float64", "float32-products"])
def test_error_and_energy_in_one_pass_equal_the_separate_forms(width):
    """Stacked rows of W_new - W_old and W_old give 1/2 sum dw^T H dw and 1/2 sum w^T H w."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2 * width, width))
    h = (x.T @ x / len(x))[None]
    old, new = rng.standard_normal((2, 4, width))
    groups = np.zeros(4, dtype=np.int64)
    error, energy = LayerStats(h).error_and_energy(new, old, groups)
    d = new - old
    assert error == pytest.approx(0.5 * np.einsum("ri,ij,rj->", d, h[0], d), rel=1e-5)
    assert energy == pytest.approx(0.5 * np.einsum("ri,ij,rj->", old, h[0], old), rel=1e-5)


@pytest.mark.parametrize("rank", [5, 3], ids=["definite", "singular"])
def test_inverse_and_root_give_the_pseudo_inverse_and_a_square_root_of_it(rank):
    x = np.random.default_rng(9).standard_normal((5, rank))
    h = x @ x.T
    inverse, root = inverse_and_root(h)
    np.testing.assert_allclose(inverse, np.linalg.pinv(h), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(root @ root.T, inverse, rtol=1e-6, atol=1e-8)


def _paired(working: np.ndarray, reference: np.ndarray) -> LayerStats:
    """LayerStats of rows [n, d] (a bias column of ones appended) of a working and a reference input."""
    x, y = (np.hstack([r, np.ones((len(r), 1))]) for r in (working, reference))
    n = len(x)
    return LayerStats((x.T @ x / n)[None], (x.T @ y / n)[None], (y.T @ y / n)[None])


def test_the_refit_target_keeps_the_weights_where_the_inputs_agree():
    """Fewer rows than inputs (H singular, damped): the refit is centred on w, so equal working and
    reference inputs (C = H) leave w as it is; (H + lambda I)^-1 C w would shrink w where no row reaches."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((5, 8))
    stats = _paired(rows, rows)
    m = rng.standard_normal((3, 9))
    prep = prepare(stats.hessian, 0.01)
    np.testing.assert_allclose(stats.target(m, prep.inverse, np.zeros(3, dtype=int)), m, rtol=1e-9, atol=1e-9)


def test_the_refit_target_is_the_least_squares_fit_of_the_reference_output():
    """Without damping and with enough rows: w* = argmin ||X~ v - X~_ref w|| (the sequential target)."""
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((200, 6))
    working = reference + 0.3 * rng.standard_normal((200, 6))
    stats = _paired(working, reference)
    m = rng.standard_normal((2, 7))
    target = stats.target(m, prepare(stats.hessian, 0.0).inverse, np.zeros(2, dtype=int))
    x, y = (np.hstack([r, np.ones((200, 1))]) for r in (working, reference))
    expected = np.linalg.lstsq(x, y @ m.T, rcond=None)[0].T
    np.testing.assert_allclose(target, expected, rtol=1e-6, atol=1e-8)
