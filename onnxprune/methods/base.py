"""What every pruning method gets and gives.

A method declares its options (a table of MethodOption: its typed settings are built from it) and the
statistics it reads (kinds of onnxprune.stats.Statistics). It reads a MethodContext (the model, its
channel analysis, the common options, its settings, and the statistics stage limited to what it
declared) and returns a PruningPlan. It never edits the model: the shrink does, and it never runs
onnxruntime itself: the statistics stage does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx

from ..analysis import Analysis, Group
from ..errors import OptionError
from ..graph import GraphIndex
from ..plan import PruningPlan
from ..preflight import check_numbers
from ..stats import Statistics
from .options import MethodOption, build_settings


@dataclass(frozen=True)
class PruneOptions:
    """Options shared by the methods; method-specific ones live in `extra` (name -> value)."""

    ratio: float | str = 0.5
    round_to: int = 1
    min_keep: int = 1
    include: str | None = None
    exclude: str | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.ratio, str) and self.ratio != "auto":
            try:
                object.__setattr__(self, "ratio", float(self.ratio))
            except ValueError:
                raise OptionError(f"--ratio {self.ratio}: not a number; give a fraction in [0, 1) or 'auto'") from None
        if not isinstance(self.ratio, str) and not 0.0 <= float(self.ratio) < 1.0:
            raise OptionError(f"--ratio {self.ratio}: must be in [0, 1); 0.5 removes half of each group's channels")
        if self.round_to < 1:
            raise OptionError(f"--round-to {self.round_to}: must be a positive integer")
        check_numbers(seed=self.seed)
        if self.min_keep < 1:
            raise OptionError(f"--min-keep {self.min_keep}: must be at least 1")
        for flag, pattern in (("--include", self.include), ("--exclude", self.exclude)):
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise OptionError(f"{flag} {pattern!r}: not a valid regular expression ({exc})") from None

    def as_dict(self) -> dict[str, Any]:
        """Every option by name (the method-specific ones flattened in), for the report."""
        common = {k: getattr(self, k) for k in ("ratio", "round_to", "min_keep", "include", "exclude", "seed")}
        return {**common, **self.extra}


@dataclass(frozen=True)
class MethodContext:
    """Inputs of a method's decide(): `settings` are its typed settings (Method.settings), `stats` the
    statistics stage limited to the kinds it declared (None for a data-free method)."""

    model: onnx.ModelProto
    index: GraphIndex
    analysis: Analysis
    options: PruneOptions
    settings: Any = None
    stats: Statistics | None = None

    @classmethod
    def build(
        cls, method: Method, model: onnx.ModelProto, index: GraphIndex, analysis: Analysis, options: PruneOptions,
        stats: Statistics | None = None,
    ) -> MethodContext:  # fmt: skip
        """The context `method` gets: its settings from options.extra, the stats view of its kinds."""
        view = stats.for_method(method.name, method.statistics) if stats is not None and method.needs_data else None
        return cls(model, index, analysis, options, method.settings(options.extra), view)

    def eligible_groups(self) -> list[Group]:
        """Prunable groups whose producers match --include and none matches --exclude."""
        include = re.compile(self.options.include) if self.options.include else None
        exclude = re.compile(self.options.exclude) if self.options.exclude else None
        groups = []
        for group in self.analysis.prunable_groups():
            names = [p.node for p in group.producers]
            if include and not any(include.search(n) for n in names):
                continue
            if exclude and any(exclude.search(n) for n in names):
                continue
            groups.append(group)
        return groups


@dataclass(frozen=True)
class Method:
    """A pruning method: `decide(ctx) -> PruningPlan`.

    `statistics`: the kinds of calibration statistics it reads (onnxprune.stats.KINDS; none: data-free);
    `auto_ratio`: it accepts `--ratio auto` (chooses its own amount);
    `prepasses`: rewrites it needs first, by name in onnxprune.passes.PASSES (e.g. BatchNorm folding
    for merge); `options`: its option table, from which its settings are built.
    """

    name: str
    decide: Callable[[MethodContext], PruningPlan]
    statistics: tuple[str, ...] = ()
    prepasses: tuple[str, ...] = ()
    description: str = ""
    options: tuple[MethodOption, ...] = ()
    auto_ratio: bool = False

    @property
    def needs_data(self) -> bool:
        return bool(self.statistics)

    def settings(self, values: Mapping[str, Any]) -> Any:
        """The typed settings of this method from option values by name (defaults from the table)."""
        return build_settings(self.name, self.options, values)
