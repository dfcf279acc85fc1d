"""Neural network relief (NNrelief; Dekhovich, Tax, Sluiter & Bessa, arXiv 2109.10795).

Connection importance from the activity it carries on calibration data, one neuron at a time:

- Gemm/MatMul neuron j with inputs x_i:   s_ij = mean_n |w_ji x_ni| / S_j,   bias: |b_j| / S_j
- Conv filter j, kernel K_ji of input channel i:
      s_ij = mean_n || |K_ji| * |x_ni| ||_F / S_j,   bias: |b_j| sqrt(Hout Wout) / S_j
  (* the 2-D convolution with the layer's pads/strides/dilations, ||.||_F over the output positions)
- S_j = sum of neuron j's numerators, bias included.

Here w and b are the weight and bias as they act on the pre-activation: the Gemm alpha and beta, and a
BatchNormalization right after the layer (scale s_j, shift t_j) give w -> alpha s_j w, b -> s_j (beta C_j
- mean_j) + t_j. Per neuron, the scores are sorted in decreasing order and the shortest prefix whose sum
reaches alpha is kept (every score equal to the last one kept is kept too: ties at the cut stay); the
rest are zeroed: single weights of a dense layer, whole kh x kw kernels of a Conv, and the bias (set
to 0; with a BatchNormalization its beta becomes s_j mean_j). --alpha-fc (default 0.95) applies to
Gemm/MatMul, --alpha-conv (default 0.9) to Conv; --alpha sets both.

Then neurons go (methods/neurons.py): channels that never fire on the calibration data, channels left
with no outgoing connections, and channels left with no incoming connections (their constant activation
folded into the consumers' biases). --iterations K repeats the whole step on the pruned model with
fresh statistics (no retraining in between; the paper retrains). The masks are zeros in full-size
weights: --sparse-storage stores them sparsely. Not implemented: the paper's residual rule (drop a
summed branch that carries less than (1 - alpha) / alpha of the other branch's activity).

--relief-compensate (not in the paper, which retrains instead): the mean contribution of the removed
connections over the calibration rows, alpha sum_{removed (i,k)} W[j, i, k] mean(x[i, k]) (im2col column
means for a Conv), is added to the layer's shift (its bias, or the following BatchNorm's mean), so every
output keeps its mean pre-activation; biases are then never zeroed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import OptionError
from ..layers import Layer, Workspace, add_to_shift, affine, masking_layers, select, with_updates, zero_shift
from ..plan import PruningPlan
from ..progress import bar
from ..stats import InputStats
from .base import Method, MethodContext
from .neurons import Removal, nonzero_params, remove_neurons
from .options import MethodOption

DEFAULT_ALPHA_FC, DEFAULT_ALPHA_CONV = 0.95, 0.9
#: relative tolerance of "the prefix sum reaches alpha" (float sums in another order differ slightly)
_REACH_TOLERANCE = 1e-9


def alphas(settings) -> tuple[float, float]:
    """(alpha_fc, alpha_conv) of relief's typed `settings`: the specific options, else --alpha, else the
    paper's defaults."""
    return (
        _alpha(settings.alpha_fc, "--alpha-fc", settings.alpha, DEFAULT_ALPHA_FC),
        _alpha(settings.alpha_conv, "--alpha-conv", settings.alpha, DEFAULT_ALPHA_CONV),
    )


def _alpha(value, flag: str, both, default: float) -> float:
    if value is None:
        value, flag = (default, flag) if both is None else (both, "--alpha")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{flag} {value!r}: not a number; give a fraction in (0, 1], e.g. 0.95") from None
    if not 0.0 < value <= 1.0:
        raise OptionError(
            f"{flag} {value}: must be in (0, 1]; 0.95 keeps the connections carrying 95% of each neuron's activity"
        )
    return value


def relief_scores(layer: Layer, weight: np.ndarray, stats: InputStats, scale, shift) -> tuple[np.ndarray, np.ndarray]:
    """Numerators of s_ij ([O, I]) and of the bias score ([O]), before the division by S_j."""
    scale = np.abs(np.asarray(scale, dtype=np.float64))
    shift = np.abs(np.asarray(shift, dtype=np.float64))
    if layer.is_conv:
        return scale[:, None] * stats.kernel_relief, shift * np.sqrt(stats.positions)
    matrix = np.abs(layer.oik(np.asarray(weight, dtype=np.float64))[:, :, 0])
    return scale[:, None] * matrix * stats.abs_mean[None, :], shift


def alpha_keep(scores: np.ndarray, bias: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row j of [scores | bias]: keep the shortest prefix of the scores sorted in decreasing order
    whose sum reaches alpha * S_j, plus every score tied with the last one kept; zero scores never stay.

    Returns (keep [O, I], keep_bias [O]) as booleans.
    """
    full = np.concatenate([np.asarray(scores, np.float64), np.asarray(bias, np.float64)[:, None]], axis=1)
    total = full.sum(1)
    ordered = -np.sort(-full, axis=1)
    reached = np.cumsum(ordered, axis=1) >= (alpha - _REACH_TOLERANCE) * total[:, None]
    cut = ordered[np.arange(len(full)), np.argmax(reached, axis=1)]
    keep = (full >= cut[:, None]) & (full > 0)
    return keep[:, :-1], keep[:, -1]


def _mask_layer(layer: Layer, space: Workspace, stats: InputStats, alpha: float, compensate: bool) -> dict:
    weight = space.get(layer.weight)
    scale, shift = affine(layer, space)
    scores, bias = relief_scores(layer, weight, stats, scale, shift)
    keep, keep_bias = alpha_keep(scores, bias, alpha)
    if compensate or not layer.tail.removable:
        keep_bias[:] = True
    matrix = layer.oik(weight)  # a view: the mask lands in the workspace
    removed = matrix * ~keep[:, :, None]
    matrix -= removed
    drop_bias = ~keep_bias & (bias > 0)
    zero_shift(layer, space, drop_bias)
    unit = "kernels" if layer.is_conv else "weights"
    row = {"node": layer.node, "alpha": alpha, unit: int(keep.size), "kept": int(keep.sum())}
    row["biases_zeroed"] = int(drop_bias.sum())
    if compensate:
        delta = layer.alpha * (removed * stats.column_means(layer)).sum(axis=(1, 2))
        failure = add_to_shift(layer, space, delta) if np.any(delta) else None
        row["compensated"] = failure or True
    return row


def _decide(ctx: MethodContext) -> PruningPlan:
    alpha_fc, alpha_conv = alphas(ctx.settings)
    views = masking_layers(ctx.index)
    targets = select(views.values(), ctx.options.include, ctx.options.exclude)
    space = Workspace(ctx.index)
    stats = ctx.stats.activity(ctx.model, targets, relief_weights=ctx.index)
    compensate = ctx.settings.relief_compensate
    rows = [
        _mask_layer(t, space, stats[t.node], alpha_conv if t.is_conv else alpha_fc, compensate)
        for t in bar(targets, desc="relief layers", unit="layer")
    ]
    masked = with_updates(ctx.model, space.changed())
    removal = remove_neurons(ctx, space, masked, views)
    plan = PruningPlan(frozenset(removal.removed), space.changed(), "relief")
    return replace(plan, notes=_notes(ctx, plan, removal, rows, (alpha_fc, alpha_conv)))


def _notes(ctx: MethodContext, plan: PruningPlan, removal: Removal, rows: list[dict], alpha) -> dict:
    notes: dict = {g.id: removal.counts(g.channels) for g in ctx.eligible_groups()}
    notes = {k: v for k, v in notes.items() if v}
    notes["alpha_fc"], notes["alpha_conv"] = alpha
    notes["layers"] = rows
    notes["neurons"] = removal.counts(range(ctx.analysis.num_channels))
    if removal.kept:
        notes["kept_idle"] = sorted(set(removal.kept.values()))[:10]
    notes["nonzero_params_after"] = nonzero_params(ctx.index, ctx.analysis, plan)
    return notes


OPTIONS = (
    MethodOption("--alpha", "alpha", None, "relief: activity share kept per neuron, Gemm/MatMul and Conv", type=float),
    MethodOption("--alpha-fc", "alpha_fc", None, "relief: alpha of Gemm/MatMul neurons [0.95, or --alpha]", type=float),
    MethodOption("--alpha-conv", "alpha_conv", None, "relief: alpha of Conv filters [0.9, or --alpha]", type=float),
    MethodOption(
        "--relief-compensate/--no-relief-compensate",
        "relief_compensate",
        False,
        "relief: fold the mean contribution of removed connections into the bias (not in the paper)",
        is_flag=True,
    ),
)
RELIEF = Method(
    "relief",
    _decide,
    statistics=("activity", "ranges"),
    description="NNrelief: keep each neuron's connections carrying alpha of its input activity, remove idle neurons",
    options=OPTIONS,
    own_amount=True,  # --alpha, not --ratio: in a chain with --target it runs as it is
)
EXPORTED = (RELIEF,)
