"""Rules for ops that move positions around: Reshape, Flatten, Transpose, (Un)Squeeze, Concat, Split,
Slice, Gather, Pad, Resize, Expand, Tile, and Shape (which reads sizes at run time).

Labels are pushed through the same op on the static shape; shape constants that count a labeled axis
are recorded as rewrites for the shrink.
"""

from __future__ import annotations

import numpy as np

from ..shape_trace import FOLLOWED, Entry, trace_vector
from . import ops_heads as heads
from .context import Propagation
from .labels import Unsupported, along, compress, reshape_ids, varying_axes, with_rank
from .rewrites import DimEntry, GatherIndices, SliceRange, SplitSizes


def _ints(p: Propagation, node, slot: int, attrs, attr: str, opset_input: int, opset: int):
    """An integer list given as attribute (old opsets) or constant input (new opsets); None if absent."""
    if opset < opset_input:
        value = attrs.get(attr)
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
    if len(node.input) <= slot or not node.input[slot]:
        return None
    value = p.constant(node.input[slot])
    if value is None:
        raise Unsupported(f"input '{node.input[slot]}' ({attr}) is computed at run time")
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _norm_axes(axes, rank: int) -> list[int]:
    return [a + rank if a < 0 else a for a in axes]


# ---- Reshape family -----------------------------------------------------------------------------
def reshape(p: Propagation, node, attrs, opset) -> None:
    """Reshape: labels follow the elements. A labeled axis split in several is kept rectangular: the
    inner positions of each outer slice go together when a per-slice computation follows (attention
    heads, ops_heads.split_ties_slices), else every outer slice keeps the same inner positions (a
    channel shuffle)."""
    ids = p.get(node.input[0])
    if ids is None:
        return
    in_shape, out_shape = p.index.shape(node.input[0]), p.index.shape(node.output[0])
    if in_shape is None or out_shape is None:
        raise Unsupported("input or output shape is unknown")
    out = reshape_ids(ids, in_shape, out_shape)
    kind = heads.split_ties_slices(p, node.output[0], out) if len(varying_axes(out)) > 1 else None
    if kind:
        out = heads.tie_slices(p, out, kind)
    else:
        out = _tie_outer_axes(p, out)
    _record_target_entries(p, node, out, out_shape)
    p.set(node.output[0], out)


def _tie_outer_axes(p: Propagation, out: np.ndarray) -> np.ndarray:
    axes = varying_axes(out)
    if len(axes) <= 1:
        return out
    inner = axes[-1]
    columns = np.moveaxis(out, inner, -1).reshape(-1, out.shape[inner])
    for column in columns.T:
        p.unify(np.full_like(column, column.max()), column, "a reshaped channel axis mixes removable positions")
    return compress(p.uf.roots(out))


def _record_target_entries(p: Propagation, node, out: np.ndarray, out_shape) -> None:
    entries = trace_vector(p.index, node.input[1])
    if entries is None or len(entries) != len(out_shape):
        raise Unsupported("its target shape is computed at run time by ops that cannot be followed")
    for axis, entry in enumerate(entries):
        if axis in varying_axes(out):
            _check_entry(p, node, 1, entry, out, node.output[0], axis, axis)
        elif _reads_channels(p, entry):
            raise Unsupported(f"the size of its axis {axis}, which holds no channels, is computed from a channel count")


def freeze_count_reads(p: Propagation, node, slot: int) -> None:
    """A shape input of a node whose data holds no channels must not be computed from a channel count
    (that node's rule checks nothing): the channels read there are frozen. Run after propagation on the
    shape inputs the Shape rule let counts reach (Propagation.count_sinks)."""
    what = "the size of an axis that holds no channels is computed from a channel count"
    reason = f"{node.op_type} '{node.name}': {what}"
    for entry in trace_vector(p.index, node.input[slot]) or []:
        for source, axis in (entry.monomial() or ((), 0, 0))[0]:
            if _labeled_read(p, source, axis):
                p.freeze(p.get(source), reason)


def _labeled_read(p: Propagation, source: str, axis: int) -> bool:
    ids = p.get(source)
    return ids is not None and axis < ids.ndim and ids.shape[axis] > 1


def _reads_channels(p: Propagation, entry: Entry) -> bool:
    terms = entry.monomial()
    reads = terms[0] if terms is not None else ()
    return any(_labeled_read(p, source, axis) for source, axis in reads)


def _check_entry(p: Propagation, node, slot: int, entry, out: np.ndarray, tensor: str, axis: int, position: int):
    """Entry `position` of a shape vector that fixes the size of a labeled axis: -1 adapts by itself, a
    constant is rewritten (a shared one in a private copy, where the vector is built from it by Concat),
    a size read from a tensor must come from a tensor with the same labels."""
    if entry.origin == "const" and entry.value == -1:
        return
    if entry.origin == "const":
        direct = entry.source == node.input[slot]
        if direct or len(p.index.consumers.get(entry.source, [])) == 1:
            p.rewrite(DimEntry(node.name, slot if direct else -1, entry.source, entry.index, tensor, axis))
            return
        reader = _reader_on_path(p, node.input[slot], entry.source, position)
        if reader is None:
            raise Unsupported(f"shape constant '{entry.source}' is shared with other nodes")
        # the node on the way that reads the shared constant gets a private copy of it
        p.rewrite(DimEntry(reader[0], reader[1], entry.source, entry.index, tensor, axis))
        return
    if entry.origin == "shape":
        source = p.get(entry.source)
        if source is not None and entry.index < source.ndim and _same_line(p, source, entry.index, out, axis):
            return
    if entry.origin in ("shape", "product") and _scales_exactly(p, entry, out, axis):
        return
    raise Unsupported(f"the size of labeled axis {axis} is computed at run time")


def _reader_on_path(p: Propagation, start: str, constant: str, position: int, depth: int = 12):
    """(node, slot) of the node among the ops `start` is computed from that puts `constant` at entry
    `position` of `start` (through Concat, Cast, Identity, (Un)Squeeze, Reshape); None otherwise. The
    private copy this node gets must size only tensors with the same channels: checked after propagation
    (propagate._freeze_shared_shape_vectors)."""
    node = p.index.node_producer(start)
    if node is None or depth < 0:
        return None
    slot = 0
    if node.op_type == "Concat":
        sizes = [len(trace_vector(p.index, name) or ()) for name in node.input]
        while slot < len(sizes) and position >= sizes[slot]:
            position -= sizes[slot]
            slot += 1
        if slot == len(sizes):
            return None
    elif node.op_type not in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape"):
        return None
    if node.input[slot] == constant:
        return node.name, slot
    return _reader_on_path(p, node.input[slot], constant, position, depth - 1)


def _scales_exactly(p: Propagation, entry: Entry, out: np.ndarray, axis: int) -> bool:
    """A size computed at run time as S * F (S: one channel count read by Shape, F: constants and
    sizes of axes without channels, divided last by a constant d) stays right after any removal when
    every channel c, with m_c positions on the read axis and k_c on the labeled axis, has
    k_c = m_c * F exactly and m_c * F * d is divisible by d (so the floor division is exact too);
    positions that cannot be removed (-1) count as one more such channel."""
    reads, multiplier, divisor = entry.monomial()
    labeled = [(source, index) for source, index in reads if _labeled_read(p, source, index)]
    if len(labeled) != 1:
        return False
    factor = multiplier
    for source, index in reads:
        dim = (p.index.shape(source) or ())[index] if (source, index) != labeled[0] else 1
        if not isinstance(dim, int):
            return False
        factor *= dim
    source_counts = _channel_counts(p, p.get(labeled[0][0]), labeled[0][1])
    out_counts = _channel_counts(p, out, axis)
    if source_counts is None or out_counts is None or set(source_counts) != set(out_counts):
        return False
    return all(m * factor % divisor == 0 and out_counts[c] * divisor == m * factor for c, m in source_counts.items())


def _channel_counts(p: Propagation, ids: np.ndarray, axis: int) -> dict[int, int] | None:
    try:
        line = p.uf.roots(along(ids, axis))
    except Unsupported:
        return None
    values, counts = np.unique(np.where(line >= 0, line, -1), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def _same_line(p: Propagation, source: np.ndarray, source_axis: int, out: np.ndarray, axis: int) -> bool:
    if source.shape[source_axis] != out.shape[axis] or len(varying_axes(source)) != 1:
        return False
    a = p.uf.roots(source.reshape(-1))
    b = p.uf.roots(out.reshape(-1))
    return np.array_equal(a, b)


def flatten(p: Propagation, node, attrs, opset) -> None:
    ids = p.get(node.input[0])
    if ids is None:
        return
    in_shape, out_shape = p.index.shape(node.input[0]), p.index.shape(node.output[0])
    if in_shape is None or out_shape is None:
        raise Unsupported("input or output shape is unknown")
    p.set(node.output[0], reshape_ids(ids, in_shape, out_shape))


def transpose(p: Propagation, node, attrs, opset) -> None:
    ids = p.get(node.input[0])
    if ids is None:
        return
    perm = attrs.get("perm") or list(range(ids.ndim))[::-1]
    p.set(node.output[0], np.transpose(ids, perm))


def squeeze(p: Propagation, node, attrs, opset) -> None:
    ids = p.get(node.input[0])
    if ids is None:
        return
    axes = _ints(p, node, 1, attrs, "axes", 13, opset)
    if axes is None:
        shape = p.index.shape(node.input[0])
        if shape is None:
            raise Unsupported("input shape is unknown")
        axes = [a for a, d in enumerate(shape) if d == 1]
    axes = _norm_axes(axes, ids.ndim)
    if any(ids.shape[a] != 1 for a in axes):
        raise Unsupported("squeezes a labeled axis")
    p.set(node.output[0], np.squeeze(ids, axis=tuple(axes)))


def unsqueeze(p: Propagation, node, attrs, opset) -> None:
    ids = p.get(node.input[0])
    if ids is None:
        return
    axes = _ints(p, node, 1, attrs, "axes", 13, opset) or []
    rank = ids.ndim + len(axes)
    out = ids
    for axis in sorted(_norm_axes(axes, rank)):
        out = np.expand_dims(out, axis)
    p.set(node.output[0], out)


# ---- Concat / Split / Slice / Gather ------------------------------------------------------------
def concat(p: Propagation, node, attrs, opset) -> None:
    """Concat: labels concatenate along the axis (unlabeled inputs add -1 positions); labels on the
    other axes must agree between inputs, so they are unified like an elementwise join."""
    names = [n for n in node.input if n]
    if not any(p.get(n) is not None for n in names):
        return
    rank = p.rank(node.output[0])
    axis = _norm_axes([int(attrs.get("axis", 0))], rank)[0]
    _adopt_caches(p, node, names, rank, axis)
    pieces = []
    for name in names:
        ids = p.get(name)
        ids = np.full((1,) * rank, -1, dtype=np.int64) if ids is None else with_rank(ids, rank)
        pieces.append(np.repeat(ids, p.dim(name, axis), axis=axis) if ids.shape[axis] == 1 else ids)
    target = [1] * rank
    reason = f"Concat '{node.name}' joins channels with inputs whose channels cannot be removed"
    for other in range(rank):
        if other == axis or all(piece.shape[other] == 1 for piece in pieces):
            continue
        lines = [along(compress(piece), other) if piece.shape[other] > 1 else None for piece in pieces]
        size = next(len(line) for line in lines if line is not None)
        target[other] = size
        joined = None
        for name, line in zip(names, lines, strict=True):
            if line is None and p.get(name) is None and p.dim(name, other) > 1:
                line = np.full(size, -1)
            if line is not None:
                joined = line if joined is None else p.unify(joined, line, reason)
    expanded = []
    for piece in pieces:
        shape = list(target)
        shape[axis] = piece.shape[axis]
        expanded.append(np.broadcast_to(piece, shape))
    p.set(node.output[0], p.uf.roots(np.concatenate(expanded, axis=axis)))


def _adopt_caches(p: Propagation, node, names: list[str], rank: int, axis: int) -> None:
    """Unlabeled graph inputs concatenated along another axis with attention heads (past KV caches)
    take the heads' labels (ops_heads.adopt_graph_input)."""
    labeled = [with_rank(p.get(n), rank) for n in names if p.get(n) is not None]
    reference = labeled[0]
    if reference.shape[axis] != 1:
        return
    for name in names:
        if p.get(name) is None and p.index.rank(name) == rank:
            heads.adopt_graph_input(p, node, name, reference)


def split(p: Propagation, node, attrs, opset) -> None:
    ids = p.get(node.input[0])
    if ids is None:
        return
    axis = _norm_axes([int(attrs.get("axis", 0))], ids.ndim)[0]
    if ids.shape[axis] == 1:
        for out in node.output:
            p.set(out, ids)
        return
    sizes = _ints(p, node, 1, attrs, "split", 13, opset)
    if sizes is None:
        sizes = [p.dim(out, axis) for out in node.output]
    bounds = np.cumsum([0] + sizes)
    for out, start, end in zip(node.output, bounds[:-1], bounds[1:], strict=True):
        p.set(out, np.take(ids, np.arange(start, end), axis=axis))
    p.rewrite(SplitSizes(node.name, axis))


def slice_(p: Propagation, node, attrs, opset) -> None:
    ids = p.get(node.input[0])
    if ids is None:
        return
    rank = ids.ndim
    if opset < 10:
        starts, ends = list(attrs.get("starts", [])), list(attrs.get("ends", []))
        axes, steps = list(attrs.get("axes", range(len(starts)))), [1] * len(starts)
    else:
        axes = _ints(p, node, 3, attrs, "axes", 10, opset)
        sliced = varying_axes(ids) if axes is None else _norm_axes(axes, rank)
        if not set(sliced) & set(varying_axes(ids)):
            return p.set(node.output[0], ids)
        starts = _ints(p, node, 1, attrs, "starts", 10, opset)
        ends = _ints(p, node, 2, attrs, "ends", 10, opset)
        steps = _ints(p, node, 4, attrs, "steps", 10, opset) or [1] * len(starts)
        axes = axes if axes is not None else list(range(len(starts)))
    out = ids
    for axis, start, end, step in zip(_norm_axes(axes, rank), starts, ends, steps, strict=True):
        if ids.shape[axis] == 1:
            continue
        if step != 1:
            raise Unsupported(f"a step of {step} on a labeled axis has no rule")
        out = np.take(out, np.arange(ids.shape[axis])[slice(start, end)], axis=axis)
        p.rewrite(SliceRange(node.name, axis, node.input[0]))
    p.set(node.output[0], out)


def gather(p: Propagation, node, attrs, opset) -> None:
    ids = p.get(node.input[0])
    if ids is None:
        return
    axis = _norm_axes([int(attrs.get("axis", 0))], ids.ndim)[0]
    picks = p.constant(node.input[1])
    if ids.shape[axis] == 1:
        shape = (1,) * (0 if picks is None else np.asarray(picks).ndim)
        if picks is None:
            shape = (1,) * p.rank(node.input[1])
        out = ids.reshape(ids.shape[:axis] + shape + ids.shape[axis + 1 :])
        return p.set(node.output[0], out)
    if picks is None:
        raise Unsupported("indices on a labeled axis are computed at run time")
    picks = np.asarray(picks)
    picks = np.where(picks < 0, picks + ids.shape[axis], picks)
    out = np.take(ids, picks, axis=axis)
    if picks.ndim == 0 and np.unique(out[out >= 0]).size <= 1:
        # one position picked: it must stay; it does while it holds several channels (the q of every
        # head of a [3, heads, d] qkv split), which cannot all go, and the others stay in place
        p.freeze(out, f"Gather '{node.name}' selects a single channel")
    p.rewrite(GatherIndices(node.name, axis, node.input[0]))
    p.set(node.output[0], out)


# ---- Pad / Resize / Expand / Tile -------------------------------------------------------------
def pad(p: Propagation, node, attrs, opset) -> None:
    ids = p.get(node.input[0])
    if ids is None:
        return
    rank = ids.ndim
    pads = _ints(p, node, 1, attrs, "pads", 11, opset) if opset >= 11 else list(attrs.get("pads", []))
    axes = _ints(p, node, 3, attrs, "axes", 18, opset) if opset >= 18 else None
    axes = list(range(rank)) if axes is None else _norm_axes(axes, rank)
    if pads is None:
        raise Unsupported("pads are missing")
    count = len(axes)
    for i, axis in enumerate(axes):
        if ids.shape[axis] > 1 and (pads[i] != 0 or pads[i + count] != 0):
            raise Unsupported("pads a labeled axis")
    p.set(node.output[0], ids)


def resize(p: Propagation, node, attrs, opset) -> None:
    ids = p.get(node.input[0])
    if ids is None:
        return
    varying = varying_axes(ids)
    if node.op_type == "Upsample" or opset < 11:
        scales = p.constant(node.input[1]) if len(node.input) > 1 else attrs.get("scales")
        sizes = None
    else:
        if attrs.get("axes") is not None:
            raise Unsupported("the axes attribute has no rule")
        scales = p.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        sizes = node.input[3] if len(node.input) > 3 and node.input[3] else None
    if sizes is not None:
        entries = trace_vector(p.index, sizes)
        if entries is None:
            raise Unsupported("sizes are computed at run time")
        for axis in varying:
            _check_entry(p, node, 3, entries[axis], ids, node.output[0], axis, axis)
    elif scales is None or any(float(np.asarray(scales).reshape(-1)[a]) != 1.0 for a in varying):
        raise Unsupported("scales on a labeled axis are not constant 1")
    p.set(node.output[0], ids)


def expand(p: Propagation, node, attrs, opset) -> None:
    ids = p.get(node.input[0])
    if ids is None:
        return
    rank = p.rank(node.output[0])
    ids = with_rank(ids, rank)
    entries = trace_vector(p.index, node.input[1])
    if entries is None:
        raise Unsupported("the target shape is computed at run time by ops that cannot be followed")
    offset = rank - len(entries)
    for axis in varying_axes(ids):
        if axis >= offset and entries[axis - offset].value != 1:
            _check_entry(p, node, 1, entries[axis - offset], ids, node.output[0], axis, axis - offset)
    p.set(node.output[0], ids)


def tile(p: Propagation, node, attrs, opset) -> None:
    ids = p.get(node.input[0])
    if ids is None:
        return
    repeats = p.constant(node.input[1])
    if repeats is None or any(int(np.asarray(repeats)[a]) != 1 for a in varying_axes(ids)):
        raise Unsupported("repeats a labeled axis")
    p.set(node.output[0], ids)


# ---- Shape: sizes read at run time -------------------------------------------------------------
_SHAPE_SINKS = {("Reshape", 1), ("Expand", 1), ("Resize", 3)}


def shape(p: Propagation, node, attrs, opset) -> None:
    """Shape of a labeled tensor: allowed when every use of a labeled size either ignores it
    (Gather of other axes) or flows through ops shape_trace can trace (FOLLOWED) into a shape input whose
    rule checks where each entry comes from (_check_entry: copied, or scaled exactly)."""
    ids = p.get(node.input[0])
    if ids is None:
        return
    start = int(attrs.get("start", 0))
    end = int(attrs.get("end", ids.ndim))
    covered = [a for a in range(ids.ndim)[start:end]]
    labeled = [i for i, a in enumerate(covered) if ids.shape[a] > 1]
    if labeled and not _sizes_reach_checked_sinks(p, node.output[0], set(labeled), depth=10):
        raise Unsupported("a channel count is read at run time and used in arithmetic that cannot be followed")


def _sizes_reach_checked_sinks(p: Propagation, name: str, positions: set[int], depth: int) -> bool:
    if depth < 0:
        return False
    if name in p.index.output_names:
        return False
    for position, slot in p.index.consumers.get(name, []):
        user = p.index.nodes[position]
        if (user.op_type, slot) in _SHAPE_SINKS:
            p.count_sinks.add((position, slot))
            continue
        if user.op_type == "Gather" and slot == 0:
            picks = p.constant(user.input[1])
            if picks is not None and not set(np.asarray(picks).reshape(-1).tolist()) & positions:
                continue
        if user.op_type == "Shape":
            continue  # the shape of a shape vector does not depend on the sizes it holds
        if user.op_type not in FOLLOWED:
            return False
        if not _sizes_reach_checked_sinks(p, user.output[0], set(range(64)), depth - 1):
            return False
    return True
