"""Streamed activity statistics of layer inputs, for relief and Wanda: one onnxruntime pass, no
activation kept beyond one batch.

Dense layer (Gemm, MatMul) reading x as rows n (samples x tokens) of I features:
    abs_mean_i = mean_n |x_ni|                    (relief numerators: |w_ji| abs_mean_i)
    norm_i     = sqrt(sum_n x_ni^2)               (Wanda: |w_ji| ||x_i||_2)
Conv reading x [N, C, *spatial] with weight K [O, C/g, k...]:
    norm[g, i, k] = sqrt(sum over samples and output positions of patch[., i, k]^2)
                    (the im2col column norms; Wanda's ||x|| for weight K[j, i, k])
    R[j, i]       = mean_n || |K_ji| * |x_ni| ||_F
                    (relief: 2-D convolution of the absolute input channel with the absolute kernel,
                    Frobenius norm over the output positions; pads, strides and dilations as the Conv)
Signed means of the same columns (dense: mean_n x_ni; Conv: im2col column means, padding zeros
included) give the mean contribution of any weight entry: mean over rows of W[j, i, k] x[i, k].
Ranges: min and max over the rows of every input position (dense: per feature; Conv: per channel and
spatial position); equal bounds mean the position is constant on the data, 0 and 0 that it never fires.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..feeds import Dataset
from ..graph import GraphIndex
from ..layers import Layer, conv_geometry
from .collect import CollectSettings, collect
from .patches import patches

#: patch matrices and relief numerators hold at most about this many values per chunk of samples
_CHUNK_VALUES = 1 << 22


@dataclass(frozen=True)
class InputStats:
    """What the data says about one layer's input (None where not asked for)."""

    rows: int
    abs_mean: np.ndarray | None = None  # dense: [I]
    norms: np.ndarray | None = None  # dense: [I]; Conv: [groups, C/g, K]
    kernel_relief: np.ndarray | None = None  # Conv: [O, C/g]
    positions: int = 1  # Conv: output positions per sample
    means: np.ndarray | None = None  # signed mean of what each weight entry multiplies; shaped as norms

    def column_norms(self, layer: Layer) -> np.ndarray:
        """||x|| for every weight entry, broadcast to the layer's [O, I, K] matrix."""
        return _per_entry(self.norms, layer)

    def column_means(self, layer: Layer) -> np.ndarray:
        """mean_n x for every weight entry (an im2col column mean for a Conv), as [O, I, K]."""
        return _per_entry(self.means, layer)


def _per_entry(values: np.ndarray, layer: Layer) -> np.ndarray:
    return values[layer.output_group] if layer.is_conv else values[None, :, None]


@dataclass(frozen=True)
class Range:
    """Per-position minimum and maximum of a layer input over the calibration rows."""

    low: np.ndarray
    high: np.ndarray


class _Dense:
    def __init__(self, axis: int) -> None:
        self.axis, self.rows, self.sum, self.abs_sum, self.sq_sum = axis, 0, 0.0, 0.0, 0.0

    def __call__(self, x: np.ndarray) -> None:
        rows = _rows(x, self.axis)
        self.rows += rows.shape[0]
        self.sum = self.sum + rows.sum(0)
        self.abs_sum = self.abs_sum + np.abs(rows).sum(0)
        self.sq_sum = self.sq_sum + np.square(rows).sum(0)

    def result(self) -> InputStats:
        rows = max(self.rows, 1)
        norms = np.sqrt(np.asarray(self.sq_sum))
        return InputStats(self.rows, np.asarray(self.abs_sum) / rows, norms, means=np.asarray(self.sum) / rows)


class _Conv:
    def __init__(self, layer: Layer, weight: np.ndarray | None) -> None:
        self.layer = layer
        self.kernel_abs = None if weight is None else np.abs(layer.oik(np.asarray(weight, dtype=np.float64)))
        self.samples, self.positions, self.sum, self.sq_sum = 0, 1, 0.0, 0.0
        self.relief = None if weight is None else np.zeros(self.kernel_abs.shape[:2])

    def __call__(self, x: np.ndarray) -> None:
        """Add a batch, a few samples at a time so that the patch matrices stay small."""
        per_sample = _positions(self.layer, x.shape[2:]) * x.shape[1] * int(np.prod(self.layer.kernel))
        step = max(1, _CHUNK_VALUES // max(1, per_sample))
        for start in range(0, len(x), step):
            self._add(x[start : start + step])

    def _add(self, x: np.ndarray) -> None:
        layer = self.layer
        mats = patches(x, layer.attrs, layer.kernel, layer.groups)
        n, per_group = x.shape[0], x.shape[1] // layer.groups
        kernel = int(np.prod(layer.kernel))
        self.samples += n
        self.positions = mats[0].shape[0] // max(n, 1)
        shape = (layer.groups, per_group, kernel)
        self.sum = self.sum + np.stack([m.sum(0, dtype=np.float64) for m in mats]).reshape(shape)
        self.sq_sum = self.sq_sum + np.stack([np.square(m, dtype=np.float64).sum(0) for m in mats]).reshape(shape)
        if self.relief is not None:
            for g, mat in enumerate(mats):
                self._relief(g, np.abs(mat).reshape(n, -1, per_group, kernel))

    def _relief(self, g: int, cols: np.ndarray) -> None:
        """R[j, i] += sum_n sqrt(sum_p (sum_k |x[n, p, i, k]| |K[j, i, k]|)^2) for the outputs j of group g."""
        outs = np.flatnonzero(self.layer.output_group == g)
        weight = self.kernel_abs[outs]  # [Og, C/g, K]
        n, positions = cols.shape[:2]
        step = max(1, _CHUNK_VALUES // max(1, positions * len(outs)))
        for i in range(cols.shape[2]):
            for start in range(0, n, step):
                conv = cols[start : start + step, :, i, :].astype(np.float64) @ weight[:, i, :].T  # [n, P, Og]
                self.relief[outs, i] += np.sqrt(np.square(conv).sum(1)).sum(0)

    def result(self) -> InputStats:
        samples = max(self.samples, 1)
        relief = None if self.relief is None else self.relief / samples
        means = np.asarray(self.sum) / (samples * self.positions)
        return InputStats(self.samples, None, np.sqrt(np.asarray(self.sq_sum)), relief, self.positions, means)


class _Range:
    def __init__(self, axis: int | None) -> None:
        self.axis, self.low, self.high = axis, None, None

    def __call__(self, x: np.ndarray) -> None:
        rows = x if self.axis is None else _rows(x, self.axis)
        low, high = rows.min(0), rows.max(0)
        self.low = low if self.low is None else np.minimum(self.low, low)
        self.high = high if self.high is None else np.maximum(self.high, high)

    def result(self) -> Range:
        return Range(np.asarray(self.low, dtype=np.float64), np.asarray(self.high, dtype=np.float64))


def _positions(layer: Layer, spatial: tuple[int, ...]) -> int:
    """Output positions of a Conv on an input of this spatial shape."""
    begin, end, strides, dilations = conv_geometry(layer.attrs, spatial, layer.kernel)
    sizes = zip(spatial, layer.kernel, begin, end, strides, dilations, strict=True)
    return int(np.prod([(n + b + e - (k - 1) * d - 1) // s + 1 for n, k, b, e, s, d in sizes]))


def _rows(x: np.ndarray, axis: int) -> np.ndarray:
    """x as [rows, features] with the features of `axis` last."""
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis]).astype(np.float64, copy=False)


def layer_statistics(
    model: onnx.ModelProto,
    data: Dataset,
    layers: list[Layer],
    settings: CollectSettings,
    relief_weights: GraphIndex | None = None,
) -> dict[str, InputStats]:
    """Statistics of every layer's input in one pass of `data` through `model`.

    With `relief_weights`, the Conv relief numerators are added, computed with each Conv's weight as
    that index holds it.
    """
    accumulators = {}
    for layer in layers:
        if layer.is_conv:
            weight = relief_weights.constant(layer.weight) if relief_weights is not None else None
            accumulators[layer.node] = _Conv(layer, weight)
        else:
            accumulators[layer.node] = _Dense(layer.feature_axis)
    by_tensor: dict[str, list] = {}
    for layer in layers:
        by_tensor.setdefault(layer.input, []).append(accumulators[layer.node])
    _collect(model, data, by_tensor, settings, "activity")
    return {node: acc.result() for node, acc in accumulators.items()}


def input_ranges(
    model: onnx.ModelProto, data: Dataset, reads: dict[str, int | None], settings: CollectSettings
) -> dict[str, Range]:
    """Per-position min and max of each tensor in `reads` (name -> feature axis, or None for a Conv
    input: min/max over samples only, giving [C, *spatial])."""
    accumulators = {name: _Range(axis) for name, axis in reads.items()}
    _collect(model, data, {name: [acc] for name, acc in accumulators.items()}, settings, "ranges")
    return {name: acc.result() for name, acc in accumulators.items()}


def _collect(model, data: Dataset, accumulators: dict[str, list], settings: CollectSettings, description: str) -> None:
    if not accumulators:
        return
    collect(
        model,
        data,
        accumulators,
        batch_size=settings.batch_size,
        providers=settings.providers,
        progress=settings.progress,
        description=description,
        optimize=settings.optimize,
    )
