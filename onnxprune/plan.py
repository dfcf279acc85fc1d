"""PruningPlan: the decision of a method, as a value.

A plan names the channels to remove (ids from an Analysis) and, optionally, new values for
initializers at their *original* shapes (compensation of survivors, masks of removed weights). The
shrink applies the updates first, then slices every coupled tensor. Plans round-trip through JSON
(updates through an .npz beside it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .analysis import Analysis
from .errors import PlanError


@dataclass(frozen=True)
class PruningPlan:
    """Channels to remove and new initializer values (original shapes), plus per-group notes."""

    removed: frozenset[int] = frozenset()
    updates: dict[str, np.ndarray] = field(default_factory=dict)
    method: str = "none"
    notes: dict[int, dict] = field(default_factory=dict)

    def removed_mask(self, num_channels: int) -> np.ndarray:
        mask = np.zeros(num_channels + 1, dtype=bool)  # last slot: label -1, never removed
        ids = np.fromiter(self.removed, dtype=np.int64, count=len(self.removed))
        if ids.size and (ids.min() < 0 or ids.max() >= num_channels):
            raise PlanError(f"plan: channel ids outside 0..{num_channels - 1}; the plan belongs to another model")
        mask[ids] = True
        return mask

    def merged(self, other: PruningPlan) -> PruningPlan:
        updates = {**self.updates, **other.updates}
        return PruningPlan(
            self.removed | other.removed, updates, f"{self.method}+{other.method}", {**self.notes, **other.notes}
        )

    def to_json(self, path: str | Path) -> None:
        path = Path(path)
        payload = {
            "method": self.method,
            "removed": sorted(self.removed),
            "notes": {str(k): v for k, v in self.notes.items()},
            "updates": sorted(self.updates),
        }
        path.write_text(json.dumps(payload, indent=1))
        if self.updates:
            np.savez(path.with_suffix(".npz"), **self.updates)

    @classmethod
    def from_json(cls, path: str | Path) -> PruningPlan:
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
            updates = {}
            if payload.get("updates"):
                with np.load(path.with_suffix(".npz")) as data:
                    updates = {k: data[k] for k in payload["updates"]}
            return cls(
                frozenset(int(c) for c in payload["removed"]),
                updates,
                payload.get("method", "plan"),
                {int(k) if k.isdigit() else k: v for k, v in payload.get("notes", {}).items()},
            )
        except (OSError, ValueError, KeyError) as exc:
            raise PlanError(f"{path}: not a readable pruning plan ({exc}); write it with PruningPlan.to_json") from None


def check_plan(plan: PruningPlan, analysis: Analysis) -> None:
    """Reject plans that remove frozen channels or would empty a tensor axis."""
    frozen = sorted(set(plan.removed) & set(analysis.frozen))
    if frozen:
        raise PlanError(f"plan: channel {frozen[0]} is frozen ({analysis.frozen[frozen[0]]}); it cannot be removed")
    for name, axis, _ in _emptied(analysis, plan.removed_mask(analysis.num_channels)):
        raise PlanError(f"plan: removes every position of axis {axis} of '{name}'; keep at least one")


def empties(analysis: Analysis, removed: set[int]) -> list[np.ndarray]:
    """Label lines (of constants) that `removed` would empty entirely."""
    mask = PruningPlan(frozenset(removed)).removed_mask(analysis.num_channels)
    return [line for _, _, line in _emptied(analysis, mask)]


def _emptied(analysis: Analysis, removed_mask: np.ndarray):
    """(constant, axis, labels) of every labeled constant axis whose positions would all be removed."""
    for name, axes in analysis.const_labels.items():
        for axis, line in axes.items():
            if len(line) and removed_mask[line].all():
                yield name, axis, line
