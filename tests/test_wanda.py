"""wanda (methods/wanda.py): scores |w_ji| ||x_i||_2 against activations read from onnxruntime and loops
over an explicit im2col, the per-row removal count, and the structured channel scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from graphs import Builder
from onnx import numpy_helper

from onnxprune import PruneOptions, prune, runtime
from onnxprune.analysis import analyze
from onnxprune.errors import OptionError
from onnxprune.graph import GraphIndex
from onnxprune.stats.collect import with_outputs


def _activations(model, feeds: dict, names: list[str]) -> list[np.ndarray]:
    sess = runtime.session(with_outputs(model, names))
    outputs = [o.name for o in sess.get_outputs()]
    values = runtime.run(sess, feeds)
    return [values[outputs.index(n)].astype(np.float64) for n in names]


def _hand_mask(weight_rows: np.ndarray, norms_rows: np.ndarray, ratio: float) -> np.ndarray:
    """Zero the floor(ratio n) lowest |w| ||x|| of every row (a loop, no vectorized ranking)."""
    masked = weight_rows.copy()
    remove = math.floor(ratio * weight_rows.shape[1])
    for j in range(len(weight_rows)):
        score = np.abs(weight_rows[j]) * norms_rows[j]
        for i in sorted(range(len(score)), key=lambda i: (score[i], i))[:remove]:
            masked[j, i] = 0.0
    return masked


def _mlp(trans_b: int):
    g = Builder(seed=1)
    g.input("x", ["N", 6])
    h = g.relu(g.gemm("x", 6, 8, trans_b=trans_b, name="fc1"))
    g.output(g.gemm(h, 8, 3, trans_b=trans_b, name="fc2"))
    return g.model(), h


def _wanda(model, feeds, ratio, **extra):
    options = PruneOptions(ratio=ratio, extra=extra)
    return prune(model, "wanda", options, calibration=feeds, calib_samples=None, holdout=0.0)  # all data calibrates


@pytest.mark.parametrize("trans_b", [0, 1])
def test_unstructured_gemm_matches_hand_computation(trans_b):
    model, hidden = _mlp(trans_b)
    feeds = {"x": np.random.default_rng(2).standard_normal((25, 6)).astype(np.float32)}
    result = _wanda(model, feeds, 0.4)
    (h,) = _activations(model, feeds, [hidden])
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, x in (("fc1.w", feeds["x"].astype(np.float64)), ("fc2.w", h)):
        w = inits[name].astype(np.float64)
        rows = w if trans_b else w.T  # [out, in]
        norms = np.sqrt((x**2).sum(0))
        expected = _hand_mask(rows, np.tile(norms, (len(rows), 1)), 0.4)
        got = result.plans[0].updates[name]
        np.testing.assert_array_equal(got if trans_b else got.T, expected.astype(np.float32))
    assert "fc1.b" not in result.plans[0].updates and "fc2.b" not in result.plans[0].updates
    zeros = sum(int((v == 0).sum()) for v in result.plans[0].updates.values())
    assert zeros == 8 * math.floor(0.4 * 6) + 3 * math.floor(0.4 * 8)


def test_unstructured_conv_uses_im2col_column_norms():
    rng = np.random.default_rng(3)
    pads, strides = [1, 0, 1, 2], [2, 1]
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    g = Builder()
    g.input("x", ["N", 2, 5, 5])
    g.output(g.node("Conv", ["x", g.const(w, "c.w")], name="c", pads=pads, strides=strides))
    x = rng.standard_normal((6, 2, 5, 5))
    result = _wanda(g.model(), {"x": x.astype(np.float32)}, 0.5)
    padded = np.pad(x.astype(np.float32).astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    rows_out = (padded.shape[2] - 3) // strides[0] + 1
    cols_out = (padded.shape[3] - 3) // strides[1] + 1
    sums = np.zeros((2, 3, 3))
    for n in range(6):
        for r in range(rows_out):
            for c in range(cols_out):
                window = padded[n, :, r * strides[0] : r * strides[0] + 3, c * strides[1] : c * strides[1] + 3]
                sums += window**2
    norms = np.sqrt(sums).reshape(1, -1).repeat(4, 0)
    expected = _hand_mask(w.reshape(4, -1).astype(np.float64), norms, 0.5).reshape(w.shape)
    np.testing.assert_array_equal(result.plans[0].updates["c.w"], expected.astype(np.float32))


def test_structured_removes_the_channels_of_lowest_consumer_activity():
    model, hidden = _mlp(1)
    feeds = {"x": np.random.default_rng(4).standard_normal((25, 6)).astype(np.float32)}
    result = _wanda(model, feeds, 0.5, structured=True)
    (h,) = _activations(model, feeds, [hidden])
    w2 = next(
        np.frombuffer(t.raw_data, np.float32).reshape(t.dims) for t in model.graph.initializer if t.name == "fc2.w"
    )
    scores = [sum(abs(float(w2[j, c])) for j in range(3)) * math.sqrt(float((h[:, c] ** 2).sum())) for c in range(8)]
    lowest = set(sorted(range(8), key=lambda c: scores[c])[:4])
    labels = analyze(GraphIndex.build(model)).const_labels["fc1.w"][0]
    assert result.plans[0].removed == {int(labels[c]) for c in lowest}
    assert result.report["params_after"] == result.report["params_before"] - 4 * (6 + 1 + 3)


def test_ratio_auto_is_rejected():
    model, _ = _mlp(1)
    with pytest.raises(OptionError, match="--ratio auto"):
        _wanda(model, {"x": np.zeros((4, 6), np.float32)}, "auto")


def test_wanda_needs_calibration_data():
    with pytest.raises(OptionError, match="needs calibration data"):
        prune("models/mlp.onnx", "wanda")
