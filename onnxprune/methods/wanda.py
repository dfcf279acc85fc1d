"""Wanda: pruning by weights and activations (Sun, Liu, Bair & Kolter, arXiv 2306.11695).

Unstructured: weight w_ji (output j, input i) scores |w_ji| * ||x_i||_2, the L2 norm of input i over all
calibration rows (samples x tokens); in each output row, the floor(ratio * row length) lowest-scoring
weights are zeroed, with no update of the others. For a Conv, x_i is a column of the im2col matrix
(input channel c at kernel position k, over samples and output positions, with the layer's padding):
the row of filter j holds its C/g * kh * kw entries. Biases are kept.

With --pattern N:M (onnxprune.methods.nm_pattern), every group of M consecutive inputs of a row (per kernel
position) keeps its N highest scores instead; layers whose input size is not a multiple of M stay dense.

Structured (--structured): channel c of a group scores sum over the group's consumers of
sum_{j, k} |W[j, c, k]| ||x_{c,k}||_2 (over every position the channel occupies in the consumer, e.g. the
H*W positions after a Flatten); the lowest --ratio of each group's channels are removed physically.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import OptionError
from ..layers import Workspace, masking_layers, select
from ..plan import PruningPlan
from .base import Method, MethodContext
from .damage import GroupCurve, removable, saliency_curve
from .neurons import nonzero_params
from .nm_pattern import PATTERN_OPTION, conformance, parse_pattern, pattern_keep
from .options import MethodOption
from .select import lowest, repair_empty


def _ratio(ctx: MethodContext) -> float:
    if isinstance(ctx.options.ratio, str):
        raise OptionError("--method wanda: --ratio auto is not supported; give the fraction to remove, e.g. 0.5")
    return float(ctx.options.ratio)


def row_mask(scores: np.ndarray, ratio: float) -> np.ndarray:
    """Per row of `scores` [O, n]: False on the floor(ratio * n) lowest entries (ties: first ones)."""
    remove = math.floor(ratio * scores.shape[1] + 1e-9)
    keep = np.ones(scores.shape, dtype=bool)
    if remove:
        order = np.argsort(scores, axis=1, kind="stable")[:, :remove]
        np.put_along_axis(keep, order, False, axis=1)
    return keep


def _decide_unstructured(ctx: MethodContext) -> PruningPlan:
    pattern = parse_pattern(ctx.settings.pattern)
    ratio = _ratio(ctx) if pattern is None else None
    targets = select(masking_layers(ctx.index).values(), ctx.options.include, ctx.options.exclude)
    stats = ctx.stats.activity(ctx.model, targets)
    space, rows = Workspace(ctx.index), []
    for layer in targets:
        matrix = layer.oik(space.get(layer.weight))  # a view into the workspace
        scores = np.abs(matrix) * stats[layer.node].column_norms(layer)
        if pattern is not None:
            keep = pattern_keep(scores, pattern)
        else:
            keep = row_mask(scores.reshape(len(scores), -1), ratio).reshape(matrix.shape)
        matrix *= keep
        rows.append({"node": layer.node, "weights": int(keep.size), "kept": int(keep.sum())})
    plan = PruningPlan(frozenset(), space.changed(), "wanda")
    notes = {"layers": rows, "nonzero_params_after": nonzero_params(ctx.index, ctx.analysis, plan)}
    if pattern is not None:
        notes["pattern"] = conformance(pattern, {t.node: t.oik(space.get(t.weight)) for t in targets})
    return PruningPlan(plan.removed, plan.updates, "wanda", notes)


def channel_scores(ctx: MethodContext, group, views, stats) -> np.ndarray | None:
    """sum over consumers, outputs j and kernel positions k of |W[j, c, k]| ||x_{c,k}|| per free channel."""
    totals = np.zeros(len(group.free))
    position = {c: i for i, c in enumerate(group.free)}
    scored = False
    for role in group.consumers:
        layer = views.get(role.node)
        if layer is None or role.node not in stats:
            continue
        matrix = layer.oik(np.asarray(ctx.index.constant(layer.weight), dtype=np.float64))
        per_input = (np.abs(matrix) * stats[role.node].column_norms(layer)).sum(axis=(0, 2))  # [I]
        line = ctx.analysis.const_labels[role.weight][role.axis]
        mine = np.isin(line, group.free)
        np.add.at(totals, [position[c] for c in line[mine].tolist()], per_input[mine])
        scored = True
    return totals if scored else None


def _structured_scores(ctx: MethodContext) -> tuple[list, dict[int, np.ndarray | None]]:
    """The eligible groups and each one's channel scores (None: no consumer to score it)."""
    views = masking_layers(ctx.index)
    groups = ctx.eligible_groups()
    readers = {role.node: views[role.node] for g in groups for role in g.consumers if role.node in views}
    stats = ctx.stats.activity(ctx.model, list(readers.values()))
    return groups, {group.id: channel_scores(ctx, group, views, stats) for group in groups}


def _decide_structured(ctx: MethodContext) -> PruningPlan:
    ratio = _ratio(ctx)
    groups, values_of = _structured_scores(ctx)
    removed, scores, notes, unscored = set(), {}, {}, []
    for group in groups:
        values = values_of[group.id]
        if values is None:
            unscored.append(group.id)
            continue
        scores.update(zip(group.free, values.tolist(), strict=True))
        removed.update(lowest(group, values, ratio, ctx.options))
    removed = repair_empty(ctx.analysis, removed, scores)
    for group in groups:
        notes[group.id] = {"removed": sum(1 for c in group.channels if c in removed)}
    if unscored:
        notes["unscored_groups"] = unscored
    return PruningPlan(frozenset(removed), {}, "wanda", notes)


def _damage(ctx: MethodContext) -> dict[int, GroupCurve]:
    """--structured: the channel scores as a normalized saliency (methods.damage); unscored groups stay whole."""
    if not ctx.settings.structured:
        raise OptionError(
            "--method wanda --target: unstructured wanda zeroes single weights and removes no channel; "
            "add --structured to prune whole channels to the target"
        )
    groups, values_of = _structured_scores(ctx)
    least = ctx.options.min_keep
    return {g.id: saliency_curve(values_of[g.id], removable(g, least)) for g in groups if values_of[g.id] is not None}


def _decide(ctx: MethodContext) -> PruningPlan:
    return _decide_structured(ctx) if ctx.settings.structured else _decide_unstructured(ctx)


OPTIONS = (
    MethodOption(
        "--structured/--unstructured", "structured", False, "wanda: score and remove whole channels", is_flag=True
    ),
    PATTERN_OPTION,
)
WANDA = Method(
    "wanda",
    _decide,
    statistics=("activity",),
    description="Wanda: |w| * ||x||_2, lowest --ratio per output row zeroed (--structured: whole channels)",
    options=OPTIONS,
    damage=_damage,
)
EXPORTED = (WANDA,)
