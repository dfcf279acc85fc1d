"""Weight-sets W_i and outgoing weights a_i of a group's channels, read from the model and written back.

Every constant labeled with the group's channels plays one of four parts for channel i:

- SCALED: the incoming weights and bias of every producer (the slice of the weight along its output axis, the
  bias entry, the bias of a MatMul's Add). W_i is their concatenation, over all producers of the group.
- SLOPE: a PRelu slope. Part of the weight-set (two channels with other slopes differ), but not scaled by the
  normalized variant: prelu(r z) = r prelu(z) whatever the slope.
- OTHER: any other per-channel constant on the way (an unfolded BN, a per-channel Mul). Part of W_i; it
  rules out the normalized variant.
- OUT: every consumer's weight positions that read channel i (a Gemm column, kh*kw kernels of every Conv
  output, the H*W block after a Flatten). a_i is their concatenation.

Channel i may have several positions on a weight axis (Flatten blocks, grouped convolutions); the k-th position
of i corresponds to the k-th position of j, so a_i += a_j adds the blocks position by position. Two channels can
be merged only when they have the same number of positions in every labeled constant ("class"): a channel of one
half of a Split never absorbs one of the other half. Positions of channels that earlier groups removed are left
out of W_i, so distances are those of the network the plan produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..analysis import Analysis, Group
from ..graph import GraphIndex

SCALED, SLOPE, OTHER, OUT = "scaled", "slope", "other", "out"


@dataclass(frozen=True)
class Piece:
    name: str
    axis: int
    role: str


@dataclass(frozen=True)
class OutSlot:
    """Columns start:start+width of A hold constant `name` at `positions` [n_k, p] along `axis`."""

    name: str
    axis: int
    positions: np.ndarray
    start: int
    width: int


@dataclass(frozen=True)
class ChannelClass:
    """Channels of a group with the same layout: rows into the group's channel list and their matrices."""

    rows: np.ndarray  # indices into MergeProblem.channels
    weights: np.ndarray  # W: [n_k, d] SCALED and OTHER pieces (float32 when the model's are, else float64)
    slopes: np.ndarray  # [n_k, e] SLOPE pieces
    outgoing: np.ndarray  # A: [n_k, m] OUT pieces
    out_slots: tuple[OutSlot, ...]  # where each OUT piece sits in A

    @property
    def width(self) -> int:
        """m: the number of outgoing weights of each channel of the class."""
        return sum(slot.width for slot in self.out_slots)


@dataclass(frozen=True)
class MergeProblem:
    channels: np.ndarray
    pieces: tuple[Piece, ...]
    classes: tuple[ChannelClass, ...]

    def layout_only(self) -> MergeProblem:
        """The same problem without its matrices (what write_outgoing needs)."""
        empty = np.zeros((0, 0))
        classes = tuple(ChannelClass(c.rows, empty, empty, empty, c.out_slots) for c in self.classes)
        return MergeProblem(self.channels, self.pieces, classes)

    @property
    def has_other(self) -> bool:
        return any(p.role == OTHER for p in self.pieces)


def group_pieces(index: GraphIndex, analysis: Analysis, group: Group) -> tuple[Piece, ...]:
    """Every (constant, axis) labeled with the group's channels, with its part."""
    channels = np.asarray(group.channels)
    scaled = {(p.weight, p.axis) for p in group.producers} | {(p.bias, 0) for p in group.producers if p.bias}
    out = {(c.weight, c.axis) for c in group.consumers}
    outputs = {p.output for p in group.producers}
    pieces = []
    for name, axes in analysis.const_labels.items():
        for axis, line in axes.items():
            if not np.isin(line, channels).any():
                continue
            key = (name, axis)
            role = SCALED if key in scaled else OUT if key in out else _role(index, name, outputs)
            pieces.append(Piece(name, axis, role))
    return tuple(pieces)


def _role(index: GraphIndex, name: str, producer_outputs: set[str]) -> str:
    """A per-channel constant that is neither a producer's weight nor a consumer's: bias Add, slope, other."""
    for position, slot in index.consumers.get(name, []):
        node = index.nodes[position]
        if node.op_type == "PRelu" and slot == 1:
            return SLOPE
        if node.op_type == "Add" and any(n in producer_outputs for n in node.input if n != name):
            return SCALED
    return OTHER


def build_problem(
    index: GraphIndex,
    analysis: Analysis,
    group: Group,
    current: dict[str, np.ndarray],
    removed: np.ndarray,
) -> MergeProblem:
    """W, slopes and A for every class of the group's channels.

    `current`: values of constants already changed by earlier groups (name -> array, original shape).
    `removed`: mask over channel ids (+1 slot for label -1) of channels earlier groups removed.
    """
    channels = np.asarray(group.channels, dtype=np.int64)
    pieces = group_pieces(index, analysis, group)
    counts = np.stack([_counts(analysis.const_labels[p.name][p.axis], channels) for p in pieces], axis=1)
    _, class_of = np.unique(counts, axis=0, return_inverse=True)
    class_of = class_of.reshape(-1)
    classes = []
    for k in range(int(class_of.max()) + 1 if len(class_of) else 0):
        rows = np.flatnonzero(class_of == k)
        classes.append(_class(index, analysis, pieces, channels[rows], counts[rows[0]], rows, current, removed))
    return MergeProblem(channels, pieces, tuple(classes))


def _counts(line: np.ndarray, channels: np.ndarray) -> np.ndarray:
    valid = line[line >= 0]
    size = max(int(channels.max()) + 1, int(valid.max()) + 1 if valid.size else 0)
    return np.bincount(valid, minlength=size)[channels]


def position_matrix(line: np.ndarray, channels: np.ndarray, per_channel: int) -> np.ndarray:
    """[len(channels), per_channel] indices into `line`: the positions of each channel, in order."""
    order = np.argsort(line, kind="stable")
    starts = np.searchsorted(line[order], channels)
    return order[starts[:, None] + np.arange(per_channel)[None, :]]


def _value(index: GraphIndex, current: dict[str, np.ndarray], name: str) -> np.ndarray:
    return current[name] if name in current else index.constant(name)


def _block_source(value: np.ndarray, axis: int, positions: np.ndarray) -> tuple[np.ndarray, int]:
    """value with `axis` first, and the width of one channel's row: positions.shape[1] * (size of the rest)."""
    moved = np.moveaxis(value, axis, 0)
    return moved, positions.shape[1] * int(np.prod(moved.shape[1:], dtype=np.int64))


def _fill(n: int, blocks: list[tuple[np.ndarray, np.ndarray, int]], dtype=np.float64) -> np.ndarray:
    """[n, total width] matrix of the channels' rows, written block by block (no concatenation copy)."""
    out = np.empty((n, sum(width for _, _, width in blocks)), dtype=dtype)
    column = 0
    for moved, positions, width in blocks:
        out[:, column : column + width] = _rows(moved, positions).reshape(n, width)
        column += width
    return out


def _rows(moved: np.ndarray, positions: np.ndarray):
    """moved[positions]; a view when every channel has one position and they are consecutive (the usual layer)."""
    first = positions[:, 0]
    if positions.shape[1] == 1 and len(first) and (np.diff(first) == 1).all():
        return moved[first[0] : first[-1] + 1]
    return moved[positions]


def _class(index, analysis, pieces, channels, counts, rows, current, removed) -> ChannelClass:
    parts: dict[str, list] = {SCALED: [], SLOPE: [], OTHER: [], OUT: []}
    out_slots, column = [], 0
    for piece, count in zip(pieces, counts.tolist(), strict=True):
        if count == 0:
            continue
        axes = analysis.const_labels[piece.name]
        positions = position_matrix(axes[piece.axis], channels, count)
        value = _value(index, current, piece.name)
        if piece.role != OUT:
            value = _drop_removed(value, axes, piece.axis, removed)
        moved, width = _block_source(value, piece.axis, positions)
        if piece.role == OUT:
            out_slots.append(OutSlot(piece.name, piece.axis, positions, column, width))
            column += width
        parts[piece.role].append((moved, positions, width))
    n = len(channels)
    return ChannelClass(
        rows=rows,
        weights=_fill(n, parts[SCALED] + parts[OTHER], _weight_dtype(parts[SCALED] + parts[OTHER])),
        slopes=_fill(n, parts[SLOPE]),
        outgoing=_fill(n, parts[OUT]),
        out_slots=tuple(out_slots),
    )


def _weight_dtype(blocks) -> np.dtype:
    """float32 weight-sets stay float32 (squared_distances picks the Gram's precision); others are float64."""
    kinds = {np.dtype(moved.dtype) for moved, _, _ in blocks}
    return np.dtype(np.float32) if kinds == {np.dtype(np.float32)} else np.dtype(np.float64)


def _drop_removed(value: np.ndarray, axes: dict[int, np.ndarray], keep_axis: int, removed: np.ndarray) -> np.ndarray:
    """Leave out positions of other labeled axes whose channel an earlier group removed."""
    for axis, line in axes.items():
        if axis != keep_axis:
            keep = ~removed[line]
            if not keep.all():
                value = np.compress(keep, value, axis=axis)
    return value


def write_outgoing(
    index: GraphIndex,
    problem: MergeProblem,
    changes: list[tuple[np.ndarray, np.ndarray]],
    current: dict[str, np.ndarray],
) -> list[str]:
    """Store new outgoing rows back into the consumers' weights (copies in the constant's dtype, kept in `current`).

    changes[k] = (rows of class k that changed, their new A rows). Returns the names of the constants written.
    """
    written: dict[str, None] = {}
    for cls, (rows, values) in zip(problem.classes, changes, strict=True):
        if not len(rows):
            continue
        for slot in cls.out_slots:
            if slot.name not in written:
                current[slot.name] = np.array(_value(index, current, slot.name))
                written[slot.name] = None
            moved = np.moveaxis(current[slot.name], slot.axis, 0)
            block = values[:, slot.start : slot.start + slot.width]
            positions = slot.positions[rows]
            moved[positions] = block.reshape(positions.shape + moved.shape[1:])
    return list(written)
