"""The trade-off curve (`onnxprune sweep`): one model pruned at several points by one or more methods.

Each (method, point) is one `prune()` in memory, validated against the original on the same inputs
(the same validation samples for every point) and timed against it in the same process. Per row:

- params kept = P_after / P_before and nonzero kept = nnz_after / P_before (stored entries; they
  differ for unstructured methods, which write zeros), MACs kept = M_after / M_before (static shapes);
- latency = t_pruned / t_original, each the median of `repeats` timed runs after `warmup` runs at
  batch 1 (or the batch the model fixes), graph optimizations on; three rounds of (original, pruned),
  the median of their ratios, so that both models see the same load;
- drift of the worst output: relative L2 ||Y' - Y|| / ||Y|| (largest), cosine (smallest), top-1
  agreement (smallest, classifier-shaped outputs only); accuracy when the validation data has labels.

A *point* is what one prune is asked to reach: `RatioPoint(r)` removes the fraction r of every
group's channels (of every layer's weights for unstructured methods), `TargetPoint(macs=0.5)` keeps at
most that share of the original's params, MACs or latency (`--target`). A point only turns the common
options into the PruneOptions that ask for it; `sweep()`, the table and the plot take any Point.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx

from . import io, preflight, progress
from .bench import measure
from .budget.latency_check import measure_latency_ratio
from .errors import ModelLoadError, OptionError, OutputPathError
from .feeds import Dataset, fixed_batch, input_specs, load_dataset
from .methods.base import PruneOptions, Target
from .methods.registry import get_method, methods_taking
from .pipeline import PipelineOptions, prune

log = logging.getLogger(__name__)


class Point(Protocol):
    """One point of a sweep: `label` names it in the table ("0.3"), `options` asks prune() for it."""

    label: str

    def options(self, base: PruneOptions) -> PruneOptions: ...


@dataclass(frozen=True)
class RatioPoint:
    """Remove the fraction `ratio` (0 < ratio < 1) of every group's channels."""

    ratio: float

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise OptionError(f"--ratios {self.ratio:g}: every ratio must be in (0, 1), e.g. 0.1,0.3,0.5")

    @property
    def label(self) -> str:
        return f"{self.ratio:g}"

    def options(self, base: PruneOptions) -> PruneOptions:
        return replace(base, ratio=self.ratio)


@dataclass(frozen=True)
class TargetPoint:
    """Keep at most a fraction of the original's params, MACs or measured latency (`--target
    KIND=FRACTION`): the removals spread over the groups by damage (onnxprune.budget)."""

    target: Target

    @property
    def label(self) -> str:
        return str(self.target)

    def options(self, base: PruneOptions) -> PruneOptions:
        return replace(base, ratio=None, target=self.target)


def parse_targets(text: str) -> list[TargetPoint]:
    """'macs=0.7,macs=0.5' -> points, in the order given, each once."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise OptionError("--targets: give at least one KIND=FRACTION, e.g. macs=0.7,macs=0.5")
    return [TargetPoint(Target.parse(item)) for item in dict.fromkeys(items)]


def parse_ratios(text: str) -> list[RatioPoint]:
    """'0.1,0.3,0.5' -> points, ascending, each once."""
    values = []
    for item in (t.strip() for t in text.split(",")):
        try:
            values.append(float(item))
        except ValueError:
            raise OptionError(f"--ratios {text}: '{item}' is not a number; give fractions like 0.1,0.3,0.5") from None
    if not values:
        raise OptionError("--ratios: give at least one fraction, e.g. 0.1,0.3,0.5")
    return [RatioPoint(v) for v in sorted(set(values))]


@dataclass(frozen=True)
class Row:
    """One pruned model of the sweep, measured against the original (see the module docstring)."""

    method: str
    label: str
    point: str
    params_kept: float
    nonzero_kept: float
    macs_kept: float
    latency: float
    rel_l2: float
    cosine: float
    top1_agreement: float | None
    accuracy: float | None
    seconds: float
    path: str | None = None


@dataclass(frozen=True)
class Baseline:
    """The original model: its size, accuracy and latency, and what the rows were validated on."""

    model: str
    params: int
    macs: int
    latency_ms: float
    accuracy: float | None
    validation_source: str
    samples: int
    latency_batch: int
    repeats: int


@dataclass(frozen=True)
class SweepResult:
    baseline: Baseline
    rows: tuple[Row, ...]

    @property
    def has_accuracy(self) -> bool:
        return bool(self.rows) and all(r.accuracy is not None for r in self.rows)

    def as_dict(self) -> dict:
        return {"baseline": asdict(self.baseline), "rows": [asdict(r) for r in self.rows]}

    def unchanged_methods(self) -> list[str]:
        """Methods whose every point gave the same sizes: the points do not steer them (e.g. relief,
        whose amount is set by --alpha, not --ratio)."""
        found = []
        for label in dict.fromkeys(r.label for r in self.rows):
            sizes = {(r.params_kept, r.nonzero_kept) for r in self.rows if r.label == label}
            if len(sizes) == 1 and sum(r.label == label for r in self.rows) > 1:
                found.append(label)
        return found


def method_extras(chains: Sequence[str], extra: Mapping) -> dict[str, dict]:
    """The method-specific options each chain takes (an option goes to every chain with a method
    that declares it); an option that no chain takes is an error naming the methods that do."""
    chosen = {chain: [get_method(n.strip()) for n in chain.split(",") if n.strip()] for chain in chains}
    for chain, methods in chosen.items():
        if not methods:
            raise OptionError(f"--method '{chain}': give a method name, e.g. --method obs")
    per_chain = {}
    for chain, methods in chosen.items():
        dests = {o.dest for m in methods for o in m.options}
        per_chain[chain] = {k: v for k, v in extra.items() if k in dests}
    for name in extra:
        if not any(name in taken for taken in per_chain.values()):
            flag = "--" + name.replace("_", "-")
            owners = methods_taking(name)
            where = f"it is an option of {', '.join(owners)}" if owners else "no method has this option"
            raise OptionError(f"{flag} does not apply to any --method given ({', '.join(chains)}); {where}")
    return per_chain


def sweep(
    model: str | Path,
    methods: Sequence[str],
    points: Sequence[Point],
    options: PruneOptions | None = None,
    calibration=None,
    validation_data=None,
    pipeline: PipelineOptions | None = None,
    keep_dir: str | Path | None = None,
    repeats: int = 20,
    warmup: int = 3,
) -> SweepResult:
    """Prune `model` with every chain of `methods` at every point, validate and time each result.

    `options` holds the common and method-specific options (each chain gets the ones its methods
    take); `pipeline` how each prune runs. With `keep_dir`, every pruned model is written there as
    MODEL-METHOD-POINT.onnx (atomically); otherwise nothing is written.
    """
    model = Path(model)
    options = options or PruneOptions()
    pipeline = replace(pipeline or PipelineOptions(), run_validation=True)
    preflight.check_numbers(repeats=repeats, warmup=warmup)
    extras = method_extras(methods, options.extra)
    kept = _kept_paths(model, methods, points, keep_dir)
    _check_paths(model, calibration, validation_data, kept)
    signature = io.signature(io.load_model(model))
    calib = None if calibration is None else load_dataset(calibration, signature)  # read once; prune() caps it
    checks = _validation_set(validation_data, calib, signature, pipeline)
    batch = fixed_batch(input_specs(signature)) or 1
    timing = _Timing(str(model), batch, pipeline, repeats, warmup)
    rows, first = [], None
    for chain, point in progress.bar([(c, p) for c in methods for p in points], desc="sweep points", unit="point"):
        with progress.stage(log, f"sweep {chain} at {point.label}"):
            start = time.perf_counter()
            chain_options = point.options(replace(options, extra=extras[chain]))
            result = prune(model, chain, chain_options, calib, checks, pipeline)
            seconds = time.perf_counter() - start
            report = result.report
            path = kept.get((chain, point.label))
            if path is not None:
                result.save(path)
            label = _label(chain, extras[chain])
            rows.append(_row(chain, label, point.label, report, timing.ratio(result.model), seconds, path))
            first = first or report
    return SweepResult(_baseline(model, first, timing), tuple(rows))


def _kept_paths(model: Path, methods, points, keep_dir) -> dict[tuple[str, str], Path]:
    """Where --keep-dir writes each model: DIR/MODEL-METHOD-POINT.onnx (a chain's commas as '+')."""
    if keep_dir is None:
        return {}
    return {
        (chain, point.label): Path(keep_dir) / f"{model.stem}-{chain.replace(',', '+')}-{point.label}.onnx"
        for chain in methods
        for point in points
    }


def _check_paths(model: Path, calibration, validation_data, kept: dict) -> None:
    """Before any work: the model exists, and no kept model would overwrite an input or go nowhere."""
    if not model.exists():
        raise ModelLoadError(f"{model}: no such file; check the path")
    inputs = {
        "model": preflight.model_files(model),
        "calibration data (--calib)": preflight.data_files(calibration),
        "validation data (--validate-data)": preflight.data_files(validation_data),
    }
    _as_option_error(preflight.check_outputs, inputs, {f"--keep-dir ({path.name})": path for path in kept.values()})


def _as_option_error(check, *args) -> None:
    """A path check whose failure is a bad option of sweep (exit 2), with the check's own message."""
    try:
        check(*args)
    except OutputPathError as exc:
        raise OptionError(str(exc)) from None


def _validation_set(validation_data, calib: Dataset | None, signature, pipeline: PipelineOptions) -> Dataset | None:
    """What every point is validated on, read once: --validate-data, else None (prune() then uses
    the calibration data, or random inputs of seed 0: the same for every point)."""
    if validation_data is None:
        return None
    return load_dataset(validation_data, signature, pipeline.validate_samples, where="--validate-data")


class _Timing:
    """Latency of pruned models as a ratio to the original's: `rounds` interleaved comparisons
    (budget.latency_check.measure_latency_ratio: both sessions in one process, taking turns, each the
    median of `repeats` runs; `repeats` raised so that one measurement lasts at least MIN_SECONDS: a
    tiny model's single run is too short to time), the median of the rounds' ratios."""

    MIN_SECONDS = 0.2
    MAX_REPEATS = 1000

    def __init__(
        self, model: str, batch: int, pipeline: PipelineOptions, repeats: int, warmup: int, rounds: int = 3
    ) -> None:
        from . import runtime

        self.model, self.batch, self.repeats, self.warmup, self.rounds = model, batch, repeats, warmup, rounds
        self.providers = runtime.resolve_providers(pipeline.providers)
        self.shapes = dict(pipeline.input_shapes or {})
        self.original_ms: list[float] = []

    def _fit_repeats(self) -> None:
        """Once, before the first comparison: enough repeats for MIN_SECONDS of the original's runs."""
        first = measure(self.model, self.batch, self.providers, self.warmup, self.repeats, shapes=self.shapes)
        median = first.median_ms
        if median * self.repeats < 1000 * self.MIN_SECONDS:
            self.repeats = min(self.MAX_REPEATS, math.ceil(1000 * self.MIN_SECONDS / max(median, 1e-3)))

    def ratio(self, pruned: onnx.ModelProto) -> float:
        if not self.original_ms:
            self._fit_repeats()
        ratios = []
        for _ in range(self.rounds):
            ratio, details = measure_latency_ratio(
                self.model, pruned, self.batch, self.providers, self.repeats, self.warmup, shapes=self.shapes
            )
            self.original_ms.append(details["original_ms"])
            ratios.append(ratio)
        return float(np.median(ratios))


def _worst(outputs: dict, key: str, pick) -> float | None:
    values = [metrics[key] for metrics in outputs.values() if key in metrics]
    return pick(values) if values else None


def _label(chain: str, extra: Mapping) -> str:
    """The chain and the method options it got, as a user would type them: 'obs --sequential'."""
    words = [chain]
    for name, value in extra.items():
        flag = "--" + name.replace("_", "-")
        words.append(flag if value is True else f"--no-{flag[2:]}" if value is False else f"{flag} {value}")
    return " ".join(words)


def _row(method: str, label: str, point: str, report: dict, latency: float, seconds: float, path) -> Row:
    validation = report["validation"]
    outputs = validation["outputs"]
    return Row(
        method=method,
        label=label,
        point=point,
        params_kept=report["params_after"] / report["params_before"],
        nonzero_kept=report["nonzero_params_after"] / report["params_before"],
        macs_kept=report["macs_after"] / report["macs_before"] if report["macs_before"] else 1.0,
        latency=latency,
        rel_l2=_worst(outputs, "rel_l2", max),
        cosine=_worst(outputs, "cosine", min),
        top1_agreement=_worst(outputs, "top1_agreement", min),
        accuracy=validation.get("accuracy_after"),
        seconds=seconds,
        path=None if path is None else str(path),
    )


def _baseline(model: Path, report: dict, timing: _Timing) -> Baseline:
    validation = report["validation"]
    return Baseline(
        model=str(model),
        params=report["params_before"],
        macs=report["macs_before"],
        latency_ms=float(np.median(timing.original_ms)),
        accuracy=validation.get("accuracy_before"),
        validation_source=report["validation_source"],
        samples=validation["samples"],
        latency_batch=timing.batch,
        repeats=timing.repeats,
    )


# ---- presentation -------------------------------------------------------------------------------
_COLUMNS = (
    ("label", "{:<{w}}", "method"),
    ("point", "{:>{w}}", "point"),
    ("params_kept", "{:>{w}.3f}", "params"),
    ("nonzero_kept", "{:>{w}.3f}", "nonzero"),
    ("macs_kept", "{:>{w}.3f}", "MACs"),
    ("latency", "{:>{w}.2f}", "latency"),
    ("accuracy", "{:>{w}.4f}", "accuracy"),
    ("rel_l2", "{:>{w}.4f}", "rel L2"),
    ("cosine", "{:>{w}.4f}", "cosine"),
    ("top1_agreement", "{:>{w}.4f}", "top-1"),
    ("seconds", "{:>{w}.1f}", "seconds"),
)


def table(result: SweepResult) -> list[str]:
    """The sweep as text: a header saying what was measured on what, one line for the original and
    one per pruned model; sizes and latency as shares of the original's."""
    base = result.baseline
    columns = [c for c in _COLUMNS if c[0] != "accuracy" or result.has_accuracy]
    cells = [[c[2] for c in columns]]
    original = {"label": "original", "point": "-", "accuracy": base.accuracy}
    for values in [original] + [asdict(r) for r in result.rows]:
        line = []
        for key, fmt, _ in columns:
            value = values.get(key, 1.0 if key.endswith("kept") or key == "latency" else None)
            line.append("-" if value is None else fmt.format(value, w=0))
        cells.append(line)
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [
        f"model      {base.model}: {base.params:,} params, {base.macs:,} MACs, {base.latency_ms:.3f} ms at batch "
        f"{base.latency_batch}",
        f"validated  on {base.samples} samples of {base.validation_source}",
        f"columns    sizes and latency as shares of the original's (latency: median of {base.repeats} runs, "
        "3 rounds); drift of the worst output",
        "",
    ]
    for row in cells:
        first, *rest = zip(row, widths, strict=True)
        lines.append("  ".join([first[0].ljust(first[1]), *(c.rjust(w) for c, w in rest)]))
    for method in result.unchanged_methods():
        lines.append(f"note       {method}: every point gave the same model; its amount is not set by these points")
    return lines


def check_plot_path(path: Path, inputs: dict[str, list[Path]]) -> None:
    """--plot: a writable .png path that is not an input; matplotlib is installed."""
    if path.suffix.lower() != ".png":
        raise OptionError(f"--plot {path}: the curve is written as PNG; give a file name ending in .png")
    _as_option_error(preflight.check_outputs, inputs, {"--plot": path})
    preflight.check_matplotlib()


def plot(result: SweepResult, path: str | Path) -> None:
    """Three panels: accuracy (or the worst output's relative L2 drift without labels) against the
    nonzero parameters, the MACs and the measured latency kept; one curve per method and its options
    (joined in the order of the points), the original as a star at 1. Written atomically as PNG with
    matplotlib's Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .atomic import Transaction

    labels = result.has_accuracy
    y_key, y_label = ("accuracy", "accuracy") if labels else ("rel_l2", "relative L2 drift (worst output)")
    panels = (
        ("nonzero_kept", "parameters kept (nonzero share)"),
        ("macs_kept", "MACs kept (share)"),
        ("latency", f"latency vs original (batch {result.baseline.latency_batch})"),
    )
    figure = Figure(figsize=(15, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3, sharey=True)
    original = result.baseline.accuracy if labels else 0.0
    for ax, (x_key, x_label) in zip(axes, panels, strict=True):
        for label in dict.fromkeys(r.label for r in result.rows):
            rows = [r for r in result.rows if r.label == label]  # in the order of the points
            xs, ys = [getattr(r, x_key) for r in rows], [getattr(r, y_key) for r in rows]
            ax.plot(xs, ys, marker="o", label=label)
            for r, x, y in zip(rows, xs, ys, strict=True):
                ax.annotate(r.point, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        if original is not None and not math.isnan(original):
            ax.plot([1.0], [original], marker="*", markersize=12, color="black", linestyle="none", label="original")
        ax.set_xlabel(x_label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel(y_label)
    base = result.baseline
    figure.suptitle(f"{Path(base.model).name}: validated on {base.samples} samples of {base.validation_source}")
    figure.tight_layout()
    with Transaction() as transaction:
        with open(transaction.path(path), "wb") as handle:
            figure.savefig(handle, format="png", dpi=100)
