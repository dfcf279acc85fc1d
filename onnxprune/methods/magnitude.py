"""Baselines: magnitude (L1 or L2 norm of each channel's weights) and random, at the same ratio.

The magnitude of channel c is the norm over every producer weight slice and bias entry of c in its
group, ||[W_1[c], b_1[c], W_2[c], ...]||_p with p = 1 or 2 (--norm), the usual baseline of
Torch-Pruning and NNI.
"""

from __future__ import annotations

import numpy as np

from ..plan import PruningPlan
from .base import Method, MethodContext
from .damage import GroupCurve, ordered_curve, removable
from .options import MethodOption
from .select import lowest, repair_empty


def channel_norms(ctx: MethodContext, group, order: int = 2) -> np.ndarray:
    """Norm of each free channel's producer weights (all producers of the group, biases included)."""
    names = [(r.weight, r.axis) for r in group.producers] + [(r.bias, 0) for r in group.producers if r.bias]
    totals = sum(_per_channel(ctx, group, name, axis, order) for name, axis in dict.fromkeys(names))
    return totals if order == 1 else np.sqrt(totals)


def _per_channel(ctx: MethodContext, group, name: str, axis: int, order: int) -> np.ndarray:
    """Sum of |w| (order 1) or w^2 (order 2) of constant `name` per free channel of `group`."""
    totals = np.zeros(len(group.free))
    position = {c: i for i, c in enumerate(group.free)}
    value = np.asarray(ctx.index.constant(name), dtype=np.float64)
    line = ctx.analysis.const_labels[name][axis]
    flat = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)
    per_position = np.abs(flat).sum(1) if order == 1 else (flat**2).sum(1)
    for pos, channel in enumerate(line.tolist()):
        if channel in position:
            totals[position[channel]] += per_position[pos]
    return totals


def layer_shares(ctx: MethodContext, group) -> np.ndarray:
    """Per free channel: sum over the group's producer weights of the share of that weight's energy the
    channel holds (methods.damage: a channel of a residual stage weighs in every layer it leaves)."""
    shares = np.zeros(len(group.free))
    for weight, axis in dict.fromkeys((r.weight, r.axis) for r in group.producers):
        energy = _per_channel(ctx, group, weight, axis, 2)
        full = float(np.sum(np.asarray(ctx.index.constant(weight), dtype=np.float64) ** 2))
        shares += energy / full if full > 0 else 0.0
    return shares


def _decide_magnitude(ctx: MethodContext) -> PruningPlan:
    order = ctx.settings.norm
    removed, scores, notes = set(), {}, {}
    for group in ctx.eligible_groups():
        norms = channel_norms(ctx, group, order)
        scores.update(zip(group.free, norms.tolist(), strict=True))
        chosen = lowest(group, norms, float(ctx.options.ratio), ctx.options)
        removed.update(chosen)
    removed = repair_empty(ctx.analysis, removed, scores)
    for group in ctx.eligible_groups():
        notes[group.id] = {"removed": len([c for c in group.channels if c in removed])}
    return PruningPlan(frozenset(removed), {}, "magnitude", notes)


def _decide_random(ctx: MethodContext) -> PruningPlan:
    rng = np.random.default_rng(ctx.options.seed)
    removed, scores = set(), {}
    for group in ctx.eligible_groups():
        draw = rng.random(len(group.free))
        scores.update(zip(group.free, draw.tolist(), strict=True))
        removed.update(lowest(group, draw, float(ctx.options.ratio), ctx.options))
    removed = repair_empty(ctx.analysis, removed, scores)
    return PruningPlan(frozenset(removed), {}, "random", {})


def _damage_magnitude(ctx: MethodContext) -> dict[int, GroupCurve]:
    """The producers' weight-energy shares, in the order of the channel norms (methods.damage)."""
    order, least = ctx.settings.norm, ctx.options.min_keep
    curves = {}
    for g in ctx.eligible_groups():
        ranking = np.argsort(channel_norms(ctx, g, order), kind="stable")
        curves[g.id] = ordered_curve(layer_shares(ctx, g), ranking, removable(g, least))
    return curves


def _damage_random(ctx: MethodContext) -> dict[int, GroupCurve]:
    """The producers' weight-energy shares in the order of the random scores decide() draws (same seed,
    same order)."""
    rng = np.random.default_rng(ctx.options.seed)
    curves = {}
    for g in ctx.eligible_groups():
        ranking = np.argsort(rng.random(len(g.free)), kind="stable")
        curves[g.id] = ordered_curve(layer_shares(ctx, g), ranking, removable(g, ctx.options.min_keep))
    return curves


OPTIONS = (MethodOption("--norm", "norm", 2, "magnitude: 1 for the L1 norm, 2 for the L2 norm", int, choices=(1, 2)),)
MAGNITUDE = Method(
    "magnitude",
    _decide_magnitude,
    description="L1/L2 norm of each channel's producer weights",
    options=OPTIONS,
    damage=_damage_magnitude,
)
RANDOM = Method("random", _decide_random, description="uniformly random channels (seeded)", damage=_damage_random)
EXPORTED = (MAGNITUDE, RANDOM)
