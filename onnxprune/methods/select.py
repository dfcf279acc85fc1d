"""Turn per-channel importance scores into the set of channels to remove, group by group.

For a group of n channels and ratio r: keep k = max(min_keep, n - floor(r n)) channels, rounded up to
a multiple of round_to (at most n); remove the n - k free channels of lowest score. Frozen channels
are always kept and count towards k. Under `--target` the budget allocation chooses k per group
(PruneOptions.keep) and the ratio is not used.
"""

from __future__ import annotations

import math

import numpy as np

from ..analysis import Analysis, Group
from ..plan import empties
from .base import PruneOptions


def keep_count(group: Group, ratio: float, options: PruneOptions) -> int:
    """Channels `group` keeps: the budget allocation's count where it chose one (options.keep), else
    as the module docstring says."""
    if options.keep is not None and group.id in options.keep:
        return int(options.keep[group.id])
    size = group.size
    keep = max(options.min_keep, size - math.floor(ratio * size + 1e-9))
    keep = min(size, math.ceil(keep / options.round_to) * options.round_to)
    return max(keep, size - len(group.free))


def lowest(group: Group, scores: np.ndarray, ratio: float, options: PruneOptions) -> list[int]:
    """The free channels of `group` to remove: the lowest `scores` (aligned with group.free)."""
    remove = group.size - keep_count(group, ratio, options)
    if remove <= 0:
        return []
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
    return [group.free[i] for i in order[:remove]]


def repair_empty(analysis: Analysis, removed: set[int], score_of: dict[int, float]) -> set[int]:
    """Put back the best channel of every weight axis the removal would empty (a Split half, say)."""
    removed = set(removed)
    for line in empties(analysis, removed):
        candidates = [c for c in np.unique(line).tolist() if c in removed]
        if candidates:
            removed.discard(max(candidates, key=lambda c: score_of.get(c, 0.0)))
    return removed
