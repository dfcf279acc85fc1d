"""The checked options shared by the OBS methods, lobs and obs (one Settings, so neither method imports
the other)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import OptionError
from ..stats import CollectSettings
from .base import PruneOptions
from .lobs_guard import min_density
from .nm_pattern import parse_pattern

MODES = ("auto", "exact", "faithful", "sparsegpt")
ALLOCATIONS = ("layer", "global", "output")
BATCHNORM = ("absorb", "ignore")


@dataclass(frozen=True)
class Settings:
    """The options of the OBS methods, checked."""

    ratio: float | None
    mode: str = "auto"
    allocation: str = "global"
    max_error: float | None = None
    damping: float = 0.01
    sequential: bool = False
    max_positions: int | None = 4096
    batch_size: int = 32
    progress: bool = False
    seed: int = 0
    batchnorm: str = "absorb"
    allocation_samples: int | None = None
    pattern: tuple[int, int] | None = None
    min_density: float | None = 0.0

    @classmethod
    def from_options(cls, options: PruneOptions, method: str) -> Settings:
        mode = str(options.get("lobs_mode", "auto") or "auto")
        if mode not in MODES:
            raise OptionError(f"--lobs-mode {mode}: unknown; use one of {', '.join(MODES)}")
        allocation = str(options.get("lobs_allocation", "global") or "global")
        if allocation not in ALLOCATIONS:
            raise OptionError(f"--lobs-allocation {allocation}: unknown; use one of {', '.join(ALLOCATIONS)}")
        max_error = options.get("max_layer_error")
        if max_error is not None and not float(max_error) > 0:
            raise OptionError(f"--max-layer-error {max_error}: must be a positive fraction of the output energy")
        ratio = None if options.ratio == "auto" else float(options.ratio)
        pattern = parse_pattern(options.get("pattern"))
        if pattern is not None:  # N:M fixes every layer's density
            if max_error is not None:
                raise OptionError("--pattern with --max-layer-error: the pattern fixes the density; drop one")
            ratio, allocation = 1.0 - pattern[0] / pattern[1], "layer"
        if ratio is None and (method != "lobs" or max_error is None):
            raise OptionError(f"--ratio auto: {method} needs a number (or, for lobs, --max-layer-error)")
        damping = float(options.get("damping", 0.01))
        if not damping >= 0:
            raise OptionError(f"--damping {damping}: must be >= 0 (0.01 is the usual value)")
        positions = int(options.get("max_positions", 4096) or 0)
        if positions < 0:
            raise OptionError(f"--max-positions {positions}: must be >= 0 (0 uses every position)")
        batch = int(options.get("batch_size", 32) or 32)
        if batch < 1:
            raise OptionError(f"--batch-size {batch}: must be at least 1")
        batchnorm = str(options.get("lobs_batchnorm", "absorb") or "absorb")
        if batchnorm not in BATCHNORM:
            raise OptionError(f"--lobs-batchnorm {batchnorm}: unknown; use one of {', '.join(BATCHNORM)}")
        samples = int(options.get("allocation_samples", 0) or 0)
        if samples < 0:
            raise OptionError(f"--allocation-samples {samples}: must be >= 0 (0, the default, uses every sample)")
        return cls(
            ratio,
            mode,
            allocation,
            None if max_error is None else float(max_error),
            damping,
            bool(options.get("sequential", False)),
            positions or None,
            batch,
            bool(options.get("progress", False)),
            int(options.seed),
            batchnorm,
            samples or None,
            pattern,
            min_density(options),
        )

    def collect(self, providers: Iterable[str]) -> CollectSettings:
        """How the statistics passes of these settings run."""
        return CollectSettings(self.batch_size, tuple(providers), self.progress, self.max_positions, self.seed)
