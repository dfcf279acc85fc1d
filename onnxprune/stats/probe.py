"""The model's outputs with some initializers replaced, for measuring what a change does to the model
(--lobs-allocation output): one onnxruntime session, the replaced initializers fed as inputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from .. import runtime
from ..feeds import Dataset


class OutputProbe:
    """The model's outputs on a few calibration samples with some initializers replaced: one session,
    the initializers `names` made overridable (listed as graph inputs, fed when replaced)."""

    def __init__(self, model: onnx.ModelProto, names: Sequence[str], data: Dataset, batch_size: int, providers):
        self.data, self.batch_size = data, max(1, batch_size)
        self.session = runtime.session(_overridable(model, set(names)), list(providers), optimize=True)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.reference = self.outputs({})
        self.energy = sum(float(np.sum(r * r)) for r in self.reference)

    def outputs(self, overrides: dict[str, np.ndarray]) -> list[np.ndarray]:
        parts = []
        for batch in self.data.batches(self.batch_size):
            feeds = {k: v for k, v in batch.items() if k in self.inputs}
            parts.append(self.session.run(None, {**feeds, **overrides}))
        values = [np.concatenate(column) for column in zip(*parts, strict=True)]
        return [v.astype(np.float64) for v in values if v.dtype.kind == "f"]

    def error(self, overrides: dict[str, np.ndarray]) -> float:
        """sum ||Y - Y_ref||^2 / sum ||Y_ref||^2 over the float outputs."""
        diff = sum(float(np.sum((y - r) ** 2)) for y, r in zip(self.outputs(overrides), self.reference, strict=True))
        return diff / max(self.energy, np.finfo(float).tiny)


def _overridable(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    listed = {i.name for i in copy.graph.input}
    for tensor in copy.graph.initializer:
        if tensor.name in names and tensor.name not in listed:
            copy.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return copy
