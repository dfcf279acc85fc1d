"""Neuron (channel) removal from activity, through the group machinery.

A free channel c of an eligible group is removed when one of these holds for *every* producer and
consumer of its group (a residual stage removes c only when all its members agree):

- no outgoing: every consumer weight entry that reads c is zero, so c contributes nothing;
- dead: every consumer input is exactly 0 at c's positions on all calibration rows (a ReLU that never
  fires), so c contributes nothing on that data;
- no incoming: every producer weight slice of c is zero, so c's activation is a constant. It is measured
  (min = max over the calibration rows, position by position) and folded into every consumer's bias
  (bias_fold), which makes the removal exact for any input. A Conv consumer with zero padding cannot take
  the fold (the constant is not constant at the borders): such a channel is kept, and the reason noted.

Removing c zeroes its consumer entries and its producer slices in the workspace and the checks run again
until nothing changes: a channel that fed only removed channels has lost its outgoing connections (the
backward sweep of the paper), one fed only by removed channels has lost its incoming ones (forward).
Activities are measured once, on the masked model: every removal above leaves the other channels'
values unchanged on the calibration data.

Channels whose value also leaves through something other than a consumer weight (the contracted axis of
an activation x activation MatMul: attention queries and keys) are never removed here, since nothing
measured at consumer inputs speaks for that path. A removal never empties a weight axis and keeps at
least --min-keep channels per group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .. import io
from ..analysis import Analysis
from ..analysis.ops_recurrent import is_recurrent
from ..graph import GraphIndex
from ..layers import Layer, Workspace
from ..plan import PruningPlan
from ..stats import Range
from .base import MethodContext
from .bias_fold import contribution, fold, foldable

DEAD, NO_OUTGOING, NO_INCOMING = "dead", "no outgoing", "no incoming"
_SELECTION_OPS = frozenset({"Shape", "Size", "Slice", "Gather", "Split"})


@dataclass(frozen=True)
class Removal:
    """Channels removed (id -> reason) and channels kept although idle (id -> why)."""

    removed: dict[int, str] = field(default_factory=dict)
    kept: dict[int, str] = field(default_factory=dict)

    def counts(self, channels) -> dict[str, int]:
        reasons = [self.removed[c] for c in channels if c in self.removed]
        counts = {r: reasons.count(r) for r in (DEAD, NO_OUTGOING, NO_INCOMING) if r in reasons}
        kept = sum(1 for c in channels if c in self.kept)
        return {**counts, "kept_idle": kept} if kept else counts


@dataclass(frozen=True)
class _Slice:
    weight: str
    axis: int
    positions: np.ndarray


@dataclass(frozen=True)
class _Channel:
    id: int
    producers: tuple[_Slice, ...]
    consumers: tuple[tuple[object, _Slice], ...]  # (ConsumerRole, slice of its weight)


def remove_neurons(ctx: MethodContext, space: Workspace, model: onnx.ModelProto, views: dict[str, Layer]) -> Removal:
    """Remove idle channels of the eligible groups; folds go into `space`, so do the zeroed slices.

    `model` is the model whose activity is measured (ctx.model with the workspace's masks applied).
    """
    groups = [g for g in ctx.eligible_groups() if not is_recurrent(g)]  # activity bounds model one step
    unsafe = silent_exits(ctx.index, ctx.analysis)
    channels = [ch for g in groups for ch in _channels(ctx.analysis, g) if ch.id not in unsafe]
    reads = {role.input: _read_axis(views.get(role.node)) for g in groups for role in g.consumers}
    ranges = ctx.stats.ranges(model, reads) if channels else {}
    guard = _Guard(ctx.analysis, ctx.options.min_keep)
    removed, kept = {}, {}
    changed = True
    while changed:
        changed = False
        for channel in channels:
            if channel.id in removed:
                continue
            reason, detail = _classify(channel, space, ranges, views, ctx.index)
            if reason is None:
                if detail:
                    kept[channel.id] = detail
                continue
            if not guard.allows(channel.id):
                kept[channel.id] = f"{reason}, but removing it would empty a layer or go under --min-keep"
                continue
            if reason == NO_INCOMING:
                for (role, _), delta in zip(channel.consumers, detail, strict=True):
                    fold(views.get(role.node), space, delta)
            _zero_channel(channel, space)
            guard.take(channel.id)
            removed[channel.id] = reason
            kept.pop(channel.id, None)
            changed = True
    return Removal(removed, kept)


def _channels(analysis: Analysis, group) -> list[_Channel]:
    def slices(roles, channel):
        return tuple(
            _Slice(r.weight, r.axis, np.flatnonzero(analysis.const_labels[r.weight][r.axis] == channel)) for r in roles
        )

    result = []
    for channel in group.free:
        consumers = slices(group.consumers, channel)
        result.append(
            _Channel(channel, slices(group.producers, channel), tuple(zip(group.consumers, consumers, strict=True)))
        )
    return result


def _read_axis(layer: Layer | None) -> int | None:
    """How the input of a consumer is summarized: per feature (dense layers) or per [C, *spatial]."""
    return None if layer is None or layer.is_conv else layer.feature_axis


def _is_zero(space: Workspace, part: _Slice) -> bool:
    return not np.any(np.moveaxis(space.get(part.weight), part.axis, 0)[part.positions])


def _classify(channel: _Channel, space: Workspace, ranges: dict[str, Range], views, index: GraphIndex):
    """(reason, None) when the channel can go, (NO_INCOMING, per-consumer deltas) when it can go with a
    fold, (None, why it stays or None) otherwise."""
    bounds = [_bounds(ranges[role.input], part) for role, part in channel.consumers]
    if bounds and all(not np.any(low) and not np.any(high) for low, high in bounds):
        return DEAD, None
    if all(_is_zero(space, part) for _, part in channel.consumers):
        return NO_OUTGOING, None
    if not all(_is_zero(space, part) for part in channel.producers):
        return None, None
    if not all(np.array_equal(low, high) for low, high in bounds):
        return None, "no incoming connections, but its activation is not constant on the data"
    deltas = []
    for (role, part), (low, _) in zip(channel.consumers, bounds, strict=True):
        layer = views.get(role.node)
        if layer is None:
            delta = np.zeros(1) if not np.any(low) else f"consumer '{role.node}' cannot take a folded constant"
        else:
            delta = contribution(layer, space.get(role.weight), part.positions, low, index)
        reason = foldable(layer, delta)
        if reason is not None:
            return None, f"no incoming connections, but {reason}"
        deltas.append(delta)
    return NO_INCOMING, deltas


def _bounds(measured: Range, part: _Slice) -> tuple[np.ndarray, np.ndarray]:
    return measured.low[part.positions], measured.high[part.positions]


def _zero_channel(channel: _Channel, space: Workspace) -> None:
    for part in [p for _, p in channel.consumers] + list(channel.producers):
        np.moveaxis(space.get(part.weight), part.axis, 0)[part.positions] = 0.0


class _Guard:
    """Refuses a removal that would empty a labeled weight axis or leave a group under min_keep."""

    def __init__(self, analysis: Analysis, min_keep: int) -> None:
        self.analysis = analysis
        self.min_keep = min_keep
        self.live: list[int] = []
        self.lines_of: dict[int, list[int]] = {}
        for axes in analysis.const_labels.values():
            for line in axes.values():
                if not len(line) or (line < 0).any():
                    continue
                ids = np.unique(line).tolist()
                for channel in ids:
                    self.lines_of.setdefault(channel, []).append(len(self.live))
                self.live.append(len(ids))
        self.group_live = {g.id: g.size for g in analysis.groups}

    def allows(self, channel: int) -> bool:
        group = int(self.analysis.channel_group[channel])
        if self.group_live[group] - 1 < self.min_keep:
            return False
        return all(self.live[line] > 1 for line in self.lines_of.get(channel, ()))

    def take(self, channel: int) -> None:
        self.group_live[int(self.analysis.channel_group[channel])] -= 1
        for line in self.lines_of.get(channel, ()):
            self.live[line] -= 1


def silent_exits(index: GraphIndex, analysis: Analysis) -> set[int]:
    """Channels whose value leaves the labeled tensors other than through a consumer weight: a node
    (other than a consumer layer reading its input, or a shape/selection op) reads them and none of its
    outputs carries them, as the contracted axis of an activation x activation MatMul."""
    reads = {(role.node, role.input) for group in analysis.groups for role in group.consumers}
    unsafe: set[int] = set()
    for node in index.nodes:
        if node.op_type in _SELECTION_OPS:
            continue
        carried = set()
        for name in node.output:
            carried |= _ids(analysis, name)
        for name in node.input:
            if name and (node.name, name) not in reads:
                unsafe |= _ids(analysis, name) - carried
    return unsafe


def _ids(analysis: Analysis, name: str) -> set[int]:
    ids = analysis.tensor_labels.get(name)
    return set() if ids is None else set(np.unique(ids[ids >= 0]).tolist())


def nonzero_params(index: GraphIndex, analysis: Analysis, plan: PruningPlan) -> int:
    """Nonzero float weights the model will hold once `plan` is applied (masks and removed channels)."""
    gone = plan.removed_mask(analysis.num_channels)
    removed = {name: {axis: gone[line] for axis, line in axes.items()} for name, axes in analysis.const_labels.items()}
    return io.nonzero_params(index.model, plan.updates, removed)
