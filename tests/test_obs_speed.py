"""The fast statistics pass: a collector session with onnxruntime's graph optimizations on reads the
same tensors as the unoptimized graph (exposed outputs survive Conv+BN folding and Conv+Relu fusion),
and the one-read finiteness check agrees with the entry-by-entry one."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import Builder

from onnxprune.feeds import Dataset
from onnxprune.graph import GraphIndex
from onnxprune.io import make_tensor, tensor_array
from onnxprune.layers import obs_layers
from onnxprune.stats import CollectSettings, collect
from onnxprune.stats.collect import finite
from onnxprune.stats.hessian import collect_stats


def _fused_cnn():
    """Conv+BN+Relu, a residual Conv+BN+Add+Relu, a Conv whose raw output feeds both a BN and another
    Conv (not foldable), a Conv+BN feeding a Conv directly, global pooling and a Gemm head."""
    b = Builder(seed=11)
    x = b.input("x", ["N", 3, 10, 10])
    a = b.relu(b.bn(b.conv(x, 3, 8, 3, name="c1"), 8))
    r = b.bn(b.conv(a, 8, 8, 3, name="c2"), 8)
    a = b.relu(b.node("Add", [r, a]))
    raw = b.conv(a, 8, 6, 1, name="c3")  # read by c4 and by a BN: the BN cannot fold into c3
    side = b.relu(b.bn(raw, 6))
    direct = b.conv(raw, 6, 6, 3, name="c4")
    folded = b.bn(b.conv(b.node("Add", [side, direct]), 6, 5, 3, name="c5"), 5)  # c5+BN fold, read raw by c6
    top = b.relu(b.conv(folded, 5, 4, 1, name="c6"))
    pooled = b.node("Flatten", [b.node("GlobalAveragePool", [top])])
    b.output(b.gemm(pooled, 4, 3, name="head"))
    return b.model()


def _data(n: int = 12) -> Dataset:
    return Dataset({"x": np.random.default_rng(0).standard_normal((n, 3, 10, 10)).astype(np.float32)})


def _every_tensor(model) -> list[str]:
    return [out for node in model.graph.node for out in node.output]


def _keeper(store: dict, name: str):
    return lambda value: store.setdefault(name, []).append(value.copy())


def test_optimized_collector_reads_every_tensor_as_the_plain_graph_computes_it():
    model, data = _fused_cnn(), _data()
    seen: dict[bool, dict[str, list[np.ndarray]]] = {}
    for optimize in (False, True):
        got: dict[str, list[np.ndarray]] = {}
        accumulators = {name: [_keeper(got, name)] for name in _every_tensor(model)}
        collect(model, data, accumulators, batch_size=5, optimize=optimize)
        seen[optimize] = got
    assert set(seen[True]) == set(seen[False]) == set(_every_tensor(model))
    for name, plain in seen[False].items():
        for a, b in zip(plain, seen[True][name], strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max() + 1e-30), err_msg=name)


@pytest.mark.parametrize("max_positions", [None, 40])
def test_optimized_collector_gives_the_unoptimized_hessians(max_positions):
    model, data = _fused_cnn(), _data()
    layers = list(obs_layers(GraphIndex.build(model))[0].values())
    assert {layer.node for layer in layers} >= {"c1", "c2", "c3", "c4", "c5", "c6", "head"}
    stats = {
        optimize: collect_stats(
            model, layers, data, None, CollectSettings(batch_size=5, max_positions=max_positions, optimize=optimize)
        )
        for optimize in (False, True)
    }
    for layer in layers:
        plain, fast = stats[False][layer.node].hessian, stats[True][layer.node].hessian
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6 * float(np.abs(plain).max()), err_msg=layer.node)


def test_paired_statistics_with_optimizations_match_the_plain_session():
    """The --sequential pairing (working and reference model in one session) under optimizations."""
    model, data = _fused_cnn(), _data()
    layers = list(obs_layers(GraphIndex.build(model))[0].values())
    other = _fused_cnn()
    for tensor in other.graph.initializer:
        if tensor.name == "c2.w":  # the working model: another c2, so the pairs differ
            tensor.CopyFrom(make_tensor(tensor_array(tensor) * 0.5, tensor.name))
    runs = {
        optimize: collect_stats(other, layers, data, model, CollectSettings(batch_size=4, optimize=optimize))
        for optimize in (False, True)
    }
    for layer in layers:
        for kind in ("hessian", "cross", "reference"):
            plain, fast = getattr(runs[False][layer.node], kind), getattr(runs[True][layer.node], kind)
            np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6 * float(np.abs(plain).max()))
    c3 = runs[True]["c3"]
    assert not np.allclose(c3.hessian, c3.reference)  # the pairs did differ


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, -2.0, 3.0], True),
        ([1.0, np.inf, 3.0], False),
        ([1.0, -np.inf, np.inf], False),
        ([np.nan, 1.0, 2.0], False),
        ([3e38, 3e38, -1.0], True),  # the float32 sum overflows; every entry is finite
        ([3e38, 3e38, np.nan], False),
    ],
)
def test_finite_agrees_with_the_entrywise_check(values, expected):
    array = np.array(values, dtype=np.float32)
    assert finite(array) is expected
    assert finite(array) == bool(np.isfinite(array).all())
