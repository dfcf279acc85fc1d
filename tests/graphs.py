"""Tiny ONNX graphs for tests, built with onnx.helper, and the helpers that check them.

`Builder` collects nodes, initializers and inputs; `model()` runs ONNX shape inference to type the
graph outputs (so tests never spell output shapes) and returns an IR-8 model at the chosen opset.
`summary()` reduces an Analysis to plain values a golden test compares with `==`; `shrink_matches_mask`
is the oracle of DESIGN.md section 5 (masked original vs physically shrunk model, in onnxruntime).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxprune import runtime
from onnxprune.analysis import Analysis, analyze
from onnxprune.graph import GraphIndex
from onnxprune.io import checkable, make_tensor, tensor_array
from onnxprune.passes import CHECK, CLEANUP, PassManager, shrink_pass
from onnxprune.plan import PruningPlan, empties
from onnxprune.validate import random_feeds

FLOAT = TensorProto.FLOAT


class Builder:
    """Collects a graph; every helper returns the name of the tensor it creates."""

    def __init__(self, opset: int = 17, seed: int = 0, dtype=np.float32) -> None:
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[tuple[str, int, list | None]] = []
        self.extra_opsets: list[onnx.OperatorSetIdProto] = []
        self._count = 0

    # ---- naming ------------------------------------------------------------------------------
    def fresh(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    # ---- graph pieces ------------------------------------------------------------------------
    def input(self, name: str, shape, elem_type: int | None = None) -> str:
        elem = elem_type if elem_type is not None else helper.np_dtype_to_tensor_dtype(self.dtype)
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def const(self, value, name: str | None = None, dtype=None) -> str:
        """An initializer holding `value` (float arrays take the builder's dtype unless `dtype`)."""
        array = np.asarray(value)
        if dtype is not None:
            array = array.astype(dtype)
        elif array.dtype.kind == "f":
            array = array.astype(self.dtype)
        name = name or self.fresh("c")
        self.inits.append(make_tensor(array, name))
        return name

    def ints(self, values, name: str | None = None) -> str:
        return self.const(np.asarray(values, dtype=np.int64), name)

    def rand(self, shape, name: str | None = None, scale: float | None = None) -> str:
        """A random initializer; default scale 1/sqrt(fan in) keeps activations near unit size."""
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
        return self.const(self.rng.standard_normal(shape) * scale, name)

    def node(self, op: str, inputs, n_out: int = 1, name: str | None = None, domain: str = "", **attrs):
        """Add a node; returns its output name (or the list of names when n_out > 1)."""
        name = name or self.fresh(op.lower())
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, domain=domain, **attrs))
        return outs if n_out > 1 else outs[0]

    def output(self, name: str, shape=None, elem_type: int | None = None) -> str:
        self.outputs.append((name, elem_type, shape))
        return name

    # ---- layers ------------------------------------------------------------------------------
    def conv(self, x, cin: int, cout: int, k=1, group: int = 1, bias: bool = True, name=None, pads=None, **attrs):
        """Conv with a random [cout, cin/group, k...] weight; `k` an int (2-D) or a tuple (any rank)."""
        kernel = (k, k) if isinstance(k, int) else tuple(k)
        name = name or self.fresh("conv")
        w = self.rand((cout, cin // group, *kernel), f"{name}.w")
        ins = [x, w] + ([self.rand((cout,), f"{name}.b", 0.5)] if bias else [])
        if pads is None:
            pads = [kk // 2 for kk in kernel] * 2
        return self.node("Conv", ins, name=name, group=group, pads=pads, **attrs)

    def bn(self, x, c: int, name=None):
        name = name or self.fresh("bn")
        scale = self.const(self.rng.uniform(0.5, 1.5, c), f"{name}.scale")
        bias = self.const(self.rng.standard_normal(c) * 0.5, f"{name}.bias")
        mean = self.const(self.rng.standard_normal(c) * 0.1, f"{name}.mean")
        var = self.const(self.rng.uniform(0.5, 1.5, c), f"{name}.var")
        return self.node("BatchNormalization", [x, scale, bias, mean, var], name=name)

    def gemm(self, x, k: int, n: int, trans_b: int = 0, bias=True, name=None, **attrs):
        name = name or self.fresh("gemm")
        w = self.rand((n, k) if trans_b else (k, n), f"{name}.w", 1 / np.sqrt(k))
        ins = [x, w]
        if bias is True:
            ins.append(self.rand((n,), f"{name}.b", 0.5))
        elif bias is not None and bias is not False:
            ins.append(bias)
        return self.node("Gemm", ins, name=name, transB=trans_b, **attrs)

    def matmul(self, x, k: int, n: int, bias: bool = True, name=None):
        """MatMul by a constant [k, n] weight, then Add of a [n] bias."""
        name = name or self.fresh("mm")
        y = self.node("MatMul", [x, self.rand((k, n), f"{name}.w", 1 / np.sqrt(k))], name=name)
        if bias:
            y = self.node("Add", [y, self.rand((n,), f"{name}.b", 0.5)], name=f"{name}.add")
        return y

    def relu(self, x):
        return self.node("Relu", [x])

    # ---- the model ---------------------------------------------------------------------------
    def model(self, ir_version: int = 8) -> onnx.ModelProto:
        outputs = [
            helper.make_tensor_value_info(
                n, t if t is not None else helper.np_dtype_to_tensor_dtype(self.dtype), s if s else None
            )
            for n, t, s in self.outputs
        ]
        graph = helper.make_graph(self.nodes, "test", self.inputs, outputs, self.inits)
        opsets = [helper.make_opsetid("", self.opset), *self.extra_opsets]
        model = helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)
        inferred = onnx.shape_inference.infer_shapes(model)
        shaped = {o.name: o for o in inferred.graph.output}
        for position, out in enumerate(model.graph.output):
            if not out.type.tensor_type.HasField("shape") and shaped[out.name].type.tensor_type.HasField("shape"):
                model.graph.output[position].CopyFrom(shaped[out.name])
        return model


def small_cnn(opset: int = 17, dtype=np.float32, spatial=(6, 6), batch="N") -> onnx.ModelProto:
    """Conv-BN-Relu-MaxPool-Conv-Relu-GlobalAveragePool-Flatten-Gemm-Relu-Gemm."""
    b = Builder(opset=opset, dtype=dtype, seed=opset)
    x = b.input("x", [batch, 3, *spatial])
    y = b.relu(b.bn(b.conv(x, 3, 6, 3, name="c1"), 6))
    y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.relu(b.conv(y, 6, 8, 3, name="c2"))
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    y = b.relu(b.gemm(y, 8, 6, 1, name="g1"))
    b.output(b.gemm(y, 6, 3, name="g2"))
    ir = {11: 6, 13: 7, 17: 8, 21: 10}[opset]
    return b.model(ir_version=ir)


def conv_gemm() -> onnx.ModelProto:
    """image [N, 2, 5, 5] -> Conv 3x3 (3 channels, output "conv_out") -> Relu -> Flatten -> Gemm 75 -> 4."""
    b = Builder(seed=0)
    x = b.input("image", ["N", 2, 5, 5])
    y = b.relu(b.conv(x, 2, 3, 3, name="conv"))
    y = b.node("Flatten", [y], axis=1)
    b.output(b.gemm(y, 75, 4, trans_b=1, name="fc"))
    return b.model()


def conv_gemm_images(n: int, seed: int = 0) -> np.ndarray:
    """n random inputs of conv_gemm."""
    return np.random.default_rng(seed).standard_normal((n, 2, 5, 5)).astype(np.float32)


# ---- analysis summaries ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupView:
    """A group as plain values: producers and consumers as sorted node names."""

    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    size: int
    free: int
    frozen: str | None


def G(producers, consumers=(), size: int = 0, free: int | None = None, frozen: str | None = None) -> GroupView:
    """An expected group (`free` defaults to `size` when not frozen, else 0)."""
    if free is None:
        free = size if frozen is None else 0
    return GroupView(tuple(sorted(producers)), tuple(sorted(consumers)), size, free, frozen)


def assert_groups(analysis: Analysis, *expected: GroupView) -> None:
    """The analysis has exactly the `expected` groups (producers, consumers, sizes, frozen reasons)."""
    actual = sorted(summary(analysis).values(), key=lambda g: g.producers)
    wanted = sorted(expected, key=lambda g: g.producers)
    assert actual == wanted, "groups differ:\n" + "\n".join(f"  got  {g}" for g in actual)


def run_analysis(model: onnx.ModelProto) -> Analysis:
    return analyze(GraphIndex.build(model))


def summary(analysis: Analysis) -> dict[tuple[str, ...], GroupView]:
    """Groups keyed by their sorted producer names."""
    views = {}
    for g in analysis.groups:
        producers = tuple(sorted(p.node for p in g.producers))
        consumers = tuple(sorted({c.node for c in g.consumers}))
        views[producers] = GroupView(producers, consumers, g.size, len(g.free), g.frozen)
    return views


def group_of(analysis: Analysis, producer: str):
    for g in analysis.groups:
        if any(p.node == producer for p in g.producers):
            return g
    raise KeyError(producer)


def labels_of(analysis: Analysis, name: str, axis: int) -> list[int]:
    return analysis.const_labels[name][axis].tolist()


# ---- the shrink-equals-mask oracle -----------------------------------------------------------------
#: (op_type, input slot) of constants that, zeroed, make a node's output zero on the channel where
#: its data input is already zero (used for groups without consumers: their producers are zeroed).
_ZEROABLE = {("Add", 0), ("Add", 1), ("Sub", 0), ("Sub", 1), ("Gemm", 2), ("BatchNormalization", 1),
             ("BatchNormalization", 2), ("InstanceNormalization", 1), ("InstanceNormalization", 2)}  # fmt: skip


def masked_model(model: onnx.ModelProto, analysis: Analysis, removed) -> onnx.ModelProto:
    """The original model with the removed channels silenced, without changing any shape.

    Groups with consumers: zero every consumer weight position that reads a removed channel.
    Groups without consumers: zero the producers' weights and biases on those channels, and the
    additive constants (Add/Sub operands, normalization scale and bias) sliced with them.
    """
    masked = copy.deepcopy(model)
    inits = {t.name: t for t in masked.graph.initializer}
    removed = set(removed)
    targets: dict[str, set[int]] = {}
    for g in analysis.groups:
        if not removed & set(g.channels):
            continue
        if g.consumers:
            for role in g.consumers:
                targets.setdefault(role.weight, set()).add(role.axis)
            continue
        for role in g.producers:
            targets.setdefault(role.weight, set()).add(role.axis)
            if role.bias:
                targets.setdefault(role.bias, set()).add(0)
        for node in masked.graph.node:
            for slot, name in enumerate(node.input):
                if (node.op_type, slot) in _ZEROABLE and name in analysis.const_labels:
                    targets.setdefault(name, set()).update(analysis.const_labels[name])
    mask = np.zeros(analysis.num_channels + 1, dtype=bool)
    mask[list(removed)] = True
    for name, axes in targets.items():
        value = np.array(tensor_array(inits[name]))
        for axis in axes:
            line = analysis.const_labels[name][axis]
            index = [slice(None)] * value.ndim
            index[axis] = np.flatnonzero(mask[line] & (line >= 0))
            value[tuple(index)] = 0
        inits[name].CopyFrom(make_tensor(value, name))
    return masked


def layer_rows(model: onnx.ModelProto, feeds: dict, layer) -> np.ndarray:
    """A layers.Layer's OBS pre-activation (obs_output) on `feeds`, in onnxruntime, as float64 rows [n, O]."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(onnx.ValueInfoProto(name=layer.obs_output))
    z = runtime.run(runtime.session(exposed), feeds)[-1].astype(np.float64)
    return np.moveaxis(z, 1, -1).reshape(-1, layer.outputs) if z.ndim > 2 else z


def run_session(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """Outputs of `model` in onnxruntime (CPU, no graph optimization, one thread: tiny models)."""
    return runtime.run(runtime.session(model, threads=1), feeds)


def shrunk_model(model: onnx.ModelProto, analysis: Analysis, removed) -> onnx.ModelProto:
    plan = PruningPlan(frozenset(removed))
    return PassManager([shrink_pass(analysis, plan), CLEANUP, CHECK]).run(copy.deepcopy(model))


def pick_removal(analysis: Analysis, rng: np.random.Generator, share: float = 0.5) -> set[int]:
    """Random free channels: about `share` of each prunable group, at least one kept per group, and no
    constant axis emptied (a channel is put back while `empties` reports an emptied line)."""
    removed: set[int] = set()
    for g in analysis.prunable_groups():
        count = min(len(g.free), g.size - 1, int(rng.binomial(len(g.free), share)))
        if count > 0:
            removed |= set(rng.choice(np.asarray(g.free), count, replace=False).tolist())
    while lines := empties(analysis, removed):
        line = lines[0]
        removed.discard(int(rng.choice(np.unique(line[line >= 0]))))
    return removed


def signature(model: onnx.ModelProto, kind: str) -> list[tuple[str, int, int]]:
    return [
        (v.name, v.type.tensor_type.elem_type, len(v.type.tensor_type.shape.dim)) for v in getattr(model.graph, kind)
    ]


def shrink_matches_mask(
    model: onnx.ModelProto,
    removed=None,
    seed: int = 0,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    batch: int = 3,
    reference_only: bool = False,
) -> tuple[onnx.ModelProto, set[int]]:
    """Shrink `model` by `removed` (default: a random pick) and compare with the masked original.

    Asserts equal outputs on random inputs, the full checker, and kept input/output signatures.
    `atol` is relative to the output's scale (max |reference|, at least 1): float32 sums over different
    channel counts round differently, more so where intermediate activations are large.
    Returns the shrunk model and the removed channels. `reference_only`: compare with onnx's float64
    reference evaluator only (ops onnxruntime cannot run, e.g. batch-first LSTM, layout 1).
    """
    analysis = run_analysis(model)
    if removed is None:
        removed = pick_removal(analysis, np.random.default_rng(seed))
    new = shrunk_model(model, analysis, removed)
    onnx.checker.check_model(checkable(new), full_check=True)
    assert signature(new, "input") == signature(model, "input")
    assert signature(new, "output") == signature(model, "output")
    feeds = random_feeds(model, batch, seed)
    if reference_only:
        _assert_float64_equal(masked_model(model, analysis, removed), new, feeds)
        return new, set(removed)
    reference = run_session(masked_model(model, analysis, removed), feeds)
    candidate = run_session(new, feeds)
    for a, b in zip(reference, candidate, strict=True):
        assert a.shape == b.shape
    scales = [max(1.0, float(np.abs(a).max())) if a.size else 1.0 for a in reference]
    if not all(
        np.allclose(b, a, rtol=rtol, atol=atol * s) for a, b, s in zip(reference, candidate, scales, strict=True)
    ):
        # float32 sums over different channel counts round differently, and normalizations over
        # near-constant maps amplify that: decide in float64 with onnx's reference evaluator
        _assert_float64_equal(masked_model(model, analysis, removed), new, feeds)
    return new, set(removed)


def _assert_float64_equal(masked: onnx.ModelProto, shrunk: onnx.ModelProto, feeds: dict) -> None:
    for a, b in zip(float64_outputs(masked, feeds), float64_outputs(shrunk, feeds), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9 * max(1.0, float(np.abs(a).max())))


def float64_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of `model` with every float tensor in float64, by onnx's reference evaluator."""
    from onnx import TensorProto, numpy_helper
    from onnx.reference import ReferenceEvaluator

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))
    for value in list(copy.graph.input) + list(copy.graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in copy.graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
    del copy.graph.value_info[:]
    wide = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
    return ReferenceEvaluator(copy).run(None, wide)


def cache_shrink_matches_mask(model: onnx.ModelProto, removed: set[int], batch: int = 2) -> list[dict]:
    """Shrink `model` (with KV-cache inputs and outputs) and compare with the masked original at the
    kept heads; returns the I/O changes."""
    analysis = run_analysis(model)
    new = shrunk_model(model, analysis, removed)
    onnx.checker.check_model(checkable(new), full_check=True)
    from onnxprune.report import io_changes  # noqa: PLC0415

    changes = io_changes(analysis, PruningPlan(frozenset(removed)))
    kept = {c["name"]: (c["axis"], c["kept"]) for c in changes}
    feeds = random_feeds(model, batch, 0)
    reference = run_session(masked_model(model, analysis, removed), feeds)
    candidate = run_session(new, {k: np.take(v, kept[k][1], kept[k][0]) if k in kept else v for k, v in feeds.items()})
    names = [o.name for o in model.graph.output]
    for name, ref, got in zip(names, reference, candidate, strict=True):
        if name in kept:
            ref = np.take(ref, kept[name][1], kept[name][0])
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(ref).max())))
    declared = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*new.graph.input, *new.graph.output]
    }
    for change in changes:
        assert declared[change["name"]][change["axis"]] == change["after"]
    return changes
