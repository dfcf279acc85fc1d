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
from .costs import build_cost_model
from .curves import OUTPUT_ERROR, calibrate, choices

#: allocations tried again with a tightened budget when the plan's exact count overshoots
RETRIES = 2
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
    allocation, plan, planned = _allocate_and_decide(meth, ctx, options, options_of, sizes, costs, budget)
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
    return PruningPlan(plan.removed, plan.updates, plan.method, notes)


def _allocate_and_decide(meth, ctx, options, options_of, sizes, costs, budget):
    """The allocation within `budget` and the method's plan for it. A counted cost is checked on the
    channels the plan removes (exact even where a group's channels hold unequal shares of an axis, after
    a Split); an overshoot tightens the budget by as much and allocates again (at most RETRIES times)."""
    goal, attempt = budget, 0
    while True:
        allocation = allocate(options_of, sizes, costs, goal)
        plan = meth.decide(replace(ctx, options=options.for_methods(allocation.kept(sizes))))
        exact = getattr(costs, "of_removed", None)
        planned = exact(plan.removed, ctx.analysis.num_channels) if exact else allocation.cost
        if planned <= budget or attempt == RETRIES:
            return allocation, plan, planned
        goal, attempt = goal - (planned - budget), attempt + 1


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
    if records:
        summary["damage_unit"] = records[-1]["damage_unit"]
    return summary
