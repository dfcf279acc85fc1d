"""Which samples calibrate a prune and which validate it, and the words the report uses for them.

Validation data, in order of preference:
1. --validate-data: all of it (or the first --validate-samples).
2. Without it, the *holdout*: the last h of the calibration samples (h = --holdout, default
   HOLDOUT = 0.2, at least MIN_HELD samples) are never seen by the statistics and only validate.
   When the data is too small for that (fewer than MIN_HELD samples would be left on either side)
   or h = 0, the figures are taken on the calibration data itself and labelled so ("also used to
   prune": optimistic).
   A data-free method does not calibrate: it validates on all of --calib, which it never read.
3. Without calibration data: random inputs from the model's signature (--validate-samples of them,
   RANDOM_SAMPLES by default): drift only, no accuracy.

--calib-samples caps the calibration part (its first samples; None: all); the cap and what it left
are reported, never applied silently. A model with a fixed batch size gets parts that are multiples
of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .errors import OptionError
from .feeds import Dataset

#: share of the calibration samples held out for validation when there is no --validate-data
HOLDOUT = 0.2
#: the holdout keeps at least this many samples, and leaves at least this many to calibrate on
MIN_HELD = 8
#: random validation inputs when neither calibration nor validation data is given
RANDOM_SAMPLES = 8


def check_holdout(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise OptionError(
            f"--holdout {fraction}: must be in [0, 1); 0.2 validates on the last 20% of --calib, 0 on all of it"
        )


@dataclass(frozen=True)
class DataUse:
    """The datasets a prune uses and how the report names them.

    `calibration`/`validation`: the samples (None: not used); `source`: the validation data in a few
    words (the report's validation_source, the gate's messages); `notes`: the counts for the report
    (given, used, held out, caps)."""

    calibration: Dataset | None
    validation: Dataset | None
    source: str | None
    notes: dict

    def summary(self) -> list[str]:
        return summary_lines(self.notes)


def plan_data(
    calibration: Dataset | None,
    validation: Dataset | None,
    *,
    holdout: float = HOLDOUT,
    calib_samples: int | None = None,
    validate_samples: int | None = None,
    run_validation: bool = True,
    calibrates: bool = True,
    random: Callable[[int], Dataset] | None = None,
) -> DataUse:
    """Split and cap the data as the module docstring says. `validation` is --validate-data (loaded,
    uncapped); `calibrates`: some method reads the calibration data; `random(count)` makes random
    inputs when neither data set exists."""
    check_holdout(holdout)
    notes: dict = {}
    held = None
    if calibration is not None and not calibrates:
        if validation is None and run_validation:
            held = calibration  # never read by the methods: all of it is held out
        calibration = None
    if calibration is not None:
        notes["calibration"] = {"given": len(calibration)}
        if run_validation and validation is None:
            calibration, held, why = _hold_out(calibration, holdout)
            notes["calibration"]["held_out"] = 0 if held is None else len(held)
            if why:
                notes["calibration"]["no_holdout"] = why
        used = calibration.take(calib_samples)
        notes["calibration"].update(used=len(used), cap=calib_samples)
        calibration = used
    if not run_validation:
        return DataUse(calibration, None, None, notes)
    if validation is not None:
        kind, pool = "--validate-data", validation
    elif held is not None:
        kind, pool = "holdout" if calibration is not None else "unread", held
    elif calibration is not None:
        kind, pool = "calibration", calibration
    else:
        if random is None:
            raise ValueError("plan_data: no data and no random inputs")
        kind, pool = "random", random(validate_samples or RANDOM_SAMPLES)
    checked = pool.take(validate_samples) if kind != "random" else pool
    notes["validation"] = {
        "kind": kind,
        "given": len(pool),
        "samples": len(checked),
        "cap": validate_samples,
        "labeled": checked.labels is not None,
    }
    return DataUse(calibration, checked, _source(kind, holdout, notes), notes)


def _hold_out(data: Dataset, fraction: float) -> tuple[Dataset, Dataset | None, str]:
    """(calibration part, held-out part or None, why nothing was held out)."""
    if fraction <= 0:
        return data, None, "--holdout 0"
    count, step = len(data), data.batch or 1
    held = max(math.ceil(fraction * count), MIN_HELD)
    split = (count - held) // step * step
    if split < MIN_HELD or count - split < MIN_HELD:
        return data, None, f"{count} samples are too few to hold out {_pct(fraction)} (at least {MIN_HELD} each side)"
    return data.part(0, split), data.part(split, count), ""


def _source(kind: str, holdout: float, notes: dict) -> str:
    if kind == "--validate-data":
        return "--validate-data"
    if kind == "holdout":
        return f"held-out calibration data (the last {_pct(holdout)} of --calib, not used to prune)"
    if kind == "unread":
        return "--calib (the method is data-free: it did not read it)"
    if kind == "calibration":
        why = notes["calibration"].get("no_holdout", "")
        return f"calibration data, also used to prune: optimistic ({why}); give --validate-data"
    return "random inputs (seed 0): drift only"


def summary_lines(notes: dict) -> list[str]:
    """'data' lines of the summary: how many samples calibrated and validated, and where they came from."""
    lines = []
    calib = notes.get("calibration")
    if calib:
        parts = [f"{calib['used']:,} samples of --calib ({calib['given']:,} given"]
        if calib.get("held_out"):
            parts.append(f", last {calib['held_out']:,} held out for validation")
        if calib.get("cap") is not None and calib["used"] < calib["given"] - calib.get("held_out", 0):
            parts.append(f", --calib-samples {calib['cap']} caps")
        lines.append("calibrate  " + "".join(parts) + ")")
    valid = notes.get("validation")
    if valid:
        where = {
            "--validate-data": "of --validate-data",
            "holdout": "held out of --calib, not used to prune",
            "unread": "of --calib, which the data-free method did not read",
            "calibration": "of the calibration data, also used to prune: optimistic",
            "random": "random inputs (seed 0), no labels: drift only",
        }[valid["kind"]]
        capped = (
            f" (first of {valid['given']:,}, --validate-samples {valid['cap']})"
            if valid["samples"] < valid["given"]
            else ""
        )
        lines.append(f"validate   {valid['samples']:,} samples {where}{capped}")
    return lines


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g}%"
