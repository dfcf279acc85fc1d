"""Structured Optimal Brain Surgeon (`--method obs`): remove whole channels and compensate consumers.

Removing channel c of a group deletes, in every consumer layer k of the group, the block B of
columns of W~_k that read c (one column per Gemm/MatMul input, kh*kw per Conv input channel, H*W after
a Flatten). With H_k the consumer's input Hessian (onnxprune.stats.hessian) and H^-1 its inverse, the least
layer error of that removal and the update that achieves it are (L-OBS algebra, per block)

    cost(c) = sum_k 1/2 tr( W_k[:, B] ([H_k^-1]_BB)^-1 W_k[:, B]^T )
    W_k    -= W_k[:, B] ([H_k^-1]_BB)^-1 H_k^-1[B, :]          (W_k[:, B] becomes exactly 0)
    H_k^-1 -= H_k^-1[:, B] ([H_k^-1]_BB)^-1 H_k^-1[B, :]        (the Schur-complement downdate)

The downdates are kept in low-rank form, H_t^-1 = H_0^-1 - Q Q^T (see Consumer).

Greedy per group: remove the channel of least summed cost, update every consumer, downdate, repeat
until the group keeps methods.select.keep_count channels. The consumer's bias is the last column of
W~ (x~ = [x; 1]), so the update moves the mean contribution of removed inputs into it; a consumer
without a bias is compensated in its weights only. A group removes its channels in at most MAX_STEPS
greedy steps (MAX_HEAVY_STEPS for large groups): a step takes the cheapest channels by
the current costs and compensates them jointly with the same block formula; `--obs-step-size 1`
forces one channel per step (the exact greedy).

Consumers wider than stats.linalg.PRECISE_WIDTH inputs keep H_0^-1, Q and the working W~ in float32
(inverted by LAPACK spotri: half the time and memory traffic); the blocks [H_t^-1]_BB, their inverses
and the costs are float64.

Groups are skipped (left whole, with the reason in the report) when a consumer is not a Gemm,
MatMul or group-1 Conv with constant weights, or its Hessian would exceed MAX_WIDTH inputs.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from ..analysis import Group
from ..layers import Layer, layer_weights, obs_layers, write_layer
from ..plan import PruningPlan
from ..progress import bar
from ..stats import LayerStats, downstream, layer_waves
from ..stats.linalg import PRECISE_WIDTH, inverse_and_root, prepare
from .base import Method, MethodContext
from .damage import LAYER_ERROR, GroupCurve, removable
from .obs_settings import SHARED_OPTIONS, Settings, choose_sequential, sequential_passes, stages
from .options import MethodOption
from .select import keep_count, repair_empty

#: consumers with more inputs than this (e.g. a Gemm after a large Flatten) are not compensated
MAX_WIDTH = 16384
#: greedy steps per group (several channels per step beyond), and for large groups: those whose
#: removed channels x sum of consumer widths^2 exceeds WORK_BUDGET (every step re-costs all candidates
#: of every consumer and rewrites its W~)
MAX_STEPS = 32
MAX_HEAVY_STEPS = 16
WORK_BUDGET = 2e8
#: candidate costs are evaluated in chunks of at most this many weight entries
_CHUNK = 2**22


@dataclass
class Consumer:
    """The working state of one consumer layer: W~ (removed columns are 0) and the downdated inverse
    Hessian, kept as H_t^-1 = H_0^-1 - Q Q^T. Each removal appends H_t^-1[:, B] L (L L^T =
    ([H_t^-1]_BB)^-1) to Q, so a step touches only the columns it needs (O(n r b) work) instead of
    rewriting the whole n x n inverse (O(n^2 b) memory traffic per step)."""

    layer: Layer
    original: np.ndarray
    stats: LayerStats
    weights: np.ndarray
    inverse: np.ndarray | None
    factors: np.ndarray
    rank: int
    removed: np.ndarray
    diagonal: np.ndarray  # diag(H_t^-1), float64, kept current by _append
    damping: float
    predicted: float = 0.0
    pending: int = 0

    @classmethod
    def start(cls, layer: Layer, m0: np.ndarray, stats: LayerStats, damping: float) -> Consumer:
        prep = prepare(stats.hessian, damping, single=layer.width > PRECISE_WIDTH, keep_hessian=False)
        groups = layer.output_group
        m0 = np.asarray(m0, dtype=np.float64)
        m = stats.target(m0, prep.inverse, groups)
        m[prep.dead[groups]] = 0.0
        base = stats.error(m, m0, groups) if stats.cross is not None else 0.0
        inverse = prep.inverse[0]
        factors = np.zeros((layer.width, 0), dtype=inverse.dtype)
        removed = np.zeros(layer.width, dtype=bool)
        weights = m.astype(inverse.dtype)  # the working W~ in the inverse's precision
        diagonal = np.diag(inverse).astype(np.float64)
        return cls(layer, m0, stats, weights, inverse, factors, 0, removed, diagonal, prep.damping, base)

    @property
    def matrix(self) -> np.ndarray:
        """The current W~ [O, width], float64."""
        return self.weights.astype(np.float64)

    def costs(self, blocks: list[np.ndarray]) -> np.ndarray:
        """1/2 tr(W_B ([H_t^-1]_BB)^-1 W_B^T) for each block of W~ columns (removed columns cost 0)."""
        out = np.zeros(len(blocks))
        sizes = {len(b) for b in blocks}
        if len(sizes) == 1 and sizes != {0}:
            stacked = np.stack(blocks)
            step = max(1, _CHUNK // max(1, self.weights.shape[0] * stacked.shape[1], self.rank * stacked.shape[1]))
            for start in range(0, len(blocks), step):
                out[start : start + step] = self._same_size_costs(stacked[start : start + step])
            return out
        for i, block in enumerate(blocks):
            out[i] = self._same_size_costs(block[None])[0] if len(block) else 0.0
        return out

    def _same_size_costs(self, blocks: np.ndarray) -> np.ndarray:
        if blocks.shape[1] == 1:  # ||W[:, i]||^2 / [H_t^-1]_ii, without a gather of W or Q
            column = blocks[:, 0]
            squares = np.einsum("oi,oi->i", self.weights, self.weights)[column]
            gone = self.removed[column]  # removed: cost 0 (their [H_t^-1]_ii is 0 too)
            return 0.5 * np.where(gone, 0.0, squares) / np.where(gone, 1.0, self.diagonal[column])
        hbb = self.inverse[blocks[:, :, None], blocks[:, None, :]]
        if self.rank:
            q = self.factors[blocks, : self.rank]  # [C, b, r]
            hbb = hbb - q @ q.transpose(0, 2, 1)
        hbb = hbb.astype(np.float64)
        live = ~self.removed[blocks]  # [C, b]
        if not live.all():  # removed columns: identity in H^-1, zero weights
            hbb = np.where(live[:, :, None] & live[:, None, :], hbb, np.eye(blocks.shape[1])[None])
        w = self.weights[:, blocks]  # [O, C, b]
        if not live.all():
            w = np.where(live[None], w, 0.0)
        w = np.ascontiguousarray(w.transpose(1, 0, 2))  # [C, O, b]
        inverse = np.linalg.inv(hbb)  # [C, b, b]: ([H_t^-1]_BB)^-1 of every candidate
        return 0.5 * np.sum((w @ inverse) * w, axis=(1, 2))

    def remove(self, block: np.ndarray, final: bool = False) -> float:
        """Remove W~ columns `block` with the OBS update and downdate; returns the predicted cost.
        `final`: no later removal reads this consumer, so the downdate is skipped and H^-1 freed."""
        block = block[~self.removed[block]]
        if len(block) == 0:
            return 0.0
        rows = self.inverse[block]  # H_t^-1[B, :] = H_0^-1[B, :] - Q[B] Q^T (rows: contiguous reads)
        if self.rank:
            q = self.factors[:, : self.rank]
            rows = rows - q[block] @ q.T
        inv_bb, root = inverse_and_root(rows[:, block].astype(np.float64))
        wb = self.weights[:, block]
        delta = wb @ inv_bb  # [O, b], float64
        cost = 0.5 * float(np.sum(delta * wb))
        self.weights -= delta.astype(rows.dtype) @ rows
        self.weights[:, block] = 0.0
        self.removed[block] = True
        self.predicted += cost
        if final:
            self.inverse = self.factors = None
            return cost
        self._append(rows.T @ root.astype(rows.dtype))
        return cost

    def _append(self, factor: np.ndarray) -> None:
        """Q <- [Q, factor], the buffer grown geometrically."""
        end = self.rank + factor.shape[1]
        if end > self.factors.shape[1]:
            grown = np.zeros((self.factors.shape[0], max(end, 2 * self.factors.shape[1])), dtype=self.factors.dtype)
            grown[:, : self.rank] = self.factors[:, : self.rank]
            self.factors = grown
        self.factors[:, self.rank : end] = factor
        self.rank = end
        self.diagonal -= np.einsum("nb,nb->n", factor, factor, dtype=np.float64)

    def note(self) -> dict:
        groups = self.layer.output_group
        measured, energy = self.stats.error_and_energy(self.matrix, self.original, groups)
        return {
            "layer": self.layer.node,
            "op_type": self.layer.op_type,
            "predicted_error": self.predicted,
            "measured_error": measured,
            "relative_error": measured / energy if energy > 0 else 0.0,
            "damping": self.damping,
            "target": "original" if self.stats.cross is None else "refit",
        }


@dataclass(frozen=True)
class GroupTask:
    """A group to prune: how many channels go, and every consumer's W~ column block per channel."""

    group: Group
    remove: int
    consumers: tuple[str, ...]
    blocks: dict[str, dict[int, np.ndarray]]


def _task(ctx: MethodContext, group: Group, layers: dict[str, Layer], ratio: float) -> GroupTask | str:
    """The task of `group`, or why it is skipped."""
    remove = group.size - keep_count(group, ratio, ctx.options)
    if remove <= 0:
        return "nothing to remove at this ratio"
    if not group.consumers:
        return "no consumer layer to compensate (use magnitude for this group)"
    blocks: dict[str, dict[int, np.ndarray]] = {}
    for role in (r for r in group.consumers if not r.recurrent):  # a recurrence (R's columns) is not compensated
        layer = layers.get(role.node)
        if layer is None or layer.groups != 1 or layer.weight != role.weight:
            return f"consumer '{role.node}' ({role.op_type}) is not a Gemm/MatMul/Conv layer OBS can compensate"
        if layer.width > MAX_WIDTH:
            return f"consumer '{role.node}' has {layer.width} inputs: its Hessian is too large (limit {MAX_WIDTH})"
        line = ctx.analysis.const_labels[role.weight][role.axis]
        blocks[role.node] = {c: layer.columns(np.flatnonzero(line == c)) for c in group.free}
    if not blocks:
        return "no consumer layer to compensate (use magnitude for this group)"
    return GroupTask(group, remove, tuple(blocks), blocks)


def _step_size(task: GroupTask, consumers: dict[str, Consumer], forced: int) -> int:
    """Channels removed per greedy step: at most MAX_STEPS steps per group, MAX_HEAVY_STEPS where
    removed x sum(width^2) exceeds WORK_BUDGET."""
    if forced > 0:
        return forced
    work = task.remove * sum(consumers[name].layer.width ** 2 for name in task.consumers)
    steps = MAX_STEPS if work <= WORK_BUDGET else MAX_HEAVY_STEPS
    return max(1, math.ceil(task.remove / steps))


def prune_group(
    task: GroupTask, consumers: dict[str, Consumer], step: int, trace: list | None = None
) -> tuple[list[int], float]:
    """Greedy structured OBS on one group; returns the removed channels and the summed cost (and appends
    (removed so far, cost so far) to `trace` after every step)."""
    candidates = list(task.group.free)
    removed: list[int] = []
    total = 0.0
    while len(removed) < task.remove:
        costs = np.zeros(len(candidates))
        for name in task.consumers:
            blocks = task.blocks[name]
            costs += consumers[name].costs([blocks[c] for c in candidates])
        take = min(step, task.remove - len(removed))
        picked = np.argsort(costs, kind="stable")[:take]
        chosen = [candidates[i] for i in picked]
        last = len(removed) + take == task.remove
        for name in task.consumers:
            consumer = consumers[name]
            block = np.concatenate([task.blocks[name][c] for c in chosen])
            total += consumer.remove(block, final=last and consumer.pending == 1)
        removed.extend(chosen)
        if trace is not None:
            trace.append((len(removed), total))
        gone = set(picked.tolist())
        candidates = [c for i, c in enumerate(candidates) if i not in gone]
    for name in task.consumers:
        consumers[name].pending -= 1
    return removed, total


def _decide(ctx: MethodContext) -> PruningPlan:
    settings = Settings.build(ctx.options, ctx.settings, "obs")
    forced = ctx.settings.obs_step_size
    layers, _ = obs_layers(ctx.index)
    tasks, notes = [], {}
    for group in ctx.eligible_groups():
        task = _task(ctx, group, layers, settings.ratio)
        if isinstance(task, str):
            if task != "nothing to remove at this ratio":
                notes[group.id] = {"skipped": task}
        else:
            tasks.append(task)
    depth_waves = _group_waves(ctx, tasks, layers)
    sequential = choose_sequential(settings.sequential, len(depth_waves))
    limit = sequential_passes(settings.sequential_passes, len(depth_waves))
    waves = stages(depth_waves, limit) if sequential else [tasks]
    uses = Counter(name for task in tasks for name in task.consumers)
    consumers: dict[str, Consumer] = {}
    updates: dict[str, np.ndarray] = {}
    removed: set[int] = set()
    scores: dict[int, float] = {}
    passes = 0
    early = _unsettled(ctx, waves, layers)
    for number, wave in enumerate(waves):
        needed = [layers[n] for n in dict.fromkeys(n for t in wave for n in t.consumers) if n not in consumers]
        needed += early if number == 0 else []
        if needed:
            passes += 1
            description = f"obs statistics {number + 1}/{len(waves)}"
            samples = settings.sequential_samples if updates else None
            stats = ctx.stats.hessians(
                ctx.model, needed, updates, settings.max_positions, settings.seed, description, samples
            )
            for layer in needed:
                m0 = layer_weights(ctx.index, layer)
                consumers[layer.node] = Consumer.start(layer, m0, stats.pop(layer.node), settings.damping)
                consumers[layer.node].pending = uses[layer.node]
        for task in bar(wave, desc=f"obs groups {number + 1}/{len(waves)}", unit="group"):
            chosen, cost = prune_group(task, consumers, _step_size(task, consumers, forced))
            removed.update(chosen)
            scores.update(dict.fromkeys(chosen, 0.0))
            notes[task.group.id] = {"removed": len(chosen), "predicted_error": cost}
            for name in task.consumers:
                write_layer(ctx.index, consumers[name].layer, consumers[name].matrix, updates)
    removed = repair_empty(ctx.analysis, removed, scores)
    notes["layers"] = [c.note() for c in consumers.values()]
    notes["statistics_passes"] = passes
    notes["sequential"] = {
        "on": sequential,
        "chosen": "auto" if settings.sequential is None else "given",
        "waves": len(depth_waves),
        "passes": passes,
    }
    return PruningPlan(frozenset(removed), updates, "obs", notes)


def _group_waves(ctx: MethodContext, tasks: list[GroupTask], layers: dict[str, Layer]) -> list[list[GroupTask]]:
    """Groups by the depth of their shallowest consumer. --sequential (obs_settings.choose_sequential)
    makes a statistics pass per run of consecutive depths (obs_settings.stages, at most
    --sequential-passes), on the first --sequential-samples samples of the model with the earlier
    runs' compensation applied; each pass runs only the nodes its layers' inputs depend on
    (stats.collect.computing) and collects only the consumers not started before.

    A consumer is refit to the original output (LayerStats.target) only when its input is settled:
    no layer upstream of it is compensated in this pass or a later one. Otherwise (a group read at
    several depths, such as through a CSP or FPN Concat, or the later waves of a pass shared by
    several) it keeps the original model's statistics, collected in the first pass (_unsettled): a
    refit would undo an input error that the upstream layers' own compensation then removes as well,
    and the two corrections add up (on a 50-wave YOLO-style detector with 4 passes: drift 1.49
    against 0.19 one-shot; 0.18 with this rule)."""
    used = [layers[n] for n in dict.fromkeys(n for t in tasks for n in t.consumers)]
    depth = {layer.node: k for k, wave in enumerate(layer_waves(ctx.index, used)) for layer in wave}
    waves: dict[int, list[GroupTask]] = {}
    for task in tasks:
        waves.setdefault(min(depth[n] for n in task.consumers), []).append(task)
    return [waves[k] for k in sorted(waves)]


def _unsettled(ctx: MethodContext, runs: list[list[GroupTask]], layers: dict[str, Layer]) -> list[Layer]:
    """The consumers first needed by a run after the first while a layer upstream of their input is
    still to be compensated (by that run or a later one): they take the original model's statistics,
    collected with the first run's (see _group_waves), and later passes skip them."""
    first: dict[str, int] = {}
    for number, run in enumerate(runs):
        for name in (n for t in run for n in t.consumers):
            first.setdefault(name, number)
    out = []
    for number in range(1, len(runs)):
        moving = downstream(ctx.index, {n for run in runs[number:] for t in run for n in t.consumers})
        out += [layers[n] for n, k in first.items() if k == number and layers[n].input in moving]
    return out


def _damage(ctx: MethodContext) -> dict[int, GroupCurve]:
    """Each group alone, from the original weights (one statistics pass for every consumer): the greedy's
    predicted consumer error after each step, as far as the group may go (methods.damage, "layer
    error"); `overrides(r)` replays the same greedy's first r removals and writes the compensated consumers."""
    settings = Settings.build(ctx.options, ctx.settings, "obs")
    layers, _ = obs_layers(ctx.index)
    tasks = []
    for group in ctx.eligible_groups():
        alone = replace(ctx.options, keep={group.id: group.size - removable(group, ctx.options.min_keep)})
        task = _task(replace(ctx, options=alone), group, layers, 0.0)
        tasks += [] if isinstance(task, str) else [task]
    needed = [layers[n] for n in dict.fromkeys(n for t in tasks for n in t.consumers)]
    stats = ctx.stats.hessians(ctx.model, needed, {}, settings.max_positions, settings.seed, "obs damage curves")
    start = {
        layer.node: Consumer.start(layer, layer_weights(ctx.index, layer), stats.pop(layer.node), settings.damping)
        for layer in needed
    }
    curves = {}
    for task in tasks:
        step, trace = _step_size(task, start, ctx.settings.obs_step_size), [(0, 0.0)]
        prune_group(task, _forks(start, task), step, trace)
        counts, errors = (np.array(column) for column in zip(*trace, strict=True))
        names = tuple(n for c in task.consumers for n in (layers[c].weight, layers[c].obs_bias) if n)
        curves[task.group.id] = GroupCurve(
            counts, errors, LAYER_ERROR, partial(_realize, ctx, task, start, step), names
        )
    return curves


def _forks(start: dict[str, Consumer], task: GroupTask) -> dict[str, Consumer]:
    """Copies of the task's consumers in their start state (H_0^-1 shared: nothing writes into it)."""
    copies = ("weights", "factors", "removed", "diagonal")
    return {n: replace(start[n], pending=2, **{k: getattr(start[n], k).copy() for k in copies}) for n in task.consumers}


def _realize(ctx: MethodContext, task: GroupTask, start: dict[str, Consumer], step: int, count: int) -> dict:
    """The consumers' compensated initializers after the first `count` removals of `task`'s greedy."""
    consumers = _forks(start, task)
    prune_group(replace(task, remove=count), consumers, step)
    updates: dict[str, np.ndarray] = {}
    for name in task.consumers:
        write_layer(ctx.index, consumers[name].layer, consumers[name].matrix, updates)
    return updates


OPTIONS = (
    *SHARED_OPTIONS,
    MethodOption(
        "--obs-step-size",
        "obs_step_size",
        0,
        "obs: channels removed per greedy step (0 = auto: at most 32 steps per group, 16 for large "
        "consumers; 1 = the exact one-channel greedy)",
        int,
        minimum=0,
        minimum_hint="0 chooses the step size per group",
    ),
)
OBS = Method(
    "obs",
    _decide,
    statistics=("hessian",),
    description="structured OBS: remove channels where the consumers' compensated error is least",
    options=OPTIONS,
    damage=_damage,
)
EXPORTED = (OBS,)
