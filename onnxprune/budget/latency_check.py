"""Did the written model reach its latency target? Measured, not predicted.

`measure_latency_ratio` runs the original and the pruned model in the same process with the same
session options (every graph optimization on, as a user runs them), taking turns run by run, on
the same random inputs at the user's batch size; the ratio is median(pruned) / median(original).
`check_latency_target` accepts a ratio up to `target * (1 + SLACK)` and otherwise says by how much
it missed and the likely reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import onnx

from ..bench import check_batches
from ..feeds import input_shapes
from ..validate import kept_feeds, random_feeds
from .timing import check_providers, interleaved, session

#: a measured ratio may exceed the target by this share and still meet it (timing noise)
SLACK = 0.10
#: interleaved runs of each model behind the checked ratio (after CHECK_WARMUP untimed turns)
CHECK_REPEATS = 30
CHECK_WARMUP = 5


def measure_latency_ratio(
    original: onnx.ModelProto | str,
    pruned: onnx.ModelProto | str,
    batch: int = 1,
    providers: str | Sequence[str] = "cpu",
    repeats: int = CHECK_REPEATS,
    warmup: int = CHECK_WARMUP,
    threads: int = 0,
    shapes: dict[str, tuple] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    kept: dict[str, tuple[int, list[int]]] | None = None,
) -> tuple[float, dict]:
    """median(pruned run seconds) / median(original run seconds), the runs interleaved, and details:
    both medians in ms, the ratio of the fastest runs (less sensitive to a busy machine), the spread
    (interquartile range / median) of each, batch, providers, repeats. `kept`: the pruned model's
    inputs that shrank with its heads (KV caches; validate.kept_feeds), fed sliced to their kept
    positions."""
    providers = check_providers(providers)
    proto = onnx.load(original, load_external_data=False) if isinstance(original, str) else original
    check_batches(proto, [batch], "the model", "--latency-batch")
    given = input_shapes(proto, batch, shapes, source=original)
    feeds = random_feeds(proto, batch, shapes=given, source=original)
    sessions = [session(m, providers, threads) for m in (original, pruned)]
    times = interleaved(sessions, [feeds, kept_feeds(feeds, kept)], repeats, warmup, clock)
    medians = [float(np.median(t)) for t in times]
    spreads = [_spread(t, m) for t, m in zip(times, medians, strict=True)]
    ratio = medians[1] / medians[0] if medians[0] > 0 else float("nan")
    fastest = [min(t) for t in times]
    details = {
        "ratio_fastest": fastest[1] / fastest[0] if fastest[0] > 0 else float("nan"),
        "original_ms": 1000 * medians[0],
        "pruned_ms": 1000 * medians[1],
        "spread": {"original": spreads[0], "pruned": spreads[1]},
        "batch": batch,
        "providers": list(providers),
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
    }
    return ratio, details


def _spread(times: list[float], median: float) -> float:
    """Interquartile range / median."""
    return float(np.subtract(*np.percentile(times, [75, 25])) / median) if median > 0 else 0.0


def check_latency_target(
    target: float, measured: float, predicted: float | None = None, floor: float | None = None
) -> tuple[bool, str]:
    """(met, one line): met when measured <= target * (1 + SLACK). The line states the measured ratio
    against the target, by how much it missed, and why when the cost model's `predicted` ratio says;
    `floor`: the ratio measured while planning with every allowed channel removed (the target is
    below what pruning can reach)."""
    if not 0 < target <= 1:
        raise ValueError(f"latency target {target}: must be a fraction in (0, 1]")
    text = f"latency {measured:.2f}x of the original (target {target:.2f}"
    if predicted is not None:
        text += f", predicted {predicted:.2f}"
    text += ")"
    if measured <= target * (1 + SLACK):
        return True, f"{text}: met" + ("" if measured <= target else f" within the {SLACK:.0%} allowance")
    missed = measured / target - 1
    if floor is not None and floor > target * (1 + SLACK):
        why = (
            f"removing every channel the options allow measured {floor:.2f} while planning: the rest of the "
            "model's time (run overhead, layers no group changes) is above the target"
        )
    elif predicted is None:
        why = "the cost model's prediction is unknown"
    elif predicted > target * (1 + SLACK):
        why = "the allocation itself could not reach the target (too few prunable channels, or frozen groups)"
    else:
        why = (
            f"the runtime ran the pruned model {measured / predicted - 1:.0%} slower than planned (the plan "
            "was timed while planning: a busy machine makes the two timings disagree; rerun on a quiet one)"
        )
    return False, f"{text}: missed by {missed:.0%}; {why}"


def written_latency(
    original: onnx.ModelProto | str, pruned: onnx.ModelProto, target, summary: dict, providers, shapes=None, kept=None
) -> dict:
    """The report's measured part of a latency `target` (methods.base.Target): the pruned model's latency
    against the original at the target's batch, and whether it meets the target within SLACK, the
    cost model's planned fraction (`summary["planned_fraction"]`) named as the prediction; `shapes`
    (--input-shape) sizes symbolic input dims; `kept` names the inputs that shrank (KV caches)."""
    measured, details = measure_latency_ratio(original, pruned, target.batch, providers, shapes=shapes, kept=kept)
    rounds = summary.get("closed_loop") or []
    floor = min(r["measured"] for r in rounds) if rounds and not summary.get("reachable", True) else None
    met, message = check_latency_target(target.fraction, measured, summary.get("planned_fraction"), floor)
    return {"measured_fraction": measured, "measured": details, "met": met, "measured_message": message}
