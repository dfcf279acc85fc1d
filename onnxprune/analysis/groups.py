"""Turn propagated atoms into the frozen result of the analysis: channels and groups.

A *channel* is a set of atoms that must be removed together (a union-find class): one output channel
of a conv, one hidden neuron, or one channel index shared by every conv of a residual stage. A *group*
is a set of producers whose channels are tied (a layer, or a residual stage with all its convs); the
ratio of a method applies per group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..graph import GraphIndex
from .context import ConsumerRole, ProducerRole, Propagation
from .cost import node_macs
from .propagate import propagate
from .rewrites import Rewrite
from .unionfind import UnionFind


@dataclass(frozen=True)
class Group:
    """Channels tied through the same producers; `frozen` says why none may be removed."""

    id: int
    channels: tuple[int, ...]
    producers: tuple[ProducerRole, ...]
    consumers: tuple[ConsumerRole, ...]
    free: tuple[int, ...]
    frozen: str | None
    params: int
    macs: int
    unit: str = "channel"  # what one of `channels` is: "channel", or "head of 8" for attention heads

    @property
    def size(self) -> int:
        return len(self.channels)

    @property
    def prunable(self) -> bool:
        return len(self.free) > 0


@dataclass(frozen=True)
class Analysis:
    """Everything a method or the shrink needs to know about which positions go together.

    `const_labels[name][axis]` and `tensor_labels[name]` hold channel ids (-1: not prunable).
    """

    groups: tuple[Group, ...]
    channel_group: np.ndarray
    frozen: dict[int, str]
    const_labels: dict[str, dict[int, np.ndarray]]
    tensor_labels: dict[str, np.ndarray]
    tensor_shapes: dict[str, tuple]
    rewrites: tuple[Rewrite, ...]
    node_macs: dict[str, int] = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.channel_group)

    def group(self, group_id: int) -> Group:
        return self.groups[group_id]

    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def positions(self, weight: str, axis: int, channel: int) -> np.ndarray:
        """Indices along `weight`'s `axis` that belong to `channel`."""
        return np.flatnonzero(self.const_labels[weight][axis] == channel)


def analyze(index: GraphIndex) -> Analysis:
    """Find every group of coupled channels of the model behind `index`."""
    return finalize(propagate(index), index)


def finalize(p: Propagation, index: GraphIndex) -> Analysis:
    atom_channel, num_channels = _dense_channels(p.uf)
    frozen: dict[int, str] = {}
    for atom, reason in p.frozen.items():
        frozen.setdefault(int(atom_channel[atom]), reason)
    relabel = _relabeler(atom_channel)
    const_labels = {name: {axis: relabel(line) for axis, line in axes.items()} for name, axes in p.const_labels.items()}
    tensor_labels = {name: relabel(ids) for name, ids in p.labels.items()}
    macs = {node.name: node_macs(index, node) for node in index.nodes}
    groups, channel_group = _groups(p, atom_channel, num_channels, frozen, const_labels, macs, index)
    shapes = {name: index.shape(name) for name in tensor_labels}
    return Analysis(
        groups=groups,
        channel_group=channel_group,
        frozen=frozen,
        const_labels=const_labels,
        tensor_labels=tensor_labels,
        tensor_shapes=shapes,
        rewrites=tuple(p.rewrites),
        node_macs=macs,
    )


def _dense_channels(uf: UnionFind) -> tuple[np.ndarray, int]:
    roots = uf.all_roots()
    if roots.size == 0:
        return roots, 0
    unique, dense = np.unique(roots, return_inverse=True)
    return dense.astype(np.int64), len(unique)


def _relabeler(atom_channel: np.ndarray):
    lookup = np.concatenate([atom_channel, [-1]])

    def relabel(ids: np.ndarray) -> np.ndarray:
        return lookup[np.where(ids < 0, len(atom_channel), ids)]

    return relabel


def _groups(p: Propagation, atom_channel, num_channels, frozen, const_labels, macs, index):
    roles = p.producers
    units = {int(atom_channel[atom]): name for atom, name in p.units.items()}
    uf = UnionFind()
    uf.make(len(roles))
    owner: dict[int, int] = {}
    role_channels = []
    for r, role in enumerate(roles):
        channels = atom_channel[p.weight_atoms[(role.weight, role.axis)]]
        role_channels.append(channels)
        for channel in np.unique(channels).tolist():
            if channel in owner:
                uf.union(owner[channel], r)
            else:
                owner[channel] = r
    components: dict[int, list[int]] = {}
    for r in range(len(roles)):
        components.setdefault(uf.find(r), []).append(r)
    channel_group = np.full(num_channels, -1, dtype=np.int64)
    groups = []
    for members in components.values():
        channels = list(dict.fromkeys(c for r in members for c in role_channels[r].tolist()))
        gid = len(groups)
        channel_group[channels] = gid
        groups.append((members, channels))
    result = []
    for gid, (members, channels) in enumerate(groups):
        producers = tuple(roles[r] for r in members)
        channel_set = set(channels)
        consumers = tuple(
            c
            for c in p.consumers
            if channel_set & set(const_labels.get(c.weight, {}).get(c.axis, np.empty(0, np.int64)).tolist())
        )
        consumers = tuple(dict.fromkeys(consumers))
        free = tuple(c for c in channels if c not in frozen)
        reason = _frozen_reason(channels, free, frozen)
        params = _group_params(channel_set, const_labels, index)
        group_macs = _group_macs(channel_set, producers, consumers, const_labels, macs, index)
        unit = next((units[c] for c in channels if c in units), "channel")
        result.append(Group(gid, tuple(channels), producers, consumers, free, reason, params, group_macs, unit))
    return tuple(result), channel_group


def _frozen_reason(channels, free, frozen) -> str | None:
    if len(free) == len(channels):
        return None
    reasons = [frozen[c] for c in channels if c in frozen]
    first = reasons[0]
    if not free:
        return first
    return f"{len(channels) - len(free)} of {len(channels)} channels frozen: {first}"


def _group_params(channel_set, const_labels, index: GraphIndex) -> int:
    total = 0
    for name, axes in const_labels.items():
        dims = index.shape(name) or ()
        size = int(np.prod(dims, dtype=np.int64))
        for axis, line in axes.items():
            hits = int(np.isin(line, list(channel_set)).sum())
            if hits and dims[axis]:
                total += hits * (size // dims[axis])
    return total


def _group_macs(channel_set, producers, consumers, const_labels, macs, index: GraphIndex) -> int:
    """MACs of each node the group touches times the largest share of its weight positions the group
    holds on one axis (a recurrent layer is both producer and consumer of its hidden units: counted once)."""
    shares: dict[str, float] = {}
    for role in list(producers) + list(consumers):
        line = const_labels.get(role.weight, {}).get(role.axis)
        if line is None or not len(line):
            continue
        share = np.isin(line, list(channel_set)).sum() / len(line)
        shares[role.node] = max(shares.get(role.node, 0.0), share)
    return int(round(sum(macs.get(node, 0) * share for node, share in shares.items())))
