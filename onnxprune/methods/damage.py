"""Damage curves: what removing r channels of a group costs in accuracy, as a method predicts it, for
pruning to a budget (`--target`, onnxprune.budget).

A method that can prune to a target declares `Method.damage(ctx) -> {group id: GroupCurve}`; its
decide() must then keep, in every group, `methods.select.keep_count` channels (the allocation's count).
Two kinds of curve:

- "saliency" (data-free methods, and wanda's channel scores): the normalized global saliency of
  Torch-Pruning's `global_pruning`. Channel c of group g scores s_c; scores are divided by the group's
  mean, s'_c = s_c / mean_g(s), so that groups of different scale compare; removing the r lowest costs
      D_g(r) = sum of the r smallest s'_c,
  a convex, nondecreasing curve (sorted increments). Removing, over all groups, every channel below one
  threshold on s' is the Torch-Pruning baseline; the allocator takes the cheapest damage per unit of cost.
- "layer error" (obs): the consumers' predicted squared error after the greedy removed r channels.
  Its scale differs from layer to layer, so onnxprune.budget.curves calibrates it against the model's
  output error, measured with `overrides(r)`: the initializer values that realize r removals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..analysis import Group

SALIENCY = "saliency"
LAYER_ERROR = "layer error"


@dataclass(frozen=True)
class GroupCurve:
    """`damage[j]` after removing `removed[j]` free channels (`removed` increasing from 0); linear in
    between. `overrides(r)`: initializer values (by name, original shapes; among `names`) whose model
    equals the group with r channels removed, for measuring the output error; None where the method has none."""

    removed: np.ndarray
    damage: np.ndarray
    unit: str
    overrides: Callable[[int], dict[str, np.ndarray]] | None = None
    names: tuple[str, ...] = ()  # the initializers `overrides` may replace

    @property
    def limit(self) -> int:
        """The most channels the curve covers."""
        return int(self.removed[-1])

    def at(self, counts) -> np.ndarray:
        """The damage at each removal count of `counts` (linear interpolation between known counts)."""
        return np.interp(np.asarray(counts, dtype=np.float64), self.removed, self.damage)


def removable(group: Group, min_keep: int) -> int:
    """The most free channels of `group` that may go while it keeps `min_keep` (frozen ones count)."""
    return max(0, min(len(group.free), group.size - min_keep))


def saliency_curve(scores: np.ndarray, limit: int, greedy_order: bool = False) -> GroupCurve:
    """The normalized-saliency curve D(r), r = 0..limit, of one group: `scores` (aligned with
    group.free) over their mean (1 each for a group of equal zero scores), sorted, summed. With
    `greedy_order` the scores are the saliencies of a greedy's steps in the order it took them (merge),
    not sorted."""
    scores = np.abs(np.asarray(scores, dtype=np.float64))
    mean = float(scores.mean()) if scores.size else 0.0
    normalized = scores / mean if mean > 0 else np.ones_like(scores)
    steps = (normalized if greedy_order else np.sort(normalized, kind="stable"))[:limit]
    return GroupCurve(np.arange(len(steps) + 1), np.concatenate([[0.0], np.cumsum(steps)]), SALIENCY)
