"""Layer-wise Hessians of Gemm, MatMul and Conv layers, streamed from calibration data.

A layer (onnxprune.layers.Layer, its OBS view) computes pre-activations Z = X~ W~^T with X~ = [X, 1]
(the 1 only when the layer has an OBS bias); input_rows lays a batch of the layer's input out as rows
of X: for a Gemm the rows of A' (A^T if transA), for a MatMul every leading index of the input
flattened, for a Conv one row per output position of every sample (im2col, onnxprune.stats.patches),
a separate Hessian per group.

The Hessian shared by all rows of a layer (group) is H = (1/n) sum_x x~ x~^T (L-OBS, Dong et al. 2017),
so that the layer error of a weight change dW is E = 1/(2n) ||X~ dW^T||^2 = 1/2 sum_r dw_r^T H dw_r.
Statistics are summed batch by batch in float64 (the per-batch product X^T X is computed in float32
only when it is large); positions can be subsampled per batch (`max_positions`) to bound the cost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from scipy.linalg import blas as _blas

from ..errors import CalibrationError
from ..feeds import Dataset
from ..graph import GraphIndex
from ..layers import Layer, with_updates
from .collect import CollectSettings, collect
from .linalg import forms, layer_error, mirror_triangle, output_energy, quadratic
from .patches import patches

#: above this many multiply-adds per batch, a layer's X^T X is summed in float32 (else float64)
FLOAT64_PRODUCT_LIMIT = 5e8
DEFAULT_SETTINGS = CollectSettings()


def input_rows(layer: Layer, x: np.ndarray, max_positions: int | None, rng: np.random.Generator) -> list[np.ndarray]:
    """Per group, the rows x (without the 1) this batch of `layer`'s input contributes to the Hessian."""
    if layer.op_type == "Conv":
        return patches(x, layer.attrs, layer.kernel, layer.groups, max_positions, rng)
    if layer.op_type == "Gemm" and layer.feature_axis == 0:  # transA
        x = x.T
    rows = x.reshape(-1, layer.inputs)
    if max_positions is not None and len(rows) > max_positions:
        rows = rows[np.sort(rng.choice(len(rows), max_positions, replace=False))]
    return [rows]


class Moments:
    """Running S = sum x~^T y~ over the rows of every batch (y = x for a Hessian), x~ = [x, 1] when the
    layer has a bias. The x^T y block is accumulated in place by BLAS (syrk for x^T x, one triangle;
    gemm for x^T y) into a float64 sum, or into a float32 one when a batch's product is larger than
    FLOAT64_PRODUCT_LIMIT multiply-adds (the sums of the 1 column stay float64)."""

    def __init__(self, inputs: int, bias: bool, symmetric: bool) -> None:
        self.inputs, self.bias, self.symmetric = inputs, bias, symmetric
        self.product: np.ndarray | None = None
        self.sum_x = np.zeros(inputs)
        self.sum_y = np.zeros(inputs)
        self.rows = 0

    def add(self, x: np.ndarray, y: np.ndarray | None = None) -> None:
        d = self.inputs
        if self.product is None:
            dtype = np.float64 if x.shape[0] * d * d <= FLOAT64_PRODUCT_LIMIT else np.float32
            self.product = np.zeros((d, d), dtype=dtype, order="F")
        dtype = self.product.dtype
        xt = np.ascontiguousarray(x, dtype=dtype).T  # [d, rows], Fortran-ordered: no copy in BLAS
        if self.symmetric:
            syrk = _blas.dsyrk if dtype == np.float64 else _blas.ssyrk
            self.product = syrk(1.0, xt, beta=1.0, c=self.product, trans=0, lower=0, overwrite_c=1)
        else:
            gemm = _blas.dgemm if dtype == np.float64 else _blas.sgemm
            yt = np.ascontiguousarray(y, dtype=dtype).T
            self.product = gemm(1.0, xt, yt, beta=1.0, c=self.product, trans_b=1, overwrite_c=1)
        if self.bias:
            sum_x = x.sum(axis=0, dtype=np.float64)
            self.sum_x += sum_x
            self.sum_y += sum_x if y is None else y.sum(axis=0, dtype=np.float64)
        self.rows += x.shape[0]

    def total(self, out: np.ndarray) -> None:
        """Write S [width, width] (float64) into `out`."""
        d = self.inputs
        if self.product is not None:
            if self.symmetric:  # syrk filled the upper triangle: copy it (C-ordered) as the lower one
                out[:d, :d] = self.product.T
                mirror_triangle(out[:d, :d])
            else:
                out[:d, :d] = self.product
        if self.bias:
            out[:d, d] = self.sum_x
            out[d, :d] = self.sum_y
            out[d, d] = self.rows


class HessianSum:
    """Running S = sum x~ x~^T (per group) and the row count n of one layer's input; H = S / n.

    Called with each batch of the layer's input activation (an accumulator of stats.collect.collect).
    """

    def __init__(self, layer: Layer, max_positions: int | None = None, seed: int = 0) -> None:
        self.layer = layer
        self.max_positions = max_positions
        self.rng = np.random.default_rng(seed)
        self.moments = [Moments(layer.inputs, bool(layer.obs_bias), True) for _ in range(layer.groups)]
        self.count = 0

    def __call__(self, activation: np.ndarray) -> None:
        rows = input_rows(self.layer, activation, self.max_positions, self.rng)
        for moments, x in zip(self.moments, rows, strict=True):
            moments.add(x)
        self.count += len(rows[0])

    def hessian(self) -> np.ndarray:
        """H = S / n, [groups, width, width]: float64, float32 for layers summed in float32."""
        if self.count == 0:
            raise CalibrationError(f"layer '{self.layer.node}': saw no calibration rows; give at least one sample")
        return _divided(self.moments, self.layer.width, self.count, keep_single=True)


def _divided(moments: list[Moments], width: int, count: int, keep_single: bool = False) -> np.ndarray:
    """[groups, width, width]: every group's S / n (the accumulators are freed on the way). float64,
    or float32 when `keep_single` and the products were summed in float32 (a wide layer's H then
    never exists in float64: half the memory traffic of every later pass over it)."""
    single = keep_single and all(m.product is not None and m.product.dtype == np.float32 for m in moments)
    out = np.zeros((len(moments), width, width), dtype=np.float32 if single else np.float64)
    for g, m in enumerate(moments):
        m.total(out[g])
        m.product = None
    out /= count
    return out


@dataclass(frozen=True)
class LayerStats:
    """Second moments of a layer's input. `hessian` H = (1/n) X~^T X~ of the model being pruned;
    with --sequential also `cross` C = (1/n) X~^T X~_ref and `reference` H_ref = (1/n) X~_ref^T X~_ref,
    X~_ref the same rows in the original model (so the target stays the original output)."""

    hessian: np.ndarray
    cross: np.ndarray | None = None
    reference: np.ndarray | None = None

    def target(self, m: np.ndarray, inverse: np.ndarray, row_group: np.ndarray) -> np.ndarray:
        """The dense weights that best reproduce the reference output from the working inputs, as a
        ridge regression centred on the given weights w_r (not on 0):

            w*_r = argmin_v 1/n ||X~ v - X~_ref w_r||^2 + lambda ||v - w_r||^2
                 = w_r + (H + lambda I)^-1 (C - H) w_r

        (`inverse`: the damped (H + lambda I)^-1). Where the working inputs equal the reference ones
        (C = H) the weights stay as they are; the damping only limits how far the refit moves them in
        directions the calibration rows barely span (with fewer rows than inputs, (H + lambda I)^-1 H w
        would shrink those components of w towards 0, an error on every other input). `m` itself
        without a reference."""
        out = np.array(m, dtype=np.float64)
        if self.cross is None:
            return out
        for g in range(len(self.hessian)):
            rows = row_group == g
            shift = (self.cross[g] - self.hessian[g]) @ out[rows].T
            out[rows] += (inverse[g] @ shift).T
        return out

    def error(self, new: np.ndarray, old: np.ndarray, row_group: np.ndarray) -> float:
        """1/(2n) ||X~ W_new^T - X~_ref W_old^T||^2 (X~_ref = X~ without a reference)."""
        if self.cross is None:
            return layer_error(new - old, self.hessian, row_group)
        total = 0.0
        for g in range(len(self.hessian)):
            a, b = new[row_group == g], old[row_group == g]
            total += 0.5 * (
                quadratic(a, self.hessian[g], a)
                - 2.0 * quadratic(a, self.cross[g], b)
                + quadratic(b, self.reference[g], b)
            )
        return max(total, 0.0)

    def energy(self, m: np.ndarray, row_group: np.ndarray) -> float:
        """1/(2n) ||Z||^2 of the reference output."""
        return output_energy(m, self.hessian if self.reference is None else self.reference, row_group)

    def error_and_energy(self, new: np.ndarray, old: np.ndarray, row_group: np.ndarray) -> tuple[float, float]:
        """error(new, old) and energy(old); without a reference both forms come from one pass over H
        (the rows of W_new - W_old and of W_old stacked)."""
        if self.cross is not None:
            return self.error(new, old, row_group), self.energy(old, row_group)
        error = energy = 0.0
        for g in range(len(self.hessian)):
            rows = row_group == g
            delta, base = new[rows] - old[rows], old[rows]
            both = forms(np.concatenate([delta, base]), self.hessian[g])
            error += 0.5 * float(both[: len(delta)].sum())
            energy += 0.5 * float(both[len(delta) :].sum())
        return error, energy


class PairedSum:
    """H, C and H_ref of one layer from the working and the reference activation of each batch
    (the same positions sampled in both)."""

    def __init__(self, layer: Layer, max_positions: int | None = None, seed: int = 0) -> None:
        self.layer = layer
        self.max_positions = max_positions
        self.rng = np.random.default_rng(seed)
        kinds = {"hessian": True, "cross": False, "reference": True}
        self.sums = {
            k: [Moments(layer.inputs, bool(layer.obs_bias), sym) for _ in range(layer.groups)]
            for k, sym in kinds.items()
        }
        self.count = 0
        self.pending: np.ndarray | None = None

    def working(self, activation: np.ndarray) -> None:
        self.pending = activation

    def reference_batch(self, activation: np.ndarray) -> None:
        state = self.rng.bit_generator.state
        mine = input_rows(self.layer, self.pending, self.max_positions, self.rng)
        self.rng.bit_generator.state = state  # the same positions in the reference
        theirs = input_rows(self.layer, activation, self.max_positions, self.rng)
        for g, (x, y) in enumerate(zip(mine, theirs, strict=True)):
            self.sums["hessian"][g].add(x)
            self.sums["cross"][g].add(x, y)
            self.sums["reference"][g].add(y)
        self.count += len(mine[0])
        self.pending = None

    def stats(self) -> LayerStats:
        if self.count == 0:
            raise CalibrationError(f"layer '{self.layer.node}': saw no calibration rows; give at least one sample")
        return LayerStats(**{k: _divided(v, self.layer.width, self.count) for k, v in self.sums.items()})


#: prefix of the reference model's tensors inside a paired model
REFERENCE_PREFIX = "onnxprune_reference/"


def paired_model(working: onnx.ModelProto, reference: onnx.ModelProto) -> onnx.ModelProto:
    """One graph computing both models on the same inputs: `working` as it is, plus `reference` with
    every tensor except the graph inputs renamed REFERENCE_PREFIX + name (so one session runs both)."""
    inputs = {i.name for i in reference.graph.input}

    def rename(name: str) -> str:
        return name if not name or name in inputs else REFERENCE_PREFIX + name

    paired = onnx.ModelProto()
    paired.CopyFrom(working)
    for node in reference.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = REFERENCE_PREFIX + node.name
        copy.input[:] = [rename(n) for n in node.input]
        copy.output[:] = [rename(n) for n in node.output]
        paired.graph.node.append(copy)
    for tensor in reference.graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = rename(tensor.name)
        paired.graph.initializer.append(copy)
    return paired


def collect_stats(
    model: onnx.ModelProto,
    layers: Iterable[Layer],
    data: Dataset,
    reference: onnx.ModelProto | None = None,
    settings: CollectSettings = DEFAULT_SETTINGS,
    description: str = "hessians",
) -> dict[str, LayerStats]:
    """One onnxruntime pass over `data`: the input statistics of every layer, keyed by node name.

    With a `reference` model (same graph, other weights), H is taken on `model` and C, H_ref pair
    its rows with the reference's (both run in one session on the same batches)."""
    layers = list(layers)
    max_positions, seed = settings.max_positions, settings.seed
    accumulators: dict[str, list] = {}
    if reference is None:
        sums = {layer.node: HessianSum(layer, max_positions, seed + i) for i, layer in enumerate(layers)}
        for layer in layers:
            accumulators.setdefault(layer.input, []).append(sums[layer.node])
        run_model = model
    else:
        sums = {layer.node: PairedSum(layer, max_positions, seed + i) for i, layer in enumerate(layers)}
        for layer in layers:  # each batch: every working tensor first, then the reference ones
            accumulators.setdefault(layer.input, []).append(sums[layer.node].working)
        inputs = {i.name for i in model.graph.input}
        for layer in layers:
            name = layer.input if layer.input in inputs else REFERENCE_PREFIX + layer.input
            accumulators.setdefault(name, []).append(sums[layer.node].reference_batch)
        run_model = paired_model(model, reference)
    if not sums:
        return {}
    collect(
        run_model,
        data,
        accumulators,
        settings.batch_size,
        settings.providers,
        settings.progress,
        description,
        settings.optimize,
    )
    if reference is None:
        return {name: LayerStats(s.hessian()) for name, s in sums.items()}
    return {name: s.stats() for name, s in sums.items()}


def collect_on_updated(
    model: onnx.ModelProto,
    layers: list[Layer],
    data: Dataset,
    updates: dict[str, np.ndarray],
    settings: CollectSettings,
    description: str,
) -> dict[str, LayerStats]:
    """Statistics of `layers` on `model` with `updates` applied; once there are updates, paired with
    the original model's (the target of --sequential)."""
    working = with_updates(model, updates) if updates else model
    return collect_stats(working, layers, data, model if updates else None, settings, description)


def downstream(index: GraphIndex, nodes: set[str]) -> set[str]:
    """The tensors whose values depend on the outputs of the nodes named `nodes` (those outputs included)."""
    moving: set[str] = set()
    for node in index.nodes:
        if node.name in nodes or any(i in moving for i in node.input if i):
            moving.update(node.output)
    return moving


def layer_waves(index: GraphIndex, layers: list[Layer]) -> list[list[Layer]]:
    """Layers in waves: a layer's input depends only on layers of earlier waves (depth = 1 + the
    deepest layer upstream of its input)."""
    by_node = {layer.node: layer for layer in layers}
    up: dict[str, int] = {}
    depth: dict[str, int] = {}
    for node in index.nodes:
        level = max((up.get(i, 0) for i in node.input if i), default=0)
        if node.name in by_node:
            depth[node.name] = 1 + up.get(by_node[node.name].input, 0)
            level = max(level, depth[node.name])
        for out in node.output:
            up[out] = level
    waves: dict[int, list[Layer]] = {}
    for layer in layers:
        waves.setdefault(depth[layer.node], []).append(layer)
    return [waves[k] for k in sorted(waves)]
