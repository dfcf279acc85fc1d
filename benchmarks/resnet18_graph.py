"""A torchvision-style ResNet-18 graph (random He-initialised weights), built with onnx.helper.

The graph torchvision's `resnet18()` exports in eval mode with constant folding (BatchNorm folded
into the convolutions): a 7x7/2 stem conv with 64 channels, 3x3/2 max pool, four stages of two
BasicBlocks (64, 128, 256, 512 channels; a 1x1/2 projection on the first block of stages 2-4),
global average pool, Flatten and a 1000-way Gemm. 11.7M parameters, 1.82 GMACs at 224 x 224.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []

    def conv(self, x: str, cin: int, cout: int, kernel: int, stride: int, name: str, relu: bool = True) -> str:
        w = self.rng.standard_normal((cout, cin, kernel, kernel)).astype(np.float32)
        w *= np.sqrt(2.0 / (cin * kernel * kernel))
        b = (0.01 * self.rng.standard_normal(cout)).astype(np.float32)
        self.weights += [numpy_helper.from_array(w, f"{name}.weight"), numpy_helper.from_array(b, f"{name}.bias")]
        pad = kernel // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.weight", f"{name}.bias"],
                [f"{name}_out"],
                name=name,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        return self.relu(f"{name}_out", name) if relu else f"{name}_out"

    def relu(self, x: str, name: str) -> str:
        self.nodes.append(helper.make_node("Relu", [x], [f"{name}_relu"], name=f"{name}_relu"))
        return f"{name}_relu"

    def block(self, x: str, cin: int, cout: int, stride: int, name: str) -> str:
        y = self.conv(x, cin, cout, 3, stride, f"{name}.conv1")
        y = self.conv(y, cout, cout, 3, 1, f"{name}.conv2", relu=False)
        skip = self.conv(x, cin, cout, 1, stride, f"{name}.downsample", relu=False) if stride != 1 or cin != cout else x
        self.nodes.append(helper.make_node("Add", [y, skip], [f"{name}_add"], name=f"{name}_add"))
        return self.relu(f"{name}_add", name)


def resnet18(size: int = 224, seed: int = 0) -> onnx.ModelProto:
    """ResNet-18 on [N, 3, size, size] (N symbolic), opset 13, IR 8."""
    b = _Builder(seed)
    x = b.conv("input", 3, 64, 7, 2, "conv1")
    b.nodes.append(
        helper.make_node(
            "MaxPool", [x], ["pool"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        )
    )
    x, cin = "pool", 64
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for index in range(2):
            stride = 2 if stage > 1 and index == 0 else 1
            x = b.block(x, cin, cout, stride, f"layer{stage}.{index}")
            cin = cout
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="avgpool"))
    b.nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1))
    fc = (b.rng.standard_normal((1000, 512)) / np.sqrt(512)).astype(np.float32)
    b.weights += [
        numpy_helper.from_array(fc, "fc.weight"),
        numpy_helper.from_array(np.zeros(1000, np.float32), "fc.bias"),
    ]
    b.nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        b.nodes,
        "resnet18",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        b.weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model
