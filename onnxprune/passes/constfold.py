"""Fold subgraphs that only compute constants, as exporters leave them without constant folding:
Transpose(weight) -> MatMul, Cast/Reshape of initializers, Resize scales or Reshape targets computed
from constants, Shape of a tensor whose shape is fully static.

A node folds when every input is an initializer (or its op is Shape/Size of a statically shaped
tensor) and its op is in FOLDABLE: deterministic ops whose result onnx's reference evaluator computes
exactly. Quantization ops are never folded (that would change what the deployed model computes).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from ..graph import infer_shapes
from ..io import make_tensor
from .base import Pass, PassResult

log = logging.getLogger(__name__)

FOLDABLE = frozenset(
    "Transpose Cast Identity Reshape Unsqueeze Squeeze Concat Gather Slice Add Sub Mul Div Neg Sqrt Reciprocal "
    "Pow Range ConstantOfShape Expand Tile Split Flatten Equal Where Not Less Greater Floor Ceil Abs Exp Log Min "
    "Max Sum Mod".split()
)
#: never fold a result larger than this many elements (Expand/Tile/ConstantOfShape can blow up)
MAX_FOLDED = 1 << 24


def fold_constants(model: onnx.ModelProto) -> PassResult:
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    shapes = None
    kept, folded = [], 0
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or any(out in outputs for out in node.output):
            kept.append(node)
            continue
        values = None
        if node.op_type in ("Shape", "Size"):
            shapes = shapes if shapes is not None else infer_shapes(model)[0]
            values = _static_shape_value(node, shapes)
        elif node.op_type in FOLDABLE and all(not name or name in constants for name in node.input):
            values = _evaluate(model, node, constants)
        if values is None:
            kept.append(node)
            continue
        for name, value in zip(node.output, values, strict=False):
            if name:
                tensor = make_tensor(np.asarray(value), name)
                graph.initializer.append(tensor)
                constants[name] = tensor
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
        log.info("folded %d constant nodes", folded)
    return PassResult(model, folded > 0)


def _static_shape_value(node: onnx.NodeProto, shapes) -> list[np.ndarray] | None:
    shape = shapes.get(node.input[0])
    if shape is None or any(not isinstance(d, int) for d in shape):
        return None
    if node.op_type == "Size":
        return [np.array(int(np.prod(shape)), dtype=np.int64)]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return [np.array(shape[start:end], dtype=np.int64)]


def _evaluate(model: onnx.ModelProto, node: onnx.NodeProto, constants) -> list[np.ndarray] | None:
    inputs = [constants[name] for name in node.input if name]
    graph = onnx.helper.make_graph(
        [node], "fold", [], [onnx.ValueInfoProto(name=o) for o in node.output if o], initializer=inputs
    )
    single = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    try:
        values = ReferenceEvaluator(single).run(None, {})
    except Exception as exc:  # an op the reference evaluator cannot run here: keep the node
        log.debug("not folding %s: %s", node.name, exc)
        return None
    if any(np.asarray(v).size > MAX_FOLDED for v in values):
        return None
    return values


FOLD_CONSTANTS = Pass("fold-constants", fold_constants)
