"""Random small architectures for the shrink-equals-mask property (tests/test_shrink_property.py).

An `Arch` is a value: a domain (2-D images, 1-D signals, sequences [B,T,F], vectors [N,F]), a list of
(block kind, width) and a head. `build(arch)` turns it into an ONNX model with seeded weights; the
small choices inside a block (activation, BatchNorm or not, Split form) come from the same seed.
Hypothesis draws Arch values with `archs()` and shrinks failures to a short block list.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from graphs import Builder
from hypothesis import strategies as st

#: blocks per domain; every topology of the issue appears in at least one list
SPATIAL_BLOCKS = "conv grouped residual bottleneck inverted se gate dense c2f shuffle select resample pool".split()
BLOCKS = {
    "image": SPATIAL_BLOCKS,
    "conv1d": SPATIAL_BLOCKS,
    "sequence": ("mlp", "ffn", "attention", "recurrent"),
    "vector": ("gemm", "residual_gemm"),
}
HEADS = {
    "image": ("gap", "squeeze", "flatten", "reshape", "channels_last", "conv"),
    "conv1d": ("gap", "squeeze", "flatten", "reshape", "channels_last", "conv"),
    "sequence": ("linear",),
    "vector": ("linear",),
}
ACTIVATIONS = ("relu", "leaky", "relu6", "hardswish", "hardswish_ops", "silu", "gelu_erf", "prelu", "sigmoid", "none")


@dataclass(frozen=True)
class Arch:
    domain: str
    blocks: tuple[tuple[str, int], ...]
    head: str
    seed: int


@st.composite
def archs(draw, max_blocks: int = 4) -> Arch:
    domain = draw(st.sampled_from(sorted(BLOCKS)))
    block = st.tuples(st.sampled_from(BLOCKS[domain]), st.integers(2, 12))
    blocks = draw(st.lists(block, min_size=1, max_size=max_blocks))
    head = draw(st.sampled_from(HEADS[domain]))
    return Arch(domain, tuple(blocks), head, draw(st.integers(0, 2**16)))


class _Net:
    """Builds blocks on a Builder, tracking the current width and spatial dims."""

    def __init__(self, arch: Arch) -> None:
        self.b = Builder(seed=arch.seed)
        self.rng = np.random.default_rng(arch.seed + 1)
        self.domain = arch.domain

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    # ---- activations ---------------------------------------------------------------------------
    def act(self, x, c: int, kind: str | None = None):
        b = self.b
        kind = kind or self.choice(ACTIVATIONS)
        if kind == "relu":
            return b.relu(x)
        if kind == "leaky":
            return b.node("LeakyRelu", [x], alpha=0.1)
        if kind == "relu6":
            return b.node("Clip", [x, b.const(np.array(0.0)), b.const(np.array(6.0))])
        if kind == "hardswish":
            return b.node("HardSwish", [x])
        if kind == "hardswish_ops":
            gate = b.node(
                "Clip", [b.node("Add", [x, b.const(np.array(3.0))]), b.const(np.array(0.0)), b.const(np.array(6.0))]
            )
            return b.node("Div", [b.node("Mul", [x, gate]), b.const(np.array(6.0))])
        if kind == "silu":
            return b.node("Mul", [x, b.node("Sigmoid", [x])])
        if kind == "gelu_erf":
            erf = b.node("Erf", [b.node("Div", [x, b.const(np.array(np.sqrt(2.0)))])])
            return b.node(
                "Mul", [b.node("Mul", [x, b.node("Add", [erf, b.const(np.array(1.0))])]), b.const(np.array(0.5))]
            )
        if kind == "prelu":
            shape = (c,) + (1,) * self.spatial_rank if self.domain in ("image", "conv1d") else (c,)
            return b.node("PRelu", [x, b.const(self.rng.uniform(0.05, 0.3, shape))])
        if kind == "sigmoid":
            return b.node("Sigmoid", [x])
        return x


class _Spatial(_Net):
    """NCHW (image) or NCL (conv1d) blocks."""

    def __init__(self, arch: Arch) -> None:
        super().__init__(arch)
        self.spatial = [5, 5] if arch.domain == "image" else [7]
        self.spatial_rank = len(self.spatial)

    def conv(self, x, cin: int, cout: int, k: int = 3, group: int = 1, bn: bool | None = None, act: str | None = "?"):
        b = self.b
        bn = bool(self.rng.integers(2)) if bn is None else bn
        y = b.conv(x, cin, cout, (k,) * self.spatial_rank, group=group, bias=not bn or bool(self.rng.integers(2)))
        if bn and self.rng.integers(4) == 0:
            scale, shift = b.const(self.rng.uniform(0.5, 1.5, cout)), b.rand((cout,), scale=0.5)
            y = b.node("InstanceNormalization", [y, scale, shift])
        elif bn:
            y = b.bn(y, cout)
        return y if act is None else self.act(y, cout, None if act == "?" else act)

    def block(self, kind: str, x, c: int, w: int):
        return getattr(self, f"block_{kind}")(x, c, w)

    def block_conv(self, x, c, w):
        return self.conv(x, c, w), w

    def block_grouped(self, x, c, w):
        if c % 2 or w % 2:
            return self.block_conv(x, c, w)
        return self.conv(x, c, w, group=2), w

    def block_residual(self, x, c, w):
        y = self.conv(self.conv(x, c, w), w, w, act=None)
        shortcut = x if c == w else self.conv(x, c, w, k=1, act=None)
        return self.act(self.b.node("Add", [y, shortcut]), w), w

    def block_bottleneck(self, x, c, w):
        y = self.conv(self.conv(x, c, w, k=1), w, w)
        y = self.conv(y, w, c, k=1, act=None)
        return self.act(self.b.node("Add", [y, x]), c), c

    def block_inverted(self, x, c, w):
        y = self.conv(x, c, w, k=1, act="relu6")
        y = self.conv(y, w, w, group=w, act="relu6")
        out = c if self.rng.integers(3) else w
        y = self.conv(y, w, out, k=1, act=None, bn=True)
        return (self.b.node("Add", [y, x]) if out == c else y), out

    def block_se(self, x, c, w):
        b = self.b
        y = self.conv(x, c, w)
        r = max(1, w // 4)
        s = b.node("GlobalAveragePool", [y])
        s = self.conv(self.conv(s, w, r, k=1, bn=False, act="relu"), r, w, k=1, bn=False, act=None)
        s = b.node(self.choice(("Sigmoid", "HardSigmoid")), [s])
        return b.node("Mul", [y, s]), w

    def block_gate(self, x, c, w):
        """Spatial attention: a 1-channel conv map, squashed, scales every channel of the trunk."""
        y = self.conv(x, c, w)
        gate = self.b.node(self.choice(("Sigmoid", "HardSigmoid")), [self.conv(y, w, 1, bn=False, act=None)])
        return self.b.node("Mul", [gate, y] if self.rng.integers(2) else [y, gate]), w

    def block_dense(self, x, c, w):
        y = self.conv(self.act(self.b.bn(x, c), c, "relu"), c, w, bn=False, act=None)
        return self.b.node("Concat", [x, y], axis=1), c + w

    def block_c2f(self, x, c, w):
        b = self.b
        h = max(1, w // 2)
        y = self.conv(x, c, 2 * h, k=1)
        if self.rng.integers(2):
            first, second = b.node("Split", [y, b.ints([h, h])], n_out=2, axis=1)
        else:
            first, second = b.node("Split", [y], n_out=2, axis=1)
        m = self.conv(self.conv(second, h, h), h, h)
        m = b.node("Add", [m, second])
        return self.conv(b.node("Concat", [first, second, m], axis=1), 3 * h, w, k=1), w

    def block_shuffle(self, x, c, w):
        b = self.b
        p = max(1, w // 2)
        group = 2 if c % 2 == 0 and self.rng.integers(3) == 0 else 1
        y = self.conv(x, c, 2 * p, k=1, group=group)
        y = b.node("Reshape", [y, b.ints([0, 2, p, *self.spatial])])
        y = b.node("Transpose", [y], perm=[0, 2, 1, *range(3, 3 + self.spatial_rank)])
        y = b.node("Reshape", [y, b.ints([0, 2 * p, *self.spatial])])
        return self.conv(y, 2 * p, w, k=1), w

    def block_select(self, x, c, w):
        """A conv, then a channel subset: Slice of a range or Gather of constant indices."""
        b = self.b
        wide = w + 2
        y = self.conv(x, c, wide)
        if self.rng.integers(2):
            start = int(self.rng.integers(0, 3))
            y = b.node("Slice", [y, b.ints([start]), b.ints([start + w]), b.ints([1])])
        else:
            y = b.node("Gather", [y, b.ints(self.rng.choice(wide, w, replace=False))], axis=1)
        return y, w

    def block_resample(self, x, c, w):
        """On small maps Resize x2 (nearest) or a stride-2 ConvTranspose, else Pad by one."""
        b = self.b
        if max(self.spatial) <= 4 and self.rng.integers(2):
            self.spatial = [2 * d for d in self.spatial]
            kernel = [2] * self.spatial_rank
            w_t, bias = b.rand((c, w, *kernel)), b.rand((w,), scale=0.5)
            y = b.node("ConvTranspose", [x, w_t, bias], strides=kernel)
            return self.act(y, w), w
        y = self.conv(x, c, w)
        if max(self.spatial) <= 4:
            self.spatial = [2 * d for d in self.spatial]
            scales = b.const(np.array([1.0, 1.0] + [2.0] * self.spatial_rank, np.float32))
            return b.node("Resize", [y, "", scales], mode="nearest"), w
        self.spatial = [d + 2 for d in self.spatial]
        return b.node("Pad", [y, b.ints([0, 0] + [1] * self.spatial_rank + [0, 0] + [1] * self.spatial_rank)]), w

    def block_pool(self, x, c, w):
        b = self.b
        if min(self.spatial) >= 4:
            self.spatial = [d // 2 for d in self.spatial]
            return b.node("MaxPool", [x], kernel_shape=[2] * self.spatial_rank, strides=[2] * self.spatial_rank), c
        k = [3] * self.spatial_rank
        return b.node("AveragePool", [x], kernel_shape=k, pads=[1] * 2 * self.spatial_rank), c

    def head(self, kind: str, x, c: int, classes: int = 3):
        b = self.b
        if kind == "conv":
            return b.conv(x, c, classes, (1,) * self.spatial_rank)
        if kind == "gap":
            return b.gemm(b.node("Flatten", [b.node("GlobalAveragePool", [x])]), c, classes, int(self.rng.integers(2)))
        spatial_axes = list(range(2, 2 + self.spatial_rank))
        if kind == "squeeze":
            pooled = b.node("ReduceMean", [x], axes=spatial_axes, keepdims=1)
            return b.gemm(b.node("Squeeze", [pooled, b.ints(spatial_axes)]), c, classes, int(self.rng.integers(2)))
        if kind == "channels_last":
            y = b.matmul(b.node("Transpose", [x], perm=[0, *spatial_axes, 1]), c, classes)
            return b.node("ReduceMax", [y], axes=[a - 1 for a in spatial_axes], keepdims=0)
        features = c * int(np.prod(self.spatial))
        if kind == "flatten":
            return b.gemm(b.node("Flatten", [x]), features, classes, int(self.rng.integers(2)))
        n = b.node("Unsqueeze", [b.node("Gather", [b.node("Shape", [x]), b.ints(0)], axis=0), b.ints([0])])
        y = b.node("Reshape", [x, b.node("Concat", [n, b.ints([-1])], axis=0)])
        return b.gemm(y, features, classes, int(self.rng.integers(2)))


class _Sequence(_Net):
    """[B, T, F] blocks: MatMul layers with Add biases, FFN with residual, multi-head attention."""

    spatial_rank = 0
    T = 3

    def linear(self, x, k: int, n: int):
        return self.b.matmul(x, k, n, bias=bool(self.rng.integers(3)))

    def block(self, kind: str, x, c: int, w: int):
        return getattr(self, f"block_{kind}")(x, c, w)

    def block_mlp(self, x, c, w):
        return self.act(self.linear(x, c, w), w), w

    def block_ffn(self, x, c, w):
        b = self.b
        y = self.linear(self.act(self.linear(x, c, w), w, "gelu_erf"), w, c)
        y = b.node("Add", [y, x])
        if self.rng.integers(3) == 0:
            y = b.node("LayerNormalization", [y, b.const(np.ones(c)), b.const(np.zeros(c))], axis=-1)
        return y, c

    def block_attention(self, x, c, w):
        b = self.b
        heads = 2 if w >= 4 and self.rng.integers(2) else 1
        d = max(1, w // heads)

        def target(t, tail):
            """[0, 0, *tail] as a constant, or read at run time: Shape -> Gather -> Concat (exporters)."""
            if self.rng.integers(2):
                return b.ints([0, 0, *tail])
            shape = b.node("Shape", [t])
            dims = [b.node("Unsqueeze", [b.node("Gather", [shape, b.ints(i)], axis=0), b.ints([0])]) for i in (0, 1)]
            return b.node("Concat", [*dims, *(b.ints([v]) for v in tail)], axis=0)

        def split_heads(t, perm):
            tail = [heads, d] if self.rng.integers(2) else [heads, -1]
            return b.node("Transpose", [b.node("Reshape", [t, target(t, tail)])], perm=perm)

        q = split_heads(self.linear(x, c, heads * d), [0, 2, 1, 3])
        k = split_heads(self.linear(x, c, heads * d), [0, 2, 3, 1])
        v = split_heads(self.linear(x, c, heads * d), [0, 2, 1, 3])
        scores = b.node("Mul", [b.node("MatMul", [q, k]), b.const(np.array(1 / np.sqrt(d)))])
        ctx = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v])
        ctx = b.node("Transpose", [ctx], perm=[0, 2, 1, 3])
        ctx = b.node("Reshape", [ctx, target(ctx, [self.choice((heads * d, -1))])])
        return b.node("Add", [self.linear(ctx, heads * d, c), x]), c

    def block_recurrent(self, x, c, w):
        """[B, T, c] -> Transpose -> LSTM/GRU/RNN (any direction, maybe a run-time initial state) ->
        Transpose -> Reshape [B, T, D*w] (the two directions side by side, as torch exports them)."""
        b = self.b
        op = self.choice(("LSTM", "GRU", "RNN"))
        direction = self.choice(("forward", "reverse", "bidirectional"))
        d, gates = (2 if direction == "bidirectional" else 1), {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
        inputs = [b.node("Transpose", [x], perm=[1, 0, 2]), b.rand((d, gates * w, c)), b.rand((d, gates * w, w))]
        inputs.append(b.rand((d, 2 * gates * w), scale=0.3))
        if self.rng.integers(2):  # a run-time initial state: 0.5 everywhere, [D, B, w] read from x
            batch = b.node("Gather", [b.node("Shape", [x]), b.ints([0])], axis=0)
            shape = b.node("Concat", [b.ints([d]), batch, b.ints([w])], axis=0)
            value = onnx.helper.make_tensor("value", onnx.TensorProto.FLOAT, [1], [0.5])
            inputs += ["", b.node("ConstantOfShape", [shape], value=value)]
        outs = b.node(op, inputs, n_out=2, hidden_size=w, direction=direction)
        y = b.node("Transpose", [outs[0]], perm=[2, 0, 1, 3])
        return b.node("Reshape", [y, b.ints([0, 0, d * w])]), d * w

    def head(self, kind: str, x, c: int, classes: int = 3):
        return self.b.matmul(x, c, classes)


class _Vector(_Net):
    """[N, F] blocks: Gemm with transB, alpha/beta and the bias shapes Gemm accepts."""

    spatial_rank = 0

    def gemm(self, x, k: int, n: int):
        b = self.b
        bias = self.choice(("n", "1n", "scalar", "none"))
        c = {
            "n": lambda: b.rand((n,)),
            "1n": lambda: b.rand((1, n)),
            "scalar": lambda: b.rand((1,)),
            "none": lambda: None,
        }[bias]()
        alpha, beta = float(self.choice((1.0, 0.5))), float(self.choice((1.0, 2.0)))
        return b.gemm(x, k, n, int(self.rng.integers(2)), bias=c, alpha=alpha, beta=beta)

    def block(self, kind: str, x, c: int, w: int):
        if kind == "gemm":
            return self.act(self.gemm(x, c, w), w), w
        y = self.gemm(self.act(self.gemm(x, c, w), w), w, c)
        return self.act(self.b.node("Add", [y, x]), c), c

    def head(self, kind: str, x, c: int, classes: int = 3):
        return self.gemm(x, c, classes)


_NETS = {"image": _Spatial, "conv1d": _Spatial, "sequence": _Sequence, "vector": _Vector}


def build(arch: Arch):
    """The ONNX model of `arch` (opset 17, IR 8, symbolic batch)."""
    net = _NETS[arch.domain](arch)
    channels = int(net.rng.integers(1, 5))
    if arch.domain in ("image", "conv1d"):
        x = net.b.input("x", ["N", channels, *net.spatial])
    elif arch.domain == "sequence":
        x = net.b.input("x", ["B", net.T, channels])
    else:
        x = net.b.input("x", ["N", channels])
    for kind, width in arch.blocks:
        x, channels = net.block(kind, x, channels, width)
    net.b.output(net.head(arch.head, x, channels))
    return net.b.model()
