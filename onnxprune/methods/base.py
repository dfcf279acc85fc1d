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
from dataclasses import dataclass, field, replace
from typing import Any

import onnx

from ..analysis import Analysis, Group
from ..errors import OptionError
from ..graph import GraphIndex
from ..plan import PruningPlan
from ..preflight import check_numbers
from ..stats import Statistics
from .damage import GroupCurve
from .options import MethodOption, build_settings

#: what `--target KIND=FRACTION` can count
TARGET_KINDS = ("params", "macs", "latency")
#: the ratio when neither --ratio nor --target is given
DEFAULT_RATIO = 0.5


#: --target-probes, --target-samples: on the ResNet-style digits model at macs=0.5, 3 probes of 32 samples
#: gave 0.9799 test accuracy and 4-12 probes of 96-256 samples 0.9900 (dense 0.9937): the output error of
#: 32 samples was too noisy to rank the groups (benchmarks/RESULTS_budget.md)
TARGET_PROBES, TARGET_SAMPLES = 4, 128


@dataclass(frozen=True)
class Target:
    """`--target KIND=FRACTION`: keep at most FRACTION of the original model's KIND (params, MACs, or
    measured latency), the removals spread over the groups by damage (onnxprune.budget). `probes`: counts
    per group at which the model's output error is measured to calibrate a method's layer-level curves;
    `samples`: calibration samples of those measurements; `batch`: the batch size at which a latency
    target is measured (--latency-batch)."""

    kind: str
    fraction: float
    probes: int = TARGET_PROBES
    samples: int = TARGET_SAMPLES
    batch: int = 1

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise OptionError(
                f"--target {self.kind}={self.fraction}: unknown kind; use one of {', '.join(TARGET_KINDS)}"
            )
        if not 0.0 < self.fraction <= 1.0:
            raise OptionError(
                f"--target {self.kind}={self.fraction}: the fraction to keep must be in (0, 1]; macs=0.5 keeps half"
            )
        check_numbers(target_probes=self.probes, target_samples=self.samples, latency_batch=self.batch)

    @classmethod
    def parse(
        cls, text: str | Target, probes: int = TARGET_PROBES, samples: int = TARGET_SAMPLES, batch: int = 1
    ) -> Target:
        """`KIND=FRACTION` (e.g. "macs=0.5"), one clear error otherwise."""
        if isinstance(text, Target):
            return text
        kind, sep, value = str(text).partition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = None
        if not sep or fraction is None:
            raise OptionError(
                f"--target {text}: write KIND=FRACTION with KIND one of {', '.join(TARGET_KINDS)}, e.g. macs=0.5"
            )
        return cls(kind.strip().lower(), fraction, probes, samples, batch)

    def __str__(self) -> str:
        return f"{self.kind}={self.fraction:g}"


@dataclass(frozen=True)
class PruneOptions:
    """Options shared by the methods; method-specific ones live in `extra` (name -> value).

    `ratio` and `target` exclude each other (neither given: ratio 0.5). `keep` is not a user option: the
    budget allocation (onnxprune.budget) sets it, per group id of the analysis a step runs on, to the
    number of channels that group keeps; methods read it through methods.select.keep_count."""

    ratio: float | str | None = None
    round_to: int = 1
    min_keep: int = 1
    include: str | None = None
    exclude: str | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    target: Target | str | None = None
    keep: Mapping[int, int] | None = None

    def __post_init__(self) -> None:
        if self.target is not None:
            if self.ratio is not None:
                raise OptionError(
                    f"--ratio {self.ratio} with --target {self.target}: give one; --ratio removes the same share of "
                    "every group, --target spreads the removals to meet a budget"
                )
            object.__setattr__(self, "target", Target.parse(self.target))
            return self._check_common()
        if self.ratio is None:
            object.__setattr__(self, "ratio", DEFAULT_RATIO)
        if isinstance(self.ratio, str) and self.ratio != "auto":
            try:
                object.__setattr__(self, "ratio", float(self.ratio))
            except ValueError:
                raise OptionError(f"--ratio {self.ratio}: not a number; give a fraction in [0, 1) or 'auto'") from None
        if not isinstance(self.ratio, str) and not 0.0 <= float(self.ratio) < 1.0:
            raise OptionError(f"--ratio {self.ratio}: must be in [0, 1); 0.5 removes half of each group's channels")
        self._check_common()

    def _check_common(self) -> None:
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
        if self.target is not None:
            common["target"] = str(self.target)
        return {**common, **self.extra}

    def for_methods(self, keep: Mapping[int, int] | None = None) -> PruneOptions:
        """The options a method reads under a target: no ratio of its own (0: groups outside `keep` stay
        whole), and `keep` the allocation's kept count per group id."""
        return replace(self, ratio=0.0, target=None, keep=None if keep is None else dict(keep))


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
    for merge); `options`: its option table, from which its settings are built; `damage`: per eligible
    group the damage curve of its removals (methods.damage.GroupCurve), which lets `--target` spread the
    removals (None: the method cannot prune to a target); `own_amount`: its amount comes from its own
    options (relief's --alpha), never from --ratio, so it runs unchanged in a chain with a target.
    """

    name: str
    decide: Callable[[MethodContext], PruningPlan]
    statistics: tuple[str, ...] = ()
    prepasses: tuple[str, ...] = ()
    description: str = ""
    options: tuple[MethodOption, ...] = ()
    auto_ratio: bool = False
    damage: Callable[[MethodContext], dict[int, GroupCurve]] | None = None
    own_amount: bool = False

    @property
    def needs_data(self) -> bool:
        return bool(self.statistics)

    def settings(self, values: Mapping[str, Any]) -> Any:
        """The typed settings of this method from option values by name (defaults from the table)."""
        return build_settings(self.name, self.options, values)
