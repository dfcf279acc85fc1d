"""Damage curves: what removing r channels of a group costs in accuracy, as a method predicts it, for
pruning to a budget (`--target`, onnxprune.budget).

A method that can prune to a target declares `Method.damage(ctx) -> {group id: GroupCurve}`; its
decide() must then keep, in every group, `methods.select.keep_count` channels (the allocation's count).
Two kinds of curve:

- "saliency" (data-free methods, and wanda's channel scores): a normalized global saliency in the
  manner of Torch-Pruning's `global_pruning` (each group's scores normalized, then compared across
  groups). Channel c of group g scores s_c (a norm); its share of the group's energy is
  s'_c = s_c^2 / sum_g s^2, and removing the r lowest costs
      D_g(r) = sum of the r smallest s'_c   (0 <= D_g <= 1: the share of g's weight energy removed),
  a convex, nondecreasing curve (sorted increments). Torch-Pruning's default normalizes by the mean
  (s_c / mean_g s); then every group's curve ends at its channel count, removing 5 of a 6-channel layer
  costs as little as 5 of a 120-channel one, and under a MACs budget the cheap-looking small layers are
  emptied (measured: LeNet-5 at macs=0.5 fell to 14% accuracy, against 77% for a uniform ratio). The
  energy share makes the fraction of a group removed count. magnitude and random go one step further
  (ordered_curve): a group of tied channels (a residual stage) loses them in every one of its
  producers, so their damage is the sum over the group's producer layers l of the share of l's weight
  energy removed, D_g(r) = sum_l sum_{c in first r} e_l[c] / sum_c e_l[c], in the order decide()
  removes them. The allocator then takes the least damage per unit of cost.
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


def ordered_curve(damage: np.ndarray, order: np.ndarray, limit: int) -> GroupCurve:
    """D(r) = the summed `damage` of the first r channels of `order` (indices into group.free), the
    order in which the method's decide() removes them."""
    steps = np.asarray(damage, dtype=np.float64)[np.asarray(order)][:limit]
    return GroupCurve(np.arange(len(steps) + 1), np.concatenate([[0.0], np.cumsum(steps)]), SALIENCY)


def saliency_curve(scores: np.ndarray, limit: int, greedy_order: bool = False) -> GroupCurve:
    """The normalized-saliency curve D(r), r = 0..limit, of one group: the squares of `scores` (aligned
    with group.free) over their sum (1/n each for a group of zero scores), sorted, summed. With
    `greedy_order` the scores are the saliencies of a greedy's steps in the order it took them (merge:
    already squared errors, so not squared again), not sorted."""
    scores = np.abs(np.asarray(scores, dtype=np.float64))
    energy = scores if greedy_order else scores**2
    total = float(energy.sum())
    normalized = energy / total if total > 0 else np.full(len(energy), 1.0 / max(1, len(energy)))
    steps = (normalized if greedy_order else np.sort(normalized, kind="stable"))[:limit]
    return GroupCurve(np.arange(len(steps) + 1), np.concatenate([[0.0], np.cumsum(steps)]), SALIENCY)
