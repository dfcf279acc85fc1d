"""Data-free neuron merging (Srinivas & Babu, "Data-free parameter pruning for Deep Neural Networks", BMVC 2015).

For each group of coupled channels, with weight-set W_i (incoming weights and bias of every producer of the
group, concatenated) and outgoing weights a_i (every consumer's weights that read channel i):

    s(i, j) = <a_j^2> ||W_i - W_j||^2          (saliency of deleting j into i; <.> = mean over a_j)

The greedy takes the pair of least saliency, deletes j and adds its outgoing weights to i's (the surgery,
a_i <- a_i + a_j), until the group keeps keep_count(ratio) channels. If W_i = W_j the network is unchanged. For
a monotone activation h with max h' <= 1 (ReLU, LeakyReLU/PRelu slope <= 1, tanh, sigmoid, clip) the change of
the next layer is at most s(i, j) E||x||^2; for GELU/SiLU/HardSwish the report says "bound not guaranteed".

Normalized variant (--merge-normalize, used where the activation is positively homogeneous: ReLU, leaky ReLU,
PRelu, identity): compare W_i / |W_i|, weigh the outgoing weights by |W_j|, s'(i, j) = <a_j^2> |W_j|^2 ||u_i - u_j||^2
with u = W / |W| and ||u_i - u_j||^2 = 2 (1 - cos_ij). The surgery a_i <- a_i + alpha a_j is exact for alpha W_i = W_j,
and for any alpha >= 0 the next layer changes by at most <a_j^2> ||W_j - alpha W_i||^2 E||x||^2 (h(alpha z) =
alpha h(z)). The paper takes alpha = |W_j| / |W_i| (--merge-scale paper): bound s'(i, j). The default
(--merge-scale lsq, an extension of the paper) takes the alpha that minimizes that bound, the least-squares
alpha = max(0, cos_ij) |W_j| / |W_i|: bound <a_j^2> |W_j|^2 (1 - cos_ij^2) for cos_ij > 0, which is at most s'(i, j)
(1 - c^2 = (1 - c)(1 + c) <= 2 (1 - c)) and never above deleting j without surgery (<a_j^2> |W_j|^2); for
cos_ij <= 0 it is the deletion. The pair is chosen by s' in both cases; only the surgery differs (after the
first step the order can differ: s' weighs the survivors' outgoing weights, which the surgery changed). The
unnormalized variant keeps alpha = 1. BatchNormalization is folded into the producers first (pre-pass "fold").

--ratio auto: the greedy runs up to --max-ratio, records the saliency of every step (the "saliency curve",
flat then steep), and keeps the steps up to the curve's knee (merge_greedy.knee). --no-surgery deletes j without
adding a_j to a_i (the paper's ablation). --plot DIR writes each group's curve as a PNG.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..analysis.ops_recurrent import is_recurrent
from ..errors import OptionError
from ..plan import PruningPlan
from ..progress import bar
from .base import Method, MethodContext
from .damage import GroupCurve, removable, saliency_curve
from .merge_activation import NOT_GUARANTEED, UNKNOWN, group_activation
from .merge_greedy import greedy, knee, squared_distances, subsample, undo
from .merge_sets import MergeProblem, build_problem, write_outgoing
from .options import MethodOption
from .select import keep_count


@dataclass(frozen=True)
class MergeSettings:
    """The merge options, checked."""

    auto: bool
    ratio: float  # numeric ratio, or the cap under auto
    normalize: bool
    surgery: bool
    scale: str  # surgery scale of the normalized variant: "lsq" or "paper"
    plot: Path | None

    @classmethod
    def from_context(cls, ctx: MethodContext) -> MergeSettings:
        options, typed = ctx.options, ctx.settings
        max_ratio = typed.max_ratio
        if not 0.0 <= max_ratio < 1.0:
            raise OptionError(f"--max-ratio {max_ratio}: must be in [0, 1); 0.9 lets auto remove up to 90%")
        auto = options.ratio == "auto"
        return cls(
            auto=auto,
            ratio=max_ratio if auto else float(options.ratio),
            normalize=typed.merge_normalize,
            surgery=not typed.no_surgery,
            scale=typed.merge_scale,
            plot=_plot_dir(typed.plot) if typed.plot else None,
        )


def _plot_dir(path) -> Path:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OptionError("--plot: matplotlib is not installed; pip install 'onnxprune[plot]' or drop --plot") from None
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OptionError(f"--plot {folder}: is a file; give a folder for the PNG saliency curves")
    return folder


@dataclass(frozen=True)
class GroupResult:
    removed: tuple[int, ...]
    note: dict
    curve: list[float]


def _decide(ctx: MethodContext) -> PruningPlan:
    settings = MergeSettings.from_context(ctx)
    current: dict[str, np.ndarray] = {}
    removed_mask = np.zeros(ctx.analysis.num_channels + 1, dtype=bool)
    notes: dict = {}
    curves: dict[int, list[float]] = {}
    groups = sorted(ctx.eligible_groups(), key=lambda g: _first_node(ctx, g))
    for group in bar(groups, desc="merge groups", unit="group"):
        result = merge_group(ctx, group, current, removed_mask, settings)
        removed_mask[list(result.removed)] = True
        notes[group.id] = result.note
        if result.curve:
            curves[group.id] = result.curve
    for group in ctx.analysis.groups:
        if not group.free:
            notes[group.id] = {"removed": 0, "skipped": f"frozen ({group.frozen})"}
    if settings.plot is not None:
        plot_curves(settings.plot, ctx, curves, notes)
    notes["saliency_curves"] = {gid: subsample(curve) for gid, curve in curves.items()}
    updates = dict(current)
    removed = frozenset(np.flatnonzero(removed_mask[:-1]).tolist())
    return PruningPlan(removed, updates, "merge", notes)


def _damage(ctx: MethodContext) -> dict[int, GroupCurve]:
    """Each group's greedy run alone on the unchanged model as far as it may go; its step saliencies as
    a normalized saliency curve in the greedy's order (methods.damage)."""
    settings = MergeSettings.from_context(ctx)
    curves = {}
    for group in ctx.eligible_groups():
        limit = removable(group, ctx.options.min_keep)
        if not limit or _skip_reason(group):
            continue
        alone = replace(ctx, options=replace(ctx.options, keep={group.id: group.size - limit}))
        result = merge_group(alone, group, {}, np.zeros(ctx.analysis.num_channels + 1, dtype=bool), settings)
        if result.curve:
            curves[group.id] = saliency_curve(np.asarray(result.curve), limit, greedy_order=True)
    return curves


def _first_node(ctx: MethodContext, group) -> int:
    return min(ctx.index.producer.get(p.output, 0) for p in group.producers)


def _skip_reason(group) -> str | None:
    if is_recurrent(group):
        return "recurrent hidden units: the one-layer bound does not hold through the recurrence"
    if group.size < 2:
        return "fewer than 2 channels, nothing to merge"
    if not group.free:
        return f"frozen ({group.frozen})"
    if not group.consumers:
        return (
            "the channels feed no weights (no outgoing weights to merge into); deleting them would equal "
            "--no-surgery, use --method magnitude for this group"
        )
    return None


def merge_group(ctx: MethodContext, group, current: dict, removed_mask: np.ndarray, settings: MergeSettings):
    """Greedy merging in one group: the channels to remove, the group's note, the saliency curve."""
    reason = _skip_reason(group)
    if reason:
        return GroupResult((), {"removed": 0, "skipped": reason}, [])
    activation = group_activation(ctx.index, group)
    problem = build_problem(ctx.index, ctx.analysis, group, current, removed_mask)
    normalize, why_not = _normalization(settings, activation, problem)
    target = group.size - keep_count(group, settings.ratio, ctx.options)
    setup = _setup(problem, group, normalize, lsq=normalize and settings.scale == "lsq")
    problem = problem.layout_only()  # the engine owns the matrices now; drop W early (memory)
    steps = greedy(setup.dist, setup.outgoing, setup.counts, setup.deletable, setup.survivor_ok, target,
                   settings.surgery, setup.scale)  # fmt: skip
    curve = [s.saliency for s in steps]
    taken = _auto_steps(group, curve, ctx.options) if settings.auto else len(steps)
    if settings.surgery:
        undo(setup.outgoing, steps[taken:])
    steps = steps[:taken]
    if settings.surgery and steps:
        _write_surgery(ctx, problem, setup, steps, current)
    removed = tuple(int(problem.channels[s.deleted]) for s in steps)
    note = _note(activation, normalize, why_not, settings, group, steps, target, len(curve))
    return GroupResult(removed, note, curve)


def _normalization(settings: MergeSettings, activation, problem: MergeProblem) -> tuple[bool, str]:
    if not settings.normalize:
        return False, "--no-merge-normalize"
    if not activation.homogeneous:
        return False, f"activation {activation.label} is not positively homogeneous"
    if problem.has_other:
        return False, "a per-channel constant (unfolded BatchNormalization, scale) sits between layer and activation"
    return True, ""


@dataclass(frozen=True)
class _Setup:
    """The whole group's engine inputs (rows = problem.channels)."""

    dist: np.ndarray
    outgoing: np.ndarray  # weighted by |W| when normalized
    counts: np.ndarray
    deletable: np.ndarray
    survivor_ok: np.ndarray
    norms: np.ndarray
    scale: Callable[[int, int, float], float] | None  # least-squares surgery scale (normalized, --merge-scale lsq)


@dataclass(frozen=True)
class UnitCosines:
    """alpha'(i, j) = max(0, cos_ij) = max(0, <u_i, u_j>), u = W / |W| (a zero row gives 0), rows of one class.

    In the engine's |W|-weighted outgoing weights a' = |W| a, the least-squares surgery
    a_i += max(0, cos_ij) (|W_j| / |W_i|) a_j reads a'_i += max(0, cos_ij) a'_j.
    """

    units: tuple[np.ndarray, ...]  # per class: [n_k, d_k] unit weight-sets
    where: np.ndarray  # [n, 2]: (class, row in the class) of each of the group's channels

    def __call__(self, i: int, j: int, distance: float = 0.0) -> float:
        (ci, ri), (cj, rj) = self.where[i], self.where[j]
        if ci != cj:
            return 0.0
        unit = self.units[ci]
        return max(0.0, float(np.dot(unit[ri].astype(np.float64), unit[rj].astype(np.float64))))


def cosine_from_distance(i: int, j: int, distance: float) -> float:
    """alpha'(i, j) = max(0, cos_ij) = max(0, 1 - D_ij / 2), D_ij = ||u_i - u_j||^2 (no PRelu slopes in D)."""
    return max(0.0, 1.0 - 0.5 * distance)


def _setup(problem: MergeProblem, group, normalize: bool, lsq: bool = False) -> _Setup:
    """D, A and the masks over all the group's channels; takes the problem's A over (scaled in place).

    lsq: also the least-squares surgery scale: from D_ij when D is the unit rows' distance alone, else (PRelu slopes
    add to D) from the unit weight-sets, kept for the greedy (the class weights are divided in place).
    """
    n = len(problem.channels)
    width = max((c.outgoing.shape[1] for c in problem.classes), default=0)
    free = np.isin(problem.channels, np.asarray(group.free, dtype=np.int64))
    single = len(problem.classes) == 1
    dist = None if single else np.full((n, n), np.inf)
    outgoing = problem.classes[0].outgoing if single else np.zeros((n, width))
    counts = np.zeros(n, dtype=np.int64)
    norms, survivor_ok, deletable = np.ones(n), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    units, where = [], np.zeros((n, 2), dtype=np.int64)
    slopes = any(cls.slopes.shape[1] for cls in problem.classes)
    for k, cls in enumerate(problem.classes):
        rows = cls.rows
        row_norms = np.sqrt(np.einsum("ij,ij->i", cls.weights, cls.weights, dtype=np.float64))
        block = squared_distances(cls.weights, normalize)
        if cls.slopes.shape[1]:
            block += squared_distances(cls.slopes)
        if single:
            dist = block
        else:
            dist[np.ix_(rows, rows)] = block
        has_out = cls.outgoing.shape[1] > 0
        scale = row_norms if normalize else np.ones(len(rows))
        if single:
            outgoing *= scale[:, None]
        else:
            outgoing[rows, : cls.outgoing.shape[1]] = cls.outgoing * scale[:, None]
        counts[rows] = cls.outgoing.shape[1]
        norms[rows] = scale
        survivor_ok[rows] = has_out & ((row_norms > 0) if normalize else True)
        deletable[rows] = has_out & free[rows]
        if lsq and slopes:
            units.append(_unit_rows(cls.weights, row_norms))
            where[rows] = np.stack([np.full(len(rows), k), np.arange(len(rows))], axis=1)
    scale = (UnitCosines(tuple(units), where) if slopes else cosine_from_distance) if lsq else None
    return _Setup(dist, outgoing, counts, deletable, survivor_ok, norms, scale)


def _unit_rows(weights: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """weights / |row|, in place (rows of norm 0 stay 0)."""
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    weights *= inverse[:, None].astype(weights.dtype)
    return weights


def _auto_steps(group, curve: list[float], options) -> int:
    """Steps up to the knee, then rounded so the group keeps a multiple of round_to (and >= min_keep)."""
    taken = knee(curve)
    keep = max(options.min_keep, group.size - taken)
    keep = min(group.size, math.ceil(keep / options.round_to) * options.round_to)
    return max(0, min(len(curve), group.size - keep))


def _write_surgery(ctx, problem: MergeProblem, setup: _Setup, steps, current: dict) -> None:
    """The survivors' outgoing weights after the surgeries (|W|-weighted when normalized), into the consumers."""
    survivors = np.unique([s.survivor for s in steps])
    changes = []
    for cls in problem.classes:
        inside = np.flatnonzero(np.isin(cls.rows, survivors))
        rows = cls.rows[inside]
        changes.append((inside, setup.outgoing[rows, : cls.width] / setup.norms[rows, None]))
    write_outgoing(ctx.index, problem, changes, current)


def _note(activation, normalize, why_not, settings, group, steps, target, recorded) -> dict:
    note = {
        "removed": len(steps),
        "activation": activation.label,
        "bound": "exact" if activation.bound not in (NOT_GUARANTEED, UNKNOWN) else f"bound {activation.bound}",
        "normalized": normalize,
        "surgery": settings.surgery,
    }
    if normalize and settings.surgery:
        note["surgery_scale"] = settings.scale
    if activation.reason:
        note["bound_reason"] = activation.reason
    if why_not and settings.normalize:
        note["not_normalized"] = why_not
    if steps:
        note["last_saliency"] = steps[-1].saliency
    if settings.auto:
        note["auto_ratio"] = round(len(steps) / group.size, 4)
        note["curve_steps"] = recorded
    elif recorded < target:
        note["stopped"] = (
            f"{recorded} of {target} merges possible (channels merge only with channels of the same layout)"
        )
    return note


def plot_curves(folder: Path, ctx: MethodContext, curves: dict[int, list[float]], notes: dict) -> list[Path]:
    """One PNG per group: step saliency vs step, with the chosen cut."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for gid, curve in curves.items():
        group = ctx.analysis.group(gid)
        fig = Figure(figsize=(5, 3.2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(np.arange(1, len(curve) + 1), curve, lw=1.2)
        cut = notes[gid]["removed"]
        if cut:
            ax.axvline(cut, color="tab:red", ls="--", lw=1, label=f"removed {cut}")
            ax.legend(loc="upper left")
        producer = group.producers[0].node
        ax.set_title(f"group {gid} ({producer}, {group.size} channels)", fontsize=9)
        ax.set_xlabel("greedy step")
        ax.set_ylabel("saliency s(i, j)")
        fig.tight_layout()
        path = folder / f"group{gid}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', producer).strip('_')}.png"
        fig.savefig(path, dpi=110)
        written.append(path)
    return written


SCALES = ("lsq", "paper")

OPTIONS = (
    MethodOption(
        "--merge-normalize/--no-merge-normalize",
        "merge_normalize",
        True,
        "merge: compare unit-norm weight-sets (scaled surgery) where the activation is positively homogeneous",
        is_flag=True,
    ),
    MethodOption(
        "--merge-scale",
        "merge_scale",
        "lsq",
        "merge, normalized variant: surgery a_i += alpha a_j with the least-squares alpha = max(0, cos) |W_j|/|W_i| "
        "(lsq, default, extends the paper) or the paper's alpha = |W_j|/|W_i| (paper)",
        type=str,
        choices=SCALES,
    ),
    MethodOption(
        "--no-surgery", "no_surgery", False, "merge: delete without merging (the paper's ablation)", is_flag=True
    ),
    MethodOption(
        "--max-ratio", "max_ratio", 0.9, "merge --ratio auto: remove at most this fraction per group", type=float
    ),
    MethodOption(
        "--plot",
        "plot",
        None,
        "merge (with --ratio): write each group's saliency curve as PNG into this folder; with --target (any "
        "method): the PNG file of the allocation (each group's damage curve and chosen point, cost shares)",
        type=str,
    ),
)
MERGE = Method(
    "merge",
    _decide,
    prepasses=("fold",),
    auto_ratio=True,
    description="data-free neuron merging: delete the most similar channel, add its outgoing weights to its twin",
    options=OPTIONS,
    damage=_damage,
)
EXPORTED = (MERGE,)
