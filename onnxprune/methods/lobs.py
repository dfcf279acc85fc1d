"""Layer-wise Optimal Brain Surgeon, unstructured (`--method lobs`).

Every Gemm/MatMul/Conv weight W~ = [W, b] of the model is pruned on its own, against its input Hessian
H = (1/n) sum x~ x~^T (onnxprune.stats.hessian), for the layer error E = 1/(2n) ||X~ dW~^T||^2. Removing
weight q = (row r, input i) costs at best (Dong et al. 2017, eq. 6-7)

    L_q = w_q^2 / (2 [H^-1]_ii),     W[r, :] -= (w_q / [H^-1]_ii) H^-1[i, :]     (only row r changes).

- `--lobs-mode faithful` (L-OBS): rank all (r, i) once by L_q, remove in that order with the update
  above and a fixed H^-1 (removed weights are kept at zero), predicted error = sum of the L_q.
- `--lobs-mode exact` (OBC, Frantar & Alistarh 2022): per row, greedily remove the weight of
  least L_q, update the row and downdate H^-1 -= H^-1[:, i] H^-1[i, :] / [H^-1]_ii; every step is
  exact, so the predicted error (sum of the steps' L_q) equals the layer error for the damped H. The
  rows' loss traces are merged so that the layer removes `--ratio` of its weights where they cost
  least; the final rows are the least-squares optimum for their masks, w_K = H_KK^-1 (H w)_K.
- `--lobs-mode sparsegpt` (onnxprune.methods.lobs_sparsegpt): one column sweep per layer with the
  Cholesky factor of H^-1 (cost R * inputs^2 instead of OBC's R * inputs^3); its curve for the
  allocations is sweeps at a grid of counts. `--lobs-mode auto` (default): exact while
  rows * inputs^3 <= OBC_BUDGET, sparsegpt above. `--pattern N:M`: N:M masks chosen in the sweep.
- onnxprune.methods.lobs_guard: under the global allocation (and --max-layer-error) no layer loses its
  last `rows` weights unless asked (`--allow-empty-layers`); measured errors far above the predicted
  ones are reported.

The bias is a column of W~ (x~ = [x; 1]): it is compensated, never removed. Inputs that are always zero
on the calibration data have their weights zeroed (H_ii = 1). Targets:

- `--ratio r` with `--lobs-allocation global` (the default): r of all weights, spread by one common
  tolerance on the *relative* predicted error (error / output energy 1/(2n) ||Z||^2), so small
  sensitive layers (a first conv of 54 weights) keep more;
- `--lobs-allocation output`: r of all weights, spread by each layer's measured effect on the model's
  outputs (onnxprune.methods.lobs_allocation: per layer about 12 onnxruntime passes over
  `--allocation-samples` samples, every layer alone pruned to a grid of densities; the counts minimise
  the sum of the output errors on the curves' convex hulls). Equal relative layer errors are not what
  the output needs: at 10% density the 144-weight first conv of a small ResNet destroys it, while its
  last conv costs little at 3%;
- `--lobs-allocation layer`: every layer removes r of its weights (the paper's per-layer target);
- `--max-layer-error e`: each layer removes weights while its predicted error stays below e times its
  output energy.

`--sequential` collects the statistics of each wave of layers on the model with the earlier layers
already pruned, paired with the original model's: with H = X~^T X~ / n on the pruned inputs and
C = X~^T X~_ref / n, the row first moves to w* = H^-1 C w (the best dense weights for the *original*
output Z_ref = X~_ref w), and is pruned from there; the reported error is measured against Z_ref.
With `--lobs-allocation output` each wave's curves are measured again on the model pruned so far
(its layers' sequential traces) and the budget left is spread again over the layers not yet pruned.

`--lobs-batchnorm absorb` (default, onnxprune.methods.lobs_bn): a layer read only by a
BatchNormalization is pruned for the error after the BN (rows scaled by gamma / sqrt(var + eps)), and
one without a bias (torch's conv -> BN) gets a virtual bias that is written into the BN's running mean,
so the pruned layer can cancel the mean shift of its output; the reported layer errors are in post-BN
units. `ignore`: the layer's own output, its own bias only.

Zeros go into the weights (plan.updates). A channel that every consumer reads only with zero weights is
removed physically (exact: nothing reads it). A row that became all zero is not removed by itself: its
bias makes it a constant, which would have to be folded into the consumers first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import ValidationError
from ..graph import GraphIndex
from ..layers import Layer, layer_weights, obs_layers, select, write_layer
from ..plan import PruningPlan
from ..progress import bar
from ..stats import LayerStats, layer_waves
from ..stats.linalg import prepare
from .base import Method, MethodContext, PruneOptions
from .lobs_allocation import Curve, grid_counts, hull_allocation, output_curves
from .lobs_bn import LayerView, batchnorm_view, model_values, plain_view, view_weights
from .lobs_guard import OPTIONS as GUARD_OPTIONS
from .lobs_guard import disagreements, removal_limit
from .lobs_sparsegpt import Sweep, solver, sweep_curve
from .nm_pattern import PATTERN_OPTION, conformance, skip_reason
from .obs_settings import ALLOCATIONS, BATCHNORM, MODES, SHARED_OPTIONS, Settings
from .options import MethodOption
from .select import repair_empty

#: --lobs-mode auto: OBC (exact) while rows * inputs^3 stays below this, SparseGPT above (about 10 s of
#: OBC on 2 cores, see benchmarks/lobs_speed.py)
OBC_BUDGET = 1e10
#: memory for the per-row inverse Hessians of one chunk of rows in exact mode
CHUNK_BYTES = 8 * 2**20
#: compact the per-row inverses once the live columns fall below this share of their width
COMPACT_AT = 0.85
_TINY = 1e-300


@dataclass(frozen=True)
class LayerOutcome:
    """A pruned layer: its new W~ and what the error was predicted and measured to be."""

    layer: Layer
    matrix: np.ndarray
    predicted: float
    measured: float
    energy: float
    density: float
    damping: float
    solver: str = ""

    def note(self) -> dict:
        return {
            "layer": self.layer.node,
            "op_type": self.layer.op_type,
            "predicted_error": self.predicted,
            "measured_error": self.measured,
            "relative_error": self.measured / self.energy if self.energy > 0 else 0.0,
            "density": self.density,
            "damping": self.damping,
            "solver": self.solver,
        }


# ---- one layer ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerTrace:
    """A layer with its removal sequence computed: `cumulative[k]` is the predicted error after the
    first k+1 removals of `sequence` (nondecreasing), so any count of removals can be finished."""

    layer: Layer
    original: np.ndarray
    start: np.ndarray
    stats: LayerStats
    damped: np.ndarray
    inverse: np.ndarray
    damping: float
    energy: float
    candidates: np.ndarray
    sequence: np.ndarray
    cumulative: np.ndarray
    base: float
    mode: str
    solver: Callable[[int], Sweep] | None = field(default=None, compare=False)

    def count_for(self, ratio: float | None, max_error: float | None) -> int:
        """Removals for a share `ratio` of the weights, or within `max_error` x the output energy."""
        if max_error is not None:
            return int(np.searchsorted(self.cumulative, max_error * self.energy, side="right"))
        return trace_count(len(self.sequence), self.layer, ratio)

    def finish(self, count: int) -> LayerOutcome:
        """Apply the first `count` removals: W~, predicted and measured error."""
        groups = self.layer.output_group
        predicted = self.base + (float(self.cumulative[count - 1]) if count > 0 else 0.0)
        if self.solver is not None:  # a sweep: its own prediction, exact for the damped H
            sweep = self.solver(count)
            new, predicted = sweep.matrix, self.base + sweep.predicted
        elif self.mode == "exact":
            new = _exact_rows(self, count)
        else:
            new = _faithful_rows(self, count)
        measured = self.stats.error(new, self.original, groups)
        kept = new[:, self.candidates]
        density = float(np.count_nonzero(kept) / max(1, kept.size))
        return LayerOutcome(
            self.layer, new, predicted, float(measured), self.energy, density, self.damping, self.mode
        )  # fmt: skip


def trace_count(removable: int, layer: Layer, ratio: float | None) -> int:
    """Removals for a share `ratio` of the layer's weights, at most `removable` (all of them without a ratio)."""
    return removable if ratio is None else min(removable, math.floor(ratio * layer.outputs * layer.inputs + 1e-9))


def trace_layer(layer: Layer, m0: np.ndarray, stats: LayerStats, settings: Settings) -> LayerTrace:
    """The removal sequence of W~ = `m0` [O, width] against the statistics of its input: exact mode,
    the per-row OBC traces merged by loss; faithful mode, the one L-OBS ranking. With a reference
    (--sequential), the rows first move to w* = H^-1 C w, the best dense weights for the original
    output, and are pruned from there."""
    prep = prepare(stats.hessian, settings.damping)
    groups = layer.output_group
    m0 = np.asarray(m0, dtype=np.float64)
    m = stats.target(m0, prep.inverse, groups)
    m[prep.dead[groups]] = 0.0  # inputs that are always zero: their weights go
    base = stats.error(m, m0, groups) if stats.cross is not None else 0.0
    candidates = np.ones(layer.width, dtype=bool)
    if layer.obs_bias:
        candidates[-1] = False
    mode, solve = _solver(layer, m, prep, candidates, settings)
    limit = removal_limit(layer.outputs, layer.outputs * layer.inputs, settings.min_density) if mode != "skipped" else 0
    if solve is not None:  # no removal order: `sequence` only counts the removable weights
        target = trace_count(limit, layer, settings.ratio)
        curve = sweep_curve(solve, limit, target, settings.max_error is not None or settings.allocation == "global")
        sequence, cumulative = np.arange(limit), curve
    elif mode == "exact":
        order, losses = _obc_traces(m, prep.inverse, groups, candidates)
        steps = losses.shape[1]
        monotone = np.maximum.accumulate(losses, axis=1).reshape(-1)
        merged = np.argsort(monotone, kind="stable")  # stable: within a row, prefixes are taken
        sequence = order.reshape(-1)[merged] + (merged // steps) * m.shape[1]
        cumulative = np.cumsum(losses.reshape(-1)[merged])
    else:
        diag = np.einsum("gii->gi", prep.inverse)[groups]
        scores = np.where(candidates[None, :], m * m / (2.0 * diag), np.inf).reshape(-1)
        sequence = np.argsort(scores, kind="stable")
        sequence = sequence[np.isfinite(scores[sequence])]
        cumulative = np.cumsum(scores[sequence])
    return LayerTrace(
        layer, m0, m, stats, prep.hessian, prep.inverse, prep.damping, stats.energy(m0, groups),
        candidates, sequence[:limit], cumulative[:limit], base, mode, solve,
    )  # fmt: skip


def _solver(layer: Layer, m: np.ndarray, prep, candidates: np.ndarray, settings: Settings):
    """The mode of `layer` (auto: OBC while rows * inputs^3 <= OBC_BUDGET, else SparseGPT; --pattern:
    N:M SparseGPT) and, for the sweeps, count -> Sweep. A layer that cannot take the pattern is
    'skipped': it keeps all its weights."""
    mode, taps = settings.mode, int(np.prod(layer.kernel))
    if mode == "auto":
        mode = "exact" if layer.outputs * layer.inputs**3 <= OBC_BUDGET else "sparsegpt"
    if settings.pattern is not None:
        mode = f"{settings.pattern[0]}:{settings.pattern[1]}"
        if skip_reason(layer.inputs // taps, settings.pattern[1]):
            return "skipped", None
    return mode, solver(mode, m, prep, layer.output_group, candidates, taps)


def prune_layer(layer: Layer, m0: np.ndarray, h: np.ndarray | LayerStats, settings: Settings) -> LayerOutcome:
    """Prune one layer to `settings.ratio` of its weights removed (or `--max-layer-error`); `h` is the
    input Hessian [groups, width, width] or the full statistics."""
    stats = h if isinstance(h, LayerStats) else LayerStats(np.asarray(h, dtype=np.float64))
    trace = trace_layer(layer, m0, stats, settings)
    return trace.finish(trace.count_for(settings.ratio, settings.max_error))


def global_counts(traces: list[LayerTrace], ratio: float) -> list[int]:
    """Removals per layer so that `ratio` of all their weights go where the *relative* predicted
    error (error / output energy) stays lowest: one common tolerance for every layer."""
    relative = [t.cumulative / max(t.energy, _TINY) for t in traces]
    total = math.floor(ratio * sum(t.layer.outputs * t.layer.inputs for t in traces) + 1e-9)
    owner = np.concatenate([np.full(len(r), i) for i, r in enumerate(relative)] + [np.zeros(0, int)])
    values = np.concatenate(relative + [np.zeros(0)])
    chosen = owner[np.argsort(values, kind="stable")[:total]]
    return np.bincount(chosen, minlength=len(traces)).tolist()


def _exact_rows(trace: LayerTrace, count: int) -> np.ndarray:
    """Each row with removals is the least-squares optimum for its mask: w_K = H_KK^-1 (H w)_K."""
    m, width = trace.start, trace.start.shape[1]
    new = np.array(m)
    rows, columns = np.divmod(trace.sequence[:count], width)
    groups = trace.layer.output_group
    for r in np.unique(rows):
        keep = np.ones(width, dtype=bool)
        keep[columns[rows == r]] = False
        h = trace.damped[groups[r]]
        new[r] = 0.0
        new[r, keep] = np.linalg.solve(h[np.ix_(keep, keep)], h[keep] @ m[r])
    return new


def _obc_traces(m, inverse, groups, candidates):
    """Per row r: the greedy removal order of its candidate columns and each step's L_q, with H^-1
    downdated after every removal. Rows run together in chunks ([rows, width, width] in memory)."""
    rows, width = m.shape
    steps = int(candidates.sum())
    order = np.zeros((rows, steps), dtype=np.int64)
    losses = np.zeros((rows, steps))
    chunk = max(1, CHUNK_BYTES // (8 * width * width))
    for start in range(0, rows, chunk):
        part = slice(start, min(rows, start + chunk))
        order[part], losses[part] = _obc_chunk(m[part], inverse[groups[part]], candidates, steps)
    return order, losses


def _obc_chunk(w, hinv, candidates, steps):
    w, hinv = np.array(w), np.array(hinv)
    count, width = w.shape
    ar = np.arange(count)
    columns = np.broadcast_to(np.arange(width), (count, width)).copy()
    alive = np.broadcast_to(candidates, (count, width)).copy()
    order = np.zeros((count, steps), dtype=np.int64)
    losses = np.zeros((count, steps))
    for t in range(steps):
        diag = np.maximum(np.einsum("rii->ri", hinv), _TINY)
        score = np.where(alive, w * w / diag, np.inf)
        q = score.argmin(axis=1)
        hq, wq = diag[ar, q], w[ar, q]
        losses[:, t] = wq * wq / (2.0 * hq)
        order[:, t] = columns[ar, q]
        row = hinv[ar, q, :].copy()
        w -= (wq / hq)[:, None] * row
        w[ar, q] = 0.0
        hinv -= (row / hq[:, None])[:, :, None] * row[:, None, :]
        alive[ar, q] = False
        live = int(alive[0].sum()) + int((~candidates).sum())
        if t + 1 < steps and live <= COMPACT_AT * w.shape[1]:
            w, hinv, columns, alive = _compact(w, hinv, columns, alive, candidates)
    return order, losses


def _compact(w, hinv, columns, alive, candidates):
    """Drop the removed columns (every row has removed as many): later steps cost less."""
    keep = alive | ~candidates[columns]
    idx = np.nonzero(keep)[1].reshape(len(w), -1)
    ar = np.arange(len(w))[:, None]
    return w[ar, idx], hinv[ar[:, :, None], idx[:, :, None], idx[:, None, :]], columns[ar, idx], alive[ar, idx]


def _faithful_rows(trace: LayerTrace, count: int) -> np.ndarray:
    """L-OBS updates in rank order with the fixed H^-1; weights already removed are kept at zero."""
    new, width = np.array(trace.start), trace.start.shape[1]
    rows, columns = np.divmod(trace.sequence[:count], width)
    by_row = np.argsort(rows, kind="stable")  # rank order is kept within each row
    first = np.searchsorted(rows[by_row], rows[by_row])
    rank = np.empty(count, dtype=np.int64)
    rank[by_row] = np.arange(count) - first
    removed = np.zeros(new.shape, dtype=bool)
    groups = trace.layer.output_group
    for t in range(int(rank.max(initial=-1)) + 1):
        pick = rank == t
        r, q = rows[pick], columns[pick]
        h = trace.inverse[groups[r], q, :]
        new[r] -= (new[r, q] / h[np.arange(len(q)), q])[:, None] * h
        removed[r, q] = True
        new[removed] = 0.0
    return new


# ---- the method --------------------------------------------------------------------------------
def zero_read_channels(ctx: MethodContext, updates: dict[str, np.ndarray]) -> set[int]:
    """Free channels that every consumer reads with all-zero weights: removing them changes nothing."""
    removed: set[int] = set()
    for group in ctx.eligible_groups():
        if not group.consumers:
            continue
        free = np.asarray(group.free)
        unread = np.ones(len(free), dtype=bool)
        for role in group.consumers:
            value = updates.get(role.weight)
            value = ctx.index.constant(role.weight) if value is None else value
            line = ctx.analysis.const_labels[role.weight][role.axis]
            flat = np.moveaxis(np.asarray(value), role.axis, 0).reshape(value.shape[role.axis], -1)
            read = np.unique(line[(flat != 0).any(axis=1)])
            unread &= ~np.isin(free, read)
        removed.update(free[unread].tolist())
    return repair_empty(ctx.analysis, removed, {})


def _decide(ctx: MethodContext) -> PruningPlan:
    settings = Settings.build(ctx.options, ctx.settings, "lobs")
    found, skipped = obs_layers(ctx.index)
    views = _views(ctx.index, select(found.values(), ctx.options.include, ctx.options.exclude), settings)
    by_node = {view.node: view for view in views}
    waves = layer_waves(ctx.index, [v.layer for v in views]) if settings.sequential else [[v.layer for v in views]]
    spread = settings.allocation != "layer" and settings.max_error is None
    allocator = _ALLOCATORS[settings.allocation](ctx, settings, views) if spread else None
    passes = len(waves)
    if spread and settings.sequential:  # the allocation needs every layer's trace: one extra pass
        allocator.start(_traces(ctx, settings, views, {}, "lobs allocation"))
        passes += 1
    updates: dict[str, np.ndarray] = {}
    outcomes, floored = [], []
    for number, wave in enumerate(waves):
        wave_views = [by_node[layer.node] for layer in wave]
        traces = _traces(ctx, settings, wave_views, updates, f"lobs statistics {number + 1}/{len(waves)}")
        if spread and not settings.sequential:  # this one wave holds every layer
            allocator.start(traces)
        elif spread and updates:
            allocator.revise(traces, updates)
        for view, trace in zip(wave_views, traces, strict=True):
            count = allocator.take(trace) if spread else trace.count_for(settings.ratio, settings.max_error)
            outcome = trace.finish(count)
            write_view(ctx.index, view, outcome.matrix, updates)
            outcomes.append(outcome)
            if 0 < count == len(trace.sequence) < trace.layer.outputs * trace.layer.inputs:
                floored.append(trace.layer.node)  # held by the floor (onnxprune.methods.lobs_guard)
    removed = zero_read_channels(ctx, updates)
    notes: dict = {
        "layers": [o.note() for o in outcomes],
        "lobs_mode": settings.mode,
        "lobs_allocation": settings.allocation if settings.max_error is None else "max-layer-error",
        "lobs_batchnorm": {v.node: "virtual bias" if v.mean else "post-BN error" for v in views if v.scale is not None},
        "skipped_layers": skipped,
        "density": _overall_density(outcomes),
        "statistics_passes": passes,
        "floor_layers": floored,
    }
    notes["error_disagreements"] = disagreements(notes["layers"])
    if settings.pattern is not None:
        notes["pattern"] = conformance(settings.pattern, {o.layer.node: _shaped(o) for o in outcomes})
    for group in ctx.eligible_groups():
        gone = sum(1 for c in group.channels if c in removed)
        if gone:
            notes[group.id] = {"removed": gone, "why": "every consumer weight reading it is zero"}
    return PruningPlan(frozenset(removed), updates, "lobs", notes)


def _shaped(outcome: LayerOutcome) -> np.ndarray:
    """The weights of an outcome as [O, I, K] (K kernel positions, the order of W.reshape(O, -1))."""
    layer = outcome.layer
    return outcome.matrix[:, : layer.inputs].reshape(layer.outputs, -1, int(np.prod(layer.kernel)))


def _views(index: GraphIndex, layers: list[Layer], settings: Settings) -> list[LayerView]:
    """How OBS sees each layer: through the BatchNormalization that follows it (--lobs-batchnorm absorb)."""
    if settings.batchnorm == "absorb":
        return [batchnorm_view(index, layer) for layer in layers]
    return [plain_view(layer) for layer in layers]


def write_view(index: GraphIndex, view: LayerView, m: np.ndarray, updates: dict[str, np.ndarray]) -> None:
    """Write the OBS result W' = `m` of `view` into `updates`: the layer's weights (and the BN mean that
    holds a virtual bias)."""
    mean = index.constant(view.mean) if view.mean else None
    weights, new_mean = model_values(view, m, mean)
    write_layer(index, view.model_layer, weights, updates)
    if new_mean is not None:
        if not np.isfinite(new_mean).all():
            raise ValidationError(
                f"layer '{view.node}': the bias absorbed into BatchNormalization is not finite; nothing is "
                "written. Use more calibration samples, a larger --damping or --lobs-batchnorm ignore"
            )
        updates[view.mean] = new_mean.reshape(mean.shape).astype(mean.dtype)


def _traces(ctx: MethodContext, settings: Settings, views: list[LayerView], updates, description: str):
    """One onnxruntime pass and each layer's removal trace. Once `updates` exist (--sequential), the
    statistics are taken on the model with them applied, paired with the original model's."""
    layers = [v.layer for v in views]
    stats = ctx.stats.hessians(ctx.model, layers, updates, settings.max_positions, settings.seed, description)
    return [
        trace_layer(v.layer, view_weights(v, layer_weights(ctx.index, v.model_layer)), stats.pop(v.node), settings)
        for v in bar(views, desc=f"{description}: layer solves", unit="layer")
    ]


class GlobalAllocator:
    """--lobs-allocation global: the counts of global_counts, fixed from the first traces."""

    def __init__(self, ctx: MethodContext, settings: Settings, views: list[LayerView]) -> None:
        self.ratio = settings.ratio
        self.counts: dict[str, int] = {}

    def start(self, traces: list[LayerTrace]) -> None:
        self.counts = dict(zip((t.layer.node for t in traces), global_counts(traces, self.ratio), strict=True))

    def revise(self, traces: list[LayerTrace], updates: dict[str, np.ndarray]) -> None:
        """The relative layer errors do not depend on what is already pruned: the counts stay."""

    def take(self, trace: LayerTrace) -> int:
        return self.counts[trace.layer.node]


class OutputAllocator(GlobalAllocator):
    """--lobs-allocation output (onnxprune.methods.lobs_allocation): every layer alone finished at a grid
    of counts, the model's output error measured, the counts spread over the convex hulls. With
    --sequential, each wave's curves are measured again on the model pruned so far (its traces target
    the original outputs) and the budget left is spread again over the layers not yet pruned."""

    def __init__(self, ctx: MethodContext, settings: Settings, views: list[LayerView]) -> None:
        super().__init__(ctx, settings, views)
        names = [n for v in views for n in (v.model_layer.weight, v.model_layer.obs_bias, v.mean) if n]
        self.probe = ctx.stats.output_probe(ctx.model, names, settings.allocation_samples)
        self.index, self.views = ctx.index, {v.node: v for v in views}
        self.curves: dict[str, Curve] = {}
        self.left = 0

    def start(self, traces: list[LayerTrace]) -> None:
        self.left = math.floor(self.ratio * sum(t.layer.outputs * t.layer.inputs for t in traces) + 1e-9)
        self._measure(traces, {})

    def revise(self, traces: list[LayerTrace], updates: dict[str, np.ndarray]) -> None:
        self._measure(traces, updates)

    def take(self, trace: LayerTrace) -> int:
        count = self.counts[trace.layer.node]
        del self.curves[trace.layer.node]
        self.left -= count
        return count

    def _measure(self, traces: list[LayerTrace], base: dict[str, np.ndarray]) -> None:
        def grid(trace: LayerTrace) -> np.ndarray:
            return grid_counts(trace.layer.outputs * trace.layer.inputs, len(trace.sequence), self.ratio)

        def overrides(trace: LayerTrace, count: int) -> dict[str, np.ndarray]:
            values = dict(base)
            write_view(self.index, self.views[trace.layer.node], trace.finish(count).matrix, values)
            return values

        measured = output_curves(self.probe, traces, grid, overrides)
        self.curves.update(zip((t.layer.node for t in traces), measured, strict=True))
        counts = hull_allocation(list(self.curves.values()), self.left)
        self.counts = dict(zip(self.curves, counts, strict=True))


_ALLOCATORS = {"global": GlobalAllocator, "output": OutputAllocator}


def _overall_density(outcomes: list[LayerOutcome]) -> float:
    total = sum(o.layer.outputs * o.layer.inputs for o in outcomes)
    kept = sum(o.density * o.layer.outputs * o.layer.inputs for o in outcomes)
    return kept / total if total else 1.0


OPTIONS = (
    MethodOption(
        "--lobs-mode",
        "lobs_mode",
        "auto",
        "lobs: exact (OBC greedy per row), sparsegpt (one column sweep per layer), auto (exact while rows x "
        "inputs^3 <= 1e10, else sparsegpt) or faithful (L-OBS)",
        str,
        choices=MODES,
    ),
    PATTERN_OPTION,
    *GUARD_OPTIONS,
    MethodOption(
        "--lobs-allocation",
        "lobs_allocation",
        "global",
        "lobs: global (--ratio of all weights, spread so that every layer has the same relative error), output "
        "(--ratio of all weights, spread by each layer's measured effect on the model outputs: about 12 forward "
        "passes of --allocation-samples samples per layer) or layer (--ratio of every layer's weights, the paper's "
        "per-layer target)",
        str,
        choices=ALLOCATIONS,
    ),
    MethodOption(
        "--allocation-samples",
        "allocation_samples",
        0,
        "lobs: calibration samples on which --lobs-allocation output measures the output errors (0 = all)",
        int,
        minimum=0,
        minimum_hint="0, the default, uses every sample",
    ),
    MethodOption(
        "--lobs-batchnorm",
        "lobs_batchnorm",
        "absorb",
        "lobs: absorb (a layer read only by a BatchNormalization is pruned for the error after the BN, and a "
        "bias-free one gets its bias through the BN mean) or ignore",
        str,
        choices=BATCHNORM,
    ),
    MethodOption(
        "--max-layer-error",
        "max_layer_error",
        None,
        "lobs: instead of --ratio, remove weights while each layer's error stays below this fraction of its "
        "output energy",
        float,
    ),
    *SHARED_OPTIONS,
)
LOBS = Method(
    "lobs",
    _decide,
    statistics=("hessian", "outputs"),
    auto_ratio=True,  # with --max-layer-error
    description="layer-wise OBS, unstructured: zeros with least-squares compensation (--ratio = weights removed)",
    options=OPTIONS,
)
EXPORTED = (LOBS,)


def layer_settings(ratio: float | None, **values) -> Settings:
    """The lobs Settings for pruning single layers (prune_layer): `ratio` (None: --max-layer-error) and
    option values by name (e.g. lobs_mode="exact"); every other value from the option table."""
    options = PruneOptions(ratio="auto" if ratio is None else ratio, extra=values)
    return Settings.build(options, LOBS.settings(values), "lobs")
