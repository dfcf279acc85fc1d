"""Unstructured layer-wise OBS: the algebra against least squares and onnxruntime, targets, storage."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from graphs import Builder, layer_rows

from onnxprune import PruneOptions, prune, runtime
from onnxprune.cli import main
from onnxprune.errors import CalibrationError, OptionError, ValidationError
from onnxprune.feeds import Dataset
from onnxprune.graph import GraphIndex
from onnxprune.io import load_model, save_model
from onnxprune.layers import layer_weights, obs_layers, with_updates
from onnxprune.methods import lobs
from onnxprune.methods.lobs import layer_settings, prune_layer
from onnxprune.stats import CollectSettings, collect_stats
from onnxprune.stats.hessian import input_rows


def _mlp(seed: int = 0, sizes=(8, 12, 10, 3)) -> onnx.ModelProto:
    b = Builder(seed=seed)
    x = b.input("x", ["N", sizes[0]])
    for k in range(len(sizes) - 1):
        x = b.gemm(x, sizes[k], sizes[k + 1], trans_b=k % 2, name=f"fc{k}")
        if k < len(sizes) - 2:
            x = b.relu(x)
    b.output(x)
    return b.model()


def _convnet(seed: int = 0) -> onnx.ModelProto:
    b = Builder(seed=seed)
    x = b.input("x", ["N", 2, 6, 6])
    y = b.relu(b.conv(x, 2, 4, 3, name="conv0", strides=[1, 1]))
    y = b.relu(b.conv(y, 4, 5, 3, name="conv1", strides=[2, 2]))
    y = b.node("Flatten", [y], axis=1)
    b.output(b.gemm(y, 5 * 3 * 3, 3, trans_b=1, name="fc"))
    return b.model()


def _data(model: onnx.ModelProto, n: int, seed: int = 0) -> Dataset:
    shape = [d.dim_value or n for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return Dataset({model.graph.input[0].name: x})


def _options(ratio=0.5, **extra) -> PruneOptions:
    """Options of these tests: the per-layer allocation unless a test asks for another (the per-layer
    path is the one whose predicted errors and densities the tests check layer by layer)."""
    extra = {"max_positions": 0, "lobs_allocation": "layer", **extra}
    return PruneOptions(ratio=ratio, extra=extra)


def _layer_and_hessian(model, data, name):
    layer = obs_layers(GraphIndex.build(model))[0][name]
    h = collect_stats(model, [layer], data, None, CollectSettings(batch_size=16))[name].hessian
    index = GraphIndex.build(model)
    return layer, h, layer_weights(index, layer)


def _rows(model, data, layer):
    """X~ of `layer` on `data` (all positions), from onnxruntime."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(onnx.ValueInfoProto(name=layer.input))
    x = runtime.run(runtime.session(exposed), data.feeds)[-1].astype(np.float64)
    (rows,) = input_rows(layer, x, None, np.random.default_rng(0))
    return np.hstack([rows, np.ones((len(rows), 1))]) if layer.obs_bias else rows


def test_removing_one_weight_gives_the_least_squares_optimum_for_its_mask():
    model = _mlp(1)
    data = _data(model, 64)
    layer, h, m0 = _layer_and_hessian(model, data, "fc1")
    settings = layer_settings(1.5 / (layer.outputs * layer.inputs), damping=0.0)
    out = prune_layer(layer, m0, h, settings)
    changed = np.flatnonzero(np.any(out.matrix != m0, axis=1))
    assert len(changed) == 1
    r = changed[0]
    zero = np.flatnonzero(out.matrix[r, : layer.inputs] == 0)
    assert len(zero) == 1
    x = _rows(model, data, layer)
    keep = np.ones(layer.width, dtype=bool)
    keep[zero] = False
    best, *_ = np.linalg.lstsq(x[:, keep], x @ m0[r], rcond=None)
    np.testing.assert_allclose(out.matrix[r, keep], best, rtol=1e-6, atol=1e-8)
    # and it is the weight of least w^2 / [H^-1]_qq
    hinv = np.linalg.inv(h[0])
    scores = m0[:, : layer.inputs] ** 2 / np.diag(hinv)[: layer.inputs]
    assert np.unravel_index(scores.argmin(), scores.shape) == (r, zero[0])
    assert out.predicted == pytest.approx(scores.min() / 2, rel=1e-6)


@pytest.mark.parametrize("mode", ["exact", "faithful"])
@pytest.mark.parametrize("name", ["conv0", "conv1", "fc"])
def test_measured_error_equals_onnxruntime_and_exact_prediction_is_exact(mode, name):
    model = _convnet(2)
    data = _data(model, 64)  # more samples than the fc layer's 46 inputs: H is nonsingular
    result = prune(model, "lobs", _options(0.6, lobs_mode=mode, damping=0.0), calibration=data, run_validation=False)
    note = next(n for n in result.report["steps"][0]["layers"] if n["layer"] == name)
    layer = obs_layers(GraphIndex.build(model))[0][name]
    only = {k: v for k, v in result.plans[0].updates.items() if k in (layer.weight, layer.obs_bias)}
    z0 = layer_rows(model, data.feeds, layer)
    z1 = layer_rows(with_updates(model, only), data.feeds, layer)
    measured = 0.5 * ((z1 - z0) ** 2).sum() / len(z0)
    assert note["measured_error"] == pytest.approx(measured, rel=2e-4, abs=1e-9)
    if mode == "exact":
        assert note["predicted_error"] == pytest.approx(note["measured_error"], rel=1e-5, abs=1e-9)
    size = layer.outputs * layer.inputs
    assert note["density"] == pytest.approx(1 - math.floor(0.6 * size + 1e-9) / size)


def test_exact_mode_beats_faithful_mode_and_plain_zeroing():
    model = _mlp(3, sizes=(8, 24, 16, 3))
    data = _data(model, 96)
    layer, h, m0 = _layer_and_hessian(model, data, "fc1")
    exact = prune_layer(layer, m0, h, layer_settings(0.7, lobs_mode="exact"))
    faithful = prune_layer(layer, m0, h, layer_settings(0.7, lobs_mode="faithful"))
    assert exact.measured < faithful.measured
    zeroed = np.array(m0)
    weights = zeroed[:, : layer.inputs]
    weights[np.abs(weights) < np.quantile(np.abs(weights), 0.7)] = 0.0
    delta = zeroed - m0
    assert exact.measured < 0.5 * np.einsum("ri,ij,rj->", delta, h[0], delta)


def test_max_layer_error_removes_while_the_relative_error_fits():
    model = _mlp(4)
    data = _data(model, 64)
    layer, h, m0 = _layer_and_hessian(model, data, "fc1")
    tolerance = 0.05
    out = prune_layer(layer, m0, h, layer_settings(None, max_layer_error=tolerance, damping=0.0))
    assert out.predicted <= tolerance * out.energy
    assert out.measured == pytest.approx(out.predicted, rel=1e-6)
    assert 0.0 < out.density < 1.0
    more = prune_layer(layer, m0, h, layer_settings(1.0 - out.density + 1.5 / m0[:, :-1].size, damping=0.0))
    assert more.predicted > tolerance * out.energy  # one more removal would not fit


def test_global_allocation_keeps_the_overall_density_and_prefers_small_relative_error():
    model = _convnet(5)
    data = _data(model, 24)
    result = prune(model, "lobs", _options(0.8, lobs_allocation="global"), calibration=data, run_validation=False)
    step = result.report["steps"][0]
    sizes = {layer.node: layer.outputs * layer.inputs for layer in obs_layers(GraphIndex.build(model))[0].values()}
    kept = sum(n["density"] * sizes[n["layer"]] for n in step["layers"])
    assert kept == pytest.approx(0.2 * sum(sizes.values()), abs=1.0)
    densities = {n["layer"]: n["density"] for n in step["layers"]}
    assert len(set(densities.values())) > 1


def test_dead_inputs_have_their_weights_zeroed():
    model = _mlp(6)
    data = _data(model, 40)
    data.feeds["x"][:, 3] = 0.0
    layer, h, m0 = _layer_and_hessian(model, data, "fc0")
    out = prune_layer(layer, m0, h, layer_settings(0.0))
    assert np.all(out.matrix[:, 3] == 0)
    assert out.measured == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(np.delete(out.matrix, 3, axis=1), np.delete(m0, 3, axis=1))


def test_channels_no_consumer_reads_are_removed_and_the_output_is_unchanged():
    model = _mlp(7, sizes=(6, 10, 8, 3))
    data = _data(model, 48)
    result = prune(model, "lobs", _options(0.9), calibration=data, run_validation=False)
    plan = result.plans[0]
    assert plan.removed, "at 10% density some hidden neuron should lose every reader"
    assert io_params(result.model) < io_params(model)
    feeds = _data(model, 5, seed=9).feeds
    masked = runtime.run(runtime.session(with_updates(model, plan.updates)), feeds)[0]
    shrunk = runtime.run(runtime.session(result.model), feeds)[0]
    np.testing.assert_allclose(shrunk, masked, rtol=1e-5, atol=1e-5)


def io_params(model):
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def test_sequential_errors_are_measured_against_the_original_outputs():
    model = _mlp(8, sizes=(8, 16, 12, 3))
    data = _data(model, 64)
    result = prune(model, "lobs", _options(0.7, sequential=True), calibration=data, run_validation=False)
    step = result.report["steps"][0]
    assert step["statistics_passes"] == 3
    pruned_same_shape = with_updates(model, result.plans[0].updates)
    layers = obs_layers(GraphIndex.build(model))[0]
    for note in step["layers"]:
        layer = layers[note["layer"]]
        z0, z1 = layer_rows(model, data.feeds, layer), layer_rows(pruned_same_shape, data.feeds, layer)
        assert note["measured_error"] == pytest.approx(0.5 * ((z1 - z0) ** 2).sum() / len(z0), rel=1e-3)
    plain = prune(model, "lobs", _options(0.7), calibration=data, run_validation=False)
    final = [n["measured_error"] for n in step["layers"]][-1]
    final_plain = _output_error(model, with_updates(model, plain.plans[0].updates), data, layers["fc2"])
    assert final < final_plain


def _output_error(model, pruned, data, layer):
    z0, z1 = layer_rows(model, data.feeds, layer), layer_rows(pruned, data.feeds, layer)
    return 0.5 * ((z1 - z0) ** 2).sum() / len(z0)


def test_sparse_storage_shrinks_the_file_and_onnxruntime_runs_it(tmp_path):
    model = _mlp(9, sizes=(16, 64, 32, 4))
    data = _data(model, 80)
    dense = prune(model, "lobs", _options(0.9), calibration=data, run_validation=False).model
    sparse = prune(model, "lobs", _options(0.9), calibration=data, run_validation=False, sparse_storage=True).model
    assert len(sparse.graph.sparse_initializer) >= 2
    assert sparse.ByteSize() < 0.6 * dense.ByteSize()
    onnx.checker.check_model(sparse)
    feeds = _data(model, 6, seed=1).feeds
    expected = runtime.run(runtime.session(dense), feeds)[0]
    np.testing.assert_array_equal(runtime.run(runtime.session(sparse), feeds)[0], expected)
    path = tmp_path / "sparse.onnx"
    save_model(sparse, path)
    again = load_model(path)
    assert not again.graph.sparse_initializer
    np.testing.assert_array_equal(runtime.run(runtime.session(again), feeds)[0], expected)


def test_a_half_sparse_tensor_stays_dense_because_coo_would_be_larger():
    from onnxprune.passes.sparse import worth_sparse

    half = np.ones(1000, dtype=np.float32)
    half[::2] = 0
    assert not worth_sparse(half)
    tenth = np.zeros(1000, dtype=np.float32)
    tenth[::10] = 1
    assert worth_sparse(tenth)


def test_non_finite_calibration_and_missing_inputs_are_clear_errors():
    model = _mlp(10)
    bad = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    bad[2, 3] = np.nan
    with pytest.raises(CalibrationError, match="'x' contains NaN"):
        prune(model, "lobs", _options(), calibration={"x": bad})
    with pytest.raises(CalibrationError, match="no data for model input 'x'"):
        prune(model, "lobs", _options(), calibration={"pixels": bad})
    with pytest.raises(CalibrationError, match="empty"):
        prune(model, "lobs", _options(), calibration=[])
    with pytest.raises(OptionError, match="needs calibration data"):
        prune(model, "lobs", _options())


def test_a_singular_hessian_still_gives_finite_weights():
    model = _mlp(11)
    x = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    x[:, 5] = x[:, 1] + x[:, 2]  # collinear inputs, and no damping
    result = prune(model, "lobs", _options(0.5, damping=0.0), calibration={"x": x}, run_validation=False)
    for value in result.plans[0].updates.values():
        assert np.isfinite(value).all()
    assert all(n["damping"] >= 0 for n in result.report["steps"][0]["layers"])


def test_non_finite_weights_are_never_written(tmp_path, monkeypatch):
    model = _mlp(12)
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    save_model(model, path)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32))
    real = lobs.LayerTrace.finish

    def poisoned(self, count):
        outcome = real(self, count)
        outcome.matrix[0, 0] = np.nan
        return outcome

    monkeypatch.setattr(lobs.LayerTrace, "finish", poisoned)
    with pytest.raises(ValidationError, match="not finite"):
        prune(str(path), "lobs", _options(), calibration=str(tmp_path / "calib.npz"))
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", str(path), "-o", str(out), "--method", "lobs", "--calib", str(tmp_path / "calib.npz"), "-q"])
    assert exit_info.value.code == 1
    assert not out.exists()


def test_cli_lobs_options(tmp_path, capsys):
    model = _mlp(13)
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    save_model(model, path)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32))
    args = ["prune", str(path), "-o", str(out), "--method", "lobs", "--calib", str(tmp_path / "calib.npz")]
    main(args + ["--ratio", "0.8", "--lobs-mode", "faithful", "--damping", "0.1", "--sparse-storage", "-q"])
    assert out.exists()
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--lobs-mode", "greedy"])
    assert exit_info.value.code == 2
    assert "--lobs-mode greedy" in capsys.readouterr().err
