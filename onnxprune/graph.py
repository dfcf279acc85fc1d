"""A read-only index over an ONNX graph: who produces and who consumes each tensor, constant values,
and static shapes from ONNX shape inference.

Maps are keyed by tensor name (strings). Constant values are read-only numpy views of the initializers;
code that changes a weight assigns a new array, never writes into one.
"""

from __future__ import annotations

__all__ = ["GraphIndex", "attributes", "infer_shapes", "opset_version"]

from dataclasses import dataclass, field

import numpy as np
import onnx

from .io import skeleton as io_skeleton
from .io import tensor_array
from .nodes import attributes, opset_version
from .shape_recovery import recover_shapes
from .shape_trace import resolve_reshape

Dim = int | str | None
Shape = tuple[Dim, ...]

#: initializers with more elements than this are replaced by typed graph inputs before shape
#: inference, so inference never copies the weights (they only need their dims).
_SMALL_CONSTANT = 64
#: constants up to this many elements are cached as arrays by GraphIndex.constant
_CACHED_CONSTANT = 4096


@dataclass
class GraphIndex:
    """Producer, consumers, constants and shapes of the main graph of `model`."""

    model: onnx.ModelProto
    producer: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    shapes: dict[str, Shape] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)
    shape_sources: dict[str, str] = field(default_factory=dict)  # shapes not from ONNX inference: where from
    _arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, model: onnx.ModelProto) -> GraphIndex:
        index = cls(model=model)
        graph = model.graph
        index.initializers = {t.name: t for t in graph.initializer}
        for position, node in enumerate(graph.node):
            for slot, name in enumerate(node.input):
                if name:
                    index.consumers.setdefault(name, []).append((position, slot))
            for name in node.output:
                if name:
                    index.producer[name] = position
        index._infer({})
        index._refine_reshapes()
        recover_shapes(index)
        return index

    def _infer(self, hints: dict[str, tuple]) -> None:
        self.shapes, self.dtypes = infer_shapes(self.model, hints)
        for name, tensor in self.initializers.items():
            self.shapes[name] = tuple(int(d) for d in tensor.dims)
            self.dtypes[name] = tensor.data_type

    def _refine_reshapes(self, rounds: int = 8) -> None:
        """ONNX leaves a Reshape's -1 unknown when the input has a symbolic batch (view(n, t, h, -1));
        fill such dims from the traced target and infer again, so the ops after it get static shapes."""
        symbols = {d.dim_param for i in self.model.graph.input for d in i.type.tensor_type.shape.dim}
        hints: dict[str, tuple] = {}
        for _ in range(rounds):
            new = {}
            for node in self.nodes:
                if node.op_type != "Reshape" or node.output[0] in hints:
                    continue
                shape = self.shapes.get(node.output[0])
                if shape is None or any(not isinstance(d, int) and d not in symbols for d in shape):
                    dims = resolve_reshape(self, node)
                    if dims is not None and dims != shape:
                        new[node.output[0]] = dims
            if not new:
                return
            hints.update(new)
            self._infer(hints)

    @property
    def nodes(self):
        return self.model.graph.node

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.model.graph.output]

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.model.graph.input]

    def constant(self, name: str) -> np.ndarray | None:
        """The value of `name` if it is an initializer, else None.

        Small constants are cached; large ones (weights) are read afresh on each call, so the index
        never holds a second copy of the weights. Callers that need a weight often keep the array.
        """
        if name not in self.initializers:
            return None
        cached = self._arrays.get(name)
        if cached is not None:
            return cached
        value = tensor_array(self.initializers[name])
        if value.size <= _CACHED_CONSTANT:
            self._arrays[name] = value
        return value

    def release(self) -> None:
        """Drop the cached weight arrays (copies of the initializer bytes) once decisions are made."""
        self._arrays.clear()

    def is_constant(self, name: str) -> bool:
        return name in self.initializers

    def shape(self, name: str) -> Shape | None:
        return self.shapes.get(name)

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def node_consumers(self, name: str) -> list[onnx.NodeProto]:
        return [self.nodes[i] for i, _ in self.consumers.get(name, [])]

    def node_producer(self, name: str) -> onnx.NodeProto | None:
        position = self.producer.get(name)
        return None if position is None else self.nodes[position]


def infer_shapes(model: onnx.ModelProto, hints: dict | None = None) -> tuple[dict[str, Shape], dict[str, int]]:
    """Static shapes and element types of every tensor ONNX shape inference can type.

    Large initializers travel as typed graph inputs, so inference costs no copy of the weights.
    `hints` (tensor name -> dims) are declared as value_info first; inference keeps their known dims.
    """
    skeleton = io_skeleton(model, _SMALL_CONSTANT)
    for name, dims in (hints or {}).items():
        skeleton.graph.value_info.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, dims))
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    except Exception:
        inferred = skeleton
    shapes: dict[str, Shape] = {}
    dtypes: dict[str, int] = {}
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    for info in values:
        tensor_type = info.type.tensor_type
        if not info.type.HasField("tensor_type"):
            continue
        dtypes[info.name] = tensor_type.elem_type
        if tensor_type.HasField("shape"):
            shapes[info.name] = tuple(_dim(d) for d in tensor_type.shape.dim)
    return shapes, dtypes


def _dim(dim) -> Dim:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    if dim.HasField("dim_param"):
        return dim.dim_param
    return None
