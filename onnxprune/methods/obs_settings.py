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

#: the options of lobs and obs alike
SHARED_OPTIONS = (
    MethodOption(
        "--damping", "damping", 0.01, "lobs/obs: Hessian damping lambda (H += lambda mean(diag H) I)", float,
        minimum=0.0, minimum_hint="0.01 is the usual value",
    ),
    MethodOption(
        "--sequential",
        "sequential",
        False,
        "lobs/obs: collect each layer's statistics on the model already pruned before it (more passes)",
        is_flag=True,
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
    sequential: bool
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
            sequential=typed.sequential,
            max_positions=typed.max_positions or None,
            seed=int(options.seed),
            batchnorm=typed.lobs_batchnorm if lobs else None,
            allocation_samples=(typed.allocation_samples or None) if lobs else None,
            pattern=pattern,
            min_density=min_density(typed, allocation == "global" or max_error is not None) if lobs else None,
        )
