"""One step of a prune to a budget: curves, calibration, allocation, then the method's own decide().

decide_to_target(): the method's damage curves (Method.damage) on the step's model; layer-error curves
calibrated against the model's output error (curves.py); the counts each group may keep (--min-keep,
--round-to, the cost model's preferred widths); the allocation of least summed damage within the budget
(allocate.py); and the method's decide() with those counts (PruneOptions.keep). The plan's notes say,
per group, how many channels went and why (the damage there and the damage per unit of cost of the next
channel), and, for the step, the budget, the planned cost and the curves (thinned) for the report and plot.

Chains (check_target, step_fractions): every step whose method takes a target removes an equal share of
it, geometrically: with n such steps (methods x --iterations), step i (1-based) keeps T^(i/n) of the
original model's cost, so the last one meets T of the original exactly; a method whose amount is its
own (relief's --alpha) runs as it is in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from ..analysis import Analysis
from ..errors import OptionError
from ..graph import GraphIndex
from ..methods.base import Method, MethodContext, PruneOptions, Target
from ..methods.damage import LAYER_ERROR
from ..plan import PruningPlan
from ..progress import bar
from ..stats import Statistics
from .allocate import Allocation, allocate
from .cost_model import Counted, Measured
from .costs import build_cost_model
from .curves import OUTPUT_ERROR, calibrate, choices

#: allocations tried again with a tightened budget when the plan's exact count overshoots
RETRIES = 2
#: a measured cost (latency) is timed at most this many times, the allocation made again after each
CLOSED_LOOP = 6
#: ... and is accepted within [LOW, HIGH] x the budget: above it misses, below it removes more than asked
#: (HIGH 1: the written model's check allows latency_check.SLACK more, room for the noise between the
#: planning timings, the fastest of repeats, and the check's median; with 1.05, ddddocr's detector
#: measured 0.72 while planning and 0.80 in the check of a latency=0.7 target)
LOW, HIGH = 0.85, 1.0
#: the smallest goal (share of the model's time) the closed loop asks the allocator for; one step
#: on a line at most halves the goal, and an interpolation stays this share of the bracket inside it
MIN_GOAL, INSIDE = 0.01, 0.1
#: how far below a repeated allocation's planned cost the next goal goes (relative)
REPEAT_MARGIN = 1e-6
#: points of each group's curve kept in the report (plus the chosen and the probed ones)
REPORT_POINTS = 48


@dataclass(frozen=True)
class StepTarget:
    """What one step must meet: at most `fraction` of the original's cost; `origin` is that cost in the
    cost model's unit (None: this step's own cost before it prunes, for the first step of a latency target)."""

    target: Target
    fraction: float
    origin: float | None
    shapes: dict[str, tuple] | None = None  # --input-shape: sizes symbolic input dims where latency is timed


def check_target(target: Target, methods: Sequence[Method]) -> None:
    """One clear line before any work when the target cannot be met by these methods."""
    for meth in methods:
        if meth.damage is None and not meth.own_amount:
            raise OptionError(
                f"--method {meth.name} --target: {meth.name} removes single weights, not a number of channels per "
                "group; use a structured method (magnitude, random, merge, obs, wanda --structured) for --target"
            )
    if not any(m.damage is not None for m in methods):
        raise OptionError(
            f"--target with --method {','.join(m.name for m in methods)}: its amount is set by its own options "
            "(relief: --alpha); chain a structured method after it (e.g. relief,obs) to meet the target"
        )


def step_fractions(target: Target, taking: int) -> list[float]:
    """The share of the original's cost each of `taking` target steps keeps (T^(i/n), the last T)."""
    return [target.fraction ** ((i + 1) / taking) for i in range(taking)]


def decide_to_target(
    meth: Method, model: onnx.ModelProto, index: GraphIndex, analysis: Analysis, options: PruneOptions,
    stats: Statistics | None, step: StepTarget, providers,
) -> PruningPlan:  # fmt: skip
    """The method's plan with the counts of the least-damage allocation within the step's budget."""
    ctx = MethodContext.build(meth, model, index, analysis, options.for_methods(), stats)
    if meth.damage is None:  # its own amount (relief): runs as it is
        return meth.decide(ctx)
    costs = build_cost_model(step.target.kind, model, index, analysis, providers, step.target.batch, step.shapes)
    before = costs.cost({})
    budget = step.fraction * (before if step.origin is None else step.origin)
    curves = meth.damage(ctx)
    calibrations = {}
    layered = [g for g, c in curves.items() if c.unit == LAYER_ERROR and c.overrides is not None]
    if layered and step.target.probes and stats is not None:
        names = sorted({n for g in layered for n in curves[g].names})
        probe = stats.for_method("target", ("outputs",)).output_probe(model, names, step.target.samples)
        for g in bar(layered, desc="target: output-error probes", unit="group"):
            curves[g], calibrations[g] = calibrate(curves[g], probe, step.target.probes)
        del probe
    groups = {g.id: g for g in analysis.groups}
    options_of = choices(curves, groups, options, costs)
    sizes = {g: groups[g].size for g in options_of}
    allocation, plan, planned, rounds = _allocate_and_decide(meth, ctx, options, options_of, sizes, costs, budget)
    notes = dict(plan.notes)
    units = {c.unit for c in curves.values()}
    unit = units.pop() if len(units) == 1 else "mixed"
    rows = {}
    for g, opts in options_of.items():
        removed = allocation.removed.get(g, 0)
        why = _why(
            removed, sizes[g], float(curves[g].at(removed)), allocation.marginal.get(g), curves[g].unit, costs.kind
        )
        notes[g] = {**notes.get(g, {}), "target_removed": removed, "why": why}
        rows[g] = _row(g, analysis, curves[g], opts.removed, removed, calibrations.get(g), costs, allocation, sizes)
    notes["target"] = {
        "kind": costs.kind,
        "target": str(step.target),
        "step_fraction": step.fraction,
        "cost_before": before,
        "budget": budget,
        "planned_cost": planned,
        "reachable": allocation.reachable,
        "damage": allocation.damage,
        "damage_unit": unit,
        "groups": rows,
    }
    if rounds is not None:
        notes["target"]["closed_loop"] = rounds
    return PruningPlan(plan.removed, plan.updates, plan.method, notes)


def _allocate_and_decide(meth, ctx, options, options_of, sizes, costs, budget):
    """The allocation within `budget` and the method's plan for it. A counted cost is checked on the
    channels the plan removes (exact even where a group's channels hold unequal shares of an axis, after
    a Split); an overshoot tightens the budget by as much and allocates again (at most RETRIES times).
    A measured cost (cost_model.Measured) is checked by timing (measured_allocation); its planned cost
    is then the measured one."""
    if isinstance(costs, Measured):
        allocation, measured, rounds = measured_allocation(options_of, sizes, costs, budget)
        plan = meth.decide(replace(ctx, options=options.for_methods(allocation.kept(sizes))))
        return allocation, plan, measured * costs.whole, rounds
    goal, attempt = budget, 0
    while True:
        allocation = allocate(options_of, sizes, costs, goal)
        plan = meth.decide(replace(ctx, options=options.for_methods(allocation.kept(sizes))))
        counted = isinstance(costs, Counted)
        planned = costs.of_removed(plan.removed, ctx.analysis.num_channels) if counted else allocation.cost
        if planned <= budget or attempt == RETRIES:
            return allocation, plan, planned, None
        goal, attempt = goal - (planned - budget), attempt + 1


@dataclass(frozen=True)
class _Timed:
    """One allocation of the closed loop: made within goal x the model's time, measured at `measured`."""

    goal: float
    measured: float
    allocation: Allocation


def measured_allocation(options_of, sizes, costs, budget: float) -> tuple[Allocation, float, list[dict]]:
    """The allocation within `budget` (a measured cost: costs.measure(kept) times the model shrunk to
    kept against the model), corrected by timing it: the cost model prices a non-uniform choice only
    approximately, and only the counts matter for the time, so the method decides once, afterwards.

    With w = budget / time (the wanted ratio) and f(p) the measured ratio of the allocation made
    within p x time (f falls as p falls), p is searched for f(p) = w: first p = w; with measured points
    on both sides of w, linear interpolation between the nearest two (regula falsi, kept INSIDE the
    bracket); with points on one side only, the line through (1, 1) (nothing removed runs at the
    model's time) and the nearest point, p' = 1 - (1 - w)(1 - p) / (1 - f(p)), but at least p / 2.
    At most CLOSED_LOOP rounds, fewer when f(p) lies within [LOW, HIGH] x w or when nothing more can
    be removed. A goal whose allocation was timed already (the choices are discrete: a small correction
    can give the same counts) is moved past it, see _past_repeat, and the loop stops when that fails.
    The result is the timed allocation within the band that removes least; else the one that measured
    below the band closest to w; else the fastest. Returns it, its measured ratio, and every timing
    (goal, planned and measured ratios) for the report."""
    wanted, tried = budget / costs.whole, []
    goal = wanted
    for _ in range(CLOSED_LOOP):
        allocation = allocate(options_of, sizes, costs, goal * costs.whole)
        seen = next((t for t in tried if t.allocation.removed == allocation.removed), None)
        if seen is not None:  # the corrected goal gave a choice already timed: look past it once more
            goal = _past_repeat(seen, tried, wanted, goal, costs.whole)
            if goal is None:
                break
            continue
        tried.append(_Timed(goal, costs.measure(allocation.kept(sizes)), allocation))
        last = tried[-1]
        if LOW * wanted <= last.measured <= HIGH * wanted or (last.measured > wanted and not allocation.reachable):
            break
        goal = _next_goal(tried, wanted)
    chosen = _closest(tried, wanted)
    rounds = [
        {"goal": t.goal, "planned": t.allocation.cost / costs.whole, "measured": t.measured, "wanted": wanted}
        for t in tried
    ]
    return chosen.allocation, chosen.measured, rounds


def _next_goal(tried: list[_Timed], wanted: float) -> float:
    slow = [t for t in tried if t.measured > wanted]
    fast = [t for t in tried if t.measured <= wanted]
    if slow and fast:
        hi, lo = min(slow, key=lambda t: t.measured), max(fast, key=lambda t: t.measured)
        span = hi.goal - lo.goal
        if hi.measured == lo.measured:
            return lo.goal + span / 2
        step = (wanted - lo.measured) / (hi.measured - lo.measured)
        return lo.goal + span * min(max(step, INSIDE), 1 - INSIDE)
    near = min(tried, key=lambda t: abs(t.measured - wanted))
    if near.measured >= 1:  # no speed-up measured yet
        return max(MIN_GOAL, near.goal / 2)
    line = 1 - (1 - wanted) * (1 - near.goal) / (1 - near.measured)
    return min(1.0, max(MIN_GOAL, near.goal / 2, line))


def _past_repeat(seen: _Timed, tried: list[_Timed], wanted: float, goal: float, whole: float) -> float | None:
    """The next goal after `goal` repeated the allocation `seen`, or None to stop. Bracketed (timed
    points on both sides of w): the midpoint of the nearest two goals, once (None when that is `goal`
    itself). Only slower points: just below the tables' price of `seen`, so the allocator must choose a
    cheaper one (within a budget b its choice costs at most b). Only faster points: None (the fastest
    below the band is kept)."""
    slow = [t for t in tried if t.measured > wanted]
    fast = [t for t in tried if t.measured <= wanted]
    if slow and fast:
        hi, lo = min(slow, key=lambda t: t.measured), max(fast, key=lambda t: t.measured)
        middle = (hi.goal + lo.goal) / 2
        return None if abs(middle - goal) <= REPEAT_MARGIN * middle else middle
    if seen.measured > wanted:
        below = (1 - REPEAT_MARGIN) * seen.allocation.cost / whole
        return below if below >= MIN_GOAL else None
    return None


def _closest(tried: list[_Timed], wanted: float) -> _Timed:
    band = [t for t in tried if LOW * wanted <= t.measured <= HIGH * wanted]
    if band:
        return max(band, key=lambda t: t.goal)
    below = [t for t in tried if t.measured < LOW * wanted]
    if below:
        return max(below, key=lambda t: t.measured)
    return min(tried, key=lambda t: t.measured)


def _why(removed: int, size: int, damage: float, marginal: float | None, unit: str, kind: str) -> str:
    unit = OUTPUT_ERROR if unit == OUTPUT_ERROR else unit
    text = f"{removed} of {size} removed at {unit} {damage:.3g}"
    if marginal is None or not np.isfinite(marginal):
        return text + "; no further count allowed"
    return text + f"; the next allowed removal adds {marginal:.3g} per unit of {kind} saved"


def _row(g, analysis, curve, allowed, removed, calibration, costs, allocation: Allocation, sizes) -> dict:
    """The group's record for the report and the plot: its curve (thinned), the chosen point, the probes
    and the share of the cost its removable channels carry before and after."""
    group = analysis.group(g)
    points = np.unique(np.concatenate([np.linspace(0, curve.limit, REPORT_POINTS).round(), [removed]]).astype(int))
    lowest = {g: int(sizes[g] - allowed[-1])}
    kept = allocation.kept(sizes)
    full = costs.cost({})
    row = {
        "name": group.producers[0].node,
        "size": group.size,
        "removed": removed,
        "curve_removed": points.tolist(),
        "curve_damage": curve.at(points).tolist(),
        "unit": curve.unit,
        "share_before": (full - costs.cost(lowest)) / full if full else 0.0,
        "share_after": (allocation.cost - costs.cost({**kept, **lowest})) / full if full else 0.0,
    }
    if calibration is not None:
        row["probes"] = {"removed": list(calibration.removed), "measured": list(calibration.measured)}
    return row


def target_summary(target: Target, report: dict, plans: Sequence[PruningPlan]) -> dict:
    """The report's "target": what was asked, and what was reached, counted on the written model
    (report params_after / macs_after, not the allocator's numbers), or for latency as planned."""
    records = [p.notes["target"] for p in plans if "target" in p.notes]
    summary = {"target": str(target), "kind": target.kind, "fraction": target.fraction, "steps": len(records)}
    summary["reachable"] = all(r["reachable"] for r in records)
    if target.kind in ("params", "macs"):
        before, after = report[f"{target.kind}_before"], report[f"{target.kind}_after"]
        summary.update(
            before=before,
            budget=target.fraction * before,
            reached=after,
            reached_fraction=after / before if before else 1.0,
            met=after <= target.fraction * before,
            counted="on the written model (initializer sizes and inferred shapes)",
        )
    elif records:
        origin = records[0]["cost_before"]
        summary.update(before=origin, budget=target.fraction * origin, planned=records[-1]["planned_cost"])
        summary["planned_fraction"] = records[-1]["planned_cost"] / origin if origin else 1.0
        if records[-1].get("closed_loop"):
            summary["closed_loop"] = records[-1]["closed_loop"]
    if records:
        summary["damage_unit"] = records[-1]["damage_unit"]
    return summary
