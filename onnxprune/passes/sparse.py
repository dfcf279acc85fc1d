"""Sparse storage (`--sparse-storage`): weights that are mostly zeros become ONNX sparse initializers.

A float initializer with at least MIN_ZERO_SHARE zeros, whose COO encoding is smaller than its dense
bytes, moves from graph.initializer to graph.sparse_initializer: values [nnz] plus linearized int64
indices [nnz] (ascending), the format the ONNX checker accepts. onnxruntime densifies sparse
initializers when it loads the model, so inference is unchanged; the file shrinks.

Size: a COO entry costs itemsize + 8 bytes, so a float32 tensor only gets smaller below 1/3 density
(float16: 1/5); tensors between 50% and 67% zeros stay dense, the check below is by bytes.

Caveat, onnx 1.23: `onnx.shape_inference` types a sparse initializer as a sparse tensor, so
`check_model(full_check=True)` rejects a dense operator reading it, although the plain checker passes
and onnxruntime runs it. io.load_model densifies them again, so onnxprune can read its own output.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..io import FLOAT_TYPES, make_tensor, tensor_array
from .base import Pass, PassResult

#: share of zeros from which an initializer is considered for sparse storage
MIN_ZERO_SHARE = 0.5
#: initializers smaller than this stay dense (shape constants, tiny biases)
MIN_ELEMENTS = 64
_INDEX_BYTES = 8


def sparse_tensor(value: np.ndarray, name: str) -> onnx.SparseTensorProto:
    """COO encoding of `value`: its nonzero values and their linearized int64 indices."""
    flat = np.ascontiguousarray(value).reshape(-1)
    where = np.flatnonzero(flat)
    values = make_tensor(flat[where], name)
    indices = make_tensor(where.astype(np.int64), f"{name}_indices")
    return onnx.helper.make_sparse_tensor(values, indices, list(value.shape))


def worth_sparse(value: np.ndarray) -> bool:
    """At least MIN_ZERO_SHARE zeros and a COO encoding smaller than the dense one."""
    size = value.size
    if size < MIN_ELEMENTS:
        return False
    nonzero = int(np.count_nonzero(value))
    if nonzero > (1.0 - MIN_ZERO_SHARE) * size:
        return False
    return nonzero * (value.itemsize + _INDEX_BYTES) < size * value.itemsize


def to_sparse(model: onnx.ModelProto) -> PassResult:
    """Move every initializer worth it to graph.sparse_initializer, in place."""
    graph = model.graph
    dense, moved = [], []
    for tensor in graph.initializer:
        if tensor.data_type in FLOAT_TYPES and tensor.data_type != onnx.TensorProto.BFLOAT16:
            value = tensor_array(tensor)
            if worth_sparse(value):
                moved.append(sparse_tensor(value, tensor.name))
                continue
        dense.append(tensor)
    if not moved:
        return PassResult(model, False)
    del graph.initializer[:]
    graph.initializer.extend(dense)
    graph.sparse_initializer.extend(moved)
    return PassResult(model, True)


SPARSE_STORAGE = Pass("sparse-storage", to_sparse)
