"""The checked settings shared by the OBS methods, lobs and obs (one Settings, so neither method imports
the other), and the options both take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import OptionError
from .base import PruneOptions
from .options import MethodOption

MODES = ("auto", "exact", "faithful", "sparsegpt")
ALLOCATIONS = ("layer", "global", "output")
BATCHNORM = ("absorb", "ignore")

#: --sequential's default for obs: on when the groups to prune lie in at least AUTO_MIN_WAVES waves;
#: --sequential-passes' default: one pass per wave up to AUTO_MAX_WAVES waves, DEEP_PASSES beyond
#: (choose_sequential and sequential_passes say why)
AUTO_MIN_WAVES = 3
AUTO_MAX_WAVES = 8
DEEP_PASSES = 4

#: the options of lobs and obs alike
SHARED_OPTIONS = (
    MethodOption(
        "--damping", "damping", 0.01, "lobs/obs: Hessian damping lambda (H += lambda mean(diag H) I)", float,
        minimum=0.0, minimum_hint="0.01 is the usual value",
    ),
    MethodOption(
        "--sequential/--no-sequential",
        "sequential",
        None,
        "lobs/obs: collect each layer's statistics on the model already pruned before it, so errors do not "
        "compound (more passes). Default for obs: on when the groups to prune lie in at least "
        f"{AUTO_MIN_WAVES} waves (a wave: layers whose inputs depend only on earlier waves), off for fewer; "
        "lobs: off",
        is_flag=True,
    ),
    MethodOption(
        "--sequential-passes",
        "sequential_passes",
        None,
        "obs --sequential: at most this many statistics passes (consecutive waves share one); 0 = one per wave. "
        f"Default: one per wave up to {AUTO_MAX_WAVES} waves, {DEEP_PASSES} beyond",
        int,
        minimum=0,
        minimum_hint="0 makes one pass per wave",
    ),
    MethodOption(
        "--sequential-samples",
        "sequential_samples",
        0,
        "obs --sequential: calibration samples of every pass after the first; 0 = all",
        int,
        minimum=0,
        minimum_hint="0 uses every sample",
    ),
    MethodOption(
        "--max-positions",
        "max_positions",
        4096,
        "lobs/obs: rows per batch and layer sampled for the Hessian (Conv positions, tokens); 0 = all",
        int,
        minimum=0,
        minimum_hint="0 uses every position",
    ),
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """The settings of the OBS methods, checked: what lobs and obs read. The lobs-only ones (mode,
    allocation, max_error, batchnorm, allocation_samples, pattern, min_density) are None for obs."""

    ratio: float | None
    mode: str | None
    allocation: str | None
    max_error: float | None
    damping: float
    sequential: bool | None  # None: auto (obs: choose_sequential; lobs: off)
    sequential_passes: int | None  # None: auto (sequential_passes)
    sequential_samples: int | None
    max_positions: int | None
    seed: int
    batchnorm: str | None
    allocation_samples: int | None
    pattern: tuple[int, int] | None
    min_density: float | None

    @classmethod
    def build(cls, options: PruneOptions, typed: Any, method: str) -> Settings:
        """From the common options and the method's typed settings (methods.options)."""
        from .lobs_guard import min_density  # noqa: PLC0415 (the guard module imports nothing of ours back)
        from .nm_pattern import parse_pattern

        lobs = method == "lobs"
        max_error = typed.max_layer_error if lobs else None
        if max_error is not None and not max_error > 0:
            raise OptionError(f"--max-layer-error {max_error}: must be a positive fraction of the output energy")
        ratio = None if options.ratio == "auto" else float(options.ratio)
        allocation = typed.lobs_allocation if lobs else None
        pattern = parse_pattern(typed.pattern) if lobs else None
        if pattern is not None:  # N:M fixes every layer's density
            if max_error is not None:
                raise OptionError("--pattern with --max-layer-error: the pattern fixes the density; drop one")
            ratio, allocation = 1.0 - pattern[0] / pattern[1], "layer"
        if ratio is None and (not lobs or max_error is None):
            raise OptionError(f"--ratio auto: {method} needs a number (or, for lobs, --max-layer-error)")
        return cls(
            ratio=ratio,
            mode=typed.lobs_mode if lobs else None,
            allocation=allocation,
            max_error=max_error,
            damping=typed.damping,
            sequential=bool(typed.sequential) if lobs else typed.sequential,
            sequential_passes=typed.sequential_passes,
            sequential_samples=typed.sequential_samples or None,
            max_positions=typed.max_positions or None,
            seed=int(options.seed),
            batchnorm=typed.lobs_batchnorm if lobs else None,
            allocation_samples=(typed.allocation_samples or None) if lobs else None,
            pattern=pattern,
            min_density=min_density(typed, allocation == "global" or max_error is not None) if lobs else None,
        )


def choose_sequential(requested: bool | None, waves: int) -> bool:
    """--sequential as given, or by default (None): on when the groups to prune lie in at least
    AUTO_MIN_WAVES waves. The errors of one-shot pruning compound with depth: on the sample models
    (benchmarks/obs_sequential.py) the 2-wave MLP is within 0.2 points either way, while 4-wave
    LeNet-5 gains 1 point and the 5-wave ResNet-style model 37 points with sequential statistics; on
    ddddocr's 50-wave YOLO-style detector at 20% the output drift is 0.172 in 4 passes against
    one-shot's 0.192 (0.156 with one pass per wave). Until consumers refit while layers upstream of them
    were still to be compensated kept their original statistics (corrected twice; obs._group_waves),
    and the refit target was centred on the weights (LayerStats.target), 4 passes drifted 1.24 there
    and the default stopped at 8 waves."""
    if requested is not None:
        return requested
    return waves >= AUTO_MIN_WAVES


def sequential_passes(requested: int | None, waves: int) -> int:
    """--sequential-passes as given, or by default (None): 0 (one pass per wave) up to AUTO_MAX_WAVES
    waves, DEEP_PASSES beyond. One pass per wave costs a paired pass (both models up to that depth) per
    wave: 2x the one-shot prune on the 5-wave ResNet-style model, 7x on the 45-wave detector, where 4
    passes cost 1.9x and keep most of the gain (drift 0.172 vs 0.156, one-shot 0.192)."""
    if requested is not None:
        return requested
    return 0 if waves <= AUTO_MAX_WAVES else DEEP_PASSES


def stages(waves: list, passes: int) -> list[list]:
    """The waves in at most `passes` runs of consecutive waves (0: one per wave), the runs as equal in
    length as they can be: each run is one statistics pass, the items of its waves in their order."""
    if passes <= 0 or len(waves) <= passes:
        return [list(w) for w in waves]
    bounds = [round(len(waves) * (k + 1) / passes) for k in range(passes)]
    runs, start = [], 0
    for end in bounds:
        runs.append([item for wave in waves[start:end] for item in wave])
        start = end
    return runs
