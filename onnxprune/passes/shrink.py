"""Physically remove channels: slice every coupled initializer and fix every shape that counts them.

Given an Analysis and a PruningPlan, each initializer labeled with channels is first replaced by the
plan's update (if any) and then sliced, on each labeled axis, to the positions whose channel is kept.
The rewrite records of the analysis then fix Reshape/Expand/Resize shape entries, Split sizes, Slice
ranges, Gather indices, grouped-Conv `group` and recurrent `hidden_size` attributes.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..analysis import Analysis
from ..analysis.rewrites import (
    AttributeSize,
    ConvGroups,
    CountAttribute,
    DimEntry,
    GatherIndices,
    GatherInput,
    IoDim,
    SliceRange,
    SplitSizes,
)
from ..graph import attributes, opset_version
from ..io import RAW_DTYPES, make_tensor, tensor_array
from ..plan import PruningPlan, check_plan
from .base import Pass, PassResult


def shrink_pass(analysis: Analysis, plan: PruningPlan) -> Pass:
    """The shrink as a pass: it modifies the model when the plan removes or updates anything."""
    return Pass("shrink", lambda model: PassResult(shrink(model, analysis, plan), bool(plan.removed or plan.updates)))


def shrink(model: onnx.ModelProto, analysis: Analysis, plan: PruningPlan) -> onnx.ModelProto:
    """Apply `plan` to `model` in place and return it."""
    check_plan(plan, analysis)
    removed = plan.removed_mask(analysis.num_channels)
    sizes = _NewSizes(analysis, removed)
    _slice_initializers(model, analysis, plan, removed)
    editor = _Editor(model)
    for record in analysis.rewrites:
        _REWRITERS[type(record)](editor, record, sizes, analysis)
    editor.commit()
    del model.graph.value_info[:]
    return model


def _slice_initializers(model, analysis: Analysis, plan: PruningPlan, removed: np.ndarray) -> None:
    for position, tensor in enumerate(model.graph.initializer):
        name = tensor.name
        update = plan.updates.get(name)
        axes = analysis.const_labels.get(name)
        if update is None and not axes:
            continue
        value = tensor_array(tensor) if update is None else np.asarray(update)
        if update is not None and tuple(value.shape) != tuple(tensor.dims):
            raise ValueError(f"update of '{name}' has shape {value.shape}, expected {tuple(tensor.dims)}")
        for axis, line in (axes or {}).items():
            keep = ~removed[line]
            if not keep.all():
                value = np.compress(keep, value, axis=axis)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        _store(model.graph.initializer[position], value.astype(dtype, copy=False))


def _store(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    """Write `value` into `tensor` in place (raw little-endian data), without building a second proto."""
    if tensor.data_type in RAW_DTYPES and np.little_endian:
        name, data_type = tensor.name, tensor.data_type
        tensor.Clear()
        tensor.name, tensor.data_type = name, data_type
        tensor.dims.extend(value.shape)
        tensor.raw_data = np.ascontiguousarray(value).tobytes()
    else:
        tensor.CopyFrom(make_tensor(value, tensor.name))


class _NewSizes:
    """New size of a labeled tensor axis: positions whose channel is kept (or not prunable)."""

    def __init__(self, analysis: Analysis, removed: np.ndarray) -> None:
        self.analysis = analysis
        self.removed = removed

    def kept(self, tensor: str, axis: int) -> np.ndarray | None:
        ids = self.analysis.tensor_labels.get(tensor)
        if ids is None or ids.shape[axis] == 1:
            return None
        moved = np.moveaxis(ids, axis, 0).reshape(ids.shape[axis], -1)
        return ~(self.removed[moved] & (moved >= 0)).all(axis=1)

    def size(self, tensor: str, axis: int) -> int:
        kept = self.kept(tensor, axis)
        dim = self.analysis.tensor_shapes[tensor][axis] if tensor in self.analysis.tensor_shapes else None
        if kept is None:
            ids = self.analysis.tensor_labels.get(tensor)
            if ids is not None and (ids.reshape(-1)[:1] >= 0).all() and self.removed[ids.reshape(-1)[0]]:
                return 0
            return dim
        return int(kept.sum())


class _Editor:
    """Edits of small integer constants and attributes; every edited constant gets a private copy
    per node so a constant shared by several nodes is never changed under the others."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes = {n.name: n for n in model.graph.node}
        self.inits = {t.name: t for t in model.graph.initializer}
        self.private: dict[tuple[str, int], np.ndarray] = {}
        self.in_place: dict[str, np.ndarray] = {}
        self.inserted: dict[str, list[onnx.NodeProto]] = {}

    def insert_before(self, node_name: str, node: onnx.NodeProto) -> None:
        """Add `node` to the graph right before node `node_name` (its inputs exist there)."""
        self.inserted.setdefault(node_name, []).append(node)

    def opset(self) -> int:
        return opset_version(self.model)

    def input_values(self, node_name: str, slot: int) -> np.ndarray:
        key = (node_name, slot)
        if key not in self.private:
            name = self.nodes[node_name].input[slot]
            self.private[key] = np.array(tensor_array(self.inits[name]))
        return self.private[key]

    def set_input(self, node_name: str, slot: int, values: np.ndarray) -> None:
        self.private[(node_name, slot)] = np.asarray(values)

    def constant(self, name: str) -> np.ndarray:
        if name not in self.in_place:
            self.in_place[name] = np.array(tensor_array(self.inits[name]))
        return self.in_place[name]

    def commit(self) -> None:
        for (node_name, slot), values in self.private.items():
            node = self.nodes[node_name]
            new_name = f"{node.input[slot] or 'const'}__{node_name}_{slot}".replace("/", "_")
            # the copy keeps the constant's integer type (Slice wants starts, ends and steps alike)
            self.model.graph.initializer.append(make_tensor(values, new_name))
            node.input[slot] = new_name
        for name, values in self.in_place.items():
            tensor = self.inits[name]
            tensor.CopyFrom(make_tensor(values.astype(tensor_array(tensor).dtype), name))
        if self.inserted:
            nodes = [new for node in self.model.graph.node for new in [*self.inserted.get(node.name, []), node]]
            del self.model.graph.node[:]
            self.model.graph.node.extend(nodes)


def _dim_entry(editor: _Editor, record: DimEntry, sizes: _NewSizes, analysis) -> None:
    value = sizes.size(record.tensor, record.axis)
    if record.slot >= 0:
        values = editor.input_values(record.node, record.slot)
    else:
        values = editor.constant(record.constant)
    flat = values.reshape(-1)
    flat[record.entry] = value


def _split_sizes(editor: _Editor, record: SplitSizes, sizes: _NewSizes, analysis) -> None:
    node = editor.nodes[record.node]
    new = np.array([sizes.size(out, record.axis) for out in node.output], dtype=np.int64)
    if editor.opset() >= 13:
        if len(node.input) < 2:
            node.input.append("")
        editor.set_input(record.node, 1, new)
        _drop_attribute(node, "num_outputs")
    else:
        _set_ints_attribute(node, "split", new.tolist())


def _slice_range(editor: _Editor, record: SliceRange, sizes: _NewSizes, analysis) -> None:
    node = editor.nodes[record.node]
    kept = sizes.kept(record.tensor, record.axis)
    if kept is None:
        return
    dim = len(kept)
    prefix = np.concatenate([[0], np.cumsum(kept)])
    attrs = attributes(node)
    if editor.opset() < 10:
        axes = list(attrs.get("axes", range(len(attrs["starts"]))))
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
    else:
        starts = editor.input_values(record.node, 1).reshape(-1)
        ends = editor.input_values(record.node, 2).reshape(-1)
        has_axes = len(node.input) > 3 and node.input[3]
        axes = editor.input_values(record.node, 3).reshape(-1).tolist() if has_axes else list(range(len(starts)))
    rank = len(analysis.tensor_labels[record.tensor].shape)
    entry = [a + rank if a < 0 else a for a in axes].index(record.axis)
    start, end, _ = slice(int(starts[entry]), int(ends[entry])).indices(dim)
    starts[entry], ends[entry] = prefix[start], prefix[max(start, end)]
    if editor.opset() < 10:
        _set_ints_attribute(node, "starts", [int(s) for s in starts])
        _set_ints_attribute(node, "ends", [int(e) for e in ends])


def _gather_indices(editor: _Editor, record: GatherIndices, sizes: _NewSizes, analysis) -> None:
    kept = sizes.kept(record.tensor, record.axis)
    if kept is None:
        return
    indices = editor.input_values(record.node, 1)
    normalized = np.where(indices < 0, indices + len(kept), indices)
    new_position = np.cumsum(kept) - 1
    survivors = normalized[kept[normalized]] if normalized.ndim else normalized  # a scalar pick is frozen
    editor.set_input(record.node, 1, new_position[survivors].astype(indices.dtype))


def _conv_groups(editor: _Editor, record: ConvGroups, sizes: _NewSizes, analysis) -> None:
    node = editor.nodes[record.node]
    old = analysis.const_labels[record.weight][0]
    kept = int((~sizes.removed[old]).sum())
    new_groups = record.groups * kept // len(old)
    _set_int_attribute(node, "group", new_groups)


def _attribute_size(editor: _Editor, record: AttributeSize, sizes: _NewSizes, analysis) -> None:
    node = editor.nodes[record.node]
    if any(a.name == record.attribute for a in node.attribute):
        kept = int((~sizes.removed[analysis.const_labels[record.weight][record.axis]]).sum())
        _set_int_attribute(node, record.attribute, kept)


def _gather_input(editor: _Editor, record: GatherInput, sizes: _NewSizes, analysis) -> None:
    kept = ~sizes.removed[analysis.const_labels[record.weight][record.weight_axis]]
    if kept.all():
        return
    node = editor.nodes[record.node]
    source = node.input[record.slot]
    stem = f"{source}__{record.node}_{record.slot}".replace("/", "_")
    editor.model.graph.initializer.append(make_tensor(np.flatnonzero(kept).astype(np.int64), f"{stem}_kept"))
    gather = onnx.helper.make_node("Gather", [source, f"{stem}_kept"], [stem], name=f"{stem}_gather", axis=record.axis)
    editor.insert_before(record.node, gather)
    node.input[record.slot] = stem


def _count_attribute(editor: _Editor, record: CountAttribute, sizes: _NewSizes, analysis) -> None:
    if record.source in analysis.const_labels:
        line = analysis.const_labels[record.source][record.axis]
        kept = ~(sizes.removed[line] & (line >= 0))
    else:
        kept = sizes.kept(record.source, record.axis)
    if kept is None:
        return
    value = int(kept[record.start : record.stop].sum()) // record.unit
    node = editor.nodes[record.node]
    if record.entry < 0:
        _set_int_attribute(node, record.attribute, value)
        return
    values = list(attributes(node)[record.attribute])
    values[record.entry] = value
    _set_ints_attribute(node, record.attribute, values)


def _io_dim(editor: _Editor, record: IoDim, sizes: _NewSizes, analysis) -> None:
    """A graph input or output with heads (a KV cache) declares its new size (a symbolic dim stays)."""
    values = editor.model.graph.input if record.kind == "input" else editor.model.graph.output
    for value in values:
        if value.name == record.tensor:
            dim = value.type.tensor_type.shape.dim[record.axis]
            if dim.HasField("dim_value"):
                dim.dim_value = int(sizes.size(record.tensor, record.axis))


def _drop_attribute(node, name: str) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)


def _set_ints_attribute(node, name: str, values: list[int]) -> None:
    _drop_attribute(node, name)
    node.attribute.append(onnx.helper.make_attribute(name, values))


def _set_int_attribute(node, name: str, value: int) -> None:
    _drop_attribute(node, name)
    node.attribute.append(onnx.helper.make_attribute(name, int(value)))


_REWRITERS = {
    DimEntry: _dim_entry,
    SplitSizes: _split_sizes,
    SliceRange: _slice_range,
    GatherIndices: _gather_indices,
    ConvGroups: _conv_groups,
    AttributeSize: _attribute_size,
    GatherInput: _gather_input,
    CountAttribute: _count_attribute,
    IoDim: _io_dim,
}
