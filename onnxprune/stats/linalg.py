"""Dense linear algebra of the layer Hessians: damping, dead inputs, Cholesky inverses, error forms.

With H = (1/n) X~^T X~ the Hessian of a layer's input (onnxprune.stats.hessian), the layer error of a
weight change dW~ is E = 1/(2n) ||X~ dW~^T||^2 = 1/2 sum_r dw_r^T H dw_r (layer_error), and the scale of
the layer's output 1/(2n) ||Z||^2 = 1/2 sum_r w~_r^T H w~_r (output_energy). OBS needs H^-1 of a damped,
positive definite H (prepare).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack as _lapack

from ..errors import CalibrationError

#: an input whose second moment is below this fraction of the largest one counts as always zero
DEAD_TOLERANCE = 1e-12
#: a Cholesky pivot^2 below this fraction of the largest diagonal entry counts as singular (float64,
#: float32)
CONDITION_FLOOR = 1e-12
CONDITION_FLOOR_SINGLE = 1e-6
#: matrices up to this size are inverted with NumPy's LAPACK, larger ones with SciPy's (see cholesky_inverse)
SMALL_INVERSE = 512
#: Hessians wider than this are inverted and downdated in float32 where a method allows it (obs)
PRECISE_WIDTH = 1024


@dataclass(frozen=True)
class Prepared:
    """H made positive definite (dead inputs: H_ii = 1, damping) and its inverse, per group (`hessian`
    is None when prepare was told not to keep it)."""

    hessian: np.ndarray | None
    inverse: np.ndarray
    dead: np.ndarray
    damping: float


def dead_inputs(h: np.ndarray) -> np.ndarray:
    """Columns whose input is always zero on the calibration data: diag(H) ~ 0. [groups, width] bool."""
    diag = np.einsum("gii->gi", h)
    scale = diag.max(axis=1, keepdims=True)
    return diag <= DEAD_TOLERANCE * np.maximum(scale, np.finfo(float).tiny)


def prepare(
    h: np.ndarray, damping: float = 0.01, attempts: int = 8, single: bool = False, keep_hessian: bool = True
) -> Prepared:
    """Dead inputs get H_ii = 1 (their rows and columns are zero), then H += lambda mean(diag H) I;
    the inverse comes from a Cholesky factorization, in float32 when `single` (half the time and
    memory, for wide layers; the damped H is then float32 too), else in float64. When H is not
    positive definite (collinear inputs and damping 0, or round-off), lambda is raised tenfold from at
    least 1e-8 until it is. Without `keep_hessian` the factorization overwrites the damped H."""
    if damping < 0:
        raise ValueError("damping must be >= 0")
    dead = dead_inputs(h)
    lam = float(damping)
    for _ in range(attempts):
        base = _damped(h, dead, lam, np.float32 if single else np.float64)
        inverse = _cholesky_inverses(base, overwrite=not keep_hessian)
        if inverse is not None:
            return Prepared(base if keep_hessian else None, inverse, dead, lam)
        lam = max(lam * 10.0, 1e-8)
    raise CalibrationError(
        "layer Hessian: not positive definite even with damping "
        f"{lam / 10:g}; the calibration inputs are degenerate: give more (and more varied) samples"
    )


def _damped(h: np.ndarray, dead: np.ndarray, lam: float, dtype) -> np.ndarray:
    """A copy of H with dead rows and columns replaced by the identity's and lambda * mean(live
    diag H) added to the diagonal."""
    base = np.array(h, dtype=dtype)
    g_idx, i_idx = np.nonzero(dead)
    base[g_idx, i_idx, :] = 0.0
    base[g_idx, :, i_idx] = 0.0
    base[g_idx, i_idx, i_idx] = 1.0
    diagonal = np.arange(base.shape[-1])
    diag = base[:, diagonal, diagonal]
    live_mean = np.array([d[~m].mean() if (~m).any() else 1.0 for d, m in zip(diag, dead, strict=True)])
    base[:, diagonal, diagonal] = diag + (lam * live_mean)[:, None]
    return base


def _cholesky_inverses(h: np.ndarray, overwrite: bool = False) -> np.ndarray | None:
    inverses = []
    for g in range(len(h)):
        inverse = cholesky_inverse(h[g], overwrite)
        if inverse is None:
            return None
        inverses.append(inverse)
    return inverses[0][None] if len(inverses) == 1 else np.stack(inverses)


def cholesky_inverse(h: np.ndarray, overwrite: bool = False) -> np.ndarray | None:
    """H^-1 of a symmetric H through the Cholesky factor H = L L^T, in H's precision (float32 or
    float64); None when H is not (numerically) positive definite. `overwrite`: H's memory may be reused.

    Up to SMALL_INVERSE rows NumPy's LAPACK is used, above it SciPy's potrf/potri (in place, about 3x
    faster). They are two OpenBLAS builds whose idle threads spin for a while after each call: a small
    block inverted by the other library right after a large product would wait milliseconds for them."""
    if not np.isfinite(h).all():
        return None
    if len(h) <= SMALL_INVERSE:
        lower_inverse = _lower_inverse(h)
        if lower_inverse is None:
            return None
        inverse = lower_inverse.T @ lower_inverse
    else:
        single = h.dtype == np.float32
        potrf, potri = (_lapack.spotrf, _lapack.spotri) if single else (_lapack.dpotrf, _lapack.dpotri)
        # H is symmetric, so H^T (Fortran-ordered when H is C-ordered) is H: LAPACK works on it in place
        work = h.T if overwrite and h.flags.c_contiguous else np.array(h.T, order="F")
        factor, info = potrf(work, lower=True, clean=False, overwrite_a=True)
        if info != 0 or not _well_conditioned(np.diag(factor), h):
            return None
        inverse, info = potri(factor, lower=True, overwrite_c=True)
        if info != 0:
            return None
        mirror_triangle(inverse)
        inverse = inverse.T  # symmetric: the C-ordered view of the Fortran-ordered result
    if not np.isfinite(inverse).all() or (np.diag(inverse) <= 0).any():
        return None
    return inverse


def inverse_and_root(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H^-1, R) with R R^T = H^-1 for a small symmetric positive semi-definite H, from one Cholesky
    factorization H = L L^T (R = L^-T); the pseudo-inverse and its eigen-root when H is singular."""
    lower_inverse = _lower_inverse(h)
    if lower_inverse is not None:
        return lower_inverse.T @ lower_inverse, lower_inverse.T
    inverse = np.linalg.pinv(h, hermitian=True)
    values, vectors = np.linalg.eigh(inverse)
    return inverse, vectors * np.sqrt(np.clip(values, 0.0, None))


def _lower_inverse(h: np.ndarray) -> np.ndarray | None:
    """L^-1 of the Cholesky factor H = L L^T (NumPy's LAPACK), or None when H is not (numerically)
    positive definite."""
    try:
        factor = np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        return None
    if not np.isfinite(factor).all() or not _well_conditioned(np.diag(factor), h):
        return None
    return np.linalg.inv(factor)


def mirror_triangle(a: np.ndarray, step: int = 512) -> None:
    """Make square `a` symmetric from its lower triangle, in place, a block of rows at a time (no n^2
    temporary)."""
    for i in range(0, len(a), step):
        block = a[i : i + step, i : i + step]
        block[...] = np.tril(block) + np.tril(block, -1).T
        a[i : i + step, i + step :] = a[i + step :, i : i + step].T


def _well_conditioned(pivots: np.ndarray, h: np.ndarray) -> bool:
    """A Cholesky factor whose smallest pivot^2 is not lost in round-off against the largest H_ii
    (an exactly singular H can factor with pivots of 1e-16; of 1e-8 in float32)."""
    floor = CONDITION_FLOOR_SINGLE if h.dtype == np.float32 else CONDITION_FLOOR
    return bool(float(np.min(pivots)) ** 2 > floor * float(np.max(np.diag(h))))


# ---- errors -----------------------------------------------------------------------------------
def layer_error(delta: np.ndarray, h: np.ndarray, row_group: np.ndarray) -> float:
    """E = 1/2 sum_r dw_r^T H_g(r) dw_r = 1/(2n) ||X~ dW~^T||^2 on the rows H was built from."""
    total = 0.0
    for g in range(len(h)):
        d = delta[row_group == g]
        total += 0.5 * float(forms(d, h[g]).sum())
    return total


def quadratic(a: np.ndarray, h: np.ndarray, b: np.ndarray) -> float:
    """sum_r a_r^T H b_r, through one matrix product (BLAS), in the operands' precision (the sequential
    error is a difference of such terms)."""
    return float(np.sum((a @ h) * b))


def forms(a: np.ndarray, h: np.ndarray) -> np.ndarray:
    """a_r^T H a_r for every row r, each a form reported as it is, never subtracted from another: float32
    products when H is wider than PRECISE_WIDTH, summed in float64."""
    if h.shape[0] > PRECISE_WIDTH:
        a32 = a.astype(np.float32)
        return np.einsum("ri,ri->r", a32 @ h.astype(np.float32, copy=False), a32, dtype=np.float64)
    return np.einsum("ri,ri->r", a @ h, a)


def output_energy(m: np.ndarray, h: np.ndarray, row_group: np.ndarray) -> float:
    """1/(2n) ||Z||^2 = 1/2 sum_r w~_r^T H w~_r: the scale of a layer's output."""
    return layer_error(m, h, row_group)
