"""The surgery identity on every group of every sample model (residual stages, depthwise-tied groups, squeeze-
excitation, Split/Concat, PRelu, GELU, unfolded BatchNormalization): make channel b an exact copy of channel a
(every incoming weight, bias, slope and per-channel constant of the group, after BatchNorm folding), remove one
channel with merge, and the outputs stay the same to float32 rounding."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from arch import archs, build
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from onnxprune import PruneOptions, io, prune, runtime
from onnxprune.analysis import analyze
from onnxprune.analysis.ops_recurrent import is_recurrent
from onnxprune.graph import GraphIndex
from onnxprune.io import make_tensor, tensor_array
from onnxprune.methods.merge_sets import OUT, build_problem
from onnxprune.passes.fold import fold
from onnxprune.validate import random_feeds

MODELS = sorted((Path(__file__).resolve().parent.parent / "models").glob("*.onnx"))


def _twin(model, analysis, problem, a: int, b: int) -> None:
    """Every non-outgoing constant of the group: channel b's positions := channel a's (k-th to k-th)."""
    inits = {t.name: t for t in model.graph.initializer}
    for piece in problem.pieces:
        if piece.role == OUT:
            continue
        line = analysis.const_labels[piece.name][piece.axis]
        value = np.array(tensor_array(inits[piece.name]))
        moved = np.moveaxis(value, piece.axis, 0)
        moved[np.flatnonzero(line == b)] = moved[np.flatnonzero(line == a)]
        inits[piece.name].CopyFrom(make_tensor(value, piece.name))


def _cases():
    for path in MODELS:
        base = io.load_model(path)
        fold(base)
        index = GraphIndex.build(base)
        analysis = analyze(index)
        nothing = np.zeros(analysis.num_channels + 1, dtype=bool)
        for group in analysis.prunable_groups():
            if group.size < 2 or not group.consumers:
                continue
            problem = build_problem(index, analysis, group, {}, nothing)
            cls = next((c for c in problem.classes if len(c.rows) >= 2 and c.outgoing.shape[1]), None)
            if cls is not None:
                pair = tuple(int(problem.channels[r]) for r in cls.rows[:2])
                yield pytest.param(path, group.id, pair, id=f"{path.stem}-g{group.id}")


@pytest.mark.parametrize(("path", "group_id", "pair"), list(_cases()))
def test_twin_channels_merge_exactly(path, group_id, pair):
    model = io.load_model(path)
    fold(model)
    index = GraphIndex.build(model)
    analysis = analyze(index)
    group = analysis.group(group_id)
    _twin(model, analysis, build_problem(index, analysis, group, {}, np.zeros(analysis.num_channels + 1, bool)), *pair)
    include = "^" + re.escape(group.producers[0].node) + "$"
    result = prune(
        copy.deepcopy(model), "merge", PruneOptions(ratio=1 / group.size, include=include), run_validation=False
    )
    assert len(result.plans[0].removed) == 1 and result.plans[0].removed <= set(pair)
    feeds = random_feeds(model, batch=4, seed=1)
    before = runtime.run(runtime.session(model), feeds)
    after = runtime.run(runtime.session(result.model), feeds)
    for x, y in zip(before, after, strict=True):
        assert np.abs(x - y).max() <= 1e-5 * max(1.0, float(np.abs(x).max()))


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(arch=archs(), data=st.data())
def test_twin_channels_merge_exactly_in_generated_architectures(arch, data):
    """The same oracle on random architectures (tests/arch.py): a random group, a random twin pair of one class."""
    model = build(arch)
    fold(model)
    index = GraphIndex.build(model)
    analysis = analyze(index)
    nothing = np.zeros(analysis.num_channels + 1, dtype=bool)
    candidates = []
    for group in analysis.prunable_groups():
        if group.size < 2 or not group.consumers or is_recurrent(group):  # merge skips recurrent groups
            continue
        problem = build_problem(index, analysis, group, {}, nothing)
        for cls in problem.classes:
            free = [int(problem.channels[r]) for r in cls.rows if int(problem.channels[r]) in set(group.free)]
            if len(cls.rows) >= 2 and cls.outgoing.shape[1] and free:
                candidates.append((group, problem, cls, free))
    assume(candidates)
    group, problem, cls, free = data.draw(st.sampled_from(candidates))
    b = data.draw(st.sampled_from(free))
    a = data.draw(st.sampled_from([int(problem.channels[r]) for r in cls.rows if int(problem.channels[r]) != b]))
    _twin(model, analysis, problem, a, b)
    include = "^" + re.escape(group.producers[0].node) + "$"
    result = prune(
        copy.deepcopy(model), "merge", PruneOptions(ratio=1 / group.size, include=include), run_validation=False
    )
    assert len(result.plans[0].removed) == 1
    feeds = random_feeds(model, batch=2, seed=arch.seed)
    before = runtime.run(runtime.session(model), feeds)
    after = runtime.run(runtime.session(result.model), feeds)
    for x, y in zip(before, after, strict=True):
        assert np.abs(x - y).max() <= 1e-4 * max(1.0, float(np.abs(x).max()))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(arch=archs(), ratio=st.sampled_from([0.3, 0.7, "auto"]), normalize=st.booleans())
def test_merge_prunes_generated_architectures(arch, ratio, normalize):
    model = build(arch)
    options = PruneOptions(ratio=ratio, extra={"merge_normalize": normalize})
    result = prune(model, "merge", options, providers="cpu")
    onnx.checker.check_model(result.model, full_check=True)
    assert result.report["params_after"] <= result.report["params_before"]
    assert all(np.isfinite(m["max_abs"]) for m in result.report["validation"]["outputs"].values())
