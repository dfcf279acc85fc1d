"""prune(): the short composition the CLI and Python users call, and apply() that replays its plans.

load -> prologue (fold constants, normalize transposes, cleanup) -> per step: method pre-passes -> analyze -> decide ->
shrink, cleanup, infer shapes, check -> (sparse storage) -> validate -> report.
Several methods can be chained ("merge,obs"): each step analyzes the model the previous step left.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import onnx

from . import io, preflight, progress, runtime
from .analysis import Analysis, analyze
from .analysis.cost import model_macs
from .atomic import Transaction
from .budget.latency_check import written_latency
from .budget.run import StepTarget, check_target, decide_to_target, step_fractions, target_summary
from .datasplit import HOLDOUT, DataUse, check_holdout, plan_data
from .errors import OptionError, ValidationError
from .feeds import Dataset, load_dataset
from .graph import GraphIndex
from .methods.base import Method, MethodContext, PruneOptions, Target
from .methods.options import unused_options
from .methods.registry import METHODS, get_method, methods_taking
from .passes import CHECK, CLEANUP, PASSES, PassManager, shrink_pass
from .passes.constfold import FOLD_CONSTANTS
from .passes.reshaped_transpose import REWRITE_RESHAPED_TRANSPOSES
from .passes.unshare import UNSHARE_CONSTANTS, UNSHARE_VECTORS
from .plan import PlanFile, PlanStep, PruningPlan, fingerprint
from .report import build_report, compose_io_changes, group_rows, io_changes, write_json
from .stats import CollectSettings, Statistics
from .validate import random_dataset, validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineOptions:
    """How prune() runs, apart from what the methods decide (each default written here only).

    calib_samples: calibration samples used (None: all), after the holdout; validate_samples: samples
    compared (None: all of the validation data, or datasplit.RANDOM_SAMPLES random inputs); holdout:
    without validation data, the share of the calibration samples kept apart to validate on (0: validate
    on the calibration data; see onnxprune.datasplit); run_validation: run original and pruned on the
    same inputs; providers: auto|cpu|cuda;
    batch_size: onnxruntime batch of every statistics pass; iterations: data-driven methods prune K
    times, recollecting statistics in between; sparse_storage: mostly-zero weights stored sparse;
    progress: progress bars on stderr; input_shapes: sizes of random validation inputs whose dims are
    symbolic (input name -> shape, --input-shape).
    """

    calib_samples: int | None = 256
    validate_samples: int | None = None
    holdout: float = HOLDOUT
    run_validation: bool = True
    providers: str = "auto"
    batch_size: int = 32
    iterations: int = 1
    sparse_storage: bool = False
    progress: bool = False
    input_shapes: Mapping[str, tuple[int, ...]] | None = None

    def __post_init__(self) -> None:
        preflight.check_numbers(
            calib_samples=self.calib_samples,
            validate_samples=self.validate_samples,
            batch_size=self.batch_size,
            iterations=self.iterations,
        )
        check_holdout(self.holdout)
        if self.providers not in runtime.PROVIDER_CHOICES:
            raise OptionError(f"--providers {self.providers}: use one of {', '.join(runtime.PROVIDER_CHOICES)}")


@dataclass(frozen=True)
class Step:
    """One method run on the model the previous step left: its plan and what it left."""

    method: str
    iteration: int
    plan: PruningPlan
    groups: list[dict]
    params_after: int
    nonzero_params_after: int
    validation: dict | None = None
    changed_io: list[dict] = field(default_factory=list)  # graph inputs/outputs resized (report.io_changes)

    def as_report(self) -> dict:
        row = {
            "method": self.method,
            "removed_channels": len(self.plan.removed),
            "groups": self.groups,
            "params_after": self.params_after,
            "nonzero_params_after": self.nonzero_params_after,
            **self.plan.step_notes,
            "iteration": self.iteration,
        }
        if self.validation is not None:
            row["validation"] = self.validation
        return row


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: dict
    plans: list[PruningPlan] = field(default_factory=list)
    plan_file: PlanFile | None = None

    def save(
        self, path: str | Path, report_path: str | Path | None = None, transaction: Transaction | None = None
    ) -> int:
        """Write the model (and the report, completed with the written size) all or nothing: within
        `transaction` they appear when it commits, else at once together. Returns the model's bytes."""
        if transaction is None:
            with Transaction() as own:
                return self.save(path, report_path, own)
        start = time.perf_counter()
        written = io.save_model(self.model, path, transaction)
        self.report["file_bytes_after"] = written
        self.report["seconds"]["save"] = round(time.perf_counter() - start, 4)
        self.report["output"] = str(path)
        if report_path is not None:
            write_json(self.report, transaction.path(report_path))
        return written


class _Timer:
    """The seconds of each stage (summed over a chain's steps), for the report; each stage is also
    logged with its sizes (onnxprune.progress.stage)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str, **sizes) -> Iterator[progress.Stage]:
        with progress.stage(log, stage, **sizes) as current:
            yield current
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + current.seconds, 4)


def prune(
    model: str | Path | onnx.ModelProto,
    method: str = "magnitude",
    options: PruneOptions | None = None,
    calibration=None,
    validation_data=None,
    pipeline: PipelineOptions | None = None,
    **pipeline_fields,
) -> PruneResult:
    """Prune `model` with `method` (comma-separated names chain methods) and validate the result.

    `calibration` feeds data-driven methods; `validation_data` (default: the last `holdout` share of the
    calibration data, which then does not calibrate; else random inputs from the signature: see
    onnxprune.datasplit) is run through both models for the report. How the pipeline runs is
    `pipeline`, or PipelineOptions built from the keyword arguments (calib_samples=..., holdout=...).
    """
    options = options or PruneOptions()
    pipeline = pipeline or PipelineOptions(**pipeline_fields)
    with progress.showing(pipeline.progress):
        return _prune(model, method, options, calibration, validation_data, pipeline)


def _prune(model, method: str, options: PruneOptions, calibration, validation_data, pipeline: PipelineOptions):
    timer = _Timer()
    with timer("load", model=str(model) if not isinstance(model, onnx.ModelProto) else "(in memory)") as stage:
        source = _Source.load(model)
        current = _prologue(source.model)
        source = source.counted(current)
        stage.sizes.update(params=source.summary["params"], nodes=len(current.graph.node))
    methods = _methods(method)
    _check_options(methods, options)
    if options.target is not None:
        check_target(options.target, methods)
    providers = _providers(methods, pipeline)
    data = _data(calibration, validation_data, source.signature, current, methods, pipeline)
    collect = CollectSettings(pipeline.batch_size, providers, pipeline.progress)
    stats = None if data.calibration is None else Statistics(data.calibration, collect)
    checks = data.validation
    steps: list[Step] = []
    plan_steps: list[PlanStep] = []
    changed_io: list[dict] = []
    runs = [(m, i) for m in methods for i in range(pipeline.iterations if m.needs_data else 1)]
    goals = _goals(options.target, [m for m, _ in runs], source.summary, pipeline.input_shapes)
    for (meth, iteration), goal in zip(runs, goals, strict=True):
        if goal is not None and goal.origin is None and steps and options.target.kind == "latency":
            goal = replace(goal, origin=_latency_origin(steps))
        current, step, plan_step = _run_step(current, meth, options, stats, timer, goal, providers)
        changed_io = compose_io_changes(changed_io, step.changed_io)
        if pipeline.iterations > 1 and meth.needs_data and checks is not None:
            step = replace(step, validation=_validate(source, current, checks, providers, changed_io))
        steps.append(replace(step, iteration=iteration + 1))
        plan_steps.append(plan_step)
    macs_after = model_macs(GraphIndex.build(current))  # before sparse storage hides the weights' shapes
    if pipeline.sparse_storage:
        with timer("sparse"):
            current = PassManager([PASSES["sparse-storage"]]).run(current)
    validation = None
    if checks is not None:
        with timer("validate", samples=len(checks), data=data.notes["validation"]["kind"]):
            validation = _validate(source, current, checks, providers, changed_io)
    report = build_report(
        method=",".join(m.name for m in methods),
        options=options,
        pipeline=pipeline,
        before=source.summary,
        model=current,
        macs_after=macs_after,
        steps=[s.as_report() for s in steps],
        validation=validation,
        validation_source=data.source if validation is not None else None,
        data=data.notes,
        statistics=[p.as_dict() for p in stats.passes] if stats is not None else [],
        seconds=timer.seconds,
        changed_io=changed_io,
    )
    report["model"] = source.name
    if options.target is not None:
        report["target"] = target_summary(options.target, report, [s.plan for s in steps])
        if options.target.kind == "latency":
            with timer("latency"):
                report["target"].update(
                    written_latency(
                        source.reference,
                        current,
                        options.target,
                        report["target"],
                        providers,
                        pipeline.input_shapes,
                        _kept(changed_io),
                    )  # fmt: skip
                )
    plan_file = PlanFile(tuple(plan_steps), pipeline.sparse_storage)
    return PruneResult(current, report, [s.plan for s in steps], plan_file)


def apply(model: str | Path | onnx.ModelProto, plan: PlanFile | str | Path) -> onnx.ModelProto:
    """Replay the steps of a saved plan on `model`: the same model prune() returned when it made them.

    Each step runs its method's pre-passes, analyzes, checks that the analysis has the fingerprint the
    plan was made against (else PlanError: the plan belongs to another model), and shrinks."""
    plan = plan if isinstance(plan, PlanFile) else PlanFile.load(plan)
    current = _prologue(_load(model))
    io.strip_internal_metadata(current)
    for step in plan.steps:
        current = _run_prepasses(current, step.prepasses)
        analysis = analyze(GraphIndex.build(current))
        step.check_fingerprint(fingerprint(analysis))
        current = PassManager([shrink_pass(analysis, step.plan), CLEANUP, CHECK]).run(current)
    if plan.sparse_storage:
        current = PassManager([PASSES["sparse-storage"]]).run(current)
    return current


@dataclass(frozen=True)
class _Source:
    """The input model, its signature (inputs, outputs) for validation and its size before pruning.
    `model` is the working copy: the prologue and every step edit it in place, so after the steps it
    is the pruned model. Comparisons with the original use `reference`: the file, read again (a model
    loaded from a file is never copied), or the caller's proto (never edited)."""

    model: onnx.ModelProto
    reference: str | onnx.ModelProto
    signature: onnx.ModelProto
    name: str
    summary: dict

    @classmethod
    def load(cls, model: str | Path | onnx.ModelProto) -> _Source:
        from_file = not isinstance(model, onnx.ModelProto)
        loaded = _load(model)
        size = io.source_bytes(loaded) if from_file else model.ByteSize()
        io.strip_internal_metadata(loaded)
        preflight.check_weights(loaded, str(model) if from_file else "model")
        preflight.check_runs(str(model) if from_file else model)
        reference = str(model) if from_file else model
        name = str(model) if from_file else "(in memory)"
        return cls(loaded, reference, io.signature(loaded), name, {"bytes": size})

    def counted(self, folded: onnx.ModelProto) -> _Source:
        """With the parameters and MACs before pruning counted on `folded`, the model after _prologue, as
        `inspect` and the counts after pruning see it: weights stored as integers and dequantized by plain
        ops (Cast, Mul by a scale) count as the float weights they fold into, not as nothing."""
        summary = {**self.summary, "params": io.count_params(folded), "macs": model_macs(GraphIndex.build(folded))}
        return replace(self, summary=summary)


def _load(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """The model from its file, or a copy of the caller's proto (never edited)."""
    return copy.deepcopy(model) if isinstance(model, onnx.ModelProto) else io.load_model(model)


def _prologue(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constants folded, transposes written through a merged batch axis made one Transpose
    (passes/reshaped_transpose.py), shared shape vectors and small shared integer constants given a copy
    per reader, dead nodes removed."""
    passes = [FOLD_CONSTANTS, REWRITE_RESHAPED_TRANSPOSES, UNSHARE_VECTORS, UNSHARE_CONSTANTS, CLEANUP]
    return PassManager(passes).run(model)


def _methods(method: str) -> list[Method]:
    names = [n.strip() for n in method.split(",") if n.strip()]
    if not names:
        raise OptionError("--method: give at least one method name")
    return [get_method(n) for n in names]


def _providers(methods: list[Method], pipeline: PipelineOptions) -> tuple[str, ...]:
    if any(m.needs_data for m in methods) or pipeline.run_validation:
        return tuple(runtime.resolve_providers(pipeline.providers))
    return ("CPUExecutionProvider",)


def _run_prepasses(model: onnx.ModelProto, names: tuple[str, ...]) -> onnx.ModelProto:
    return PassManager([PASSES[name] for name in names]).run(model) if names else model


def _goals(target: Target | None, runs: list[Method], before: dict, shapes=None) -> list[StepTarget | None]:
    """Per run of a method: what it must meet under `target` (budget.run: equal geometric shares; the
    origin is the input model's count, or for latency the first target step's own measurement; `shapes`:
    --input-shape, where latency is timed)."""
    if target is None:
        return [None] * len(runs)
    taking = [m for m in runs if m.damage is not None]
    fractions = iter(step_fractions(target, len(taking)))
    origin = before.get(target.kind)
    return [StepTarget(target, next(fractions), origin, shapes) if m.damage is not None else None for m in runs]


def _latency_origin(steps: list[Step]) -> float | None:
    """The first target step's measured latency before it pruned: the origin of the later ones."""
    for step in steps:
        record = step.plan.notes.get("target")
        if record:
            return float(record["cost_before"])
    return None


def _run_step(model, meth, options, stats, timer, goal: StepTarget | None = None, providers=("CPUExecutionProvider",)):
    with timer("analyze"):
        model = _run_prepasses(model, meth.prepasses)
        index = GraphIndex.build(model)
        analysis = analyze(index)
        producers = [p.node for g in analysis.groups for p in g.producers]
        preflight.check_selection(producers, options.include, options.exclude)
    with timer("decide", method=meth.name, groups=len(analysis.groups)):
        if options.target is not None:
            plan = decide_to_target(meth, model, index, analysis, options, stats, goal, providers)
        else:
            ctx = MethodContext.build(meth, model, index, analysis, options, stats)
            plan = meth.decide(ctx)
            del ctx
        index.release()
    _check_finite(plan)
    with timer("shrink", removed=len(plan.removed)):
        pruned = PassManager([shrink_pass(analysis, plan), CLEANUP, CHECK]).run(model)
    step = Step(
        meth.name, 1, plan, group_rows(analysis, plan), io.count_params(pruned), io.count_nonzero_params(pruned),
        changed_io=io_changes(analysis, plan),
    )  # fmt: skip
    return pruned, step, PlanStep(meth.name, meth.prepasses, fingerprint(analysis), plan)


def _check_options(methods: list[Method], options: PruneOptions) -> None:
    """Every method option given must be one that a chosen method takes (a pipeline option given as a
    method option is named as such), and --ratio auto only goes to methods that choose their own
    amount; the values are checked when each method's settings are built."""
    fixed = [m.name for m in methods if not m.auto_ratio]
    if options.ratio == "auto" and fixed:
        choosers = ", ".join(m.name for m in METHODS.values() if m.auto_ratio)
        raise OptionError(
            f"--ratio auto: --method {fixed[0]} needs a number, the fraction to remove (e.g. 0.5); "
            f"only {choosers} choose their own"
        )
    for name in unused_options([m.options for m in methods], options.extra):
        chosen = ",".join(m.name for m in methods)
        flag = "--" + name.replace("_", "-")
        if name in {f.name for f in fields(PipelineOptions)}:
            raise OptionError(f"{flag} is a pipeline option, not a method's: pass prune(..., {name}=...)")
        owners = methods_taking(name)
        if owners:
            raise OptionError(f"{flag} does not apply to --method {chosen}; it is an option of {', '.join(owners)}")
        raise OptionError(f"{flag}: no method has this option; `onnxprune prune --help` lists them")


def _data(calibration, validation_data, model: onnx.ModelProto, runnable, methods: list[Method], pipeline) -> DataUse:
    """The calibration and validation samples (onnxprune.datasplit: the holdout, the caps), checked
    against `model`'s signature; random inputs sized by running `runnable` where dims are symbolic."""
    needing = [m.name for m in methods if m.needs_data]
    if calibration is None and needing:
        raise OptionError(
            f"--method {needing[0]} needs calibration data: pass --calib FILE.npz (arrays keyed by "
            "input name, first axis = samples)"
        )

    def random(count: int) -> Dataset:
        return random_dataset(runnable, count, seed=0, shapes=pipeline.input_shapes)

    validates = pipeline.run_validation
    with progress.stage(log, "load data") as stage:
        data = plan_data(
            load_dataset(calibration, model) if calibration is not None and (needing or validates) else None,
            load_dataset(validation_data, model, where="--validate-data") if validates and validation_data else None,
            holdout=pipeline.holdout,
            calib_samples=pipeline.calib_samples,
            validate_samples=pipeline.validate_samples,
            run_validation=validates,
            calibrates=bool(needing),
            random=random,
        )
        for part in ("calibration", "validation"):
            if getattr(data, part) is not None:
                stage.sizes[part] = len(getattr(data, part))
    return data


def _validate(source: _Source, model: onnx.ModelProto, checks: Dataset, providers, changed_io=()) -> dict:
    return validate(
        source.reference, model, checks.feeds, checks.labels, list(providers), signature=source.signature,
        kept=_kept(changed_io),
    )  # fmt: skip


def _kept(changed_io) -> dict[str, tuple[int, list[int]]]:
    """The graph inputs and outputs that shrank with their heads: name -> (axis, positions kept)."""
    return {c["name"]: (c["axis"], c["kept"]) for c in changed_io}


def _check_finite(plan: PruningPlan) -> None:
    for name, value in plan.updates.items():
        if not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            raise ValidationError(
                f"method {plan.method}: new values of '{name}' are not finite; nothing is written. "
                "Use more calibration samples or a larger damping"
            )


def inspect_model(model: str | Path | onnx.ModelProto) -> tuple[Analysis, dict]:
    """Analysis of `model` plus totals (params, MACs, prunable share) for `onnxprune inspect`."""
    loaded = _prologue(_load(model))
    index = GraphIndex.build(loaded)
    analysis = analyze(index)
    params = io.count_params(loaded)
    macs = sum(analysis.node_macs.values())
    prunable_params = _prunable_params(analysis, index)
    prunable_macs = sum(g.macs for g in analysis.groups if g.prunable)
    totals = {
        "params": params,
        "macs": macs,
        "groups": len(analysis.groups),
        "prunable_groups": len(analysis.prunable_groups()),
        "channels": analysis.num_channels,
        "prunable_channels": sum(len(g.free) for g in analysis.groups),
        "prunable_params_share": round(prunable_params / params, 4) if params else 0.0,
        "prunable_macs_share": round(min(prunable_macs, macs) / macs, 4) if macs else 0.0,
    }
    return analysis, totals


def _prunable_params(analysis: Analysis, index: GraphIndex) -> int:
    """Initializer entries that at least one free channel can remove (each entry counted once)."""
    free = np.zeros(analysis.num_channels + 1, dtype=bool)
    for group in analysis.groups:
        free[list(group.free)] = True
    total = 0
    for name, axes in analysis.const_labels.items():
        dims = index.shape(name) or ()
        size = int(np.prod(dims, dtype=np.int64))
        untouched = size
        for axis, line in axes.items():
            untouched = untouched // dims[axis] * int((~free[line]).sum())
        total += size - untouched
    return total
