"""What the allocator asks of a cost: the model's cost for a choice of kept channels per group.

A choice is a mapping `kept[group_id] = k`: the number of channels (or heads) group `group_id` keeps;
a group absent from the mapping keeps all of its channels. Costs are not additive over groups in
general: a Conv between two pruned groups costs in proportion to the product of the kept shares on its
two axes, and a measured latency depends on the runtime's kernels. So the allocator only relies on
`cost` of a whole choice, and may use `preferred_widths` to restrict each group's kept counts to the
ones the runtime executes fast.

Two capabilities a cost may add, each its own protocol (checked with isinstance, never guessed from
attribute names): a counted cost (`Counted`, params and MACs) counts the channels a plan removes
exactly, which checks the plan against the budget; a measured cost (`Measured`, latency) times the
model shrunk to a choice, which drives the closed loop of onnxprune.budget.run.measured_allocation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

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


@runtime_checkable
class Counted(Protocol):
    """A cost counted from the graph: exact for any set of removed channels."""

    def of_removed(self, removed: set[int] | frozenset[int], num_channels: int) -> float:
        """The model's cost when the channels `removed` (ids below num_channels) go."""
        ...


@runtime_checkable
class Measured(Protocol):
    """A cost measured by running the model: `whole` is the original model's cost (seconds)."""

    whole: float

    def measure(self, kept: Mapping[int, int]) -> float:
        """The measured cost of the model shrunk to `kept`, as a ratio to `whole`."""
        ...
