"""The state of channel-atom propagation, and the operations op rules use on it.

Rules (analysis/ops.py) read labels of a node's inputs and set labels of its outputs. They create atoms
for producer outputs, unify atoms that must be removed together, label constants that must be sliced
with them, freeze atoms that cannot be removed (with a reason), and record the shape rewrites a shrink
will need. Nothing here changes the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..graph import GraphIndex
from .labels import Unsupported, compress
from .rewrites import Rewrite
from .unionfind import UnionFind


@dataclass(frozen=True)
class ProducerRole:
    """A node whose weight creates channels: output channel k is `weight` sliced at `axis`[k]."""

    node: str
    op_type: str
    weight: str
    axis: int
    bias: str | None
    output: str


@dataclass(frozen=True)
class ConsumerRole:
    """A node whose weight reads labeled channels along `axis` of `weight`; `recurrent`: the layer's
    own recurrence (column j of R reads hidden unit j of the same node), which methods that model one
    input-to-output layer cannot compensate."""

    node: str
    op_type: str
    weight: str
    axis: int
    input: str
    recurrent: bool = False


@dataclass
class Propagation:
    """Mutable state of one analysis run (internal to the analysis package)."""

    index: GraphIndex
    uf: UnionFind = field(default_factory=UnionFind)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    const_labels: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    const_uses: dict[str, set[tuple[str, int]]] = field(default_factory=dict)
    frozen: dict[int, str] = field(default_factory=dict)
    weight_atoms: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    producers: list[ProducerRole] = field(default_factory=list)
    consumers: list[ConsumerRole] = field(default_factory=list)
    rewrites: list[Rewrite] = field(default_factory=list)
    count_sinks: set[tuple[int, int]] = field(default_factory=set)
    units: dict[int, str] = field(default_factory=dict)  # atom -> the unit it is part of ("head of 8")
    head_sizes: dict[int, int] = field(default_factory=dict)  # atom of a split-out head -> its head size

    # ---- reading -------------------------------------------------------------------------------
    def get(self, name: str) -> np.ndarray | None:
        """Labels of tensor `name` (rank = the tensor's rank), or None if nothing on it is prunable."""
        return self.labels.get(name) if name else None

    def rank(self, name: str) -> int:
        rank = self.index.rank(name)
        if rank is None:
            tried = self.index.shape_sources.get(name, "shape inference could not type it")
            raise Unsupported(f"the rank of '{name}' is unknown ({tried})")
        return rank

    def dim(self, name: str, axis: int) -> int:
        shape = self.index.shape(name)
        if shape is None or not isinstance(shape[axis], int):
            source = self.index.shape_sources.get(name)
            raise Unsupported(f"dimension {axis} of '{name}' is not static" + (f" ({source})" if source else ""))
        return shape[axis]

    def constant(self, name: str) -> np.ndarray | None:
        return self.index.constant(name) if name else None

    # ---- writing -------------------------------------------------------------------------------
    def set(self, name: str, ids: np.ndarray | None) -> None:
        if not name or ids is None:
            return
        ids = compress(np.asarray(ids, dtype=np.int64))
        if (ids >= 0).any():
            self.labels[name] = ids

    def new_atoms(self, weight: str, axis: int, count: int) -> np.ndarray:
        """Atoms of `weight`'s `axis`; a weight shared by several nodes yields the same atoms."""
        key = (weight, axis)
        if key not in self.weight_atoms:
            self.weight_atoms[key] = self.uf.make(count)
        return self.weight_atoms[key]

    def unify(self, a: np.ndarray, b: np.ndarray, reason: str) -> np.ndarray:
        """Unify label arrays `a` and `b` position by position (after broadcasting).

        A position labeled in one and -1 in the other cannot be removed: its atom is frozen with
        `reason`. Returns the joined labels.
        """
        a, b = np.broadcast_arrays(a, b)
        both = (a >= 0) & (b >= 0)
        for x, y in set(zip(a[both].tolist(), b[both].tolist(), strict=True)):
            self.uf.union(x, y)
        self.freeze(a[(a >= 0) & (b < 0)], reason)
        self.freeze(b[(b >= 0) & (a < 0)], reason)
        return np.where(a >= 0, a, b)

    def freeze(self, ids: np.ndarray | None, reason: str) -> None:
        if ids is None:
            return
        for atom in np.unique(np.asarray(ids)).tolist():
            if atom >= 0:
                self.frozen.setdefault(atom, reason)

    def freeze_inputs(self, node: onnx.NodeProto, reason: str) -> None:
        for name in node.input:
            self.freeze(self.get(name), reason)
        for name in node.input:
            if name in self.const_labels:
                self.freeze(np.concatenate(list(self.const_labels[name].values())), reason)

    def label_const(self, name: str, axis: int, line: np.ndarray, node: onnx.NodeProto, slot: int) -> None:
        """Slice constant `name` along `axis` with the channels `line` (one label per position)."""
        line = np.asarray(line, dtype=np.int64).reshape(-1)
        axes = self.const_labels.setdefault(name, {})
        if axis in axes:
            axes[axis] = self.unify(axes[axis], line, f"constant '{name}' is sliced by different channels")
        else:
            axes[axis] = line.copy()
        self.const_uses.setdefault(name, set()).add((node.name, slot))

    def rewrite(self, record: Rewrite) -> None:
        self.rewrites.append(record)

    def add_producer(self, role: ProducerRole) -> None:
        self.producers.append(role)

    def add_consumer(self, role: ConsumerRole) -> None:
        self.consumers.append(role)
