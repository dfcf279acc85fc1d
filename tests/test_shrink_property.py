"""Shrink equals mask (DESIGN.md section 5, oracle 1) over generated architectures.

For a random architecture (tests/arch.py) and a random set of free channels (at least one kept per
group, no constant axis emptied), the physically shrunk model and the original with those channels
masked give the same outputs in onnxruntime; the shrunk model passes the full checker and keeps the
input/output names, dtypes and ranks (checked inside `shrink_matches_mask`).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from arch import BLOCKS, HEADS, Arch, archs, build
from graphs import pick_removal, run_analysis, run_session, shrink_matches_mask, shrunk_model, signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxprune import PruneOptions, prune
from onnxprune.plan import PruningPlan, check_plan
from onnxprune.validate import random_feeds


@settings(max_examples=2500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(arch=archs(max_blocks=5), share=st.floats(0.1, 0.9), seed=st.integers(0, 2**16))
def test_shrink_equals_mask(arch: Arch, share: float, seed: int):
    model = build(arch)
    onnx.checker.check_model(model, full_check=True)
    analysis = run_analysis(model)
    removed = pick_removal(analysis, np.random.default_rng(seed), share)
    check_plan(PruningPlan(frozenset(removed)), analysis)
    shrink_matches_mask(model, removed, seed=seed)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(arch=archs())
def test_keep_everything_is_bitwise_identity(arch: Arch):
    """An empty plan through shrink, cleanup and check leaves every output bit unchanged."""
    model = build(arch)
    kept = shrunk_model(model, run_analysis(model), set())
    feeds = random_feeds(model, 2, arch.seed)
    for a, b in zip(run_session(model, feeds), run_session(kept, feeds), strict=True):
        assert np.array_equal(a, b)


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    arch=archs(),
    ratio=st.floats(0.0, 0.95),
    method=st.sampled_from(["magnitude", "random"]),
    round_to=st.integers(1, 3),
)
def test_pipeline_prunes_generated_architectures(arch: Arch, ratio: float, method: str, round_to: int):
    """The whole pipeline (fold, analyze, decide, shrink, cleanup, check, validate) on any architecture:
    a valid model with the same signature and at most the original parameters."""
    model = build(arch)
    result = prune(model, method, PruneOptions(ratio=ratio, round_to=round_to), providers="cpu")
    onnx.checker.check_model(result.model, full_check=True)
    assert signature(result.model, "input") == signature(model, "input")
    assert signature(result.model, "output") == signature(model, "output")
    assert result.report["params_after"] <= result.report["params_before"]
    for metrics in result.report["validation"]["outputs"].values():
        assert np.isfinite(metrics["max_abs"])


def _every_block():
    for domain, kinds in BLOCKS.items():
        for kind in kinds:
            if kind != "pool":
                yield pytest.param(domain, kind, id=f"{domain}-{kind}")


@pytest.mark.parametrize("domain,kind", list(_every_block()))
def test_every_block_has_removable_channels(domain, kind):
    """The generator's blocks are not silently frozen: each one alone offers free channels, and
    removing them shrinks the model (so the property above exercises every topology)."""
    arch = Arch(domain, ((kind, 6),), HEADS[domain][0], 7)
    model = build(arch)
    analysis = run_analysis(model)
    assert sum(len(g.free) for g in analysis.groups) >= 2
    new, removed = shrink_matches_mask(model, seed=7)
    assert removed
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert sum(int(np.prod(t.dims)) for t in new.graph.initializer) < params
