"""obs --sequential by default where depth needs it, its passes grouped and subsampled, and statistics
passes that run only the nodes the collected layers depend on."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import Builder, layer_rows, run_session

from onnxprune import PruneOptions, prune
from onnxprune.feeds import Dataset
from onnxprune.graph import GraphIndex
from onnxprune.io import make_tensor, tensor_array
from onnxprune.layers import obs_layers, with_updates
from onnxprune.methods.obs_settings import (
    AUTO_MAX_WAVES,
    AUTO_MIN_WAVES,
    DEEP_PASSES,
    choose_sequential,
    sequential_passes,
    stages,
)
from onnxprune.stats import CollectSettings
from onnxprune.stats.collect import computing
from onnxprune.stats.hessian import collect_stats, input_rows


@pytest.mark.parametrize(
    ("requested", "waves", "expected"),
    [(None, 1, False), (None, AUTO_MIN_WAVES - 1, False), (None, AUTO_MIN_WAVES, True), (None, AUTO_MAX_WAVES, True),
     (None, AUTO_MAX_WAVES + 1, True), (None, 50, True), (True, 1, True), (True, 50, True), (False, 5, False)],
)  # fmt: skip
def test_the_default_is_sequential_from_the_auto_depth_on(requested, waves, expected):
    assert choose_sequential(requested, waves) is expected


@pytest.mark.parametrize(
    ("requested", "waves", "expected"),
    [(None, AUTO_MIN_WAVES, 0), (None, AUTO_MAX_WAVES, 0), (None, AUTO_MAX_WAVES + 1, DEEP_PASSES),
     (None, 50, DEEP_PASSES), (0, 50, 0), (2, 5, 2)],
)  # fmt: skip
def test_the_default_passes_are_one_per_wave_then_capped_on_deep_networks(requested, waves, expected):
    assert sequential_passes(requested, waves) == expected


@pytest.mark.parametrize(("count", "passes", "sizes"), [(10, 4, [2, 3, 3, 2]), (3, 4, [1, 1, 1]), (5, 0, [1] * 5)])
def test_stages_group_consecutive_waves_into_at_most_the_passes(count, passes, sizes):
    waves = [[f"w{i}a", f"w{i}b"] for i in range(count)]
    runs = stages(waves, passes)
    assert [len(r) // 2 for r in runs] == sizes
    assert [item for run in runs for item in run] == [item for wave in waves for item in wave]  # order kept


def _chain(depth: int):
    """x -> (Conv 3x3 + Relu) x depth -> GlobalAveragePool -> Gemm: `depth` waves of prunable groups."""
    b = Builder(seed=5)
    y = b.input("x", ["N", 2, 6, 6])
    channels = 2
    for i in range(depth):
        y = b.relu(b.conv(y, channels, 6, 3, name=f"c{i}"))
        channels = 6
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    b.output(b.gemm(y, 6, 3, name="head"))
    return b.model()


def _data(n: int = 40) -> dict:
    return {"x": np.random.default_rng(1).standard_normal((n, 2, 6, 6)).astype(np.float32)}


@pytest.mark.parametrize(("depth", "expected"), [(1, False), (AUTO_MIN_WAVES, True), (5, True)])
def test_obs_picks_sequential_by_depth_and_the_flags_override_it(depth, expected):
    model = _chain(depth)
    step = prune(model, "obs", PruneOptions(ratio=0.5), calibration=_data(), run_validation=False).report["steps"][0]
    assert step["sequential"] == {
        "on": expected,
        "chosen": "auto",
        "waves": depth,
        "passes": depth if expected else 1,  # one pass per wave by default
    }
    for flag in (True, False):
        options = PruneOptions(ratio=0.5, extra={"sequential": flag})
        step = prune(model, "obs", options, calibration=_data(), run_validation=False).report["steps"][0]
        assert step["sequential"]["on"] is flag and step["sequential"]["chosen"] == "given"


def test_sequential_passes_cap_the_statistics_passes():
    options = PruneOptions(ratio=0.5, extra={"sequential": True, "sequential_passes": 2, "sequential_samples": 16})
    result = prune(_chain(5), "obs", options, calibration=_data(), run_validation=False)
    assert result.report["steps"][0]["sequential"]["passes"] == 2
    passes = [p for p in result.report["statistics"] if p["kind"] == "hessian"]
    assert [p["samples"] for p in passes] == [40, 16]  # the pass after the first runs on the subsample


def test_a_statistics_pass_runs_only_the_nodes_its_tensors_need():
    model = _chain(5)
    names = ["c1_out"]
    small = computing(model, names)
    assert [(n.op_type, n.name if n.op_type == "Conv" else "") for n in small.graph.node] == [
        ("Conv", "c0"),
        ("Relu", ""),
        ("Conv", "c1"),
    ]  # nothing after c1
    assert {t.name for t in small.graph.initializer} == {"c0.w", "c0.b", "c1.w", "c1.b"}
    assert [o.name for o in small.graph.output] == names
    feeds = _data(4)
    full = computing(model, ["c1_out", model.graph.output[0].name])
    values = dict(zip([o.name for o in full.graph.output], run_session(full, feeds), strict=True))
    np.testing.assert_array_equal(run_session(small, feeds)[0], values["c1_out"])


def test_truncated_paired_statistics_equal_the_oracle_of_full_runs():
    """The sequential re-collection of a shallow layer (working model with other weights, paired with
    the original) gives H, C, H_ref of the rows the complete models compute."""
    model, other = _chain(4), _chain(4)
    for tensor in other.graph.initializer:
        if tensor.name == "c0.w":
            tensor.CopyFrom(make_tensor(tensor_array(tensor) * 0.7, tensor.name))
    layers = obs_layers(GraphIndex.build(model))[0]
    layer = layers["c2"]
    data = _data(12)
    stats = collect_stats(other, [layer], Dataset(data), model, CollectSettings(batch_size=5, optimize=False))["c2"]
    rows = {}
    for key, m in (("working", other), ("reference", model)):
        x = run_session(computing(m, [layer.input]), data)[0]
        r = input_rows(layer, x, None, np.random.default_rng(0))[0]
        rows[key] = np.hstack([r, np.ones((len(r), 1))]).astype(np.float64)
    n = len(rows["working"])
    np.testing.assert_allclose(stats.hessian[0], rows["working"].T @ rows["working"] / n, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats.cross[0], rows["working"].T @ rows["reference"] / n, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats.reference[0], rows["reference"].T @ rows["reference"] / n, rtol=1e-4, atol=1e-6)
    assert not np.allclose(stats.hessian, stats.reference)


def _two_depth_group():
    """x -> g0 -> Relu -> g1 -> Relu = a; a -> g2 -> Relu = b; Concat(a, b) -> g3 -> Relu -> head.
    The group of g1's channels is read by g2 and by g3 (through the Concat): its statistics pass (the
    second, after g0's group) collects g3 too, while g2, upstream of g3, is still to be compensated."""
    b = Builder(seed=7)
    x = b.input("x", ["N", 6])
    a = b.relu(b.gemm(b.relu(b.gemm(x, 6, 6, name="g0")), 6, 6, name="g1"))
    h = b.relu(b.gemm(a, 6, 6, name="g2"))
    y = b.relu(b.gemm(b.node("Concat", [a, h], axis=1), 12, 6, name="g3"))
    b.output(b.gemm(y, 6, 3, name="head"))
    return b.model()


def test_a_consumer_whose_input_still_changes_keeps_the_original_statistics():
    """--sequential refits a consumer to the original output only from inputs no later compensation
    changes: g3's input depends on g2, compensated after the pass that collects g3, so g3 keeps the
    original model's statistics, collected in the first pass (a refit there would correct an error
    that g2 then removes, twice).
    g1, g2 and head read settled inputs and are refit."""
    model = _two_depth_group()
    data = {"x": np.random.default_rng(2).standard_normal((64, 6)).astype(np.float32)}
    options = PruneOptions(ratio=0.5, extra={"sequential": True, "max_positions": 0})
    result = prune(model, "obs", options, calibration=data, run_validation=False)
    step = result.report["steps"][0]
    targets = {note["layer"]: note["target"] for note in step["layers"]}
    assert targets == {"g1": "original", "g2": "refit", "g3": "original", "head": "refit"}
    passes = [p["layers"] for p in result.report["statistics"] if p["kind"] == "hessian"]
    assert passes == [2, 1, 1]  # g3 is collected with g1, on the original model
    g3 = obs_layers(GraphIndex.build(model))[0]["g3"]
    changed = {k: v for k, v in result.plans[0].updates.items() if k.startswith("g3.")}
    z0, z1 = (layer_rows(m, data, g3) for m in (model, with_updates(model, changed)))
    note = next(n for n in step["layers"] if n["layer"] == "g3")  # its error: on the original inputs
    assert note["measured_error"] == pytest.approx(0.5 * ((z1 - z0) ** 2).sum() / len(z0), rel=1e-3)
