"""Guards of the lobs allocation: no layer is emptied unless asked, and predictions that the measurement
contradicts are reported.

- Floor: under the allocations steered by predicted errors (`--lobs-allocation global`, the default, and
  `--max-layer-error`), a layer of R rows and S weights keeps at least R weights (one per output row on
  average); with `--min-layer-density d`, under every allocation, at least max(R, ceil(d * S)). Its
  removal trace is cut there, so the allocation cannot go below it. `--allow-empty-layers` lifts the
  floor. `--lobs-allocation layer` (the user's own per-layer share, never all of a layer) and `output`
  (spread by the *measured* output error) have no default floor. Why: the global allocation trusts
  each layer's predicted error; L-OBS's faithful prediction (no downdates) can be orders of magnitude
  too low (a 512x214 classifier predicted 10.4, measured 875.5), and then a whole layer goes for free
  and the model's output becomes a constant.
- Disagreement: a layer whose measured error (on the calibration inputs, undamped) exceeds RATIO times
  its predicted error while being at least FLOOR of its output energy is listed in the report
  (`error_disagreements`) and logged as a warning: the allocation was steered by a wrong number.
"""

from __future__ import annotations

import logging
import math

from ..errors import OptionError
from .options import MethodOption

log = logging.getLogger("onnxprune")

#: measured / predicted layer error above which a layer is reported
RATIO = 3.0
#: ... when the measured error is also at least this share of the layer's output energy
FLOOR = 1e-3

OPTIONS = (
    MethodOption(
        "--min-layer-density",
        "min_layer_density",
        None,
        "lobs: every layer keeps at least this share of its weights and one weight per output row on average, "
        "whatever the allocation (default: only the latter, and only for the global allocation and "
        "--max-layer-error)",
        float,
    ),
    MethodOption(
        "--allow-empty-layers",
        "allow_empty_layers",
        False,
        "lobs: lift the floor of --min-layer-density (an allocation may then remove every weight of a layer)",
        is_flag=True,
    ),
)


def min_density(settings, predicted: bool) -> float | None:
    """The floor's density for removal_limit from lobs' typed `settings`: the checked
    --min-layer-density, else 0 (R weights) when the allocation is `predicted` (global,
    --max-layer-error); None (no floor) when there is none or --allow-empty-layers lifts it."""
    value = settings.min_layer_density
    if value is not None and not 0.0 <= float(value) <= 1.0:
        raise OptionError(f"--min-layer-density {value}: must be in [0, 1] (a share of each layer's weights)")
    if settings.allow_empty_layers or (value is None and not predicted):
        return None
    return 0.0 if value is None else float(value)


def removal_limit(rows: int, size: int, density: float | None) -> int:
    """The most weights a layer of `rows` rows and `size` weights may lose."""
    if density is None:
        return size
    keep = max(rows, math.ceil(density * size - 1e-9))
    return max(0, size - min(keep, size))


def disagreements(notes: list[dict]) -> list[dict]:
    """The layer notes whose measured error contradicts the predicted one; each is logged."""
    found = []
    for note in notes:
        predicted, measured = note["predicted_error"], note["measured_error"]
        if measured > RATIO * max(predicted, 0.0) and note["relative_error"] >= FLOOR:
            found.append({"layer": note["layer"], "predicted_error": predicted, "measured_error": measured})
            log.warning(
                "lobs: layer '%s': measured error %.4g is %s the predicted %.4g; predicted errors steer the "
                "global allocation and --max-layer-error (--lobs-mode exact/sparsegpt predict exactly; "
                "--lobs-allocation output measures)",
                note["layer"],
                measured,
                f"{measured / predicted:.1f}x" if predicted > 0 else "far above",
                predicted,
            )
    return found
