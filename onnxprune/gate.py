"""The quality gate and the alarms of a prune, read from its report.

- `--max-drop X`: accuracy points lost on labeled validation data (accuracy_before - accuracy_after,
  as fractions: 0.01 is one point) above X fails the gate.
- `--max-drift X`: the relative L2 distance ||Y_pruned - Y|| / ||Y|| of any model output above X fails
  the gate.
A failed gate writes nothing and ends the command with exit code 3 (GateError).

Alarms (warnings, the model is still written): nothing was pruned (no parameter removed or zeroed), and
a collapse: accuracy below half of what it was, or top-1 agreement with the original below one half
on real (not random) validation data. They are printed after the model is written.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import OnnxPruneError, OptionError

#: exit code of a failed quality gate
GATE_EXIT = 3
#: accuracy (or top-1 agreement) below this share of the original is a collapse
COLLAPSE = 0.5


class GateError(OnnxPruneError):
    """The pruned model missed the quality gate: nothing was written."""


@dataclass(frozen=True)
class Gate:
    """The limits of --max-drop and --max-drift (None: no limit)."""

    max_drop: float | None = None
    max_drift: float | None = None

    def __post_init__(self) -> None:
        for flag, value in (("--max-drop", self.max_drop), ("--max-drift", self.max_drift)):
            if value is not None and not value >= 0:
                raise OptionError(f"{flag} {value}: must be >= 0 (0.01 = one accuracy point / 1% relative L2)")

    @property
    def active(self) -> bool:
        return self.max_drop is not None or self.max_drift is not None

    def check_possible(self, run_validation: bool) -> None:
        """The gate needs validation to measure anything."""
        if self.active and not run_validation:
            raise OptionError("--max-drop/--max-drift with --no-validate: the gate needs validation; drop one")

    def failure(self, report: dict) -> str | None:
        """Why the pruned model described by `report` misses the gate, or None when it passes."""
        validation = report.get("validation")
        if not self.active or validation is None:
            return None
        source = report.get("validation_source", "validation data")
        if self.max_drop is not None:
            if "accuracy_after" not in validation:
                raise OptionError(
                    f"--max-drop: the validation data ({source}) has no labels; add a 'labels' array to "
                    "--validate-data, or use --max-drift"
                )
            drop = validation["accuracy_before"] - validation["accuracy_after"]
            if drop > self.max_drop:
                return (
                    f"accuracy dropped {drop:.4f} ({validation['accuracy_before']:.4f} -> "
                    f"{validation['accuracy_after']:.4f} on {source}), more than --max-drop {self.max_drop:g}"
                )
        if self.max_drift is not None:
            for name, metrics in validation["outputs"].items():
                if metrics["rel_l2"] > self.max_drift:
                    return (
                        f"output '{name}' moved by relative L2 {metrics['rel_l2']:.4f} on {source}, more than "
                        f"--max-drift {self.max_drift:g}"
                    )
        return None


def alarms(report: dict) -> list[str]:
    """Warnings a user must see even when the run succeeded."""
    found = []
    if report["params_after"] == report["params_before"] and report["nonzero_params_after"] >= report["params_after"]:
        found.append(
            "nothing was pruned: every group is frozen or kept whole at this ratio (see `onnxprune inspect` for "
            "the reasons, or raise --ratio)"
        )
    validation = report.get("validation") or {}
    before, after = validation.get("accuracy_before"), validation.get("accuracy_after")
    if before and after is not None and after < COLLAPSE * before:
        found.append(f"accuracy collapsed: {before:.4f} -> {after:.4f}; prune less or use a compensating method (obs)")
    real = not str(report.get("validation_source", "")).startswith("random")  # noise has no top-1 to keep
    for name, metrics in validation.get("outputs", {}).items() if real else ():
        agreement = metrics.get("top1_agreement")
        if agreement is not None and agreement < COLLAPSE:
            found.append(f"output '{name}': top-1 agreement with the original is {agreement:.4f}; the model collapsed")
    return found
