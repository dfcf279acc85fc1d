"""Reading ONNX nodes and models: attributes as Python values, the opset of a domain."""

from __future__ import annotations

import onnx


def attributes(node: onnx.NodeProto) -> dict:
    """A node's attributes as plain Python values."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    for opset in model.opset_import:
        if opset.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(opset.version)
    return 1
