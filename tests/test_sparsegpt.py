"""SparseGPT column sweep (methods/lobs_sparsegpt.py), N:M patterns (methods/nm_pattern.py) and the allocation
guards (methods/lobs_guard.py): oracles from the algebra, least squares and OBC."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from graphs import Builder, run_session
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from onnxprune import PruneOptions, prune
from onnxprune.cli import main
from onnxprune.errors import OptionError
from onnxprune.feeds import Dataset
from onnxprune.graph import GraphIndex
from onnxprune.io import load_model, save_model
from onnxprune.layers import layer_weights
from onnxprune.layers import obs_layers as find_layers
from onnxprune.methods import lobs
from onnxprune.methods.lobs import layer_settings, prune_layer
from onnxprune.methods.lobs_sparsegpt import refine_kept, sparsegpt, sparsegpt_nm, split_counts, sweep, upper_root
from onnxprune.methods.nm_pattern import conforms, nm_keep, parse_pattern
from onnxprune.methods.obs_settings import Settings
from onnxprune.stats import CollectSettings, collect_stats
from onnxprune.stats.linalg import layer_error, prepare


def _hessian(inputs: int, samples: int, seed: int, bias: bool = True) -> np.ndarray:
    """H = X~^T X~ / n of correlated Gaussian inputs (x = g (I + 0.8 A), A Gaussian / sqrt(inputs))."""
    rng = np.random.default_rng(seed)
    mix = np.eye(inputs) + 0.8 * rng.standard_normal((inputs, inputs)) / np.sqrt(inputs)
    x = rng.standard_normal((samples, inputs)) @ mix
    if bias:
        x = np.hstack([x, np.ones((samples, 1))])
    return (x.T @ x / samples)[None]


def _case(rows: int, inputs: int, seed: int = 0):
    h = _hessian(inputs, 4 * inputs + 32, seed)
    w = np.random.default_rng(seed + 1).standard_normal((rows, inputs + 1))
    prep = prepare(h, 0.01)
    candidates = np.ones(inputs + 1, dtype=bool)
    candidates[-1] = False
    return w, prep, candidates


def _uppers(prep) -> np.ndarray:
    return np.stack([upper_root(inverse) for inverse in prep.inverse])


@pytest.mark.parametrize(("rows", "inputs", "ratio"), [(6, 20, 0.5), (16, 40, 0.8), (5, 150, 0.3)])
def test_sweep_prediction_is_the_layer_error_and_removes_exactly_the_count(rows, inputs, ratio):
    w, prep, candidates = _case(rows, inputs)
    count = int(ratio * rows * inputs)
    for refine in (0, 8):
        out = sparsegpt(w, prep.hessian, _uppers(prep), np.zeros(rows, int), candidates, count, refine=refine)
        assert out.removed.sum() == count and not out.removed[:, -1].any()  # the bias is never removed
        assert (out.matrix[out.removed] == 0).all() and (out.matrix[~out.removed] != 0).all()
        measured = layer_error(out.matrix - w, prep.hessian, np.zeros(rows, int))
        assert out.predicted == pytest.approx(measured, rel=1e-9)


def test_lazy_block_updates_are_the_same_arithmetic_as_column_by_column():
    """With the mask fixed in advance, the blocked sweep (one product per block) and B = 1 agree."""
    w, prep, _ = _case(7, 33)
    mask = np.random.default_rng(3).random(w.shape) < 0.5
    mask[:, -1] = False
    upper = upper_root(prep.inverse[0])
    results = [sweep(w, upper, lambda s, j: mask[:, j : j + s.shape[1]], 1, block) for block in (1, 8, 128)]
    for other in results[1:]:
        np.testing.assert_allclose(other.matrix, results[0].matrix, rtol=1e-10, atol=1e-12)
        assert other.predicted == pytest.approx(results[0].predicted, rel=1e-10)


def test_one_sweep_step_is_the_obs_update_of_the_last_free_columns():
    """Removing only weight (r, 0) is OBS with every column free: w -= w_r0 / [H^-1]_00 H^-1[0, :]."""
    w, prep, _ = _case(3, 10)
    upper = upper_root(prep.inverse[0])
    mask = np.zeros(w.shape, dtype=bool)
    mask[1, 0] = True
    out = sweep(w, upper, lambda s, j: mask[:, j : j + s.shape[1]], 1)
    hinv = prep.inverse[0]
    expected = np.array(w)
    expected[1] -= w[1, 0] / hinv[0, 0] * hinv[0]
    np.testing.assert_allclose(out.matrix, expected, rtol=1e-9, atol=1e-12)
    assert out.predicted == pytest.approx(w[1, 0] ** 2 / (2 * hinv[0, 0]), rel=1e-9)


def test_refinement_reaches_the_least_squares_optimum_of_the_mask():
    w, prep, candidates = _case(4, 24)
    out = sparsegpt(w, prep.hessian, _uppers(prep), np.zeros(4, int), candidates, 48, refine=0)
    h = prep.hessian[0]
    refined = refine_kept(w, out.matrix, h, ~out.removed, 60)
    for r in range(4):
        keep = ~out.removed[r]
        best = np.linalg.solve(h[np.ix_(keep, keep)], h[keep] @ w[r])
        np.testing.assert_allclose(refined[r, keep], best, rtol=1e-6, atol=1e-8)
    assert layer_error(refined - w, prep.hessian, np.zeros(4, int)) <= out.predicted


def test_split_counts_sum_and_proportion():
    sizes = np.array([10, 0, 7, 3, 10])
    for count in (0, 1, 13, 30):
        parts = split_counts(sizes, count)
        assert parts.sum() == count and (parts <= sizes).all() and (parts >= 0).all()
        assert np.abs(parts - count * sizes / sizes.sum()).max() < 1.0


def _mlp(seed: int) -> onnx.ModelProto:
    b = Builder(seed=seed)
    x = b.input("x", ["N", 12])
    h = b.relu(b.gemm(x, 12, 32, trans_b=1, name="fc0"))
    h = b.relu(b.gemm(h, 32, 24, name="fc1"))
    b.output(b.gemm(h, 24, 4, trans_b=1, name="fc2"))
    return b.model()


def _convnet(seed: int = 0) -> onnx.ModelProto:
    b = Builder(seed=seed)
    x = b.input("x", ["N", 4, 5, 5])
    y = b.relu(b.conv(x, 4, 8, 3, name="conv0"))
    y = b.relu(b.conv(y, 8, 8, 3, group=2, name="conv1"))
    y = b.node("Flatten", [y], axis=1)
    b.output(b.gemm(y, 8 * 5 * 5, 3, trans_b=1, name="fc"))
    return b.model()


def _data(model: onnx.ModelProto, n: int, seed: int = 0) -> Dataset:
    shape = [d.dim_value or n for d in model.graph.input[0].type.tensor_type.shape.dim]
    return Dataset({"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)})


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["fc0", "fc1", "fc2"])
@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_sparsegpt_matches_obc_exact_on_small_layers(seed, name, ratio):
    """The same-or-lower claim, with its tolerance. SparseGPT fixes each column once the sweep has
    passed it and sets how many weights each window of 4 columns loses before the sweep, so it explores
    a subset of OBC's per-row greedy paths: it matches OBC only up to a factor, the smaller the wider the
    layer. On these layers (ReLU or Gaussian inputs of random MLPs, 12-32 inputs, 4-32 rows) the refined
    sweep measured 1.0-1.4x OBC's error for these seeds and up to 1.8x over 48 such layer/ratio cases
    (1.2-1.4x on correlated Gaussian layers of 64-300 inputs); 2x is the bound asserted, which the
    unrefined, non-adaptive variants exceed (2.6x measured). It is never worse than zeroing the same
    number of smallest weights (magnitude, no update): on near-white inputs the two are close."""
    model = _mlp(seed)
    data = _data(model, 256, seed)
    layer = find_layers(GraphIndex.build(model))[0][name]
    h = collect_stats(model, [layer], data, None, CollectSettings(batch_size=64))[name].hessian
    m0 = layer_weights(GraphIndex.build(model), layer)
    obc = prune_layer(layer, m0, h, layer_settings(ratio, lobs_mode="exact", lobs_allocation="layer"))
    sgpt = prune_layer(layer, m0, h, layer_settings(ratio, lobs_mode="sparsegpt", lobs_allocation="layer"))
    assert sgpt.density == pytest.approx(obc.density)
    assert sgpt.measured <= 2.0 * obc.measured
    weights = np.ascontiguousarray(m0[:, : layer.inputs])
    weights.reshape(-1)[np.argsort(np.abs(weights), axis=None, kind="stable")[: int(ratio * weights.size)]] = 0.0
    zeroed = np.concatenate([weights, m0[:, layer.inputs :]], axis=1)
    assert sgpt.measured <= layer_error(zeroed - m0, h, np.zeros(layer.outputs, int))


def test_auto_mode_uses_obc_on_small_layers_and_sparsegpt_on_wide_ones(monkeypatch):
    model = _mlp(0)
    data = _data(model, 64)
    options = PruneOptions(ratio=0.5, extra={"lobs_allocation": "layer", "max_positions": 0})
    solvers = {n["layer"]: n["solver"] for n in _lobs_step(model, data, options)["layers"]}
    assert set(solvers.values()) == {"exact"}
    monkeypatch.setattr(lobs, "OBC_BUDGET", 24 * 24**3)  # fc1 (24 rows x 32 inputs) is now too wide
    solvers = {n["layer"]: n["solver"] for n in _lobs_step(model, data, options)["layers"]}
    assert solvers == {"fc0": "exact", "fc1": "sparsegpt", "fc2": "exact"}


def _lobs_step(model, data, options) -> dict:
    return prune(model, "lobs", options, calibration=data, run_validation=False).report["steps"][0]


@pytest.mark.parametrize("allocation", ["global", "output"])
def test_sparsegpt_mode_keeps_the_overall_density_with_every_allocation(allocation):
    model = _convnet()
    data = _data(model, 48)
    extra = {"lobs_mode": "sparsegpt", "lobs_allocation": allocation, "max_positions": 0}
    step = _lobs_step(model, data, PruneOptions(ratio=0.6, extra=extra))
    sizes = {n.node: n.outputs * n.inputs for n in find_layers(GraphIndex.build(model))[0].values()}
    kept = sum(n["density"] * sizes[n["layer"]] for n in step["layers"])
    assert kept == pytest.approx(0.4 * sum(sizes.values()), abs=1.0)
    # predicted on the damped H = H + lambda mean(diag H) I, measured on H: never below the measurement
    assert all(n["measured_error"] <= n["predicted_error"] * (1 + 1e-9) for n in step["layers"])
    assert all(n["solver"] == "sparsegpt" for n in step["layers"])


# ---- N:M ---------------------------------------------------------------------------------------
def test_parse_pattern_accepts_n_m_and_rejects_the_rest():
    assert parse_pattern("2:4") == (2, 4) and parse_pattern(" 4 : 8 ") == (4, 8) and parse_pattern(None) is None
    for bad in ("4:4", "0:4", "2-4", "a:b", "5:3"):
        with pytest.raises(OptionError, match="--pattern"):
            parse_pattern(bad)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 3), st.sampled_from([2, 4, 8]), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3),
    st.integers(0, 2**31 - 1),
)  # fmt: skip
def test_nm_keep_keeps_the_n_highest_of_every_group(n, m, outputs, groups, taps, seed):
    n = min(n, m - 1)
    scores = np.random.default_rng(seed).random((outputs, groups * m, taps))
    keep = nm_keep(scores, n, m)
    assert conforms(np.where(keep, 1.0, 0.0), n, m) and not conforms(np.ones_like(scores), n, m)
    for o in range(outputs):
        for t in range(taps):
            for g in range(groups):
                block = scores[o, g * m : (g + 1) * m, t]
                assert set(np.flatnonzero(keep[o, g * m : (g + 1) * m, t])) == set(np.argsort(-block)[:n])


def test_nm_sweep_conforms_on_conv_taps_and_predicts_its_error():
    """Conv columns are c * taps + t: the groups are M consecutive channels at one tap."""
    channels, taps, rows = 8, 9, 5
    w, prep, _ = _case(rows, channels * taps, seed=4)
    out = sparsegpt_nm(w, prep.hessian, prep.inverse, np.zeros(rows, int), 2, 4, channels, taps)
    weights = out.matrix[:, :-1].reshape(rows, channels, taps)
    assert conforms(weights, 2, 4) and (np.count_nonzero(weights) == rows * channels * taps // 2)
    assert out.predicted == pytest.approx(layer_error(out.matrix - w, prep.hessian, np.zeros(rows, int)), rel=1e-9)


def _conforming(step, model, updates, pattern):
    """The layers whose written weights conform, checked here from the plan's updates."""
    found = {}
    for layer in find_layers(GraphIndex.build(model))[0].values():
        weight = updates.get(layer.weight)
        if weight is None:
            continue
        matrix = layer.obs_matrix(weight, np.zeros(layer.outputs) if layer.obs_bias else None)[:, : layer.inputs]
        found[layer.node] = conforms(matrix.reshape(layer.outputs, -1, int(np.prod(layer.kernel))), *pattern)
    return found


@pytest.mark.parametrize("method", ["lobs", "wanda"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_pattern_conforms_on_every_pruned_layer_and_skips_the_others(method, pattern):
    model = _convnet(1)
    data = _data(model, 32)
    n, m = parse_pattern(pattern)
    extra = {"pattern": pattern, **({"max_positions": 0} if method == "lobs" else {})}
    result = prune(model, method, PruneOptions(ratio=0.5, extra=extra), calibration=data, run_validation=False)
    step = result.report["steps"][0]
    updates = result.plans[0].updates
    checked = _conforming(step, model, updates, (n, m))
    report = step["pattern"]
    # conv0 reads 4 channels, conv1 4 per group, fc 200 features: all multiples of 4; of 8 only fc
    expected = {"conv0", "conv1", "fc"} if m == 4 else {"fc"}
    assert {k for k, v in checked.items() if v} == expected
    assert report["conforming_layers"] == len(expected) and report["nonconforming_layers"] == []
    assert set(report["skipped_layers"]) == {"conv0", "conv1", "fc"} - expected
    assert all("not a multiple of M=8" in r for r in report["skipped_layers"].values())
    for node in expected:  # wanda keeps exactly N of M; lobs also zeroes the weights of dead inputs
        layer = find_layers(GraphIndex.build(model))[0][node]
        kept, share = np.count_nonzero(updates[layer.weight]), layer.outputs * layer.inputs * n // m
        assert kept == share if method == "wanda" else 0.8 * share < kept <= share
    for node in report["skipped_layers"]:  # left dense
        layer = find_layers(GraphIndex.build(model))[0][node]
        assert layer.weight not in updates or np.count_nonzero(updates[layer.weight]) == layer.outputs * layer.inputs
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    outputs = run_session(pruned, data.feeds)
    assert np.isfinite(outputs[0]).all()


def test_compensated_2_4_has_less_layer_error_than_wanda_2_4():
    model = _mlp(2)
    data = _data(model, 256)
    errors = {}
    for method in ("lobs", "wanda"):
        extra = {"pattern": "2:4", **({"max_positions": 0} if method == "lobs" else {})}
        result = prune(model, method, PruneOptions(ratio=0.5, extra=extra), calibration=data, run_validation=False)
        layer = find_layers(GraphIndex.build(model))[0]["fc1"]
        h = collect_stats(model, [layer], data, None, CollectSettings(batch_size=64))["fc1"].hessian
        index = GraphIndex.build(model)
        m0 = layer_weights(index, layer)
        bias = result.plans[0].updates.get(layer.obs_bias, index.constant(layer.obs_bias))
        m1 = layer.obs_matrix(result.plans[0].updates[layer.weight], bias)
        errors[method] = layer_error(m1 - m0, h, np.zeros(layer.outputs, int))
    assert errors["lobs"] < 0.7 * errors["wanda"]


def test_pattern_with_max_layer_error_is_an_option_error():
    with pytest.raises(OptionError, match="--pattern"):
        options = PruneOptions(ratio=0.5, extra={"pattern": "2:4", "max_layer_error": 0.1})
        Settings.build(options, lobs.LOBS.settings(options.extra), "lobs")


# ---- guards ------------------------------------------------------------------------------------
def _duplicated_mlp() -> onnx.ModelProto:
    """fc1 reads 32 features of which only 4 differ: its H is nearly singular, so faithful L-OBS
    predicts its removals almost free while they are not."""
    b = Builder(seed=5)
    x = b.input("x", ["N", 8])
    h = b.relu(b.gemm(x, 8, 32, trans_b=1, name="fc0"))
    h = b.relu(b.gemm(h, 32, 12, trans_b=1, name="fc1"))
    b.output(b.gemm(h, 12, 3, trans_b=1, name="fc2"))
    model = b.model()
    for tensor in model.graph.initializer:
        if tensor.name in ("fc0.w", "fc0.b"):
            value = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(np.tile(value[:4], (8,) + (1,) * (value.ndim - 1)), tensor.name))
    return model


def test_the_floor_keeps_the_global_allocation_from_emptying_a_layer(caplog):
    model = _duplicated_mlp()
    data = Dataset({"x": np.random.default_rng(0).standard_normal((128, 8)).astype(np.float32)})
    extra = {"lobs_mode": "faithful", "max_positions": 0}
    asked = _lobs_step(model, data, PruneOptions(ratio=0.8, extra={**extra, "allow_empty_layers": True}))
    density = {n["layer"]: n["density"] for n in asked["layers"]}
    assert density["fc1"] == 0.0  # without the floor the allocation empties fc1 ...
    assert "fc1" in {d["layer"] for d in asked["error_disagreements"]}  # ... and the measurement says so
    caplog.clear()
    guarded = _lobs_step(model, data, PruneOptions(ratio=0.8, extra=extra))
    density = {n["layer"]: n["density"] for n in guarded["layers"]}
    assert density["fc1"] >= 12 / (12 * 32) and "fc1" in guarded["floor_layers"]
    assert all(d > 0 for d in density.values())
    assert any("measured error" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    floor = _lobs_step(model, data, PruneOptions(ratio=0.8, extra={**extra, "min_layer_density": 0.25}))
    assert min(n["density"] for n in floor["layers"]) >= 0.25 - 1e-9


def test_exact_predictions_raise_no_disagreement():
    model = _mlp(3)
    data = _data(model, 128)
    step = _lobs_step(model, data, PruneOptions(ratio=0.7, extra={"lobs_mode": "exact", "max_positions": 0}))
    assert step["error_disagreements"] == []


def test_cli_pattern_mode_and_guard_options(tmp_path, capsys):
    model = _mlp(4)
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    save_model(model, path)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((40, 12)).astype(np.float32))
    calib = ["--calib", str(tmp_path / "calib.npz"), "-q"]
    for method, extra in (("lobs", ["--lobs-mode", "sparsegpt", "--allow-empty-layers"]), ("wanda", [])):
        main(["prune", str(path), "-o", str(out), "--method", method, "--pattern", "2:4", *extra, *calib])
        pruned = load_model(out)
        weights = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
        assert conforms(weights["fc0.w"][:, :, None], 2, 4)  # fc0: W [32, 12], transB=1
    report = tmp_path / "report.json"
    floor = ["--min-layer-density", "0.3", "--ratio", "0.9", "--report", str(report)]
    main(["prune", str(path), "-o", str(out), "--method", "lobs", *floor, *calib])
    layers = json.loads(report.read_text())["steps"][0]["layers"]
    assert min(n["density"] for n in layers) >= 0.3 - 1e-9
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", str(path), "-o", str(out), "--method", "wanda", "--pattern", "3:2", *calib])
    assert exit_info.value.code == 2
    assert "--pattern 3:2" in capsys.readouterr().err
