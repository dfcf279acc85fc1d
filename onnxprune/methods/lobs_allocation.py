"""`--lobs-allocation output`: spread the removals over the layers by their measured effect on the model's
outputs (the global allocation of OBC, Frantar & Alistarh 2022, and SPDY, with the model output error
in place of the loss).

Equal *layer* errors are not what the model needs: a 144-weight first conv at 10% density destroys a
network whose last conv loses little at 4%. For every layer l and removal count k on a grid, the layer
alone is pruned to k (its OBS trace finished at k) in the otherwise unchanged model and the relative
output error

    e_l(k) = sum_outputs ||Y(k) - Y||^2 / sum_outputs ||Y||^2

is measured on `samples` calibration samples (one onnxruntime session, the layer's initializers fed as
overrides: len(grid) forward passes per layer). Assuming the errors of different layers add, the
allocation minimises sum_l e_l(k_l) subject to sum_l k_l = total. Each curve is replaced by its lower
convex hull (e_l made nondecreasing first); on convex piecewise-linear curves taking hull segments in
order of increasing slope, the last one partly, is optimal (the continuous knapsack), so the counts
are optimal for the convexified problem and exact at hull vertices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..progress import bar
from ..stats import OutputProbe

#: densities of the grid: 2^(-j/2) down to a quarter of the target density (and the target itself)
GRID_STEP = 2.0**-0.5
GRID_BELOW_TARGET = 4.0
GRID_FLOOR = 1e-3


@dataclass(frozen=True)
class Curve:
    """Measured output error `errors[j]` after `counts[j]` removals (counts increasing, from 0)."""

    counts: np.ndarray
    errors: np.ndarray


def grid_counts(size: int, removable: int, ratio: float) -> np.ndarray:
    """Removal counts of a layer of `size` weights (at most `removable`): densities 1, 2^-1/2, 2^-1, ...
    down to (1 - ratio) / 4, plus the target density 1 - ratio itself."""
    target = max(1.0 - ratio, 0.0)
    lowest = max(target / GRID_BELOW_TARGET, GRID_FLOOR)
    steps = max(0, math.ceil(math.log(lowest) / math.log(GRID_STEP)))
    densities = np.append(GRID_STEP ** np.arange(steps + 1), target)
    counts = np.floor((1.0 - densities) * size + 1e-9).astype(np.int64)
    return np.unique(np.clip(counts, 0, removable))


def lower_hull(counts: np.ndarray, errors: np.ndarray) -> list[tuple[float, float]]:
    """Vertices of the lower convex hull of the points (counts[j], errors[j]), counts increasing."""
    hull: list[tuple[float, float]] = []
    for point in zip(counts.tolist(), errors.tolist(), strict=True):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (point[0] - x1) >= (point[1] - y1) * (x2 - x1):
                hull.pop()  # the middle vertex is on or above the chord
            else:
                break
        hull.append(point)
    return hull


def hull_allocation(curves: Sequence[Curve], total: int) -> list[int]:
    """Removals per curve summing to `total` (or every removable one) that minimise the sum of the
    convexified errors: hull segments in order of increasing slope, the last one partly."""
    segments = []
    counts = []
    for index, curve in enumerate(curves):
        hull = lower_hull(curve.counts, np.maximum.accumulate(curve.errors))
        counts.append(int(hull[0][0]))
        for (x1, y1), (x2, y2) in zip(hull, hull[1:], strict=False):
            segments.append(((y2 - y1) / (x2 - x1), index, int(x2 - x1)))
    left = total - sum(counts)
    for _, index, width in sorted(segments):
        if left <= 0:
            break
        take = min(width, left)
        counts[index] += take
        left -= take
    return counts


def output_curves(
    probe: OutputProbe, items: Sequence, grid: Callable[[object], np.ndarray], updates: Callable
) -> list[Curve]:
    """Per item (a layer's trace): the output error at each count of `grid(item)`, with the initializer
    values `updates(item, count)` fed in place of the model's."""
    curves = []
    for item in bar(items, desc="lobs allocation probes", unit="layer"):
        counts = grid(item)
        errors = np.array([probe.error(updates(item, int(k))) for k in counts])
        curves.append(Curve(counts, errors))
    return curves
