"""Methods on recurrent groups: magnitude scores a hidden unit by its gate rows of W and R; obs
compensates the consumers of Y (never the recurrence itself); merge and relief skip recurrent groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import group_of

from onnxprune import PruneOptions, prune
from onnxprune.analysis import analyze
from onnxprune.graph import GraphIndex
from onnxprune.io import load_model
from onnxprune.methods.base import MethodContext
from onnxprune.methods.magnitude import channel_norms
from onnxprune.passes import CLEANUP, PassManager
from onnxprune.passes.constfold import FOLD_CONSTANTS
from onnxprune.validate import random_feeds

DATA = Path(__file__).parent / "data"


def _model(name: str) -> onnx.ModelProto:
    return PassManager([FOLD_CONSTANTS, CLEANUP]).run(load_model(DATA / f"{name}.onnx"))


def _calibration(model: onnx.ModelProto, batches: int = 6) -> list[dict]:
    """Random batches (the samples axis is axis 0: crnn_small's batch)."""
    return [random_feeds(model, 4, seed) for seed in range(batches)]


def test_magnitude_norm_of_a_hidden_unit_covers_its_gate_rows_of_w_and_r():
    model = _model("gru_state")
    index = GraphIndex.build(model)
    analysis = analyze(index)
    group = group_of(analysis, "/gru/GRU")
    ctx = MethodContext(model, index, analysis, PruneOptions(), None)
    w_name, r_name = (node.input[1:3] for node in model.graph.node if node.op_type == "GRU").__next__()
    w, r = index.constant(w_name).astype(np.float64), index.constant(r_name).astype(np.float64)
    hidden = r.shape[2]
    expected = [
        np.sqrt(sum((w[:, g * hidden + j] ** 2).sum() + (r[:, g * hidden + j] ** 2).sum() for g in range(3)))
        for j in range(hidden)
    ]
    np.testing.assert_allclose(channel_norms(ctx, group), expected, rtol=1e-12)


def test_obs_compensates_the_readers_of_y_not_the_recurrence():
    model = _model("crnn_small")
    calib = _calibration(model)
    result = prune(model, "obs", PruneOptions(ratio=0.5), calibration=calib, validation_data=calib)
    plan = result.plans[0]
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    head = next(n for n in model.graph.node if n.name == "/fc/MatMul")
    assert set(plan.updates) <= {head.input[1], "fc.bias"}
    assert not set(plan.updates) & set(lstm.input)
    notes = {g["producers"][0]: g.get("notes", {}) for g in result.report["groups"]}
    assert notes["/lstm/LSTM"]["removed"] == 3
    assert "is not a Gemm/MatMul/Conv layer OBS can compensate" in notes["/conv/Conv"]["skipped"]
    # compensation pays: the same removal without the consumer update moves the output further
    plain = prune(model, "magnitude", PruneOptions(ratio=0.5), validation_data=calib)
    assert result.report["validation"]["outputs"]["y"]["rel_l2"] < plain.report["validation"]["outputs"]["y"]["rel_l2"]


@pytest.mark.parametrize("method", ["merge", "relief"])
def test_merge_and_relief_leave_recurrent_groups_alone(method):
    model = _model("crnn_small")
    calib = _calibration(model)
    result = prune(model, method, PruneOptions(ratio=0.5), calibration=calib if method == "relief" else None)
    row = next(g for g in result.report["groups"] if "/lstm/LSTM" in g["producers"])
    assert row["kept"] == row["size"]
    if method == "merge":
        assert row["notes"]["skipped"].startswith("recurrent hidden units")
