"""Layer-wise Hessians of Gemm, MatMul and Conv layers, streamed from calibration data.

A *layer* computes pre-activations Z = X~ W~^T with X~ = [X, 1] (the 1 only when the layer has a bias)
and W~ = [W, b], W the weight as a matrix [outputs, inputs]:

- Gemm  Y = alpha A' B' + beta C: W = alpha B'^T, b = beta C, rows of X = rows of A' (A^T if transA);
- MatMul Y = X W_onnx (W_onnx [K, N] constant): W = W_onnx^T; a following Add of a constant [N]
  is its bias; rows of X = every leading index of the input flattened;
- Conv with weight [O, C/g, k...]: W = weight.reshape(O, -1), one row of X per output position of
  every sample (im2col patches, onnxprune.patches), a separate Hessian per group g.

The Hessian shared by all rows of a layer (group) is H = (1/n) sum_x x~ x~^T (L-OBS, Dong et al. 2017),
so that the layer error of a weight change dW is E = 1/(2n) ||X~ dW^T||^2 = 1/2 sum_r dw_r^T H dw_r.
Statistics are summed batch by batch in float64 (the per-batch product X^T X is computed in float32
only when it is large); positions can be subsampled per batch (`max_positions`) to bound the cost.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from scipy.linalg import blas as _blas
from scipy.linalg import lapack as _lapack

from . import calibration
from .errors import CalibrationError
from .feeds import Dataset
from .graph import GraphIndex, attributes
from .patches import patches

#: above this many multiply-adds per batch, a layer's X^T X is summed in float32 (else float64)
FLOAT64_PRODUCT_LIMIT = 5e8
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
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


@dataclass(frozen=True)
class Layer:
    """One weight matrix of the model, seen as Z = X~ W~^T (see the module docstring)."""

    node: str
    op_type: str
    weight: str
    input: str
    output: str
    bias: str | None
    weight_shape: tuple[int, ...]
    bias_shape: tuple[int, ...] = ()
    groups: int = 1
    kernel: tuple[int, ...] = ()
    conv: dict = field(default_factory=dict, compare=False, hash=False)
    trans_a: bool = False
    trans_b: bool = False
    alpha: float = 1.0
    beta: float = 1.0

    @property
    def rows(self) -> int:
        """Output neurons O."""
        if self.op_type == "Conv":
            return self.weight_shape[0]
        if self.op_type == "Gemm" and self.trans_b:
            return self.weight_shape[0]
        return self.weight_shape[1]

    @property
    def inputs(self) -> int:
        """Columns of W per group: C/g * prod(kernel) for Conv, K for Gemm/MatMul."""
        if self.op_type == "Conv":
            return int(np.prod(self.weight_shape[1:]))
        return self.weight_shape[1] if self.op_type == "Gemm" and self.trans_b else self.weight_shape[0]

    @property
    def width(self) -> int:
        """Columns of W~ (the bias column last)."""
        return self.inputs + (1 if self.bias else 0)

    @property
    def row_group(self) -> np.ndarray:
        """Hessian index of every output row (Conv groups; 0 for everything else)."""
        return np.arange(self.rows) // (self.rows // self.groups)

    def columns(self, positions: np.ndarray) -> np.ndarray:
        """Columns of W~ that read the given positions of the weight's input axis."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.op_type != "Conv":
            return positions
        taps = int(np.prod(self.kernel))
        return (positions[:, None] * taps + np.arange(taps)[None, :]).reshape(-1)

    # ---- W~ <-> initializers ------------------------------------------------------------------
    def matrix(self, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """W~ = [W, b] in float64, [O, width]."""
        w = np.asarray(weight, dtype=np.float64)
        if self.op_type == "Conv":
            m = w.reshape(self.rows, -1)
        elif self.op_type == "Gemm":
            m = self.alpha * (w if self.trans_b else w.T)
        else:
            m = w.T
        if not self.bias:
            return np.array(m)
        b = np.asarray(bias, dtype=np.float64).reshape(-1) * self.beta
        return np.concatenate([m, b[:, None]], axis=1)

    def unmatrix(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(weight, bias) at their ONNX shapes (float64) from W~."""
        w = m[:, : self.inputs]
        if self.op_type == "Conv":
            weight = w.reshape(self.weight_shape)
        elif self.op_type == "Gemm":
            weight = (w if self.trans_b else w.T) / self.alpha
        else:
            weight = w.T
        bias = None
        if self.bias:
            bias = (m[:, -1] / self.beta).reshape(self.bias_shape)
        return np.ascontiguousarray(weight), bias

    # ---- activations -> rows of X ------------------------------------------------------------
    def input_rows(self, x: np.ndarray, max_positions: int | None, rng: np.random.Generator) -> list[np.ndarray]:
        """Per group, the rows x (without the 1) this batch contributes to the Hessian."""
        if self.op_type == "Conv":
            return patches(x, self.conv, self.kernel, self.groups, max_positions, rng)
        if self.op_type == "Gemm" and self.trans_a:
            x = x.T
        rows = x.reshape(-1, self.inputs)
        if max_positions is not None and len(rows) > max_positions:
            rows = rows[np.sort(rng.choice(len(rows), max_positions, replace=False))]
        return [rows]


# ---- finding layers ----------------------------------------------------------------------------
def find_layers(index: GraphIndex) -> tuple[dict[str, Layer], dict[str, str]]:
    """Every Gemm/MatMul/Conv with a constant float weight, keyed by node name, and the reasons others
    of these op types are skipped."""
    layers, skipped = {}, {}
    for node in index.nodes:
        builder = _BUILDERS.get(node.op_type)
        if builder is None:
            continue
        reason = _unusable_weight(index, node)
        layer = None if reason else builder(index, node)
        if isinstance(layer, str):
            reason = layer
        if reason:
            skipped[node.name] = reason
        else:
            layers[node.name] = layer
    return layers, skipped


def select_layers(layers: dict[str, Layer], include: str | None, exclude: str | None) -> list[Layer]:
    """Layers whose node name matches `include` and not `exclude` (regular expressions)."""
    chosen = []
    for name, layer in layers.items():
        if include and not re.search(include, name):
            continue
        if exclude and re.search(exclude, name):
            continue
        chosen.append(layer)
    return chosen


def _unusable_weight(index: GraphIndex, node) -> str | None:
    name = node.input[1] if len(node.input) > 1 else ""
    if not index.is_constant(name):
        return f"weight '{name}' is not a constant"
    if index.dtypes.get(name) not in _FLOATS:
        return f"weight '{name}' is not a float tensor"
    if len(index.consumers.get(name, [])) != 1:
        return f"weight '{name}' is shared by several nodes"
    if index.shape(node.input[0]) is None:
        return f"the shape of input '{node.input[0]}' is unknown"
    return None


def _own_bias(index: GraphIndex, name: str, size: int) -> bool:
    """`name` is a constant of `size` elements used by this layer only."""
    return (
        bool(name)
        and index.is_constant(name)
        and int(np.prod(index.shape(name) or (0,))) == size
        and len(index.consumers.get(name, [])) == 1
        and index.dtypes.get(name) in _FLOATS
    )


def _conv_layer(index: GraphIndex, node) -> Layer | str:
    shape = tuple(index.shape(node.input[1]))
    attrs = attributes(node)
    bias = node.input[2] if len(node.input) > 2 else ""
    bias = bias if _own_bias(index, bias, shape[0]) else None  # else: a fixed offset, not compensated
    conv = {k: attrs[k] for k in ("strides", "pads", "dilations", "auto_pad") if k in attrs}
    return Layer(
        node.name,
        "Conv",
        node.input[1],
        node.input[0],
        node.output[0],
        bias,
        shape,
        (shape[0],) if bias else (),
        int(attrs.get("group", 1)),
        shape[2:],
        conv,
    )


def _gemm_layer(index: GraphIndex, node) -> Layer | str:
    shape = tuple(index.shape(node.input[1]))
    attrs = attributes(node)
    trans_b = bool(attrs.get("transB", 0))
    out = shape[0] if trans_b else shape[1]
    beta = float(attrs.get("beta", 1.0))
    bias = node.input[2] if len(node.input) > 2 else ""
    bias = bias if beta != 0.0 and _own_bias(index, bias, out) else None
    alpha = float(attrs.get("alpha", 1.0))
    if alpha == 0.0:
        return "alpha is 0: the weight is unused"
    return Layer(
        node.name,
        "Gemm",
        node.input[1],
        node.input[0],
        node.output[0],
        bias,
        shape,
        tuple(index.shape(bias)) if bias else (),
        trans_a=bool(attrs.get("transA", 0)),
        trans_b=trans_b,
        alpha=alpha,
        beta=beta,
    )


def _matmul_layer(index: GraphIndex, node) -> Layer | str:
    shape = tuple(index.shape(node.input[1]))
    if len(shape) != 2:
        return f"weight of rank {len(shape)} (batched MatMul) is not a layer"
    output, bias = node.output[0], None
    users = index.consumers.get(output, [])
    if len(users) == 1 and output not in index.output_names:
        add = index.nodes[users[0][0]]
        other = add.input[1 - users[0][1]] if add.op_type == "Add" and len(add.input) == 2 else ""
        bias_shape = index.shape(other) or ()
        if other and _own_bias(index, other, shape[1]) and (len(bias_shape) == 0 or bias_shape[-1] == shape[1]):
            output, bias = add.output[0], other
    return Layer(
        node.name,
        "MatMul",
        node.input[1],
        node.input[0],
        output,
        bias,
        shape,
        tuple(index.shape(bias)) if bias else (),
    )


_BUILDERS = {"Conv": _conv_layer, "Gemm": _gemm_layer, "MatMul": _matmul_layer}


# ---- streaming accumulation --------------------------------------------------------------------
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

    Called with each batch of the layer's input activation (an accumulator of calibration.collect).
    """

    def __init__(self, layer: Layer, max_positions: int | None = None, seed: int = 0) -> None:
        self.layer = layer
        self.max_positions = max_positions
        self.rng = np.random.default_rng(seed)
        self.moments = [Moments(layer.inputs, bool(layer.bias), True) for _ in range(layer.groups)]
        self.count = 0

    def __call__(self, activation: np.ndarray) -> None:
        rows = self.layer.input_rows(activation, self.max_positions, self.rng)
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
        """The dense weights that best reproduce the reference output from the working inputs:
        w*_r = H^-1 C w_r (H^-1 of the damped H); `m` itself without a reference."""
        if self.cross is None:
            return np.array(m, dtype=np.float64)
        out = np.empty(m.shape)
        for g in range(len(self.hessian)):
            rows = row_group == g
            out[rows] = (inverse[g] @ (self.cross[g] @ m[rows].T)).T
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
            k: [Moments(layer.inputs, bool(layer.bias), sym) for _ in range(layer.groups)] for k, sym in kinds.items()
        }
        self.count = 0
        self.pending: np.ndarray | None = None

    def working(self, activation: np.ndarray) -> None:
        self.pending = activation

    def reference_batch(self, activation: np.ndarray) -> None:
        state = self.rng.bit_generator.state
        mine = self.layer.input_rows(self.pending, self.max_positions, self.rng)
        self.rng.bit_generator.state = state  # the same positions in the reference
        theirs = self.layer.input_rows(activation, self.max_positions, self.rng)
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
    batch_size: int = 32,
    providers: Iterable[str] = ("CPUExecutionProvider",),
    progress: bool = False,
    max_positions: int | None = None,
    seed: int = 0,
    description: str = "hessians",
) -> dict[str, LayerStats]:
    """One onnxruntime pass over `data`: the input statistics of every layer, keyed by node name.

    With a `reference` model (same graph, other weights), H is taken on `model` and C, H_ref pair
    its rows with the reference's (both run in one session on the same batches)."""
    layers = list(layers)
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
    calibration.collect(run_model, data, accumulators, batch_size, providers, progress, description)
    if reference is None:
        return {name: LayerStats(s.hessian()) for name, s in sums.items()}
    return {name: s.stats() for name, s in sums.items()}


def collect_hessians(model: onnx.ModelProto, layers: Iterable[Layer], data: Dataset, **kwargs) -> dict[str, np.ndarray]:
    """H of every layer's input on `model`, keyed by node name (collect_stats without a reference)."""
    return {name: stats.hessian for name, stats in collect_stats(model, layers, data, **kwargs).items()}


# ---- damping, dead inputs, inverse -------------------------------------------------------------
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
