"""Speed and memory of the merge method on one large fully connected group.

A Gemm of n neurons with d-wide weight-sets (plus bias), ReLU, and a consumer Gemm n -> n (so each neuron has n
outgoing weights); random weights, seeded. The largest row is AlexNet's fc6 (4096 neurons, 9216 inputs, read by
fc7 4096 x 4096). Each row times the merge decision (reading the weights, Gram matrix, greedy, surgery) pruning
the group to half, and the peak memory the decision allocates (tracemalloc, which numpy reports its arrays to),
next to 8 (n^2 + n d) bytes, one float64 n x n matrix plus the float64 weight-sets.

    python benchmarks/merge_speed.py            # the fc6 row takes about 5 s on 2 cores
"""

from __future__ import annotations

import os
import sys
import time
import tracemalloc

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis import analyze
from onnxprune.graph import GraphIndex
from onnxprune.methods import merge_greedy
from onnxprune.methods.base import MethodContext, PruneOptions
from onnxprune.methods.merge import MERGE

SIZES = ((1024, 2048), (2048, 4096), (4096, 9216))


def fc_model(n: int, d: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((n, d)) / np.sqrt(d)).astype(np.float32), "w1"),
        numpy_helper.from_array((0.01 * rng.standard_normal(n)).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(n, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc6", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu6"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc7", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def measure(n: int, d: int) -> tuple[float, float, int]:
    model = fc_model(n, d)
    index = GraphIndex.build(model)
    ctx = MethodContext.build(MERGE, model, index, analyze(index), PruneOptions(ratio=0.5, include="fc6"))
    start = time.perf_counter()
    plan = MERGE.decide(ctx)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    MERGE.decide(ctx)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 2**20, len(plan.removed)


def precision_check(n: int, d: int) -> str:
    """The float32 Gram (used above FLOAT32_GRAM_WORK) against float64 on the same group: same decision?"""
    model = fc_model(n, d)
    index = GraphIndex.build(model)
    ctx = MethodContext.build(MERGE, model, index, analyze(index), PruneOptions(ratio=0.5, include="fc6"))
    fast = MERGE.decide(ctx)
    threshold, merge_greedy.FLOAT32_GRAM_WORK = merge_greedy.FLOAT32_GRAM_WORK, 2**62
    try:
        exact = MERGE.decide(ctx)
    finally:
        merge_greedy.FLOAT32_GRAM_WORK = threshold
    differ = len(fast.removed ^ exact.removed)
    change = float(np.abs(fast.updates["w2"] - exact.updates["w2"]).max())
    return (
        f"float32 vs float64 Gram at n={n}, d={d}: {differ} channels chosen differently, "
        f"largest difference of the new fc7 weights {change:.1e}"
    )


def main() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"## merge: one group pruned to half ({cores} cores)",
        "",
        "| neurons n | weight-set d | removed | seconds | peak MiB | 8(n^2 + n d) MiB |",
        "|---|---|---|---|---|---|",
    ]
    for n, d in SIZES:
        seconds, peak, removed = measure(n, d)
        bound = 8 * (n * n + n * (d + 1)) / 2**20
        lines.append(f"| {n} | {d} | {removed} | {seconds:.2f} | {peak:.0f} | {bound:.0f} |")
    lines += ["", precision_check(2048, 4096)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
