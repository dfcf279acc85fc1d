"""PruningPlan: the decision of a method, as a value.

A plan names the channels to remove (ids from an Analysis) and, optionally, new values for
initializers at their *original* shapes (compensation of survivors, masks of removed weights). The
shrink applies the updates first, then slices every coupled tensor.

A PlanFile is what `prune --save-plan` writes and `apply` replays: the steps of a prune (one per method
and iteration), each with its method's pre-passes, the fingerprint of the analysis it was made against
and its plan. It is a JSON file plus, when a step updates weights, an .npz beside it (same stem).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import Analysis
from .atomic import Transaction
from .errors import PlanError

#: version of the plan file format written by PlanFile.save
PLAN_FORMAT = 1


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

    @property
    def group_notes(self) -> dict[int, dict]:
        """Notes about single groups, keyed by group id."""
        return {k: v for k, v in self.notes.items() if isinstance(k, int)}

    @property
    def step_notes(self) -> dict[str, Any]:
        """Notes about the whole step (layers, densities, statistics passes...), keyed by name."""
        return {k: v for k, v in self.notes.items() if isinstance(k, str)}


def fingerprint(analysis: Analysis) -> str:
    """A hash of what a plan's channel ids mean: every group's channels, producers and consumers, the
    frozen channels and every labeled initializer axis. Two analyses with the same fingerprint slice
    the same positions of the same tensors for the same plan."""
    digest = hashlib.sha256()
    digest.update(f"channels {analysis.num_channels}\n".encode())
    for group in analysis.groups:
        producers = [(p.node, p.weight) for p in group.producers]
        consumers = [(c.node, c.weight, c.axis) for c in group.consumers]
        digest.update(json.dumps([group.id, group.channels, group.free, producers, consumers]).encode())
    for name in sorted(analysis.const_labels):
        for axis, line in sorted(analysis.const_labels[name].items()):
            digest.update(f"{name}/{axis}:".encode())
            digest.update(np.ascontiguousarray(line, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class PlanStep:
    """One step of a prune: `method` (after its `prepasses`) decided `plan` on an analysis whose
    fingerprint is `fingerprint`."""

    method: str
    prepasses: tuple[str, ...]
    fingerprint: str
    plan: PruningPlan

    def check_fingerprint(self, actual: str) -> None:
        if actual != self.fingerprint:
            raise PlanError(
                f"plan step '{self.method}': made for a model whose analysis has fingerprint {self.fingerprint}, "
                f"this one has {actual}; apply the plan to the model it was made from (same file, same earlier steps)"
            )


@dataclass(frozen=True)
class PlanFile:
    """The replayable record of a prune: its steps in order and whether weights went to sparse storage."""

    steps: tuple[PlanStep, ...]
    sparse_storage: bool = False

    def save(self, path: str | Path, transaction: Transaction | None = None) -> list[Path]:
        """Write PATH (JSON) and, when a step has updates, PATH with suffix .npz, all or nothing (within
        `transaction`: when it commits); returns the files."""
        if transaction is None:
            with Transaction() as own:
                return self.save(path, own)
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        steps = []
        for number, step in enumerate(self.steps):
            keys = {}
            for name, value in sorted(step.plan.updates.items()):
                keys[name] = f"step{number}/{len(keys)}"
                arrays[keys[name]] = np.asarray(value)
            steps.append(
                {
                    "method": step.method,
                    "prepasses": list(step.prepasses),
                    "fingerprint": step.fingerprint,
                    "removed": sorted(int(c) for c in step.plan.removed),
                    "updates": keys,
                    "notes": jsonable(step.plan.notes),
                }
            )
        payload = {"format": PLAN_FORMAT, "sparse_storage": self.sparse_storage, "steps": steps}
        written = [path]
        transaction.path(path).write_text(json.dumps(payload, indent=1))
        if arrays:
            with open(transaction.path(path.with_suffix(".npz")), "wb") as handle:
                np.savez(handle, **arrays)
            written.append(path.with_suffix(".npz"))
        return written

    @classmethod
    def load(cls, path: str | Path) -> PlanFile:
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
            if payload.get("format") != PLAN_FORMAT:
                raise ValueError(f"format {payload.get('format')!r}, expected {PLAN_FORMAT}")
            needs_arrays = any(step["updates"] for step in payload["steps"])
            arrays = dict(np.load(path.with_suffix(".npz"))) if needs_arrays else {}
            steps = tuple(
                PlanStep(
                    step["method"],
                    tuple(step["prepasses"]),
                    step["fingerprint"],
                    PruningPlan(
                        frozenset(int(c) for c in step["removed"]),
                        {name: arrays[key] for name, key in step["updates"].items()},
                        step["method"],
                        {int(k) if k.isdigit() else k: v for k, v in step.get("notes", {}).items()},
                    ),
                )
                for step in payload["steps"]
            )
            return cls(steps, bool(payload.get("sparse_storage", False)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PlanError(
                f"{path}: not a readable pruning plan ({type(exc).__name__}: {exc}); write one with "
                "`onnxprune prune ... --save-plan PLAN.json` (its .npz must lie beside it)"
            ) from None


def jsonable(value):
    """`value` with numpy scalars and arrays as Python numbers and lists, mapping keys as strings."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


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
