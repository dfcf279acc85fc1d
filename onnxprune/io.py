"""Reading and writing ONNX models.

`load_model` accepts what real exporters write: weights as initializers or as Constant nodes (lifted to
initializers), initializers duplicated in graph.input (removed from the inputs), external data files,
and unnamed nodes (given stable names). `save_model` writes atomically: a temporary file beside the
target, renamed over it only once complete, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .atomic import Transaction, describe_os_error
from .errors import ModelLoadError, OutputPathError

TWO_GB = 2**31 - 1
#: the first IR version that lets initializers stand apart from graph.input (same operators otherwise)
IR_INITIALIZERS_APART = 4
#: metadata key under which load_model records the size of the source file(s); removed before saving.
SOURCE_BYTES_KEY = "onnxprune.source_bytes"


def load_model(path: str | os.PathLike, check: bool = True) -> onnx.ModelProto:
    """Load `path` with its external data, lift Constant weights, and check it.

    Raises ModelLoadError with one explanatory line for anything the user can fix.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, not an ONNX file; pass the .onnx file inside it")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning subclasses, ValueError...
        raise ModelLoadError(
            f"{path}: not a readable ONNX model ({type(exc).__name__}); the file is truncated or of another "
            "format: re-export it with torch.onnx.export / paddle2onnx / tf2onnx"
        ) from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelLoadError(f"{path}: parses but holds no graph nodes; the file is not an ONNX model")
    locations = external_locations(model)
    _load_external(model, path)
    model.metadata_props.add(key=SOURCE_BYTES_KEY, value=str(file_bytes(path, locations)))
    normalize_model(model)
    if check:
        check_model(model, where=str(path))
    return model


def _load_external(model: onnx.ModelProto, path: Path) -> None:
    base = path.parent
    for tensor in _all_external_tensors(model):
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location is None or not (base / location).exists():
            raise ModelLoadError(
                f"{path}: tensor '{tensor.name}' is stored in external file '{location}', which is missing; "
                f"put it beside the model in {base}"
            )
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(base))
    except Exception as exc:
        raise ModelLoadError(f"{path}: external data cannot be read ({exc}); re-export the model") from None


def _all_external_tensors(model: onnx.ModelProto):
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def skeleton(model: onnx.ModelProto, small: int = 64) -> onnx.ModelProto:
    """A copy of `model` without the data of large initializers, which become typed graph inputs.

    The checker and shape inference only need the weights' types and dims; the skeleton costs no copy
    of the weights. Initializers of at most `small` elements (shape constants) are kept.
    """
    copy = onnx.ModelProto()
    copy.ir_version = model.ir_version
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    graph = copy.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.sparse_initializer.extend(model.graph.sparse_initializer)
    for tensor in model.graph.initializer:
        if int(np.prod(tensor.dims, dtype=np.int64)) <= small:
            graph.initializer.append(tensor)
        else:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return copy


def signature(model: onnx.ModelProto) -> onnx.ModelProto:
    """A node-less copy of `model` holding only its graph inputs and outputs (names, types, shapes)."""
    copy = onnx.ModelProto()
    copy.ir_version = model.ir_version
    copy.opset_import.extend(model.opset_import)
    copy.graph.name = model.graph.name
    copy.graph.input.extend(model.graph.input)
    copy.graph.output.extend(model.graph.output)
    return copy


#: contrib ops that onnxruntime registers in the ONNX domain (its transformer optimizer writes them
#: there); the ONNX checker knows no such op, so `checkable` moves them to com.microsoft for it
ORT_ONNX_DOMAIN_OPS = frozenset({"SimplifiedLayerNormalization"})


def checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model`, or a copy whose onnxruntime contrib ops of the ONNX domain sit in com.microsoft (which
    the checker and strict shape inference leave alone), for checking only."""
    if not any(n.op_type in ORT_ONNX_DOMAIN_OPS and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        if node.op_type in ORT_ONNX_DOMAIN_OPS and node.domain in ("", "ai.onnx"):
            node.domain = "com.microsoft"
    if not any(o.domain == "com.microsoft" for o in copy.opset_import):
        copy.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return copy


def check_model(model: onnx.ModelProto, where: str = "model") -> None:
    """The ONNX checker on the graph structure (on a skeleton, so no copy of the weights), and a check
    that every initializer holds as many bytes as its shape needs (truncated weights)."""
    try:
        onnx.checker.check_model(checkable(skeleton(model)), full_check=False)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid graph"
        raise ModelLoadError(
            f"{where}: fails the ONNX checker: {first}; fix or re-export the model "
            "(onnx.checker.check_model shows the details)"
        ) from None
    for tensor in model.graph.initializer:
        dtype = RAW_DTYPES.get(tensor.data_type)
        if tensor.raw_data and dtype is not None:
            expected = int(np.prod(tensor.dims, dtype=np.int64)) * np.dtype(dtype).itemsize
            if len(tensor.raw_data) != expected:
                raise ModelLoadError(
                    f"{where}: initializer '{tensor.name}' holds {len(tensor.raw_data)} bytes but its shape "
                    f"{list(tensor.dims)} needs {expected}; the file is damaged, re-export the model"
                )


def normalize_model(model: onnx.ModelProto) -> None:
    """Rewrite harmless exporter variations into one canonical form, in place.

    - Constant nodes holding tensors become initializers (Paddle and some TF exports).
    - Initializers repeated in graph.input (IR < 4 exporters) are removed from the inputs, and an IR 3
      model becomes IR 4 (the only change between them is that initializers need not be inputs).
    - Unnamed or duplicate-named nodes get unique names.
    - Sparse initializers (written by --sparse-storage) become dense initializers.
    - Nodes written out of topological order are sorted (onnx-graphsurgeon).
    """
    _densify_sparse(model.graph)
    _lift_constants(model.graph)
    init_names = {t.name for t in model.graph.initializer}
    keep_inputs = [i for i in model.graph.input if i.name not in init_names]
    if len(keep_inputs) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep_inputs)
    if init_names and model.ir_version < IR_INITIALIZERS_APART:
        model.ir_version = IR_INITIALIZERS_APART  # IR 3 wants initializers repeated as inputs; 4 does not
    _name_nodes(model.graph)
    if not _is_topologically_sorted(model.graph):
        _toposort(model)


def _densify_sparse(graph: onnx.GraphProto) -> None:
    for sparse in graph.sparse_initializer:
        values = tensor_array(sparse.values)
        indices = tensor_array(sparse.indices).astype(np.int64)
        dense = np.zeros(tuple(sparse.dims), dtype=values.dtype)
        if indices.ndim == 2:
            dense[tuple(indices.T)] = values
        else:
            dense.reshape(-1)[indices] = values
        graph.initializer.append(make_tensor(dense, sparse.values.name))
    del graph.sparse_initializer[:]


def _is_topologically_sorted(graph: onnx.GraphProto) -> bool:
    produced_by_nodes = {out for node in graph.node for out in node.output}
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        if any(name and name in produced_by_nodes and name not in available for name in node.input):
            return False
        available.update(node.output)
    return True


def _toposort(model: onnx.ModelProto) -> None:
    """Reorder the nodes of an unsorted graph (some exporters write them out of order) with
    onnx-graphsurgeon's topological sort; only the order changes, the node protos stay as they are."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.toposort()
    by_name = {node.name: node for node in model.graph.node}
    ordered = [by_name[node.name] for node in graph.nodes]
    if len(ordered) != len(model.graph.node):
        return  # graphsurgeon saw another set of nodes: leave the order for the checker to judge
    copies = [onnx.NodeProto() for _ in ordered]
    for target, source in zip(copies, ordered, strict=True):
        target.CopyFrom(source)
    del model.graph.node[:]
    model.graph.node.extend(copies)


def _lift_constants(graph: onnx.GraphProto) -> None:
    kept = []
    lifted = []
    for node in graph.node:
        tensor = _constant_value(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if tensor is None:
            kept.append(node)
        else:
            lifted.append(tensor)
    if lifted:
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(lifted)


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    name = node.output[0]
    for attr in node.attribute:
        if attr.name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
            tensor.name = name
            return tensor
        if attr.name in ("value_float", "value_int"):
            value = attr.f if attr.name == "value_float" else attr.i
            dtype = np.float32 if attr.name == "value_float" else np.int64
            return numpy_helper.from_array(np.array(value, dtype=dtype), name)
        if attr.name in ("value_floats", "value_ints"):
            values = attr.floats if attr.name == "value_floats" else attr.ints
            dtype = np.float32 if attr.name == "value_floats" else np.int64
            return numpy_helper.from_array(np.array(list(values), dtype=dtype), name)
    return None  # sparse_value / strings: leave the node alone


def _name_nodes(graph: onnx.GraphProto) -> None:
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The values of an initializer; a read-only view (no copy) when stored as little-endian raw data."""
    if tensor.raw_data and tensor.data_type in RAW_DTYPES and np.little_endian:
        array = np.frombuffer(tensor.raw_data, dtype=RAW_DTYPES[tensor.data_type])
        return array.reshape(tuple(tensor.dims))
    return numpy_helper.to_array(tensor)


RAW_DTYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}


def make_tensor(array: np.ndarray, name: str) -> onnx.TensorProto:
    """An initializer holding `array` (raw little-endian data); a 0-d array stays a scalar."""
    array = np.asarray(array)
    return numpy_helper.from_array(np.ascontiguousarray(array).reshape(array.shape), name)


#: the floating-point ONNX element types (parameters, masks, calibration statistics)
FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)


def count_params(model: onnx.ModelProto) -> int:
    """Floating-point initializer elements (the usual meaning of 'parameters'); a sparse initializer
    counts its full dense shape."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_type in FLOAT_TYPES:
            total += int(np.prod(tensor.dims, dtype=np.int64))
    for sparse in model.graph.sparse_initializer:
        total += int(np.prod(sparse.dims, dtype=np.int64))
    return total


def count_nonzero_params(model: onnx.ModelProto) -> int:
    """Floating-point initializer elements that are not zero (what unstructured pruning leaves)."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_type in FLOAT_TYPES:
            total += int(np.count_nonzero(tensor_array(tensor)))
    for sparse in model.graph.sparse_initializer:
        total += int(np.count_nonzero(tensor_array(sparse.values)))
    return total


def nonzero_params(
    model: onnx.ModelProto, updates: Mapping[str, np.ndarray], removed: Mapping[str, Mapping[int, np.ndarray]]
) -> int:
    """Nonzero float weights `model` will hold with `updates` in place of its initializers and, per
    initializer and axis, the positions True in `removed[name][axis]` deleted (a sparse initializer
    counts its stored values)."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_type not in FLOAT_TYPES:
            continue
        value = updates.get(tensor.name)
        value = tensor_array(tensor) if value is None else value
        for axis, gone in removed.get(tensor.name, {}).items():
            value = np.compress(~gone, value, axis=axis)
        total += int(np.count_nonzero(value))
    for sparse in model.graph.sparse_initializer:
        total += int(np.prod(sparse.values.dims, dtype=np.int64))
    return total


def save_model(model: onnx.ModelProto, path: str | os.PathLike, transaction: Transaction | None = None) -> int:
    """Write `model` atomically and return the bytes written (model plus external data).

    The IR version and opsets are written as they are in `model` (the input's, so the runtime that ran
    the input runs the output). Models above 2 GB go to external data in '<name>.data' beside the file.
    Within `transaction` the files appear only when it commits (with the other files it writes).
    """
    if transaction is None:
        with Transaction() as own:
            return save_model(model, path, own)
    path = Path(path)
    strip_internal_metadata(model)
    tmp = transaction.path(path)
    large = model.ByteSize() >= TWO_GB
    data_target = path.parent / f"{path.name}.data"
    try:
        if large:
            tmp_data = transaction.path(data_target)
            onnx.save_model(
                model,
                str(tmp),
                save_as_external_data=True,
                location=tmp_data.name,
                all_tensors_to_one_file=True,
                size_threshold=1024,
            )
            _relocate_external(tmp, tmp_data.name, data_target.name)
            return tmp.stat().st_size + tmp_data.stat().st_size
        with open(tmp, "wb") as handle:
            handle.write(model.SerializeToString())
        return tmp.stat().st_size
    except OSError as exc:
        raise OutputPathError(describe_os_error(exc, path)) from None


def _relocate_external(model_path: Path, old_location: str, new_location: str) -> None:
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old_location:
                entry.value = new_location
    with open(model_path, "wb") as handle:
        handle.write(model.SerializeToString())


def file_bytes(path: str | os.PathLike, external_locations: tuple[str, ...] = ()) -> int:
    """Size of a model file plus the external data files it uses."""
    path = Path(path)
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in set(external_locations))


def external_locations(model: onnx.ModelProto) -> tuple[str, ...]:
    """The external data files a model (loaded without its external data) refers to."""
    return tuple(
        sorted({e.value for t in _all_external_tensors(model) for e in t.external_data if e.key == "location"})
    )


def source_bytes(model: onnx.ModelProto) -> int | None:
    """Bytes of the file(s) `model` was loaded from, as recorded by load_model."""
    for prop in model.metadata_props:
        if prop.key == SOURCE_BYTES_KEY:
            return int(prop.value)
    return None


def strip_internal_metadata(model: onnx.ModelProto) -> None:
    kept = [p for p in model.metadata_props if p.key != SOURCE_BYTES_KEY]
    if len(kept) != len(model.metadata_props):
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
