"""Build a randomly initialised ResNet-50-sized ONNX model (about 25.6M parameters) with onnx.helper.

Bottleneck stages [3, 4, 6, 3], widths 64-256 ... 512-2048, BatchNormalization after every Conv,
GlobalAveragePool, Flatten, Gemm 2048 -> 1000. Input `image` [N, 3, 224, 224]. Seeded, no downloads.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, array: np.ndarray, prefix: str) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> str:
        fan_in = cin * k * k
        w = self.const(self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / fan_in), "w")
        y = self.name("conv")
        self.nodes.append(
            helper.make_node("Conv", [x, w], [y], name=y, kernel_shape=[k, k], strides=[stride] * 2, pads=[k // 2] * 4)
        )
        params = [
            self.const(self.rng.uniform(0.5, 1.5, cout), "gamma"),
            self.const(self.rng.normal(0, 0.1, cout), "beta"),
            self.const(self.rng.normal(0, 0.1, cout), "mean"),
            self.const(self.rng.uniform(0.5, 1.5, cout), "var"),
        ]
        z = self.name("bn")
        self.nodes.append(helper.make_node("BatchNormalization", [y] + params, [z], name=z))
        if not relu:
            return z
        r = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [z], [r], name=r))
        return r

    def bottleneck(self, x: str, cin: int, mid: int, stride: int) -> str:
        cout = mid * 4
        y = self.conv_bn(x, cin, mid, 1)
        y = self.conv_bn(y, mid, mid, 3, stride)
        y = self.conv_bn(y, mid, cout, 1, relu=False)
        shortcut = x if (cin == cout and stride == 1) else self.conv_bn(x, cin, cout, 1, stride, relu=False)
        s = self.name("add")
        self.nodes.append(helper.make_node("Add", [y, shortcut], [s], name=s))
        r = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [s], [r], name=r))
        return r


def build_resnet50(seed: int = 0, classes: int = 1000) -> onnx.ModelProto:
    b = _Builder(seed)
    x = b.conv_bn("image", 3, 64, 7, 2)
    p = b.name("pool")
    b.nodes.append(helper.make_node("MaxPool", [x], [p], name=p, kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = p, 64
    for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            x = b.bottleneck(x, cin, mid, stride if i == 0 else 1)
            cin = mid * 4
    g = b.name("gap")
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], [g], name=g))
    f = b.name("flatten")
    b.nodes.append(helper.make_node("Flatten", [g], [f], name=f, axis=1))
    w = b.const(b.rng.standard_normal((classes, cin)) * np.sqrt(1.0 / cin), "fc_w")
    bias = b.const(np.zeros(classes), "fc_b")
    b.nodes.append(helper.make_node("Gemm", [f, w, bias], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        b.nodes,
        "resnet50",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        b.inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
