"""Shapes that ONNX shape inference leaves unknown (onnxruntime's contrib ops) are recovered before the
analysis freezes what they touch (onnxprune/shape_recovery.py), and a frozen group says what was tried."""

from __future__ import annotations

import numpy as np
from graphs import Builder, run_analysis
from onnx import helper

from onnxprune import shape_recovery
from onnxprune.graph import GraphIndex


def _ffn(batch="N"):
    b = Builder()
    b.extra_opsets = [helper.make_opsetid("com.microsoft", 1)]
    x = b.input("x", [batch, "T", 8])
    h = b.node("MatMul", [x, b.rand((8, 16), "w1")], name="fc1")
    h = b.node("BiasGelu", [h, b.rand((16,), "b1")], domain="com.microsoft", name="act")
    b.output(b.node("MatMul", [h, b.rand((16, 8), "w2")], name="fc2"), [batch, "T", 8])
    return b.model()


def test_symbolic_shape_inference_types_contrib_ops():
    index = GraphIndex.build(_ffn())
    assert index.shapes["act_out"] == ("N", "T", 16)
    assert index.shape_sources["act_out"] == shape_recovery.SYMBOLIC
    assert run_analysis(_ffn()).groups[0].prunable


def test_a_run_recovers_shapes_and_keeps_symbolic_dims(monkeypatch):
    monkeypatch.setattr(shape_recovery, "_symbolic", lambda model, names: ({}, "disabled"))
    index = GraphIndex.build(_ffn())
    assert index.shapes["act_out"] == ("N", "T", 16)
    assert index.shape_sources["act_out"] == shape_recovery.RUN


def test_what_no_fallback_types_is_frozen_with_what_was_tried(monkeypatch):
    """BiasAdd has a rule but no CPU kernel; with the symbolic inference failing too, its output stays
    unknown and the group behind it says what was tried and why it failed."""
    monkeypatch.setattr(shape_recovery, "_symbolic", lambda model, names: ({}, "symbolic: off in this test"))
    model = _ffn()
    node = model.graph.node[1]
    node.op_type = "BiasAdd"
    node.input.append(node.input[0])
    reason = next(g.frozen for g in run_analysis(model).groups if g.producers[0].node == "fc1")
    assert "MatMul 'fc2': the rank of 'act_out' is unknown" in reason
    assert "symbolic: off in this test" in reason and shape_recovery.RUN in reason and "BiasAdd" in reason


def test_models_onnx_types_fully_cost_nothing(monkeypatch):
    def fail(*args):
        raise AssertionError("recovery ran although ONNX typed every tensor")

    monkeypatch.setattr(shape_recovery, "_symbolic", fail)
    b = Builder()
    x = b.input("x", ["N", 8])
    b.output(b.node("Relu", [b.node("MatMul", [x, b.const(np.ones((8, 4)))])]), ["N", 4])
    assert GraphIndex.build(b.model()).shape_sources == {}


def test_recovery_writes_no_file(monkeypatch, tmp_path):
    """onnxruntime's tool saves a partial result to the working directory when it gives up; ours not."""
    monkeypatch.chdir(tmp_path)
    model = _ffn()
    model.graph.node[1].domain = "org.example"  # the symbolic inference cannot follow this op
    model.opset_import.append(helper.make_opsetid("org.example", 1))
    GraphIndex.build(model)
    assert list(tmp_path.iterdir()) == []
