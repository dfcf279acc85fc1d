"""Parameters and MACs of the model for a choice of kept channels per group, counted exactly: the
CostModel (cost_model.py) of `--target params=...` and `--target macs=...`.

Removing r_g of group g's free channels deletes, on every labeled axis a of a tensor, the positions
those channels hold there. With q_{a,g} the positions per free channel of g on a (H*W after a Flatten,
the head size for attention heads, 1 for a plain channel axis), the axis keeps

    d'_a = d_a - sum_g q_{a,g} r_g .

A tensor's size is the product of its axes, so a weight between two pruned groups (a Conv reading
group g and producing group h) holds d_out' d_in' kh kw entries: bilinear in (r_g, r_h), and so are
its MACs. The cost models evaluate the same formulas the report uses on the reduced shapes:

    params(r) = params - sum_{float initializers t} (prod_a d_a - prod_a d'_a(r))
    MACs(r)   = MACs - sum_{nodes n} (node_macs(n, shapes) - node_macs(n, shapes'(r)))

(analysis.cost.node_macs: Conv O * spatial * C/g * kh * kw, Gemm/MatMul rows * N * K, ...). Only the
items a pruned group touches are evaluated again. A count per group is exact whenever every free
channel of a group holds the same number of positions on each axis (a channel is one position, one
Flatten block or one head); where a line holds only some of a group's channels (one half of a Split),
q_{a,g} is the average and `of_removed` counts exactly for the channels a plan removes (budget/run.py
checks every plan with it). A tensor whose labels vary along several axes at once is left at its full
size (no rule produces one on a weight or a layer's output).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np
import onnx

from .. import io
from ..analysis import Analysis, Group
from ..analysis.cost import model_macs, node_macs
from ..analysis.labels import varying_axes
from ..graph import GraphIndex
from .cost_model import CostModel


@dataclass(frozen=True)
class AxisCut:
    """Axis `axis` of a tensor, whose positions hold the channels `line` (-1: none), loses rates[g]
    positions per removed free channel of group g (on average over g's free channels)."""

    axis: int
    rates: tuple[tuple[int, float], ...]
    line: np.ndarray


class ReducedShapes:
    """index.shape(name) with every labeled axis shortened for removal counts `removed` (group id ->
    free channels removed); duck-types the GraphIndex that analysis.cost.node_macs reads."""

    def __init__(self, index: GraphIndex, analysis: Analysis) -> None:
        self.index = index
        free_of = {g.id: len(g.free) for g in analysis.groups}
        free = np.zeros(analysis.num_channels + 1, dtype=bool)
        for group in analysis.groups:
            free[list(group.free)] = True
        owner = np.append(analysis.channel_group, -1)
        self.cuts: dict[str, tuple[AxisCut, ...]] = {}
        lines: dict[str, dict[int, np.ndarray]] = {n: dict(a) for n, a in analysis.const_labels.items()}
        for name, ids in analysis.tensor_labels.items():
            axes = varying_axes(ids)
            if len(axes) == 1:
                lines.setdefault(name, {})[axes[0]] = ids.reshape(-1)
        for name, axes in lines.items():
            cuts = []
            for axis, line in axes.items():
                held = line[free[line]]  # -1 indexes the last slot: never free
                if held.size:
                    groups, counts = np.unique(owner[held], return_counts=True)
                    rates = tuple((int(g), c / free_of[int(g)]) for g, c in zip(groups, counts, strict=True))
                    cuts.append(AxisCut(axis, rates, line))
            if cuts:
                self.cuts[name] = tuple(cuts)
        self.removed: Mapping[int, int] = {}
        self.mask: np.ndarray | None = None  # removed channels, for exact counts (see CountedCost.of_removed)

    def groups_of(self, name: str) -> set[int]:
        return {g for cut in self.cuts.get(name, ()) for g, _ in cut.rates}

    def shape(self, name: str):
        shape = self.index.shape(name)
        cuts = self.cuts.get(name)
        if shape is None or not cuts or not (self.removed or self.mask is not None):
            return shape
        dims = list(shape)
        for cut in cuts:
            if not isinstance(dims[cut.axis], int):
                continue
            if self.mask is not None:
                gone = int(self.mask[cut.line].sum())
            else:
                gone = sum(rate * self.removed.get(g, 0) for g, rate in cut.rates)
            dims[cut.axis] = int(round(dims[cut.axis] - gone))
        return tuple(dims)


class CountedCost:
    """A CostModel counting `kind` (params or MACs) from shapes: the model's count `base` minus, for each
    item a pruned group touches, its full count minus its count on the reduced shapes. `items`: name ->
    (full count, count(shapes), the tensors whose shapes it reads)."""

    def __init__(self, kind: str, shapes: ReducedShapes, analysis: Analysis, base: int, items: dict) -> None:
        self.kind, self.shapes, self.base, self.items = kind, shapes, base, items
        self.sizes = {g.id: g.size for g in analysis.groups}
        self.touching: dict[int, list[str]] = {}
        self.reads: dict[str, tuple[int, ...]] = {}  # item -> the groups whose counts its count depends on
        for name, (_, _, tensors) in items.items():
            self.reads[name] = tuple(sorted(set().union(*(shapes.groups_of(t) for t in tensors))))
            for gid in self.reads[name]:
                self.touching.setdefault(gid, []).append(name)
        self.known: dict[tuple, int] = {}  # (item, its groups' removal counts) -> its count: the allocator asks often

    def cost(self, kept: Mapping[int, int]) -> float:
        removed = {g: self.sizes[g] - int(k) for g, k in kept.items() if int(k) < self.sizes[g]}
        if not removed:
            return float(self.base)
        touched = dict.fromkeys(name for g in removed for name in self.touching.get(g, ()))
        return float(self.base - sum(self.items[n][0] - self._count(n, removed) for n in touched))

    def _count(self, name: str, removed: Mapping[int, int]) -> int:
        key = (name, *(removed.get(g, 0) for g in self.reads[name]))
        if key not in self.known:
            self.shapes.removed = removed
            try:
                self.known[key] = self.items[name][1](self.shapes)
            finally:
                self.shapes.removed = {}
        return self.known[key]

    def of_removed(self, removed: set[int] | frozenset[int], num_channels: int) -> float:
        """The exact count when the channels `removed` go (a count per group is exact only where every
        free channel of a group holds as many positions of each axis: not so after a Split, say)."""
        mask = np.zeros(num_channels + 1, dtype=bool)
        mask[list(removed)] = True
        self.shapes.mask = mask
        try:
            return float(self.base - sum(full - count(self.shapes) for full, count, _ in self.items.values()))
        finally:
            self.shapes.mask = None

    def preferred_widths(self, group: Group) -> tuple[int, ...] | None:
        return None


def params_cost(
    model: onnx.ModelProto, index: GraphIndex, analysis: Analysis, providers=(), batch=1, input_shapes=None
) -> CountedCost:
    """Float initializer entries (io.count_params) for kept counts per group
    (`providers`, `batch`, `input_shapes`: unused)."""
    shapes = ReducedShapes(index, analysis)
    items = {}
    for tensor in model.graph.initializer:
        if tensor.data_type in io.FLOAT_TYPES and tensor.name in shapes.cuts:
            items[tensor.name] = (int(np.prod(tensor.dims, dtype=np.int64)), partial(_size, tensor.name), [tensor.name])
    return CountedCost("params", shapes, analysis, io.count_params(model), items)


def _size(name: str, shapes: ReducedShapes) -> int:
    return int(np.prod(shapes.shape(name), dtype=np.int64))


def macs_cost(
    model: onnx.ModelProto, index: GraphIndex, analysis: Analysis, providers=(), batch=1, input_shapes=None
) -> CountedCost:
    """Multiply-accumulates of one sample (analysis.cost.model_macs) for kept counts per group
    (`batch`, `input_shapes`: unused)."""
    shapes = ReducedShapes(index, analysis)
    items = {}
    for position, node in enumerate(index.nodes):
        tensors = [n for n in list(node.input[:3]) + list(node.output[:1]) if n]
        full = node_macs(index, node) if any(n in shapes.cuts for n in tensors) else 0
        if full:
            items[f"{position}:{node.name}"] = (full, partial(_macs, node), tensors)
    return CountedCost("macs", shapes, analysis, model_macs(index), items)


def _macs(node, shapes: ReducedShapes) -> int:
    return node_macs(shapes, node)


def latency_cost(model: onnx.ModelProto, index: GraphIndex, analysis: Analysis, providers, batch: int = 1, shapes=None):
    """Seconds of one run at `batch` (symbolic input dims sized by `shapes`, --input-shape), measured with
    onnxruntime (budget.latency.LatencyCostModel)."""
    from .latency import LatencyCostModel  # noqa: PLC0415 (loaded only when a latency target asks)

    return LatencyCostModel(
        model=model, analysis=analysis, index=index, providers=providers, batch=batch, shapes=shapes
    )


#: kind -> builder(model, index, analysis, providers, batch, shapes) of its CostModel; a test may register a fake.
COST_MODELS: dict[str, Callable[..., CostModel]] = {"params": params_cost, "macs": macs_cost, "latency": latency_cost}


def build_cost_model(
    kind: str, model: onnx.ModelProto, index: GraphIndex, analysis: Analysis, providers, batch: int = 1, shapes=None
) -> CostModel:
    """The CostModel of `kind` for the model behind `index`: counted (params, MACs) or measured (latency,
    with onnxruntime on `providers` at `batch`)."""
    return COST_MODELS[kind](model, index, analysis, providers, batch, shapes)
