"""Per-group damage curves in one unit, at the counts a group may keep.

A method's curves (methods.damage.GroupCurve) come in two kinds. Normalized saliencies are already
comparable across groups. Layer errors are not: OBS predicts each group's error at its consumers'
outputs, E_g(r) = sum_k 1/2 ||dZ_k||^2, and how much of it reaches the model's outputs depends on
everything after those consumers. So each layer-error curve is calibrated against probes of the
model's output error

    e_g(r) = sum_outputs ||Y_r - Y||^2 / sum_outputs ||Y||^2

measured through onnxruntime (stats.OutputProbe: the group alone removed, its compensated consumers fed
as initializer overrides) at `probes` counts r_1 < ... < r_P spread over the curve. The calibrated curve
keeps the layer curve's shape between the probes and equals the measurements at them:

    D_g(r) = E_g(r) * s_g(r),   s_g(r_i) = e_g(r_i) / E_g(r_i),

s_g linear between probes and constant beyond the first and last (first-order propagation makes the
output error a fixed quadratic form of the layer error direction, so s_g varies slowly). Summing D_g
over groups assumes the groups' effects add, as OBC/SPDY do. With probes = 0 the layer errors are used
as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..analysis import Group
from ..methods.base import PruneOptions
from ..methods.damage import LAYER_ERROR, GroupCurve
from ..stats import OutputProbe
from .allocate import Options

#: the calibrated unit
OUTPUT_ERROR = "output error (relative squared L2)"


@dataclass(frozen=True)
class Calibration:
    """Where group g's output error was measured: `removed[i]` channels gave `measured[i]` (and the
    uncalibrated curve said `predicted[i]`)."""

    removed: tuple[int, ...]
    measured: tuple[float, ...]
    predicted: tuple[float, ...]


def probe_counts(curve: GroupCurve, probes: int) -> list[int]:
    """`probes` of the curve's own counts, spread evenly over (0, limit] (the greedy's step boundaries,
    so a replay to that count is exactly the curve's point)."""
    if probes <= 0 or curve.limit <= 0:
        return []
    wanted = [curve.limit * (i + 1) / (probes + 1) for i in range(probes)]
    known = curve.removed[1:]
    return sorted({int(known[np.argmin(np.abs(known - w))]) for w in wanted})


def calibrate(curve: GroupCurve, probe: OutputProbe, probes: int) -> tuple[GroupCurve, Calibration | None]:
    """The curve in output-error units (module docstring); saliency curves and probes = 0 pass through."""
    counts = probe_counts(curve, probes) if curve.unit == LAYER_ERROR and curve.overrides else []
    if not counts:
        return curve, None
    measured = np.array([probe.error(curve.overrides(r)) for r in counts])
    predicted = curve.at(counts)
    usable = predicted > 0
    if not usable.any():  # the layer curve says nothing moves where the outputs do: use the measurements
        damage = np.interp(curve.removed, [0, *counts], [0.0, *measured])
    else:
        scale = np.interp(curve.removed, np.asarray(counts)[usable], measured[usable] / predicted[usable])
        damage = curve.damage * scale
    calibrated = GroupCurve(curve.removed, damage, OUTPUT_ERROR)
    return calibrated, Calibration(tuple(counts), tuple(measured.tolist()), tuple(predicted.tolist()))


def allowed_kept(group: Group, options: PruneOptions, preferred: tuple[int, ...] | None, limit: int) -> list[int]:
    """Kept counts group may end with, descending from its size: at least --min-keep and its frozen
    channels, a multiple of --round-to (or the whole group), among the cost model's preferred widths
    when it has some, and within the `limit` removals its curve covers."""
    lowest = max(options.min_keep, group.size - len(group.free), group.size - limit)
    kept = [k for k in range(group.size, lowest - 1, -1) if k == group.size or k % options.round_to == 0]
    if preferred is not None:
        wanted = set(preferred)
        kept = [k for k in kept if k == group.size or k in wanted]
    return kept


def choices(curves: Mapping[int, GroupCurve], groups: Mapping[int, Group], options: PruneOptions, model) -> dict:
    """Per group: the allocator's Options (allowed removal counts and the curve's damage at each)."""
    result = {}
    for gid, curve in curves.items():
        group = groups[gid]
        kept = allowed_kept(group, options, model.preferred_widths(group), curve.limit)
        removed = np.array([group.size - k for k in kept], dtype=np.int64)
        result[gid] = Options(removed, curve.at(removed))
    return result
