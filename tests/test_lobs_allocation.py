"""L-OBS: the output-error allocation (convex hulls against brute force) and the BatchNorm view (the OBS
error in post-BN units and the bias through the BN mean, against onnxruntime)."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from graphs import Builder

from onnxprune import PruneOptions, prune, runtime
from onnxprune.cli import main
from onnxprune.feeds import Dataset
from onnxprune.graph import GraphIndex
from onnxprune.io import save_model
from onnxprune.layers import obs_layers, with_updates
from onnxprune.methods.lobs_allocation import Curve, grid_counts, hull_allocation, lower_hull
from onnxprune.methods.lobs_bn import batchnorm_view, model_values, view_weights
from onnxprune.stats import OutputProbe


def _interpolate(curve: Curve, k: float) -> float:
    return float(np.interp(k, curve.counts, curve.errors))


def _convex_curve(rng, size: int) -> Curve:
    counts = np.unique(np.concatenate([[0, size], rng.integers(1, size, 4)]))
    slopes = np.sort(rng.uniform(0.0, 1.0, len(counts) - 1))
    errors = np.concatenate([[0.0], np.cumsum(slopes * np.diff(counts))])
    return Curve(counts, errors)


@pytest.mark.parametrize("seed", range(6))
def test_hull_allocation_of_convex_curves_is_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    curves = [_convex_curve(rng, int(rng.integers(3, 9))) for _ in range(3)]
    sizes = [int(c.counts[-1]) for c in curves]
    total = int(rng.integers(1, sum(sizes)))
    counts = hull_allocation(curves, total)
    assert sum(counts) == total
    assert all(0 <= k <= s for k, s in zip(counts, sizes, strict=True))
    best = min(
        sum(_interpolate(c, k) for c, k in zip(curves, ks, strict=True))
        for ks in itertools.product(*(range(s + 1) for s in sizes))
        if sum(ks) == total
    )
    assert sum(_interpolate(c, k) for c, k in zip(curves, counts, strict=True)) == pytest.approx(best, abs=1e-12)


def test_lower_hull_lies_below_every_point_and_is_convex():
    rng = np.random.default_rng(3)
    counts = np.arange(0, 40, 3)
    errors = np.cumsum(rng.uniform(0, 1, len(counts)))
    hull = lower_hull(counts, errors)
    xs, ys = np.array(hull).T
    assert set(xs) <= set(counts) and xs[0] == counts[0] and xs[-1] == counts[-1]
    assert np.all(np.interp(counts, xs, ys) <= errors + 1e-12)
    slopes = np.diff(ys) / np.diff(xs)
    assert np.all(np.diff(slopes) > 0)


def test_hull_allocation_takes_every_removal_when_the_budget_exceeds_them():
    curves = [Curve(np.array([0, 4]), np.array([0.0, 1.0])), Curve(np.array([0, 2, 3]), np.array([0.0, 0.2, 3.0]))]
    assert hull_allocation(curves, 100) == [4, 3]
    assert hull_allocation(curves, 3) == [1, 2]  # slopes 0.1, then 0.25, then 2.8


def test_grid_counts_reach_a_quarter_of_the_target_density_and_hold_the_target():
    counts = grid_counts(1000, 990, 0.9)
    assert counts[0] == 0 and 900 in counts
    assert np.all(np.diff(counts) > 0)
    assert counts[-1] >= 1000 - 1000 * 0.1 / 4 - 1e-9 or counts[-1] == 990
    assert grid_counts(10, 4, 0.9).max() == 4


def _bn_net(seed: int = 0) -> onnx.ModelProto:
    b = Builder(seed=seed)
    x = b.input("x", ["N", 3, 6, 6])
    y = b.conv(x, 3, 6, 3, bias=False, name="conv0")
    y = b.relu(b.bn(y, 6, name="bn0"))
    y = b.conv(y, 6, 4, 3, bias=False, name="conv1")
    y = b.bn(y, 4, name="bn1")
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)
    b.output(b.gemm(y, 4, 3, trans_b=1, name="fc"))
    return b.model()


def _data(model: onnx.ModelProto, n: int, seed: int = 0, shift: float = 0.0) -> Dataset:
    shape = [d.dim_value or n for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) + np.float32(shift)
    return Dataset({model.graph.input[0].name: x})


def _tensor(model: onnx.ModelProto, data: Dataset, name: str) -> np.ndarray:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    return runtime.run(runtime.session(exposed), data.feeds)[-1].astype(np.float64)


def test_batchnorm_view_round_trip_and_virtual_bias_goes_into_the_mean():
    model = _bn_net(1)
    index = GraphIndex.build(model)
    layer = obs_layers(index)[0]["conv1"]
    view = batchnorm_view(index, layer)
    assert view.mean == "bn1.mean" and view.layer.obs_bias == "bn1.mean" and view.layer.width == layer.width + 1
    m = np.asarray(index.constant("conv1.w"), dtype=np.float64).reshape(4, -1)
    scaled = view_weights(view, m)
    scaled[:, -1] = [1.0, -2.0, 0.5, 0.0]
    back, mean = model_values(view, scaled, index.constant("bn1.mean"))
    np.testing.assert_allclose(back, m)
    np.testing.assert_allclose(mean, index.constant("bn1.mean") - scaled[:, -1] / view.scale)
    assert batchnorm_view(index, obs_layers(index)[0]["fc"]).scale is None  # no BN after the Gemm


def _post_bn_error(model, pruned, data, bn_output):
    y0, y1 = _tensor(model, data, bn_output), _tensor(pruned, data, bn_output)
    rows = np.moveaxis(y1 - y0, 1, -1).reshape(-1, y0.shape[1])
    return 0.5 * float((rows**2).sum()) / len(rows)


@pytest.mark.parametrize("mode", ["exact", "faithful"])
def test_the_reported_layer_error_is_the_error_after_the_batchnorm(mode):
    model = _bn_net(2)
    data = _data(model, 12, shift=0.7)
    options = PruneOptions(
        ratio=0.6, include="conv1", extra={"max_positions": 0, "lobs_allocation": "layer", "lobs_mode": mode}
    )
    result = prune(model, "lobs", options, calibration=data, run_validation=False)
    (note,) = result.report["steps"][0]["layers"]
    pruned = with_updates(model, result.plans[0].updates)
    assert "bn1.mean" in result.plans[0].updates
    bn_output = next(n.output[0] for n in model.graph.node if n.name == "bn1")
    assert note["measured_error"] == pytest.approx(_post_bn_error(model, pruned, data, bn_output), rel=1e-4)


def test_absorbing_the_batchnorm_lowers_the_post_bn_error():
    model = _bn_net(3)
    data = _data(model, 12, shift=0.7)
    bn_output = next(n.output[0] for n in model.graph.node if n.name == "bn1")
    errors = {}
    for how in ("absorb", "ignore"):
        extra = {"max_positions": 0, "lobs_allocation": "layer", "lobs_batchnorm": how}
        result = prune(model, "lobs", PruneOptions(ratio=0.7, include="conv1", extra=extra), calibration=data,
                       run_validation=False)  # fmt: skip
        errors[how] = _post_bn_error(model, with_updates(model, result.plans[0].updates), data, bn_output)
    assert errors["absorb"] < 0.9 * errors["ignore"]


def test_output_probe_matches_a_model_with_the_values_written():
    model = _bn_net(4)
    data = _data(model, 10)
    probe = OutputProbe(model, ["conv0.w", "bn0.mean"], data, batch_size=4, providers=["CPUExecutionProvider"])
    assert probe.error({}) == 0.0
    rng = np.random.default_rng(0)
    new = {"conv0.w": rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "bn0.mean": np.ones(6, np.float32)}
    y0 = runtime.run(runtime.session(model), data.feeds)[0].astype(np.float64)
    y1 = runtime.run(runtime.session(with_updates(model, new)), data.feeds)[0].astype(np.float64)
    np.testing.assert_allclose(probe.outputs(new)[0], y1, rtol=1e-5, atol=1e-6)
    assert probe.error(new) == pytest.approx(((y1 - y0) ** 2).sum() / (y0**2).sum(), rel=1e-5)


@pytest.mark.parametrize("sequential", [False, True])
def test_output_allocation_keeps_the_overall_density(sequential):
    model = _bn_net(5)
    data = _data(model, 16)
    extra = {"max_positions": 0, "lobs_allocation": "output", "allocation_samples": 8, "sequential": sequential}
    result = prune(model, "lobs", PruneOptions(ratio=0.8, extra=extra), calibration=data, run_validation=False)
    step = result.report["steps"][0]
    sizes = {layer.node: layer.outputs * layer.inputs for layer in obs_layers(GraphIndex.build(model))[0].values()}
    kept = sum(n["density"] * sizes[n["layer"]] for n in step["layers"])
    assert kept == pytest.approx(0.2 * sum(sizes.values()), abs=1.0)
    assert step["lobs_allocation"] == "output"


def test_cli_output_allocation_and_batchnorm_options(tmp_path, capsys):
    model = _bn_net(6)
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    save_model(model, path)
    np.savez(tmp_path / "calib.npz", x=_data(model, 12).feeds["x"])
    args = ["prune", str(path), "-o", str(out), "--method", "lobs", "--calib", str(tmp_path / "calib.npz"), "-q"]
    main(args + ["--ratio", "0.7", "--lobs-allocation", "output", "--allocation-samples", "6"])
    assert out.exists()
    for bad in (["--lobs-batchnorm", "fold"], ["--allocation-samples", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args + bad)
        assert exit_info.value.code == 2
        assert bad[0] in capsys.readouterr().err
