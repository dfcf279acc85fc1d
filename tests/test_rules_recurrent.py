"""LSTM, GRU and RNN: hidden units as channels (golden groups and labels, shrink equals mask).

The masked oracle of a recurrent group zeroes every reader of the removed hidden units: column j of R
(the recurrence) and the downstream consumers; the unit's own rows stay (see analysis/ops_recurrent.py).
onnxruntime runs no batch-first (layout 1) recurrent op: those cases compare in float64 with onnx's
reference evaluator. The torch-exported models are rebuilt by tests/data/build_recurrent.py.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import (
    Builder,
    G,
    assert_groups,
    group_of,
    labels_of,
    masked_model,
    run_analysis,
    run_session,
    shrink_matches_mask,
    shrunk_model,
)

from onnxprune.graph import attributes
from onnxprune.io import count_params, load_model
from onnxprune.passes import CLEANUP, PassManager
from onnxprune.passes.constfold import FOLD_CONSTANTS
from onnxprune.validate import random_feeds

DATA = Path(__file__).parent / "data"
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
OUT = "reaches graph output '{}'"
SEQ, BATCH, IN, HID = 4, 2, 5, 3


def recurrent_model(op="LSTM", direction="forward", layout=0, states="none", seq_lens=False, peepholes=False):
    """x -> MatMul "pre" (5 channels) -> op "rnn" (hidden 3) -> [Transpose] -> Reshape [.., D*3] -> MatMul
    "head". `states`: "none", "const" (initializers) or "input" (graph inputs)."""
    b = Builder(opset=14)
    d = 2 if direction == "bidirectional" else 1
    gates = GATES[op]
    x = b.input("x", [SEQ, BATCH, 2] if layout == 0 else [BATCH, SEQ, 2])
    x = b.matmul(x, 2, IN, name="pre")
    inputs = [x, b.rand((d, gates * HID, IN), "W"), b.rand((d, gates * HID, HID), "R")]
    inputs.append(b.rand((d, 2 * gates * HID), "B", 0.3))
    inputs.append(b.const(np.full(BATCH, SEQ - 1, np.int32), "lens") if seq_lens else "")
    state_shape = [d, BATCH, HID] if layout == 0 else [BATCH, d, HID]
    for name in ["h0", "c0"] if op == "LSTM" else ["h0"]:
        if states == "const":
            inputs.append(b.rand(state_shape, name, 0.5))
        else:
            inputs.append(b.input(name, state_shape) if states == "input" else "")
    if op == "LSTM" and peepholes:
        inputs.append(b.rand((d, 3 * HID), "P", 0.3))
    n_out = 3 if op == "LSTM" else 2
    outs = b.node(op, inputs, n_out=n_out, name="rnn", hidden_size=HID, direction=direction, layout=layout)
    y = outs[0] if layout == 1 else b.node("Transpose", [outs[0]], perm=[0, 2, 1, 3])
    y = b.node("Reshape", [y, b.ints([0, 0, d * HID])], name="merge")
    b.output(b.matmul(y, d * HID, 2, name="head"))
    return b.model()


CASES = list(itertools.product(GATES, ["forward", "reverse", "bidirectional"], [0, 1]))


@pytest.mark.parametrize(("op", "direction", "layout"), CASES)
def test_hidden_units_are_one_group_and_shrink_equals_mask(op, direction, layout):
    """Every op, direction and layout; initial states (constants) and sequence_lens on every other case."""
    extras = CASES.index((op, direction, layout)) % 2 == 0
    model = recurrent_model(op, direction, layout, states="const" if extras else "none", seq_lens=extras)
    a = run_analysis(model)
    assert_groups(
        a,
        G(["pre"], ["rnn"], IN),
        G(["rnn", "rnn"], ["head", "rnn"], HID),
        G(["head"], [], 2, frozen=OUT.format("head.add_out")),
    )
    units = list(group_of(a, "rnn").channels)
    assert labels_of(a, "W", 1) == units * GATES[op]
    assert labels_of(a, "R", 1) == units * GATES[op] and labels_of(a, "R", 2) == units
    assert labels_of(a, "B", 1) == units * 2 * GATES[op]
    assert labels_of(a, "W", 2) == list(group_of(a, "pre").channels)
    new, _ = shrink_matches_mask(model, removed={units[1]}, reference_only=layout == 1)
    node = next(n for n in new.graph.node if n.op_type == op)
    assert attributes(node)["hidden_size"] == HID - 1
    if extras:
        assert {t.name: list(t.dims) for t in new.graph.initializer}["h0"][2] == HID - 1


def test_lstm_peepholes_and_cell_state_are_sliced():
    model = recurrent_model("LSTM", "bidirectional", states="const", peepholes=True)
    a = run_analysis(model)
    units = list(group_of(a, "rnn").channels)
    assert labels_of(a, "P", 1) == units * 3
    assert labels_of(a, "c0", 2) == units
    shrink_matches_mask(model, removed={units[0], units[2]})


@pytest.mark.parametrize("op", list(GATES))
def test_run_time_initial_state_is_gathered(op):
    """A graph-input state keeps the model's signature: the shrink gathers the kept units from it."""
    model = recurrent_model(op, "bidirectional", states="input")
    a = run_analysis(model)
    assert group_of(a, "rnn").prunable
    new, _ = shrink_matches_mask(model, removed={group_of(a, "rnn").channels[0]})
    gathers = [n for n in new.graph.node if n.op_type == "Gather"]
    assert len(gathers) == (2 if op == "LSTM" else 1)
    assert all(attributes(n)["axis"] == 2 for n in gathers)


def test_the_mask_must_silence_the_recurrence():
    """Zeroing only the downstream readers of a removed unit is not the removal: the unit still feeds
    every gate through column j of R. The oracle zeroes that column too (and the unit's rows may stay)."""
    model = recurrent_model("LSTM", "forward")
    a = run_analysis(model)
    unit = group_of(a, "rnn").channels[0]
    feeds = random_feeds(model, BATCH, 0)
    shrunk = run_session(shrunk_model(model, a, {unit}), feeds)[0]
    np.testing.assert_allclose(shrunk, run_session(masked_model(model, a, {unit}), feeds)[0], rtol=1e-4, atol=1e-5)
    readers_only = masked_model(model, a, {unit})
    inits = {t.name: t for t in readers_only.graph.initializer}
    inits["R"].CopyFrom(next(t for t in model.graph.initializer if t.name == "R"))
    assert not np.allclose(shrunk, run_session(readers_only, feeds)[0], rtol=1e-3, atol=1e-4)


def test_state_from_another_layer_ties_the_hidden_units():
    """Encoder Y_h as the decoder's initial state: the two layers' hidden units are removed together."""
    b = Builder(opset=14)
    x = b.input("x", [SEQ, BATCH, IN])
    _, h = b.node("GRU", [x, b.rand((1, 9, IN), "We"), b.rand((1, 9, 3), "Re")], n_out=2, name="enc", hidden_size=3)
    inputs = [x, b.rand((1, 9, IN), "Wd"), b.rand((1, 9, 3), "Rd"), "", "", h]
    y, _ = b.node("GRU", inputs, n_out=2, name="dec", hidden_size=3)
    y = b.node("Squeeze", [y, b.ints([1])])
    b.output(b.matmul(y, 3, 2, name="head"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(
        a,
        G(["dec", "dec", "enc", "enc"], ["dec", "enc", "head"], 3),
        G(["head"], [], 2, frozen=OUT.format("head.add_out")),
    )
    shrink_matches_mask(model, removed={group_of(a, "enc").channels[1]})


def test_output_sequence_as_graph_output_freezes():
    b = Builder(opset=14)
    x = b.input("x", [SEQ, BATCH, IN])
    y, _ = b.node("RNN", [x, b.rand((1, 3, IN), "W"), b.rand((1, 3, 3), "R")], n_out=2, name="rnn", hidden_size=3)
    b.output(y)
    a = run_analysis(b.model())
    assert group_of(a, "rnn").frozen == OUT.format(y)


def test_run_time_weights_freeze_with_a_reason():
    b = Builder(opset=14)
    x = b.input("x", [SEQ, BATCH, IN])
    y, _ = b.node("RNN", [x, b.input("w", [1, 3, IN]), b.rand((1, 3, 3), "R")], n_out=2, name="rnn", hidden_size=3)
    b.output(b.matmul(b.node("Squeeze", [y, b.ints([1])]), 3, 2, name="head"))
    a = run_analysis(b.model())
    assert not any(p.node == "rnn" for g in a.groups for p in g.producers)


# ---- torch exports ---------------------------------------------------------------------------------
def _torch_model(name: str) -> onnx.ModelProto:
    return PassManager([FOLD_CONSTANTS, CLEANUP]).run(load_model(DATA / f"{name}.onnx"))


TORCH = {
    # CNN -> permute -> view(n, w, c*h) (C*H computed at run time) -> BiLSTM -> Linear
    "crnn_small": [(["/conv/Conv"], ["/lstm/LSTM"], 4), (["/lstm/LSTM"] * 2, ["/fc/MatMul", "/lstm/LSTM"], 6)],
    # two stacked LSTM layers from run-time zero states (ConstantOfShape -> Slice)
    "lstm_forward": [
        (["/pre/MatMul"], ["/lstm/LSTM"], 5),
        (["/lstm/LSTM"] * 2, ["/lstm/LSTM", "/lstm/LSTM_1"], 6),
        (["/lstm/LSTM_1"] * 2, ["/fc/Gemm", "/lstm/LSTM_1"], 6),
    ],
    # bidirectional GRU from a learned (constant) initial state
    "gru_state": [(["/pre/MatMul"], ["/gru/GRU"], 5), (["/gru/GRU"] * 2, ["/fc/MatMul", "/gru/GRU"], 6)],
    # two bidirectional RNN layers: the second reads both directions of the first
    "rnn_stack": [
        (["/rnn/RNN"] * 2, ["/rnn/RNN", "/rnn/RNN_1"], 5),
        (["/rnn/RNN_1"] * 2, ["/fc/MatMul", "/rnn/RNN_1"], 5),
    ],
}


@pytest.mark.parametrize("name", sorted(TORCH))
def test_torch_exports(name):
    model = _torch_model(name)
    a = run_analysis(model)
    head = {"crnn_small": "/fc/MatMul", "lstm_forward": "/fc/Gemm"}.get(name, "/fc/MatMul")
    frozen = G([head], [], group_of(a, head).size, frozen=OUT.format("y"))
    assert_groups(a, *(G(p, c, n) for p, c, n in TORCH[name]), frozen)
    new, removed = shrink_matches_mask(model, seed=1)
    assert removed and all(g.size > 1 for g in a.prunable_groups())
    assert count_params(new) < count_params(model)


def test_final_state_of_both_directions_through_transpose_and_reshape():
    """h_n of a bidirectional LSTM, [2, N, H] -> Transpose -> Reshape [N, 2H] -> Gemm: the Gemm reads each
    hidden unit twice (once per direction); Y is unused."""
    b = Builder(opset=14)
    x = b.input("x", [SEQ, BATCH, IN])
    inputs = [x, b.rand((2, 4 * HID, IN), "W"), b.rand((2, 4 * HID, HID), "R")]
    _, h, _ = b.node("LSTM", inputs, n_out=3, name="rnn", hidden_size=HID, direction="bidirectional")
    y = b.node("Reshape", [b.node("Transpose", [h], perm=[1, 0, 2]), b.ints([BATCH, 2 * HID])])
    b.output(b.gemm(y, 2 * HID, 2, name="fc"))
    model = b.model()
    a = run_analysis(model)
    units = list(group_of(a, "rnn").channels)
    assert labels_of(a, "fc.w", 0) == units * 2
    shrink_matches_mask(model, removed={units[2]})
