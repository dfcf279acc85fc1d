"""The greedy engine of data-free neuron merging, and the saliency-curve knee.

Saliency of deleting channel j into survivor i (Srinivas & Babu 2015, eq. 7):
    s(i, j) = <a_j^2> ||W_i - W_j||^2,   <a_j^2> = mean of the squares of j's outgoing weights.
Each step takes the ordered pair of least s, deletes j and performs the surgery a_i <- a_i + alpha_ij a_j, with
alpha_ij = 1 (the paper) or any scale(i, j, D_ij) >= 0 the caller gives (merge.py: the least-squares scale).

Cost. D_ij = ||W_i - W_j||^2 = G_ii + G_jj - 2 G_ij comes from one Gram matrix G = W W^T (O(n^2 d), float64).
D never changes (the survivor keeps its weight-set); a step only changes <a_i^2> of the survivor. Since
s(k, j) = <a_j^2> D_kj, the best survivor of column j is argmin_k D_kj whatever <a_j^2> is: the engine keeps
dmin_j = min_k D_kj per column and rescans a column only when its best survivor was just deleted. A step is
O(n) plus O(n) per rescanned column; memory is the n x n matrix D (plus W, n x d, while G is formed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Step:
    """One greedy step: row `deleted` merged into row `survivor` at saliency `saliency`, a_i += scale a_j."""

    deleted: int
    survivor: int
    saliency: float
    scale: float = 1.0


#: above this many multiply-adds (n^2 d) the Gram matrix of float32 weight-sets is formed in float32 BLAS
#: (about 2.5x faster); D then errs by less than 1e-6 (|W_i|^2 + |W_j|^2) (3e-7 measured at AlexNet fc6 size),
#: far below the distance between two distinct neurons. Smaller groups (and float64 weights) use float64.
FLOAT32_GRAM_WORK = 2**33


def squared_distances(weights: np.ndarray, normalize: bool = False) -> np.ndarray:
    """D_ij = ||W_i - W_j||^2 = G_ii + G_jj - 2 G_ij for the rows of `weights`, from G = W W^T, clipped at 0.

    normalize: distances of the unit rows W_i / |W_i| instead, from G_ij / (|W_i| |W_j|) (a zero row stays 0).
    Returns a new float64 [n, n] array, exactly symmetric (W W^T runs as a symmetric rank-k update).
    """
    w = np.asarray(weights)
    n, d = w.shape
    if w.dtype != np.float64 and (w.dtype != np.float32 or n * n * d < FLOAT32_GRAM_WORK):
        w = w.astype(np.float64)
    gram = (w @ w.T).astype(np.float64, copy=False)
    sq = np.diag(gram).copy()
    if normalize:
        norms = np.sqrt(sq)
        inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        gram *= inverse[:, None]
        gram *= inverse[None, :]
        sq = (norms > 0).astype(np.float64)
    gram *= -2.0
    gram += sq[:, None]
    gram += sq[None, :]
    np.maximum(gram, 0.0, out=gram)
    return gram


def greedy(
    dist: np.ndarray,
    outgoing: np.ndarray,
    counts: np.ndarray,
    deletable: np.ndarray,
    survivor_ok: np.ndarray,
    steps: int,
    surgery: bool = True,
    scale: Callable[[int, int, float], float] | None = None,
) -> list[Step]:
    """Run at most `steps` greedy merges; stop early when no pair is allowed.

    dist: [n, n] D (symmetric, +inf where two rows may not be merged); overwritten.
    outgoing: [n, m] outgoing weights a (float64); overwritten by the surgeries when `surgery`.
    counts: number of real outgoing weights per row (the mean of squares divides by it).
    deletable / survivor_ok: which rows may be deleted / may absorb.
    scale: alpha(i, j, D_ij) >= 0 of the surgery a_i += alpha a_j (None: 1). It does not change the choice of the pair.
    """
    n = dist.shape[0]
    cols = dist  # cols[j, k] = D[k, j]: row j lists the candidate survivors of deleting j
    np.fill_diagonal(cols, np.inf)
    cols[:, ~np.asarray(survivor_ok, dtype=bool)] = np.inf
    mean_sq = np.einsum("ij,ij->i", outgoing, outgoing) / np.maximum(counts, 1)
    dmin = cols.min(axis=1) if n else np.zeros(0)
    darg = cols.argmin(axis=1) if n else np.zeros(0, dtype=np.int64)
    open_ = np.asarray(deletable, dtype=bool).copy()
    result: list[Step] = []
    for _ in range(steps):
        allowed = open_ & np.isfinite(dmin)
        if not allowed.any():
            break
        score = np.full(n, np.inf)
        score[allowed] = mean_sq[allowed] * dmin[allowed]
        j = int(np.argmin(score))
        i = int(darg[j])
        alpha = 1.0 if scale is None else float(scale(i, j, float(dmin[j])))
        result.append(Step(j, i, float(score[j]), alpha))
        open_[j] = False
        cols[:, j] = np.inf
        if surgery and alpha:
            outgoing[i] += alpha * outgoing[j]
            mean_sq[i] = float(outgoing[i] @ outgoing[i]) / max(int(counts[i]), 1)
        stale = np.flatnonzero((darg == j) & open_)
        if stale.size:
            sub = cols[stale]
            dmin[stale] = sub.min(axis=1)
            darg[stale] = sub.argmin(axis=1)
    return result


def undo(outgoing: np.ndarray, steps: list[Step]) -> None:
    """Take back the surgeries of `steps` (the last ones the greedy ran), in place: a_i -= alpha a_j, newest first."""
    for step in reversed(steps):
        outgoing[step.survivor] -= step.scale * outgoing[step.deleted]


def knee(saliencies: list[float] | np.ndarray) -> int:
    """How many steps to take under --ratio auto: the first knee of the saliency curve.

    The curve s_1..s_M (made monotone by its running maximum y_t = max(s_1..s_t)) stays flat and then rises
    steeply. Its knee is the step farthest below the chord between the curve's ends, in two views:
    linear, x_t = t / M against y_t / y_M (chord from (0, 0) to (1, 1)), which finds where the curve leaves the
    floor relative to its largest value; and logarithmic, log y_t (floored at 1e-12 y_M) against t (chord from
    the first to the last point), which finds a jump by orders of magnitude (a run of near-duplicates ending).
    The rule takes the earlier of the two, steps 1..t*. A curve that is zero throughout gives M (every step is
    free); a curve with no point below either chord gives 0.
    """
    s = np.asarray(saliencies, dtype=np.float64)
    if s.size == 0:
        return 0
    y = np.maximum.accumulate(s)
    if y[-1] <= 0:
        return int(s.size)
    linear = _below_chord(np.arange(1, s.size + 1) / s.size, y / y[-1], (0.0, 0.0), (1.0, 1.0))
    return min(linear, _log_knee(y))


def _log_knee(y: np.ndarray) -> int:
    logs = np.log(np.maximum(y, 1e-12 * y[-1]))
    x = np.arange(y.size, dtype=np.float64)
    return _below_chord(x, logs, (x[0], logs[0]), (x[-1], logs[-1]))


def _below_chord(x: np.ndarray, y: np.ndarray, first: tuple, last: tuple) -> int:
    """1 + the index of the point farthest below the chord from `first` to `last` ((x, y) pairs); 0 if none."""
    span = last[0] - first[0]
    chord = first[1] + (last[1] - first[1]) * (x - first[0]) / (span if span else 1.0)
    gap = chord - y
    best = int(np.argmax(gap))
    return best + 1 if gap[best] > 1e-12 else 0


def subsample(values: list[float], limit: int = 200) -> list[float]:
    """At most `limit` evenly spaced values (first and last kept)."""
    if len(values) <= limit:
        return list(values)
    picks = np.unique(np.linspace(0, len(values) - 1, limit).round().astype(int))
    return [values[i] for i in picks.tolist()]
