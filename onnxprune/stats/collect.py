"""Stream calibration data through onnxruntime and hand intermediate tensors to accumulators.

The collector exposes exactly the requested tensors as extra graph outputs and runs onnxruntime batch by
batch, calling each tensor's accumulators with that batch's array. Graph optimizations are on by
default (CollectSettings.optimize): onnxruntime never fuses away a tensor that is a graph output (a
Conv whose output is exposed is not folded with its BatchNormalization, a fused Conv+Relu still writes
the exposed Relu output), so the exposed values are those of the unoptimized graph up to the rounding
of the optimized kernels (relative 1e-6 in float32; tests/test_obs_speed.py), at about 0.7x the time.
Only the nodes the exposed tensors depend on run (computing). Nothing is kept between batches: memory
is one batch of activations plus whatever the accumulators hold (Hessians, sums).

The exposed outputs of a batch are written into the arrays of the previous batch of the same input
shapes, in chunks of samples when they are large (onnxprune.stats.runner: page faults otherwise cost
as much as the forward pass). An accumulator must therefore not keep the array it is given beyond its
call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from .. import runtime
from ..errors import CalibrationError
from ..feeds import Dataset
from ..progress import bar
from .runner import BatchRunner

log = logging.getLogger(__name__)

Accumulator = Callable[[np.ndarray], None]


@dataclass(frozen=True)
class CollectSettings:
    """How a statistics pass runs: samples per onnxruntime batch, execution providers, a progress bar
    (None: as onnxprune.progress.showing says), and for the Hessian sums the rows sampled per batch and
    layer (None: all) and the sampling seed; `optimize`: onnxruntime's graph optimizations on (the exposed
    tensors survive them)."""

    batch_size: int = 32
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    progress: bool | None = None
    max_positions: int | None = None
    seed: int = 0
    optimize: bool = True


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs `names` (types left for onnxruntime to infer)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in present:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return exposed


def computing(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` that computes `names` and nothing else (the graph outputs when `names` is
    empty): its outputs are `names` (graph outputs among them keep their types), its nodes those the
    names depend on, its initializers those the nodes read. A statistics pass of the first layers of
    a network then skips the rest of it. A graph with subgraphs (If, Loop, Scan: their bodies read
    outer tensors by name) keeps every node."""
    graph = model.graph
    names = list(dict.fromkeys(names)) or [o.name for o in graph.output]
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return with_outputs(model, names)
    needed, kept = set(names), []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    typed = [o for o in graph.output if o.name in needed]
    for field, values in (
        ("node", reversed(kept)),
        ("initializer", [t for t in graph.initializer if t.name in needed]),
        ("sparse_initializer", [t for t in graph.sparse_initializer if t.values.name in needed]),
        ("value_info", [v for v in graph.value_info if v.name in needed]),
        ("output", typed),
    ):
        del getattr(out.graph, field)[:]
        getattr(out.graph, field).extend(values)
    return with_outputs(out, names)


def collect(
    model: onnx.ModelProto,
    data: Dataset,
    accumulators: dict[str, list[Accumulator]],
    batch_size: int = 32,
    providers: Iterable[str] = ("CPUExecutionProvider",),
    progress: bool | None = None,
    description: str = "calibration",
    optimize: bool = True,
) -> int:
    """Run `data` through `model`; after each batch call accumulators[name](activation) for every name.
    `progress`: a bar over the batches (None: as onnxprune.progress.showing says).

    Returns the number of samples seen. Raises CalibrationError when an activation is not finite.
    """
    if len(data) == 0:
        raise CalibrationError("calibration: no samples; give at least one")
    batch_size = max(1, int(batch_size))
    names = list(accumulators)
    graph_inputs = {i.name for i in model.graph.input}
    exposed = [n for n in names if n not in graph_inputs]  # graph inputs are read from the batch
    sess = runtime.session(computing(model, exposed), list(providers), optimize=optimize, spin=False)
    output_names = [o.name for o in sess.get_outputs()]
    batches = data.batches(max(1, batch_size))
    total = (len(data) + batch_size - 1) // batch_size
    runner = BatchRunner(sess)
    for batch in bar(batches, total, description, "batch", enabled=progress):
        values = dict(zip(output_names, runner(batch), strict=True))
        for name in names:
            value = values[name] if name in values else np.asarray(batch[name])
            if value.dtype.kind == "f" and not finite(value):
                raise CalibrationError(
                    f"calibration: tensor '{name}' becomes NaN/Inf on the calibration data; check the input scaling"
                )
            for accumulate in accumulators[name]:
                accumulate(value)
    return len(data)


def finite(value: np.ndarray) -> bool:
    """Whether every entry is finite. A sum that meets an Inf or a NaN is not finite, so one read of
    the array (no boolean temporary) answers almost always; only a sum that overflows is checked
    entry by entry."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.sum(value)
    return bool(np.isfinite(total)) or bool(np.isfinite(value).all())
