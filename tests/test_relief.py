"""relief (methods/relief.py) and neuron removal (methods/neurons.py, methods/bias_fold.py).

Oracles: the relief scores against loops written from the paper's formulas; the alpha selection against
its definition (shortest prefix, ties kept); neuron removal against onnxruntime (outputs unchanged on
the calibration data for dead neurons, on any data for folded constants).
"""

from __future__ import annotations

import numpy as np
import pytest
from graphs import Builder
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune import PruneOptions, io, prune, runtime
from onnxprune.analysis import analyze
from onnxprune.errors import CalibrationError, OptionError
from onnxprune.feeds import Dataset
from onnxprune.graph import GraphIndex
from onnxprune.layers import Workspace, affine, masking_layers
from onnxprune.methods.base import MethodContext
from onnxprune.methods.neurons import silent_exits
from onnxprune.methods.relief import RELIEF, alpha_keep, relief_scores
from onnxprune.stats import CollectSettings, Statistics


def context(model, feeds: dict, **extra) -> MethodContext:
    index = GraphIndex.build(model)
    stats = Statistics(Dataset(feeds), CollectSettings())
    return MethodContext.build(RELIEF, model, index, analyze(index), PruneOptions(extra=extra), stats)


def scores_of(model, feeds: dict, node: str):
    ctx = context(model, feeds)
    layer = masking_layers(ctx.index)[node]
    stats = ctx.stats.activity(ctx.model, [layer], relief_weights=ctx.index)[node]
    space = Workspace(ctx.index)
    scale, shift = affine(layer, space)
    return relief_scores(layer, space.get(layer.weight), stats, scale, shift)


def run(model, feeds: dict) -> list[np.ndarray]:
    return runtime.run(runtime.session(model), feeds)


# ---- scores ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_scores_match_hand_computation(trans_b):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4))  # [out j, in i]
    b = np.array([0.5, -2.0, 0.0])
    x = rng.standard_normal((7, 4)).astype(np.float32)
    g = Builder()
    g.input("x", ["N", 4])
    out = g.node(
        "Gemm", ["x", g.const(w if trans_b else w.T), g.const(b)], name="fc", transB=trans_b, alpha=2.0, beta=0.5
    )
    g.output(out)
    scores, bias = scores_of(g.model(), {"x": x}, "fc")
    w32, b32, x64 = w.astype(np.float32), b.astype(np.float32), x.astype(np.float64)
    hand = np.zeros((3, 4))
    for j in range(3):
        for i in range(4):
            hand[j, i] = np.mean([abs(2.0 * w32[j, i] * x64[n, i]) for n in range(7)])
    np.testing.assert_allclose(scores, hand, rtol=1e-6)
    np.testing.assert_allclose(bias, np.abs(0.5 * b32), rtol=1e-6)


def _abs_conv(x: np.ndarray, k: np.ndarray, pads, strides) -> np.ndarray:
    """|x| * |k| for one channel: 2-D correlation with zero padding (top, left, bottom, right) and strides."""
    padded = np.pad(np.abs(x), ((pads[0], pads[2]), (pads[1], pads[3])))
    kh, kw = k.shape
    rows = (padded.shape[0] - kh) // strides[0] + 1
    cols = (padded.shape[1] - kw) // strides[1] + 1
    out = np.zeros((rows, cols))
    for r in range(rows):
        for c in range(cols):
            window = padded[r * strides[0] : r * strides[0] + kh, c * strides[1] : c * strides[1] + kw]
            out[r, c] = (window * np.abs(k)).sum()
    return out


@pytest.mark.parametrize("pads,strides", [([1, 1, 1, 1], [2, 2]), ([0, 1, 2, 0], [1, 2])])
def test_conv_scores_match_hand_computation(pads, strides):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = np.array([0.3, -1.0, 2.0], dtype=np.float32)
    x = rng.standard_normal((4, 2, 5, 6)).astype(np.float32)
    g = Builder()
    g.input("x", ["N", 2, 5, 6])
    g.output(g.node("Conv", ["x", g.const(w), g.const(b)], name="conv", pads=pads, strides=strides))
    scores, bias = scores_of(g.model(), {"x": x}, "conv")
    hand = np.zeros((3, 2))
    for j in range(3):
        for i in range(2):
            norms = [np.linalg.norm(_abs_conv(x[n, i].astype(np.float64), w[j, i], pads, strides)) for n in range(4)]
            hand[j, i] = np.mean(norms)
    positions = _abs_conv(x[0, 0], w[0, 0], pads, strides).size
    np.testing.assert_allclose(scores, hand, rtol=1e-6)
    np.testing.assert_allclose(bias, np.abs(b) * np.sqrt(positions), rtol=1e-6)


def test_conv_statistics_do_not_depend_on_the_chunk_size(monkeypatch):
    from onnxprune.stats import activity

    g = Builder(seed=12)
    g.input("x", ["N", 3, 6, 6])
    g.output(g.conv("x", 3, 4, k=3, name="conv", strides=[2, 2]))
    model, x = g.model(), np.random.default_rng(13).standard_normal((9, 3, 6, 6)).astype(np.float32)
    whole = scores_of(model, {"x": x}, "conv")
    monkeypatch.setattr(activity, "_CHUNK_VALUES", 100)  # one sample per chunk, and chunked numerators
    chunked = scores_of(model, {"x": x}, "conv")
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10)


@pytest.mark.parametrize("kind", ["gemm", "matmul"])
def test_affine_tail_matches_onnxruntime(kind):
    """pre-activation after bias and BatchNorm = scale * (W x) + shift, as relief scores it."""
    rng = np.random.default_rng(2)
    g = Builder(seed=3)
    g.input("x", ["N", 4])
    y = g.gemm("x", 4, 5, trans_b=1, name="fc") if kind == "gemm" else g.matmul("x", 4, 5, name="fc")
    g.output(g.bn(y, 5))
    model = g.model()
    x = rng.standard_normal((6, 4)).astype(np.float32)
    ctx = context(model, {"x": x})
    layer = masking_layers(ctx.index)["fc"]
    space = Workspace(ctx.index)
    scale, shift = affine(layer, space)
    product = layer.oik(space.get(layer.weight))[:, :, 0] @ x.T.astype(np.float64)  # [O, N]
    np.testing.assert_allclose(run(model, {"x": x})[0], (scale[:, None] * product + shift[:, None]).T, rtol=1e-5)


# ---- alpha selection -------------------------------------------------------------------------------
def test_alpha_keeps_the_shortest_prefix_and_ties():
    scores = np.array([[0.5, 0.2, 0.2, 0.1], [0.5, 0.2, 0.2, 0.1], [0.1, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    bias = np.array([0.0, 0.0, 0.8, 0.0])
    keep, keep_bias = alpha_keep(scores, bias, 0.6)
    assert keep[0].tolist() == [True, True, True, False]  # 0.5 + 0.2 reaches 0.6; the tied 0.2 stays
    assert keep[2].tolist() == [False, False, False, False] and keep_bias[2]  # the bias alone carries 0.8
    assert not keep[3].any() and not keep_bias[3]  # nothing carries activity: nothing stays
    keep, _ = alpha_keep(scores[:1], bias[:1], 0.5)
    assert keep[0].tolist() == [True, False, False, False]  # reaching alpha exactly is enough
    keep, _ = alpha_keep(scores[:1], bias[:1], 1.0)
    assert keep[0].all()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=1, max_size=9),
    st.integers(0, 6),
    st.floats(0.01, 1.0),
)
def test_alpha_selection_is_the_shortest_prefix(values, bias_value, alpha):
    scores = np.array([values], dtype=np.float64)
    bias = np.array([bias_value], dtype=np.float64)
    keep, keep_bias = alpha_keep(scores, bias, alpha)
    full = np.append(scores[0], bias_value)
    kept = np.append(keep[0], keep_bias[0])
    total = full.sum()
    if total == 0:
        assert not kept.any()
        return
    assert full[kept].sum() >= alpha * total - 1e-9 * total  # reaches alpha
    assert full[kept].min() >= full[~kept].max(initial=0.0)  # a prefix of the sorted scores
    assert (full[~kept] < full[kept].min()).all()  # every score tied with the cut stays
    without_cut = full[kept & (full > full[kept].min())].sum()
    assert without_cut < alpha * total - 1e-12  # shortest: the prefix before the cut's tie class falls short


# ---- neuron removal --------------------------------------------------------------------------------
def _mlp(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, beta: float = 1.0):
    g = Builder()
    g.input("x", ["N", w1.shape[1]])
    h = g.relu(g.node("Gemm", ["x", g.const(w1, "fc1.w"), g.const(b1, "fc1.b")], name="fc1", transB=1))
    g.output(g.node("Gemm", [h, g.const(w2, "fc2.w"), g.const(b2, "fc2.b")], name="fc2", transB=1, beta=beta))
    return g.model()


def _relief(model, feeds, alpha=1.0, **extra):
    options = PruneOptions(extra={"alpha": alpha, **extra})
    return prune(model, "relief", options, calibration=feeds, calib_samples=None, holdout=0.0)  # all data calibrates


def test_dead_neuron_is_removed_and_outputs_on_the_data_do_not_change():
    rng = np.random.default_rng(4)
    w1, b1 = np.abs(rng.standard_normal((6, 5))), np.full(6, 0.1)  # inputs are >= 0: every neuron fires
    w1[2], b1[2] = -w1[2], -10.0  # but neuron 2, never
    w2, b2 = rng.standard_normal((3, 6)), rng.standard_normal(3)
    model = _mlp(w1, b1, w2, b2)
    feeds = {"x": rng.random((40, 5)).astype(np.float32)}
    result = _relief(model, feeds)
    analysis = analyze(GraphIndex.build(model))
    assert result.plans[0].removed == {int(analysis.const_labels["fc1.w"][0][2])}
    assert result.report["steps"][0]["neurons"] == {"dead": 1}
    assert result.report["params_after"] == result.report["params_before"] - (5 + 1) - 3
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)


def _residual(dead_in_b: bool):
    """r1 = relu(A x), r2 = relu(B r1), out = C (r1 + r2): A and B share channels through the Add."""
    rng = np.random.default_rng(5)
    wa, ba = rng.standard_normal((3, 2, 1, 1)), rng.standard_normal(3) * 0.1
    wb, bb = rng.standard_normal((3, 3, 1, 1)), rng.standard_normal(3) * 0.1 + 0.5
    wa[1], ba[1] = -np.abs(wa[1]), -10.0
    if dead_in_b:
        bb[1] = -100.0
    g = Builder()
    g.input("x", ["N", 2, 4, 4])
    r1 = g.relu(g.node("Conv", ["x", g.const(wa, "a.w"), g.const(ba, "a.b")], name="A"))
    r2 = g.relu(g.node("Conv", [r1, g.const(wb, "b.w"), g.const(bb, "b.b")], name="B"))
    s = g.node("Add", [r1, r2])
    g.output(g.node("Conv", [s, g.const(rng.standard_normal((2, 3, 1, 1)), "c.w")], name="C"))
    return g.model(), {"x": rng.random((20, 2, 4, 4)).astype(np.float32)}


@pytest.mark.parametrize("dead_in_b", [False, True], ids=["one-member-dead", "all-members-dead"])
def test_residual_channel_goes_only_when_every_member_agrees(dead_in_b):
    model, feeds = _residual(dead_in_b)
    analysis = analyze(GraphIndex.build(model))
    channel = int(analysis.const_labels["a.w"][0][1])
    assert channel == int(analysis.const_labels["b.w"][0][1])  # one residual group
    result = _relief(model, feeds)
    assert (channel in result.plans[0].removed) == dead_in_b
    np.testing.assert_allclose(run(result.model, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_no_incoming_neuron_is_folded_into_the_consumer_bias(beta):
    rng = np.random.default_rng(6)
    w1, b1 = rng.standard_normal((5, 4)), rng.standard_normal(5)
    w1[3], b1[3] = 0.0, 0.7  # constant activation relu(0.7)
    model = _mlp(w1, b1, rng.standard_normal((2, 5)), rng.standard_normal(2), beta)
    feeds = {"x": rng.standard_normal((30, 4)).astype(np.float32)}
    result = _relief(model, feeds)
    assert result.report["steps"][0]["neurons"] == {"no incoming": 1}
    fresh = {"x": rng.standard_normal((30, 4)).astype(np.float32) * 3}  # the fold is exact on any input
    np.testing.assert_allclose(run(result.model, fresh)[0], run(model, fresh)[0], rtol=1e-5, atol=1e-5)


def _conv_pair(pads, consumer_bias: bool):
    rng = np.random.default_rng(7)
    w1, b1 = rng.standard_normal((3, 2, 1, 1)), rng.standard_normal(3)
    w1[1], b1[1] = 0.0, 0.4
    g = Builder(seed=8)
    g.input("x", ["N", 2, 5, 5])
    h = g.relu(g.node("Conv", ["x", g.const(w1, "c1.w"), g.const(b1, "c1.b")], name="c1"))
    inputs = [h, g.const(rng.standard_normal((2, 3, 3, 3)), "c2.w")]
    if consumer_bias:
        y = g.node("Conv", [*inputs, g.const(rng.standard_normal(2), "c2.b")], name="c2", pads=pads)
    else:
        y = g.bn(g.node("Conv", inputs, name="c2", pads=pads), 2)
    g.output(y)
    return g.model(), {"x": rng.standard_normal((10, 2, 5, 5)).astype(np.float32)}


@pytest.mark.parametrize("consumer_bias", [True, False], ids=["conv-bias", "batchnorm-mean"])
def test_constant_conv_channel_folds_when_the_consumer_reads_no_padding(consumer_bias):
    model, feeds = _conv_pair([0, 0, 0, 0], consumer_bias)
    result = _relief(model, feeds)
    assert result.report["steps"][0]["neurons"] == {"no incoming": 1}
    fresh = {"x": np.random.default_rng(9).standard_normal((5, 2, 5, 5)).astype(np.float32)}
    np.testing.assert_allclose(run(result.model, fresh)[0], run(model, fresh)[0], rtol=1e-5, atol=1e-5)


def test_constant_conv_channel_stays_when_the_consumer_pads():
    model, feeds = _conv_pair([1, 1, 1, 1], True)
    result = _relief(model, feeds)
    step = result.report["steps"][0]
    assert step["neurons"] == {"kept_idle": 1}
    assert "pads its input with zeros" in step["kept_idle"][0]
    assert result.report["params_after"] == result.report["params_before"]


def test_neuron_without_outgoing_connections_is_removed():
    rng = np.random.default_rng(10)
    w2 = rng.standard_normal((3, 6))
    w2[:, 4] = 0.0
    model = _mlp(rng.standard_normal((6, 5)), rng.standard_normal(6), w2, rng.standard_normal(3))
    feeds = {"x": rng.standard_normal((30, 5)).astype(np.float32)}
    result = _relief(model, feeds)
    assert result.report["steps"][0]["neurons"] == {"no outgoing": 1}
    fresh = {"x": rng.standard_normal((30, 5)).astype(np.float32)}
    np.testing.assert_allclose(run(result.model, fresh)[0], run(model, fresh)[0], rtol=1e-5, atol=1e-5)


def test_attention_queries_and_keys_are_never_removed_by_activity():
    """Channels contracted away (q k^T with no value head behind them) leave through no consumer
    weight: unsafe. Whole heads (the encoder's q, k and v columns of a head, one channel carried by q k^T
    on its head axis to the output projection) and FFN neurons are not."""
    b = Builder(seed=19)
    x = b.input("x", [3, 6])
    b.output(b.node("MatMul", [b.gemm(x, 6, 4, name="q"), b.node("Transpose", [b.gemm(x, 6, 4, name="k")])]))
    index = GraphIndex.build(b.model())
    analysis = analyze(index)
    contracted = {c for g in analysis.groups for c in g.channels}
    assert contracted and contracted <= silent_exits(index, analysis)
    index = GraphIndex.build(io.load_model("models/transformer_encoder.onnx"))
    analysis = analyze(index)
    unsafe = silent_exits(index, analysis)
    by_producer = {p.node: set(g.channels) for g in analysis.groups for p in g.producers}
    assert by_producer["/q/MatMul"] == by_producer["/v/MatMul"]  # one group of heads
    assert not by_producer["/ff1/MatMul"] & unsafe and not by_producer["/v/MatMul"] & unsafe


@pytest.mark.parametrize("kind", ["gemm", "conv", "conv-bn"])
def test_compensation_keeps_every_output_mean_on_the_data(kind):
    """--relief-compensate: the mean over calibration rows (and positions) of each pre-activation stays."""
    g = Builder(seed=14)
    if kind == "gemm":
        g.input("x", ["N", 6])
        y, axes = g.gemm("x", 6, 4, trans_b=1, name="fc", alpha=1.5, beta=0.5), (0,)
        x = np.random.default_rng(15).standard_normal((30, 6)).astype(np.float32) + 1.0
    else:
        g.input("x", ["N", 3, 6, 6])
        y, axes = g.conv("x", 3, 4, k=3, name="conv", strides=[2, 1], bias=kind == "conv"), (0, 2, 3)
        y = g.bn(y, 4) if kind == "conv-bn" else y
        x = np.random.default_rng(15).standard_normal((12, 3, 6, 6)).astype(np.float32) + 1.0
    g.output(y)
    model, feeds = g.model(), {"x": x}
    result = _relief(model, feeds, alpha=0.6, relief_compensate=True)
    row = result.report["steps"][0]["layers"][0]
    assert row["kept"] < row["kernels" if kind != "gemm" else "weights"] and row["compensated"] is True
    before, after = run(model, feeds)[0], run(result.model, feeds)[0]
    assert not np.allclose(before, after, atol=1e-3)  # the masks did change the outputs
    np.testing.assert_allclose(after.mean(axis=axes), before.mean(axis=axes), rtol=1e-4, atol=1e-5)


# ---- relief on the sample models -----------------------------------------------------------------
def test_conv_masks_are_whole_kernels_and_iterations_are_reported():
    result = prune(
        "models/lenet5.onnx",
        "relief",
        PruneOptions(extra={"alpha": 0.9}),
        calibration="models/digits_calib.npz",
        calib_samples=100,
        iterations=2,
    )
    steps = result.report["steps"]
    assert [s["iteration"] for s in steps] == [1, 2]
    assert all("validation" in s and "params_after" in s for s in steps)
    assert steps[1]["nonzero_params_after"] < steps[0]["nonzero_params_after"] < result.report["params_before"]
    conv = result.plans[0].updates["conv2.weight"]
    blocks = np.abs(conv).reshape(conv.shape[0], conv.shape[1], -1)
    assert ((blocks == 0).all(2) | (blocks != 0).all(2)).all()  # a kernel is all zero or untouched
    assert (blocks == 0).all(2).any()


# ---- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{"alpha": 0.0}, {"alpha": 1.5}, {"alpha_fc": -0.1}, {"alpha_conv": "x"}])
def test_alpha_out_of_range_is_an_option_error(extra):
    with pytest.raises(OptionError, match="--alpha"):
        prune("models/mlp.onnx", "relief", PruneOptions(extra=extra), calibration="models/digits_calib.npz")


def test_relief_needs_calibration_data():
    with pytest.raises(OptionError, match="needs calibration data"):
        prune("models/mlp.onnx", "relief")


def test_overflowing_activations_are_reported_and_nothing_is_written(tmp_path):
    from onnxprune.cli import main

    rng = np.random.default_rng(11)
    model = _mlp(rng.standard_normal((4, 3)) * 1e30, np.zeros(4), rng.standard_normal((2, 4)), np.zeros(2))
    path = tmp_path / "big.onnx"
    path.write_bytes(model.SerializeToString())
    np.savez(tmp_path / "x.npz", x=np.ones((8, 3), np.float32) * 1e10)
    with pytest.raises(CalibrationError, match="NaN/Inf"):
        _relief(model, {"x": np.ones((8, 3), np.float32) * 1e10})
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "prune",
                str(path),
                "-o",
                str(tmp_path / "out.onnx"),
                "--method",
                "relief",
                "--calib",
                str(tmp_path / "x.npz"),
            ]
        )
    assert exit_info.value.code == 1
    assert not (tmp_path / "out.onnx").exists()


def test_cli_rejects_a_bad_alpha(tmp_path, capsys):
    from onnxprune.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "models/mlp.onnx", "-o", str(tmp_path / "o.onnx"), "--method", "relief", "--alpha", "1.5",
              "--calib", "models/digits_calib.npz"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "--alpha 1.5: must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


def test_relief_method_is_registered_with_its_options():
    from onnxprune.methods.registry import METHODS, method_options

    assert METHODS["relief"] is RELIEF and RELIEF.needs_data
    assert {"alpha", "alpha_fc", "alpha_conv"} <= {o.dest for o in method_options()}
