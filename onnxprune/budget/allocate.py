"""Choose how many channels each group keeps: least summed damage with the cost within the budget.

Group g may remove r in R_g (its allowed counts: from 0 up to what --min-keep, --round-to and the cost
model's preferred widths allow), at damage D_g(r). The problem

    minimize  sum_g D_g(r_g)   subject to   C(r) <= B,   r_g in R_g

is a knapsack: C (the CostModel) is not additive over groups (a layer between two pruned groups costs
in proportion to the product of their kept shares; latency is measured). Solved in two stages:

1. Lagrangian sweep. Linearize the cost at the current point: removing one channel of g saves
   c_g = (C(r) - C(r + step_g)) / step_g. For a multiplier lambda each group minimizes
   D_g(r) - lambda c_g r, whose minimizers over R_g are the vertices of the lower convex hull of
   (r, D_g(r)); as lambda grows, the hull segments are taken in increasing order of damage per unit of
   cost, slope_g / c_g. Every segment, split into its allowed counts, becomes a move; the shortest
   prefix of the moves (in that order) whose true cost C meets the budget is found by bisection (C only
   falls as moves are added). The sweep is repeated with the costs linearized again at its result
   (ROUNDS times), keeping the best.
2. Exact fix-up with the true C on the allowed counts (not just hull vertices): while C > B, take the
   next count of the group with the least damage increase per cost decrease; then, while some group can
   step back (restore channels) with C staying <= B, take the step with the most damage decrease per
   cost increase. The result never exceeds B (unless B is out of reach: then every group removes all it
   may, and `reachable` is False) and lies within one step of some group from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .cost_model import CostModel

#: Lagrangian rounds (the costs linearized again at the previous round's allocation)
ROUNDS = 3


@dataclass(frozen=True)
class Options:
    """Group g's allowed removal counts `removed` (ascending, from 0) and the damage at each."""

    removed: np.ndarray
    damage: np.ndarray


@dataclass(frozen=True)
class Allocation:
    """The chosen removal count per group (0 for unchanged groups), its true cost and summed damage;
    `marginal[g]`: damage per unit of cost of g's next removal (inf at its end), `reachable`: the cost
    meets the budget."""

    removed: dict[int, int]
    cost: float
    damage: float
    reachable: bool
    marginal: dict[int, float]

    def kept(self, sizes: Mapping[int, int]) -> dict[int, int]:
        return {g: sizes[g] - r for g, r in self.removed.items()}


class _Problem:
    def __init__(self, options: Mapping[int, Options], sizes: Mapping[int, int], model: CostModel, budget: float):
        self.options = {g: o for g, o in options.items() if len(o.removed) > 1}
        self.sizes, self.model, self.budget = sizes, model, budget
        self.damage = {
            g: np.maximum.accumulate(np.asarray(o.damage, dtype=np.float64)) for g, o in self.options.items()
        }

    def cost(self, position: Mapping[int, int]) -> float:
        kept = {g: self.sizes[g] - int(self.options[g].removed[j]) for g, j in position.items() if j}
        return self.model.cost(kept)

    def total_damage(self, position: Mapping[int, int]) -> float:
        return float(sum(self.damage[g][j] for g, j in position.items()))

    def moved(self, position: Mapping[int, int], group: int, delta: int) -> dict[int, int]:
        return {**position, group: position[group] + delta}


def allocate(options: Mapping[int, Options], sizes: Mapping[int, int], model: CostModel, budget: float) -> Allocation:
    """The allocation of the module docstring. `sizes[g]`: group g's channel count (kept = size - removed)."""
    problem = _Problem(options, sizes, model, budget)
    start = dict.fromkeys(problem.options, 0)
    if problem.cost(start) <= budget or not problem.options:
        return _result(problem, start)
    best, position = None, start
    for _ in range(ROUNDS):
        position = _fix_up(problem, _sweep(problem, position))
        if best is None or _better(problem, position, best):
            best = position
    return _result(problem, best)


def _better(problem: _Problem, a: dict[int, int], b: dict[int, int]) -> bool:
    fits_a, fits_b = problem.cost(a) <= problem.budget, problem.cost(b) <= problem.budget
    if fits_a != fits_b:
        return fits_a
    return problem.total_damage(a) < problem.total_damage(b) if fits_a else problem.cost(a) < problem.cost(b)


def _rates(problem: _Problem, position: dict[int, int]) -> dict[int, float]:
    """Cost saved per removed channel of each group, one allowed step from `position` (back at its end)."""
    here = problem.cost(position)
    rates = {}
    for g, j in position.items():
        removed = problem.options[g].removed
        step = 1 if j + 1 < len(removed) else -1
        other = problem.cost(problem.moved(position, g, step))
        channels = abs(int(removed[j + step]) - int(removed[j]))
        rates[g] = (here - other) * step / channels if channels else 0.0
    return rates


def _hull(removed: np.ndarray, damage: np.ndarray) -> list[int]:
    """Indices of the lower convex hull's vertices of the points (removed[j], damage[j])."""
    hull: list[int] = []
    for j in range(len(removed)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (damage[b] - damage[a]) * (removed[j] - removed[a]) >= (damage[j] - damage[a]) * (
                removed[b] - removed[a]
            ):
                hull.pop()
            else:
                break
        hull.append(j)
    return hull


def _sweep(problem: _Problem, linearized_at: dict[int, int]) -> dict[int, int]:
    """Hull segments of every group in order of damage per linearized cost; the shortest prefix of
    their allowed counts that meets the budget (all of them if none does)."""
    rates = _rates(problem, linearized_at)
    segments = []
    for g, options in problem.options.items():
        if rates[g] <= 0:
            continue
        hull, damage = _hull(options.removed, problem.damage[g]), problem.damage[g]
        for a, b in zip(hull, hull[1:], strict=False):
            slope = (damage[b] - damage[a]) / (options.removed[b] - options.removed[a])
            segments.append((slope / rates[g], g, a, b))
    segments.sort(key=lambda s: (s[0], s[1], s[2]))
    moves = [(g, j) for _, g, a, b in segments for j in range(a + 1, b + 1)]

    def position(count: int) -> dict[int, int]:
        chosen = dict.fromkeys(problem.options, 0)
        for g, j in moves[:count]:
            chosen[g] = j
        return chosen

    low, high = 0, len(moves)
    while low < high:  # the fewest moves whose cost meets the budget
        middle = (low + high) // 2
        if problem.cost(position(middle)) <= problem.budget:
            high = middle
        else:
            low = middle + 1
    return position(low)


def _fix_up(problem: _Problem, position: dict[int, int]) -> dict[int, int]:
    """Remove by least damage per cost until the budget holds, then restore by most damage per cost
    while it still holds (true costs, every allowed count)."""
    position = dict(position)
    cost = problem.cost(position)
    while cost > problem.budget:
        best = None
        for g, j in position.items():
            if j + 1 < len(problem.options[g].removed):
                other = problem.cost(problem.moved(position, g, 1))
                saved = cost - other
                if saved > 0:
                    ratio = (problem.damage[g][j + 1] - problem.damage[g][j]) / saved
                    if best is None or ratio < best[0]:
                        best = (ratio, g, other)
        if best is None:
            break  # nothing left to remove: out of reach
        position[best[1]] += 1
        cost = best[2]
    while cost <= problem.budget:
        best = None
        for g, j in position.items():
            if j > 0:
                other = problem.cost(problem.moved(position, g, -1))
                if other <= problem.budget:
                    added = other - cost
                    gain = problem.damage[g][j] - problem.damage[g][j - 1]
                    ratio = gain / added if added > 0 else np.inf
                    if best is None or ratio > best[0]:
                        best = (ratio, g, other)
        if best is None:
            break
        position[best[1]] -= 1
        cost = best[2]
    return position


def _result(problem: _Problem, position: dict[int, int]) -> Allocation:
    cost = problem.cost(position)
    marginal = {}
    for g, j in position.items():
        if j + 1 < len(problem.options[g].removed):
            saved = cost - problem.cost(problem.moved(position, g, 1))
            added = problem.damage[g][j + 1] - problem.damage[g][j]
            marginal[g] = float(added / saved) if saved > 0 else float("inf")
        else:
            marginal[g] = float("inf")
    removed = {g: int(problem.options[g].removed[j]) for g, j in position.items()}
    return Allocation(removed, cost, problem.total_damage(position), cost <= problem.budget, marginal)
