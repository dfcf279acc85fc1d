"""Every sample model in models/: keeping every channel is a bitwise identity, and magnitude pruning
at ratio 0.5 gives a model that passes the full checker, runs, and keeps the graph signature."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import signature

from onnxprune import PruneOptions, prune, runtime
from onnxprune.analysis import analyze
from onnxprune.graph import GraphIndex
from onnxprune.io import count_params, load_model, save_model
from onnxprune.methods.select import keep_count
from onnxprune.passes import CHECK, CLEANUP, PassManager, shrink_pass
from onnxprune.plan import PruningPlan
from onnxprune.validate import random_feeds

MODELS = sorted((Path(__file__).resolve().parent.parent / "models").glob("*.onnx"))


def test_there_are_sample_models():
    assert len(MODELS) >= 10


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_keep_everything_is_bitwise_identity(path):
    model = load_model(path)
    analysis = analyze(GraphIndex.build(model))
    kept = PassManager([shrink_pass(analysis, PruningPlan()), CLEANUP, CHECK]).run(copy.deepcopy(model))
    assert count_params(kept) == count_params(model)
    feeds = random_feeds(model, batch=4, seed=1)
    reference = runtime.run(runtime.session(str(path)), feeds)
    candidate = runtime.run(runtime.session(kept), feeds)
    assert len(reference) == len(candidate)
    for a, b in zip(reference, candidate, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_magnitude_half_prunes_into_a_valid_model(path, tmp_path):
    result = prune(path, "magnitude", PruneOptions(ratio=0.5), providers="cpu")
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    original = onnx.load(str(path))
    assert signature(pruned, "input") == signature(original, "input")
    assert signature(pruned, "output") == signature(original, "output")
    report = result.report
    analysis = analyze(GraphIndex.build(load_model(path)))
    removable = any(g.size - keep_count(g, 0.5, PruneOptions(ratio=0.5)) > 0 for g in analysis.prunable_groups())
    assert (report["params_after"] < report["params_before"]) == removable
    assert report["params_after"] == count_params(pruned)
    for metrics in report["validation"]["outputs"].values():
        assert math.isfinite(metrics["max_abs"]) and math.isfinite(metrics["rel_l2"])
    # the written file reloads (checker included) and runs on a batch size other than validation's
    target = tmp_path / "pruned.onnx"
    save_model(pruned, target)
    reloaded = load_model(target)
    outputs = runtime.run(runtime.session(str(target)), random_feeds(reloaded, batch=3, seed=2))
    assert all(np.isfinite(o).all() and o.shape[0] == 3 for o in outputs)
