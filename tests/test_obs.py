"""Structured OBS: exact compensation of redundant channels, costs against measured errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import Builder, layer_rows

from onnxprune import PruneOptions, prune, runtime
from onnxprune.cli import main
from onnxprune.feeds import Dataset, load_dataset
from onnxprune.graph import GraphIndex
from onnxprune.io import load_model, save_model
from onnxprune.layers import obs_layers, with_updates


def _options(ratio, **extra) -> PruneOptions:
    return PruneOptions(ratio=ratio, extra={"max_positions": 0, **extra})


def _data(model, n, seed=0) -> Dataset:
    info = model.graph.input[0]
    shape = [d.dim_value or n for d in info.type.tensor_type.shape.dim]
    return Dataset({info.name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)})


def _dependent_dense(consumers: int = 1, bias: bool = True) -> onnx.ModelProto:
    """x -> Gemm (4 hidden, no activation) -> consumer Gemm(s); hidden 3 = 2 h0 - h1 + 0.5."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 4))
    c = rng.standard_normal(4)
    w[:, 3] = 2 * w[:, 0] - w[:, 1]
    c[3] = 2 * c[0] - c[1] + 0.5
    b = Builder(seed=1)
    x = b.input("x", ["N", 5])
    h = b.node("Gemm", [x, b.const(w, "p.w"), b.const(c, "p.b")], name="producer")
    for k in range(consumers):
        b.output(b.gemm(h, 4, 3, name=f"consumer{k}", bias=bias))
    return b.model()


def _dependent_conv() -> onnx.ModelProto:
    """1x1 Conv producing 4 channels (channel 3 = ch0 + 3 ch2 - 1), Relu-free, then a 3x3 Conv."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 3, 1, 1))
    c = rng.standard_normal(4)
    w[3] = w[0] + 3 * w[2]
    c[3] = c[0] + 3 * c[2] - 1.0
    b = Builder(seed=3)
    x = b.input("x", ["N", 3, 6, 6])
    h = b.node("Conv", [x, b.const(w, "p.w"), b.const(c, "p.b")], name="producer")
    b.output(b.conv(h, 4, 5, 3, name="consumer", pads=[0, 0, 0, 0]))
    return b.model()


def _outputs(model, feeds):
    return runtime.run(runtime.session(model), feeds)


@pytest.mark.parametrize("build", [_dependent_dense, _dependent_conv], ids=["gemm", "conv3x3"])
def test_a_channel_that_is_a_combination_of_kept_ones_is_removed_without_changing_the_output(build):
    model = build()
    result = prune(model, "obs", _options(0.25, damping=0.0), calibration=_data(model, 40), run_validation=False)
    plan = result.plans[0]
    assert len(plan.removed) == 1
    feeds = _data(model, 7, seed=5).feeds  # other inputs: the relation is exact for every input
    for before, after in zip(_outputs(model, feeds), _outputs(result.model, feeds), strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    note = result.report["steps"][0]["layers"][0]
    assert note["measured_error"] < 1e-8 * max(1.0, note["predicted_error"] + 1)


def test_several_consumers_sum_their_costs_and_are_all_compensated():
    model = _dependent_dense(consumers=2)
    result = prune(model, "obs", _options(0.25, damping=0.0), calibration=_data(model, 40), run_validation=False)
    step = result.report["steps"][0]
    group = next(g for g in step["groups"] if g["producers"] == ["producer"])
    assert sorted(group["consumers"]) == ["consumer0", "consumer1"]
    assert group["kept"] == 3
    feeds = _data(model, 6, seed=4).feeds
    for before, after in zip(_outputs(model, feeds), _outputs(result.model, feeds), strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
    total = sum(n["predicted_error"] for n in step["layers"])
    assert group["notes"]["predicted_error"] == pytest.approx(total, abs=1e-9)


def test_the_consumer_bias_absorbs_a_constant_channel():
    """A neuron with zero weights and bias 0.7 outputs relu(0.7) always: removing it moves 0.7 W[:, c]
    into the consumer's bias."""
    b = Builder(seed=6)
    x = b.input("x", ["N", 5])
    w = np.random.default_rng(6).standard_normal((5, 6))
    c = np.random.default_rng(7).standard_normal(6)
    w[:, 2], c[2] = 0.0, 0.7
    h = b.relu(b.node("Gemm", [x, b.const(w, "p.w"), b.const(c, "p.b")], name="producer"))
    b.output(b.gemm(h, 6, 3, name="consumer"))
    model = b.model()
    result = prune(model, "obs", _options(1 / 6, damping=0.0), calibration=_data(model, 60), run_validation=False)
    index = GraphIndex.build(model)
    groups = [g for g in result.report["steps"][0]["groups"] if g["producers"] == ["producer"]]
    assert groups[0]["kept"] == 5
    new_bias = result.plans[0].updates["consumer.b"]
    old_w, old_b = index.constant("consumer.w"), index.constant("consumer.b")
    np.testing.assert_allclose(new_bias, old_b + 0.7 * old_w[2], rtol=1e-5, atol=1e-6)
    feeds = _data(model, 5, seed=8).feeds
    np.testing.assert_allclose(_outputs(result.model, feeds)[0], _outputs(model, feeds)[0], rtol=1e-4, atol=1e-5)


def _flatten_net(seed=0) -> onnx.ModelProto:
    b = Builder(seed=seed)
    x = b.input("x", ["N", 2, 5, 5])
    y = b.relu(b.conv(x, 2, 6, 3, name="conv0"))
    y = b.relu(b.conv(y, 6, 4, 3, name="conv1", strides=[2, 2]))
    y = b.node("Flatten", [y], axis=1)
    b.output(b.gemm(y, 4 * 3 * 3, 3, trans_b=1, name="fc"))
    return b.model()


def test_predicted_costs_equal_measured_errors_for_conv_and_flatten_blocks():
    model = _flatten_net(1)
    data = _data(model, 80)  # 80 samples > 37 fc inputs: every Hessian is nonsingular
    result = prune(model, "obs", _options(0.5, damping=0.0, obs_step_size=1), calibration=data, run_validation=False)
    layers = obs_layers(GraphIndex.build(model))[0]
    notes = {n["layer"]: n for n in result.report["steps"][0]["layers"]}
    assert set(notes) == {"conv1", "fc"}
    for name, note in notes.items():
        layer = layers[name]
        only = {k: v for k, v in result.plans[0].updates.items() if k in (layer.weight, layer.obs_bias)}
        z0, z1 = layer_rows(model, data.feeds, layer), layer_rows(with_updates(model, only), data.feeds, layer)
        measured = 0.5 * ((z1 - z0) ** 2).sum() / len(z0)
        assert note["measured_error"] == pytest.approx(measured, rel=1e-3, abs=1e-9)
        assert note["predicted_error"] == pytest.approx(note["measured_error"], rel=1e-5, abs=1e-9)


def test_wide_consumers_in_float32_choose_and_compensate_as_in_float64(monkeypatch):
    """Above hessian.PRECISE_WIDTH, H^-1 is inverted and downdated in float32: same channels, same
    predicted and measured errors to float32 accuracy."""
    model = _flatten_net(2)
    data = _data(model, 80)
    options = _options(0.5, damping=0.01)
    precise = prune(model, "obs", options, calibration=data, run_validation=False)
    monkeypatch.setattr("onnxprune.methods.obs.PRECISE_WIDTH", 0)
    single = prune(model, "obs", options, calibration=data, run_validation=False)
    assert single.plans[0].removed == precise.plans[0].removed
    for a, b in zip(precise.report["steps"][0]["layers"], single.report["steps"][0]["layers"], strict=True):
        assert b["predicted_error"] == pytest.approx(a["predicted_error"], rel=1e-4)
        assert b["measured_error"] == pytest.approx(a["measured_error"], rel=1e-4)


def test_several_channels_per_step_are_compensated_jointly():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 6))
    w[:, 4] = w[:, 0] - w[:, 1]
    w[:, 5] = 0.5 * w[:, 2] + w[:, 3]
    b = Builder(seed=4)
    x = b.input("x", ["N", 6])
    h = b.node("MatMul", [x, b.const(w, "p.w")], name="producer")
    b.output(b.matmul(h, 6, 3, name="consumer"))
    model = b.model()
    options = _options(2 / 6, damping=0.0, obs_step_size=2)
    result = prune(model, "obs", options, calibration=_data(model, 30), run_validation=False)
    assert len(result.plans[0].removed) == 2
    feeds = _data(model, 4, seed=2).feeds
    np.testing.assert_allclose(_outputs(result.model, feeds)[0], _outputs(model, feeds)[0], rtol=1e-4, atol=1e-4)


def test_obs_beats_magnitude_on_the_digits_mlp():
    model = load_model("models/mlp.onnx")
    calib = load_dataset("models/digits_calib.npz", model, 300)
    test = load_dataset("models/digits_test.npz", model, 300)
    accuracy = {}
    for method in ("obs", "magnitude"):
        options = _options(0.6) if method == "obs" else PruneOptions(ratio=0.6)
        result = prune(model, method, options, calibration=calib, validation_data=test, validate_samples=300)
        accuracy[method] = result.report["validation"]["accuracy_after"]
    assert accuracy["obs"] > accuracy["magnitude"] + 0.05


def test_sequential_obs_measures_against_the_original_outputs():
    model = _flatten_net(2)
    data = _data(model, 60)
    result = prune(model, "obs", _options(0.5, sequential=True), calibration=data, run_validation=False)
    step = result.report["steps"][0]
    assert step["statistics_passes"] == 2
    same_shape = with_updates(model, result.plans[0].updates)
    layers = obs_layers(GraphIndex.build(model))[0]
    for note in step["layers"]:
        layer = layers[note["layer"]]
        z0, z1 = layer_rows(model, data.feeds, layer), layer_rows(same_shape, data.feeds, layer)
        assert note["measured_error"] == pytest.approx(0.5 * ((z1 - z0) ** 2).sum() / len(z0), rel=1e-3)


def test_groups_whose_consumer_cannot_be_compensated_are_skipped_with_a_reason():
    b = Builder(seed=5)
    x = b.input("x", ["N", 2, 4, 4])
    y = b.relu(b.conv(x, 2, 4, 3, name="conv"))
    w = b.rand((4, 3, 2, 2), "up.w")
    b.output(b.node("ConvTranspose", [y, w], name="up", strides=[2, 2]))
    model = b.model()
    result = prune(model, "obs", _options(0.5), calibration=_data(model, 8), run_validation=False)
    assert not result.plans[0].removed
    rows = [g for g in result.report["steps"][0]["groups"] if g["producers"] == ["conv"]]
    assert "ConvTranspose" in rows[0]["notes"]["skipped"]


def test_cli_obs(tmp_path):
    model = _flatten_net(3)
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    save_model(model, path)
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((16, 2, 5, 5)).astype(np.float32))
    main(["prune", str(path), "-o", str(out), "--method", "obs", "--calib", str(tmp_path / "c.npz"), "-q"])
    main(["prune", str(path), "-o", str(out), "--method", "obs", "--calib", str(tmp_path / "c.npz"), "-q",
          "--sequential", "--obs-step-size", "2", "--max-positions", "10"])  # fmt: skip
    assert load_model(out).graph.node
