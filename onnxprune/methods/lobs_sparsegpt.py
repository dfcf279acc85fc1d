"""SparseGPT: one column sweep over a layer instead of OBC's per-row greedy (Frantar & Alistarh 2023).

A layer W~ [R, width] with input Hessian H (damped, positive definite) is pruned column by column,
left to right. Let U be the upper Cholesky factor of H^-1 (H^-1 = U^T U). Once columns 0..j-1 are fixed,
the inverse Hessian of the free columns F = j.. is the Schur complement of H^-1, which is U_FF^T U_FF: its
row j is U_jj U[j, F] and its diagonal entry U_jj^2. So removing weight (r, j) while the later columns
compensate costs exactly (OBS, Hassibi & Stork 1993)

    L_rj = w_rj^2 / (2 U_jj^2),       W[r, F] -= (w_rj / U_jj) U[j, F]     (w_rj becomes 0),

and a kept weight of column j is simply frozen (no cost). The layer error of the sweep is therefore the
sum of its L_rj for the damped H (`Sweep.predicted`), with every row handled at once. Columns are taken in
blocks of B (128): inside a block the updates touch only the block, the rest of the matrix gets one lazy
product Err [R, B] @ U[block, later] per block (the same arithmetic, BLAS-sized). Cost: one Cholesky of
H^-1 (width^3 / 3) and about R * width^2 multiply-adds, against OBC's R * width^3.

Mask selection is adaptive: the mask of a window of columns is chosen when the sweep reaches it, on the
weights already updated by the earlier columns, by the score w^2 / U_jj^2 (the L_rj above).
Unstructured (`sparsegpt`): how many weights each window of SELECT (4) columns loses is fixed first (as
many as it holds among the `count` weights of least OBS saliency w^2 / [H^-1]_jj of the dense layer, so
the layer removes exactly `count` and unimportant inputs lose more); each window then removes its quota
of lowest scores over all its rows at once (the paper's per-block selection over all rows, in narrower
windows: rows end up with different densities). N:M (`sparsegpt_nm`): the columns are first ordered so
that every N:M group is M consecutive columns (onnxprune.methods.nm_pattern.group_order); at the first
column of each group, the M - N lowest scores of every row go.

After the sweep the mask is fixed and the kept weights take REFINE (8) conjugate-gradient steps towards
their least-squares optimum (refine_kept; each step one [R, width] @ H product, so the cost class stays
R * width^2): a column fixed early by the sweep no longer gives up what later removals could have used.
Measured on small layers (tests/test_sparsegpt.py, benchmarks/lobs_speed.py): 1.0-1.8x OBC's layer error
(1.2-1.4x on wide correlated layers), against 1.5-2.6x for the plain sweep with 128-column windows.

Columns that are not candidates (the bias column of W~) are never removed, only compensated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .nm_pattern import group_order, parse_pattern

#: columns per block of the lazy batch updates (the paper's B)
BLOCK = 128
#: columns per adaptive mask decision (unstructured): smaller follows the updated weights more closely
SELECT = 4
#: conjugate-gradient iterations on the kept weights after the sweep (refine_kept; 0 = the paper's sweep)
REFINE = 8
#: densities (of the removable weights) at which sweep_curve runs a sweep, besides the target and 0
CURVE_DENSITIES = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08, 0.05, 0.03, 0.02, 0.01)

Chooser = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Sweep:
    """The pruned W~, the removed positions and the predicted layer error (sum of the L_rj)."""

    matrix: np.ndarray
    removed: np.ndarray
    predicted: float


def upper_root(inverse: np.ndarray) -> np.ndarray:
    """U, upper triangular, with U^T U = H^-1 (the transposed Cholesky factor of H^-1)."""
    return np.linalg.cholesky(inverse).T


def sweep(w: np.ndarray, upper: np.ndarray, choose: Chooser, step: int, block: int = BLOCK) -> Sweep:
    """The column sweep of W~ = `w` [R, width] with U = `upper`. At every column j with j % step == 0,
    `choose(scores, j // step)` gets the scores w^2 / U_jj^2 of columns j .. j+step-1 [R, <= step] and
    returns which of them go (bool, same shape). `block` is rounded down to a multiple of `step`."""
    w = np.array(w, dtype=np.float64)
    rows, width = w.shape
    block = max(step, block - block % step)
    removed = np.zeros(w.shape, dtype=bool)
    pivots = np.diag(upper)
    loss = 0.0
    for start in range(0, width, block):
        stop = min(width, start + block)
        part = w[:, start:stop]  # a view: the block is updated in place
        local = upper[start:stop, start:stop]
        errors = np.zeros((rows, stop - start))
        for j in range(stop - start):
            column = start + j
            if column % step == 0:
                end = min(width, column + step)
                scores = part[:, j : j + end - column] ** 2 / pivots[column:end] ** 2
                removed[:, column:end] = choose(scores, column // step)
            gone = removed[:, column]
            if not gone.any():
                continue
            error = np.where(gone, part[:, j] / pivots[column], 0.0)
            loss += 0.5 * float(error @ error)
            part[:, j:] -= error[:, None] * local[j, j:][None, :]
            part[gone, j] = 0.0
            errors[:, j] = error
        if stop < width:
            w[:, stop:] -= errors @ upper[start:stop, stop:]
    return Sweep(w, removed, loss)


def solver(
    mode: str, m: np.ndarray, prep, row_group: np.ndarray, candidates: np.ndarray, taps: int
) -> Callable[[int], Sweep] | None:
    """count -> Sweep of W~ = `m` for `mode` 'sparsegpt' or 'N:M' (`prep`: the damped H and H^-1 per
    group; `taps`: kernel positions per input channel), the last result kept; None for other modes."""
    if mode == "sparsegpt":
        uppers = np.stack([upper_root(inverse) for inverse in prep.inverse])
        return lru_cache(maxsize=1)(lambda count: sparsegpt(m, prep.hessian, uppers, row_group, candidates, count))
    pattern = parse_pattern(mode) if ":" in mode else None
    if pattern is None:
        return None
    channels = int(candidates.sum()) // taps
    result = lru_cache(maxsize=1)(
        lambda: sparsegpt_nm(m, prep.hessian, prep.inverse, row_group, pattern[0], pattern[1], channels, taps)
    )
    return lambda count: result()


def sweep_curve(solve: Callable[[int], Sweep], removable: int, target: int, full: bool) -> np.ndarray:
    """cumulative[k - 1] = predicted error after k removals, k = 1 .. `removable`: sweeps at 0 and at
    the `target` count and, when `full` (an allocation reads the curve), at the counts of
    CURVE_DENSITIES; linear in between (and past the last point, with the last slope), made
    nondecreasing. The target's sweep runs last, so finishing the layer at it costs nothing more."""
    densities = np.array(CURVE_DENSITIES if full else ())
    counts = np.unique(np.round((1.0 - densities) * removable).astype(np.int64))
    counts = [int(k) for k in counts if 0 < k != target] + [target]
    errors = {0: 0.0, **{k: solve(k).predicted for k in counts if k > 0}}
    points = np.array(sorted(errors), dtype=np.float64)
    values = np.maximum.accumulate(np.array([errors[int(k)] for k in points]))
    steps = np.arange(1, removable + 1, dtype=np.float64)
    curve = np.interp(steps, points, values)
    if len(points) > 1:
        slope = (values[-1] - values[-2]) / (points[-1] - points[-2])
        beyond = steps > points[-1]
        curve[beyond] = values[-1] + slope * (steps[beyond] - points[-1])
    return curve


def split_counts(sizes: np.ndarray, count: int) -> np.ndarray:
    """`count` spread over cells of `sizes` in proportion, by cumulative rounding (sums to `count`,
    each at most its size when count <= sum)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(len(sizes), dtype=np.int64)
    bounds = (np.cumsum(sizes) * int(count)) // total
    return np.diff(np.concatenate([[0], bounds]))


def sparsegpt(
    m: np.ndarray,
    hessians: np.ndarray,
    uppers: np.ndarray,
    row_group: np.ndarray,
    candidates: np.ndarray,
    count: int,
    select: int = SELECT,
    refine: int = REFINE,
    saliency: bool = True,
) -> Sweep:
    """Unstructured SparseGPT of W~ = `m` [R, width]: `count` removals among the `candidates` columns,
    chosen per window of `select` columns; each Hessian group of rows (`hessians[g]`: the damped H,
    `uppers[g]`: upper_root of its inverse) swept on its own, then `refine` iterations of refine_kept."""
    members = [np.flatnonzero(row_group == g) for g in range(len(uppers))]
    quotas = window_quotas(m, uppers, members, candidates, count, select, saliency)

    def setup(g: int) -> tuple[np.ndarray, np.ndarray, Chooser]:
        return hessians[g], uppers[g], _quota_chooser(quotas[g], candidates, select)

    return _per_group(m, members, setup, select, refine)


def window_quotas(m, uppers, members, candidates, count: int, select: int, saliency: bool) -> np.ndarray:
    """Removals per (Hessian group, window of `select` columns) [groups, windows], summing to `count`:
    with `saliency`, as many as the window holds among the `count` weights of least OBS saliency
    w^2 / [H^-1]_jj of the dense layer ([H^-1]_jj = sum_k U_kj^2; columns that matter little lose
    more); else in proportion to each window's candidates (cumulative rounding)."""
    width = m.shape[1]
    starts = np.arange(0, width, select)
    if not saliency:
        per_window = np.add.reduceat(candidates.astype(np.int64), starts)
        sizes = np.array([[len(rows) * c for c in per_window] for rows in members]).reshape(-1)
        return split_counts(sizes, count).reshape(len(members), len(starts))
    scores = np.concatenate(
        [
            np.where(candidates, m[rows] ** 2 / (uppers[g] ** 2).sum(axis=0), np.inf).reshape(-1)
            for g, rows in enumerate(members)
        ]
    )
    chosen = np.zeros(len(scores), dtype=np.int64)
    chosen[np.argsort(scores, kind="stable")[:count]] = 1
    offsets = np.cumsum([0] + [len(rows) * width for rows in members])
    per_group = [chosen[a:b].reshape(-1, width).sum(axis=0) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return np.array([np.add.reduceat(c, starts) for c in per_group]).reshape(len(members), len(starts))


def sparsegpt_nm(
    m: np.ndarray, hessians: np.ndarray, inverses: np.ndarray, row_group: np.ndarray, n: int, size: int,
    channels: int, taps: int, refine: int = REFINE,
) -> Sweep:  # fmt: skip
    """N:M SparseGPT of W~ = `m` [R, width] whose first channels * taps columns are the weights in the
    order channel * taps + tap (the rest, the bias, is only compensated): every group of `size` = M
    consecutive channels at one tap keeps at most `n` = N weights. channels % M must be 0."""
    width = m.shape[1]
    order = np.concatenate([group_order(channels, taps), np.arange(channels * taps, width)])
    groups = channels * taps // size

    def choose(scores: np.ndarray, window: int) -> np.ndarray:
        out = np.zeros(scores.shape, dtype=bool)
        if window < groups:
            lowest = np.argsort(scores, axis=1, kind="stable")[:, : size - n]
            np.put_along_axis(out, lowest, True, axis=1)
        return out

    def setup(g: int) -> tuple[np.ndarray, np.ndarray, Chooser]:
        square = np.ix_(order, order)
        return hessians[g][square], upper_root(inverses[g][square]), choose

    members = [np.flatnonzero(row_group == g) for g in range(len(inverses))]
    permuted = _per_group(m[:, order], members, setup, size, refine)
    matrix, removed = np.empty_like(permuted.matrix), np.empty_like(permuted.removed)
    matrix[:, order], removed[:, order] = permuted.matrix, permuted.removed
    return Sweep(matrix, removed, permuted.predicted)


def refine_kept(w0: np.ndarray, w: np.ndarray, h: np.ndarray, keep: np.ndarray, iterations: int) -> np.ndarray:
    """With the mask fixed, move the kept weights of every row towards the least-squares optimum
    min_w 1/2 (w - w0)^T H (w - w0) (w = 0 off `keep`): Jacobi-preconditioned conjugate gradients, all
    rows at once (each iteration one product [R, width] @ H). CG lowers the H-norm error at every step,
    so the result is never worse than `w`; it reaches OBC's final re-solve w_K = H_KK^-1 (H w0)_K."""
    x = np.array(w, dtype=np.float64)
    residual = -((x - w0) @ h) * keep
    scale = 1.0 / np.diag(h)
    z = residual * scale
    direction = z.copy()
    rz = np.einsum("ri,ri->r", residual, z)
    for _ in range(iterations):
        product = (direction @ h) * keep
        curvature = np.einsum("ri,ri->r", direction, product)
        step = np.divide(rz, curvature, out=np.zeros_like(rz), where=curvature > 0)
        x += step[:, None] * direction
        residual -= step[:, None] * product
        z = residual * scale
        rz_next = np.einsum("ri,ri->r", residual, z)
        direction = z + np.divide(rz_next, rz, out=np.zeros_like(rz), where=rz > 0)[:, None] * direction
        rz = rz_next
    return x


def _per_group(m, members, setup, step, refine) -> Sweep:
    """Sweep each Hessian group's rows with its (H, U, chooser) from `setup(g)`, refine the kept
    weights, reassemble W~; the predicted error is 1/2 sum_r dw_r^T H dw_r of the result."""
    matrix, removed, predicted = np.array(m, dtype=np.float64), np.zeros(m.shape, dtype=bool), 0.0
    for g, rows in enumerate(members):
        if len(rows) == 0:
            continue
        h, upper, choose = setup(g)
        result = sweep(m[rows], upper, choose, step)
        new = result.matrix
        if refine:
            new = refine_kept(m[rows], new, h, ~result.removed, refine)
            new[result.removed] = 0.0
        matrix[rows], removed[rows] = new, result.removed
        delta = new - m[rows]
        predicted += 0.5 * float(np.einsum("ri,ri->", delta @ h, delta))
    return Sweep(matrix, removed, predicted)


def _quota_chooser(quotas: np.ndarray, candidates: np.ndarray, select: int) -> Chooser:
    """Window `window` removes its quota of lowest scores over all rows (ties: first in row-major order)."""

    def choose(scores: np.ndarray, window: int) -> np.ndarray:
        out = np.zeros(scores.shape, dtype=bool)
        quota = int(quotas[window])
        if quota:
            allowed = candidates[window * select : window * select + scores.shape[1]]
            flat = np.where(allowed[None, :], scores, np.inf).reshape(-1)
            out.reshape(-1)[np.argsort(flat, kind="stable")[:quota]] = True
        return out

    return choose
