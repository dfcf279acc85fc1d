"""What the allocator asks of a cost: the model's cost for a choice of kept channels per group.

A choice is a mapping `kept[group_id] = k`: the number of channels (or heads) group `group_id` keeps;
a group absent from the mapping keeps all of its channels. Costs are not additive over groups in
general: a Conv between two pruned groups costs in proportion to the product of the kept shares on its
two axes, and a measured latency depends on the runtime's kernels. So the allocator only relies on
`cost` of a whole choice, and may use `preferred_widths` to restrict each group's kept counts to the
ones the runtime executes fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ..analysis.groups import Group


class CostModel(Protocol):
    """`kind` names what is counted ("params", "macs", "latency"); `cost({})` is the original model's cost."""

    kind: str

    def cost(self, kept: Mapping[int, int]) -> float:
        """The whole model's cost when each group in `kept` keeps that many of its channels."""
        ...

    def preferred_widths(self, group: Group) -> tuple[int, ...] | None:
        """Kept counts this group should be restricted to (ascending), or None for any count."""
        ...
