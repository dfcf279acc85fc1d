"""Unstructured L-OBS solvers on one layer: OBC exact (per-row greedy) vs the SparseGPT column sweep vs
magnitude, time and layer error at the same density.

Layer: W [rows, inputs] Gaussian, no bias, pruned to `--density` of its weights (the per-layer target,
`--lobs-allocation layer`), through onnxprune.methods.lobs.prune_layer with `--lobs-mode exact` or
`sparsegpt` (and sparsegpt without the conjugate-gradient refinement of the kept weights). Hessian:
H = D^1/2 C D^1/2 of correlated Gaussian inputs, C_ij = rho^|i - j| (AR(1), rho = 0.8: neighbouring
inputs correlated like adjacent pixels or channels), D log-normal input variances (sigma 1); damping
0.01 as in the tool. Errors are relative: 1/2 sum_r dw_r^T H dw_r over the output energy
1/2 sum_r w_r^T H w_r, on the undamped H.

OBC's cost is rows x inputs^3 and its rows are independent: for the wider layers it runs on the first
`rows_obc` rows only and its time is scaled by rows / rows_obc ("x rows" in the table); every error
column (OBC, SparseGPT, magnitude) is computed on that same subset of rows (a sub-layer of its own, so
the three compare like for like), while the SparseGPT time is for the whole layer. Where OBC does not run
at all (4096x4096: about a minute per row here) its time is extrapolated from the measured per-row cost,
fitted as c * inputs^3 on the measured sizes, and marked "extrapolated".

    python benchmarks/lobs_speed.py [--density 0.5] [--sizes 256x256 512x512 ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from onnxprune.layers import Layer
from onnxprune.methods import lobs_sparsegpt
from onnxprune.methods.lobs import layer_settings, prune_layer
from onnxprune.stats.linalg import layer_error

#: (rows, inputs, rows OBC runs on; 0 = OBC extrapolated only)
SIZES = (
    (256, 256, 256),
    (512, 512, 32),
    (1024, 1024, 8),
    (512, 1536, 4),
    (2048, 2048, 2),
    (4096, 4096, 0),
)
RHO = 0.8


def hessian(inputs: int, seed: int) -> np.ndarray:
    """D^1/2 C D^1/2 with C_ij = RHO^|i-j| and log-normal D."""
    rng = np.random.default_rng(seed)
    lag = np.abs(np.arange(inputs)[:, None] - np.arange(inputs)[None, :])
    scale = np.exp(0.5 * rng.standard_normal(inputs))
    return (RHO**lag * scale[:, None] * scale[None, :])[None]


def run(rows: int, inputs: int, density: float, h: np.ndarray, w: np.ndarray, mode: str):
    layer = Layer("bench", "Gemm", "w", "x", "z", (inputs, rows), "cols", 1, 1, (), {})
    start = time.perf_counter()
    out = prune_layer(layer, w, h, layer_settings(1.0 - density, lobs_mode=mode, lobs_allocation="layer"))
    return time.perf_counter() - start, out.measured / out.energy


def magnitude(w: np.ndarray, h: np.ndarray, density: float) -> float:
    """Zero the smallest |w| of the layer (no update): relative error."""
    keep = max(1, round(density * w.size))
    threshold = np.sort(np.abs(w), axis=None)[::-1][keep - 1]
    zeroed = np.where(np.abs(w) >= threshold, w, 0.0)
    groups = np.zeros(len(w), dtype=int)
    return layer_error(zeroed - w, h, groups) / layer_error(w, h, groups)


def sizes_arg(text: str) -> tuple[int, int, int]:
    rows, inputs, *cap = (int(v) for v in text.replace(":", "x").split("x"))
    return rows, inputs, cap[0] if cap else min(rows, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--sizes", nargs="+", type=sizes_arg, default=list(SIZES), help="ROWSxINPUTS[xOBC_ROWS]")
    args = parser.parse_args()
    print(f"density {args.density:.0%}; relative layer errors; OBC time scaled from the rows it ran on\n")
    print(
        "| layer | OBC rows run | OBC s | SparseGPT s | speed-up | SparseGPT no refine s "
        "| error OBC | error SparseGPT | error SparseGPT no refine | error magnitude |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    per_row_cost = []  # (inputs, seconds per OBC row)
    refined = lobs_sparsegpt.sparsegpt
    for rows, inputs, obc_rows in args.sizes:
        h = hessian(inputs, seed=inputs)
        w = np.random.default_rng(rows + inputs).standard_normal((rows, inputs))
        sub = w[: obc_rows or min(rows, 8)]
        sgpt_time, _ = run(rows, inputs, args.density, h, w, "sparsegpt")
        _, sgpt_error = run(len(sub), inputs, args.density, h, sub, "sparsegpt")
        lobs_sparsegpt.sparsegpt = lambda *a, **k: refined(*a, **{**k, "refine": 0})
        try:
            plain_time, _ = run(rows, inputs, args.density, h, w, "sparsegpt")
            _, plain_error = run(len(sub), inputs, args.density, h, sub, "sparsegpt")
        finally:
            lobs_sparsegpt.sparsegpt = refined
        if obc_rows:
            seconds, obc_error = run(obc_rows, inputs, args.density, h, sub, "exact")
            per_row_cost.append((inputs, seconds / obc_rows))
            obc_time, obc_text, error_text = seconds * rows / obc_rows, f"{obc_rows}", f"{obc_error:.4f}"
            timing = f"{obc_time:.1f}" + ("" if obc_rows == rows else f" (x{rows // obc_rows} rows)")
        else:
            sizes, costs = np.array(per_row_cost, dtype=float).T
            c = float(np.median(costs / sizes**3))
            obc_time, obc_text, error_text = c * inputs**3 * rows, "0", "-"
            timing = f"{obc_time:.0f} (extrapolated)"
        print(
            f"| {rows}x{inputs} | {obc_text} | {timing} | {sgpt_time:.1f} | {obc_time / sgpt_time:.0f}x "
            f"| {plain_time:.1f} | {error_text} | {sgpt_error:.4f} | {plain_error:.4f} "
            f"| {magnitude(sub, h, args.density):.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
