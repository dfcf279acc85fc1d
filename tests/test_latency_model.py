"""The latency cost model (onnxprune/budget/latency.py) with a fake timer: nothing here is timed.

The fake timer gives every model a time from its structure: a fixed overhead per run, a small cost
per node, and for each Conv/Gemm/MatMul its MACs, optionally with both channel counts rounded up to a
multiple of 8 (a runtime whose kernels work in blocks of 8 channels). Without steps, a layer's MACs
are bilinear in its kept input and output fractions, so the cost model must reproduce the fake
time of a physically shrunk model exactly.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from onnxprune.analysis import analyze
from onnxprune.analysis.cost import node_macs
from onnxprune.budget.latency import (
    CALIBRATION_CALLS,
    GRID,
    LatencyCostModel,
    choose_round_to,
    grid_widths,
    uniform_half,
)
from onnxprune.budget.latency_check import check_latency_target, measure_latency_ratio
from onnxprune.budget.single_node import layer_shape
from onnxprune.errors import OptionError
from onnxprune.graph import GraphIndex
from tests.graphs import Builder, run_session, shrunk_model

OVERHEAD, PER_NODE, PER_MAC = 1e-4, 1e-6, 1e-9


def fake_timer(step: int = 1):
    """Seconds of a model: OVERHEAD + PER_NODE per node + PER_MAC per MAC of its weight layers, the
    layers' channel counts rounded up to multiples of `step`."""

    def seconds(model: onnx.ModelProto) -> float:
        index = GraphIndex.build(model)
        total = OVERHEAD + PER_NODE * len(model.graph.node)
        for node in model.graph.node:
            macs = node_macs(index, node)
            shape = layer_shape(index, node)
            if macs and shape is not None:
                cin, cout = shape.cin, shape.cout
                macs *= (math.ceil(cin / step) * step / cin) * (math.ceil(cout / step) * step / cout)
            total += PER_MAC * macs
        return total

    def timer(runs):
        timer.calls += len(runs)
        return [seconds(model) for model, _ in runs]

    timer.calls = 0
    return timer


def cnn(batch="N") -> onnx.ModelProto:
    """x[N,8,10,10] - Conv3x3 64 - Relu - Conv3x3 64 - Relu - Conv1x1 48 - GAP - Flatten - Gemm 10."""
    b = Builder(opset=13)
    x = b.input("x", [batch, 8, 10, 10])
    y = b.relu(b.conv(x, 8, 64, 3, name="c1"))
    y = b.relu(b.conv(y, 64, 64, 3, name="c2"))
    y = b.conv(y, 64, 48, 1, name="c3")
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    b.output(b.gemm(y, 48, 10, trans_b=1, name="fc"))
    return b.model()


def cost_model(model, step: int = 1, **kwargs) -> LatencyCostModel:
    index = GraphIndex.build(model)
    return LatencyCostModel(model, analyze(index), index, "cpu", timer=fake_timer(step), **kwargs)


def groups_by_producer(model: LatencyCostModel) -> dict[str, int]:
    return {g.producers[0].node: g.id for g in model.analysis.prunable_groups()}


def kept_model(model: LatencyCostModel, kept: dict[int, int]) -> onnx.ModelProto:
    """The model with each group's last channels removed down to kept[g]."""
    removed = set()
    for gid, count in kept.items():
        group = model.analysis.group(gid)
        removed |= set(group.channels[count:])
    return shrunk_model(model.model, model.analysis, removed)


def test_cost_of_nothing_removed_is_the_measured_whole_model():
    model = cost_model(cnn())
    assert model.kind == "latency"
    assert model.cost({}) == pytest.approx(fake_timer()([(model.model, None)])[0], rel=1e-12)
    assert model.ratio({}) == pytest.approx(1.0)


def test_every_layer_a_group_changes_is_timed_on_the_grid():
    model = cost_model(cnn())
    assert sorted(t.table.layer.node for t in model.layers) == ["c1", "c2", "c3", "fc"]
    by_node = {t.table.layer.node: t.table for t in model.layers}
    assert by_node["c1"].fin == (1.0,)  # the model input: no group changes it
    assert by_node["c1"].fout == tuple(w / 64 for w in grid_widths(64)) == (0.125, 0.25, 0.5, 0.75, 1.0)
    assert by_node["fc"].fout == (1.0,)  # the graph output is frozen
    assert grid_widths(48) == (8, 16, 24, 32, 48)  # multiples of 8 (0.75 * 48 = 36: 4.5 blocks, to even)
    assert grid_widths(6) == (1, 2, 3, 4, 6)


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.5), (0.25, 1.0, 0.75), (1.0, 0.125, 0.5), (0.75, 0.25, 1.0)])
def test_prediction_is_exact_at_grid_widths(fractions):
    """MACs are bilinear in the kept fractions, so at grid widths (and between them) the prediction
    equals the fake time of the physically shrunk model."""
    model = cost_model(cnn())
    ids = groups_by_producer(model)
    kept = {
        ids[n]: round(f * model.analysis.group(ids[n]).size) for n, f in zip(("c1", "c2", "c3"), fractions, strict=True)
    }
    expected = fake_timer()([(kept_model(model, kept), None)])[0]
    assert model.cost(kept) == pytest.approx(expected, rel=1e-9)


def test_calibration_recovers_the_fixed_part():
    """The fit cost = alpha + beta * L(kept) from the full and the uniform-half model: with the fake
    timer, beta = 1 and alpha = the whole model's time outside the single-node copies."""
    model = cost_model(cnn())
    assert model.beta == pytest.approx(1.0)
    layers = len(model.layers)
    nodes = len(model.model.graph.node)
    assert model.alpha == pytest.approx(OVERHEAD * (1 - layers) + PER_NODE * (nodes - layers))
    assert model.calibration["half_s"] < model.calibration["whole_s"]


def test_without_calibration_the_layers_scale_to_the_whole_model():
    """Each single-node copy carries the run's overhead, so here the layers' sum exceeds the whole
    model's time: the rest cannot be a constant (it would be negative), the layers are scaled."""
    model = cost_model(cnn(), calibrate=False)
    assert model.layer_sum({}) > model.whole
    assert model.alpha == 0.0
    assert model.beta == pytest.approx(model.whole / model.layer_sum({}))
    assert model.cost({}) == pytest.approx(model.whole)


def test_without_calibration_the_rest_is_constant():
    timer = fake_timer()
    model = cnn()
    index = GraphIndex.build(model)

    def cheap_layers(runs):  # single-node copies without the run's overhead
        return [t - (OVERHEAD if len(m.graph.node) == 1 else 0.0) for t, (m, _) in zip(timer(runs), runs, strict=True)]

    model = LatencyCostModel(model, analyze(index), index, "cpu", timer=cheap_layers, calibrate=False)
    assert model.beta == 1.0
    assert model.alpha == pytest.approx(model.whole - model.layer_sum({}))
    assert model.alpha > 0


def test_cost_decreases_monotonically_with_kept_channels():
    model = cost_model(cnn(), step=8)
    for group in model.analysis.prunable_groups():
        costs = [model.cost({group.id: k}) for k in range(1, group.size + 1)]
        assert all(b >= a - 1e-15 for a, b in zip(costs, costs[1:], strict=False)), group.id
        assert costs[-1] == pytest.approx(model.cost({}))
    sizes = {g.id: g.size for g in model.analysis.prunable_groups()}
    uniform = [model.cost({g: max(1, round(f * n)) for g, n in sizes.items()}) for f in np.linspace(0.05, 1, 20)]
    assert all(b >= a for a, b in zip(uniform, uniform[1:], strict=False))
    assert uniform[0] < 0.2 * uniform[-1]


def test_preferred_widths_follow_steps_at_multiples_of_8():
    model = cost_model(cnn(), step=8)
    for group in model.analysis.prunable_groups():
        assert model.round_to(group) == 8
        widths = model.preferred_widths(group)
        assert widths == tuple(range(8, group.size + 1, 8))
        assert all(w % 8 == 0 for w in widths)


def test_no_block_preferred_when_every_count_runs_as_fast():
    """Time proportional to the channels: rounding up costs time, so no coarse round-to (2 costs half a
    channel on average, within the 2% tolerance on these 64-channel groups)."""
    model = cost_model(cnn(), step=1)
    assert all(model.round_to(g) <= 2 for g in model.analysis.prunable_groups())


def test_round_to_rule_on_a_curve():
    steps16 = {k: float(math.ceil(k / 16) * 16) for k in range(1, 65)}
    assert choose_round_to(steps16, 128) == 16
    linear = {k: float(k) for k in range(1, 17)}  # rounding up to 2 costs 6% here
    assert choose_round_to(linear, 32) == 1
    assert choose_round_to({k: float(k) for k in range(1, 65)}, 128) == 2  # 1.5%: within the tolerance
    fast_multiples = {k: (1.0 if k % 8 == 0 else 3.0) * k for k in range(1, 65)}  # a slow kernel off-block
    assert choose_round_to(fast_multiples, 128) == 8


def test_tables_are_cached_per_layer_shape_and_timer():
    timer = fake_timer()
    model = cnn()
    index = GraphIndex.build(model)
    LatencyCostModel(model, analyze(index), index, "cpu", timer=timer, calibrate=False)
    first = timer.calls
    LatencyCostModel(model, analyze(index), index, "cpu", timer=timer, calibrate=False)
    assert timer.calls - first == CALIBRATION_CALLS  # only the whole model again


def test_batch_changes_the_timed_shapes():
    model = cost_model(cnn(), batch=4)
    assert {t.table.layer.x_shape[0] for t in model.layers} == {4}


def test_uniform_half_keeps_frozen_channels_and_blocks():
    model = cost_model(cnn())
    half = uniform_half(model.analysis.prunable_groups())
    assert sorted(half.values()) == [24, 32, 32]


def test_bad_provider_is_one_clear_error():
    model = cnn()
    index = GraphIndex.build(model)
    with pytest.raises(OptionError, match="'NoSuchExecutionProvider' is not available") as info:
        LatencyCostModel(model, analyze(index), index, ["NoSuchExecutionProvider"], timer=fake_timer())
    assert "\n" not in str(info.value)
    with pytest.raises(OptionError, match="--providers tpu: unknown"):
        LatencyCostModel(model, analyze(index), index, "tpu", timer=fake_timer())


def test_fixed_batch_model_refuses_another_batch():
    model = cnn(batch=1)
    index = GraphIndex.build(model)
    with pytest.raises(OptionError, match="--latency-batch 4: the model takes batches of exactly 1"):
        LatencyCostModel(model, analyze(index), index, "cpu", batch=4, timer=fake_timer())


# ---- single-node models ------------------------------------------------------------------------------
def _single_nodes() -> onnx.ModelProto:
    b = Builder(opset=13)
    x = b.input("x", [2, 16, 6, 6])
    y = b.relu(b.conv(x, 16, 16, 3, group=16, name="dw"))
    y = b.relu(b.conv(y, 16, 32, 3, group=4, name="grouped"))
    y = b.node("ConvTranspose", [y, b.rand((32, 8, 2, 2), "ct.w")], name="ct", strides=[2, 2])
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    y = b.relu(b.gemm(y, 8, 12, trans_b=1, name="gemm"))
    b.output(b.node("MatMul", [y, b.rand((12, 5), "mm.w")], name="mm"))
    return b.model()


@pytest.mark.parametrize(
    ("node", "cin", "cout", "expected"),
    [
        ("dw", 6, 99, (6, 6)),  # depthwise: the groups are the channels, tied
        ("grouped", 9, 10, (8, 8)),  # 4 groups: multiples of 4
        ("ct", 20, 3, (20, 3)),
        ("gemm", 5, 7, (5, 7)),
        ("mm", 7, 2, (7, 2)),
    ],
)
def test_single_node_models_run_at_reduced_widths(node, cin, cout, expected):
    model = _single_nodes()
    index = GraphIndex.build(model)
    shape = layer_shape(index, next(n for n in model.graph.node if n.name == node))
    assert shape.widths(cin, cout) == expected
    single, feeds = shape.model(cin, cout)
    onnx.checker.check_model(single, full_check=True)
    (y,) = run_session(single, feeds)
    channel_axis = 1 if node in ("dw", "grouped", "ct") else -1
    assert y.shape[channel_axis] == expected[1]
    assert feeds["x"].shape[0] == 2


# ---- the latency check -------------------------------------------------------------------------------
def test_measure_latency_ratio_of_a_model_against_itself():
    ticks = iter(range(10**6))
    model = cnn()
    ratio, details = measure_latency_ratio(model, model, batch=2, repeats=5, warmup=1, clock=lambda: next(ticks))
    assert ratio == 1.0  # every run takes one tick of the fake clock
    assert details["original_ms"] == details["pruned_ms"] == 1000.0
    assert details["batch"] == 2 and details["repeats"] == 5 and details["ratio_fastest"] == 1.0
    assert details["providers"] == ["CPUExecutionProvider"]


def test_measure_latency_ratio_refuses_a_bad_provider():
    with pytest.raises(OptionError, match="not available"):
        measure_latency_ratio(cnn(), cnn(), providers=["NoSuchExecutionProvider"])


@pytest.mark.parametrize(
    ("measured", "predicted", "ok", "words"),
    [
        (0.48, 0.5, True, "met"),
        (0.54, 0.5, True, "within the 10% allowance"),
        (0.60, 0.5, False, "missed by 20%; the runtime ran the pruned model 20% slower than planned"),
        (0.70, 0.68, False, "missed by 40%; the allocation itself could not reach the target"),
        (0.70, None, False, "missed by 40%"),
    ],
)
def test_check_latency_target(measured, predicted, ok, words):
    met, message = check_latency_target(0.5, measured, predicted)
    assert met is ok
    assert words in message
    assert f"target {0.5:.2f}" in message


def test_grid_is_the_documented_one():
    assert GRID == (0.125, 0.25, 0.5, 0.75, 1.0)


def test_tables_are_monotone_in_the_widths():
    """A narrow layer timed slower than a wider one (noise on a busy machine) is clipped to the wider
    one's time: removing channels never predicts a slowdown."""
    timer = fake_timer()

    def slow_at_8(runs):
        seconds = timer(runs)
        return [10 * t if len(m.graph.node) == 1 and m.graph.initializer[0].dims[0] == 8 else t
                for t, (m, _) in zip(seconds, runs, strict=True)]  # fmt: skip

    model = cnn()
    index = GraphIndex.build(model)
    cost = LatencyCostModel(model, analyze(index), index, "cpu", timer=slow_at_8, calibrate=False)
    table = next(t.table for t in cost.layers if t.table.layer.node == "c1")
    assert table.seconds[0, 0] == table.seconds[0, 1]
    assert np.all(np.diff(table.seconds, axis=1) >= 0)


def test_report_names_the_fit_and_the_probed_round_to():
    model = cost_model(cnn(), step=8)
    group = model.analysis.prunable_groups()[0]
    model.preferred_widths(group)
    report = model.as_report()
    assert report["round_to"] == {str(group.id): 8}
    assert report["original_ms"] == pytest.approx(1000 * model.whole)
    assert report["timed_layers"] == 4 and report["calibration"]["half_ratio"] < 1


def test_check_latency_target_refuses_a_target_outside_0_1():
    with pytest.raises(ValueError, match="must be a fraction"):
        check_latency_target(1.5, 0.5)


def test_a_target_below_the_measured_floor_says_so():
    met, line = check_latency_target(0.5, 0.74, predicted=0.72, floor=0.72)
    assert not met and "removing every channel the options allow measured 0.72 while planning" in line
    met, line = check_latency_target(0.5, 0.74, predicted=0.72, floor=0.5)  # reachable: the usual reason
    assert not met and "the allocation itself could not reach the target" in line


def test_measure_reads_the_check_timer_not_the_tables_timer():
    # the closed loop must aim at the statistic the written model is checked with (medians), so
    # measure() times with check_timer; the tables' timer (fastest runs) is left alone
    seen = []

    def medians(runs):
        seen.append([m.graph.initializer[1].dims[0] for m, _ in runs])  # c1's bias: 64 original channels
        return [2.0, 1.5]

    model = cost_model(cnn(), check_timer=medians)
    tables = model.timer.calls
    group = groups_by_producer(model)["c1"]
    assert model.measure({group: 16}) == pytest.approx(0.75)
    assert model.timer.calls == tables
    assert seen == [[64, 16]]
