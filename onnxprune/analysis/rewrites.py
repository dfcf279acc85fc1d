"""Records of the non-weight edits a shrink must make: shape constants and attributes that count
channels. Rules create them during analysis; the shrink pass applies them.

Each record names a tensor axis whose new size decides the edit; the shrink computes that size from
the tensor's labels and the kept channels.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rewrite:
    """Base of all rewrite records: the node they edit."""

    node: str


@dataclass(frozen=True)
class DimEntry(Rewrite):
    """Entry `entry` of the integer constant `constant` (input `slot` of `node`) must equal the new
    size of `axis` of `tensor` (Reshape targets, Resize sizes, Expand shapes)."""

    slot: int
    constant: str
    entry: int
    tensor: str
    axis: int


@dataclass(frozen=True)
class SplitSizes(Rewrite):
    """Split `node` along `axis`: its sizes become the new sizes of its outputs on that axis."""

    axis: int


@dataclass(frozen=True)
class SliceRange(Rewrite):
    """Slice `node` on `axis` of `tensor` (its data input): starts/ends map to kept positions."""

    axis: int
    tensor: str


@dataclass(frozen=True)
class GatherIndices(Rewrite):
    """Gather `node` on `axis` of `tensor`: constant indices map to kept positions."""

    axis: int
    tensor: str


@dataclass(frozen=True)
class ConvGroups(Rewrite):
    """Grouped Conv `node`: `group` shrinks with the whole groups removed from `weight` axis 0."""

    weight: str
    groups: int


@dataclass(frozen=True)
class AttributeSize(Rewrite):
    """Integer attribute `attribute` of `node` counts the positions of constant `weight` along `axis`
    (`hidden_size` of LSTM/GRU/RNN): it becomes the number of positions kept there."""

    attribute: str
    weight: str
    axis: int


@dataclass(frozen=True)
class GatherInput(Rewrite):
    """Input `slot` of `node` is a run-time tensor whose axis `axis` holds the positions of constant
    `weight` along `weight_axis` (the initial state of a recurrent layer, computed or given at run
    time): the shrink inserts a Gather of the kept positions in front of `node`."""

    slot: int
    axis: int
    weight: str
    weight_axis: int


@dataclass(frozen=True)
class CountAttribute(Rewrite):
    """Integer attribute `attribute` of `node` (entry `entry` of an ints attribute; -1: an int) becomes
    the number of kept positions in [start, stop) along `axis` of `source` divided by `unit`. `source` is
    a labeled tensor or a labeled constant (num_heads from a head-major hidden axis, qkv_hidden_sizes)."""

    attribute: str
    entry: int
    source: str
    axis: int
    start: int
    stop: int
    unit: int


@dataclass(frozen=True)
class IoDim(Rewrite):
    """Graph `kind` ("input" or "output") `tensor` carries attention heads on `axis` (a KV cache): its
    declared size there becomes the number of positions kept. The model's I/O shapes change; the
    report lists them. `node` is empty (no node is edited)."""

    tensor: str
    axis: int
    kind: str
