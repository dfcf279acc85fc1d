"""prune(): the short composition the CLI and Python users call.

load -> (method pre-passes) -> analyze -> decide -> shrink, cleanup, infer shapes, check -> validate.
Several methods can be chained ("merge,obs"): each step analyzes the model the previous step left.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from . import io, preflight, runtime
from .analysis import Analysis, analyze
from .analysis.cost import model_macs
from .errors import OptionError, ValidationError
from .feeds import Dataset, load_dataset
from .graph import GraphIndex
from .methods.base import MethodContext, PruneOptions
from .methods.registry import get_method
from .passes import CHECK, CLEANUP, PassManager, shrink_pass
from .passes.constfold import FOLD_CONSTANTS
from .passes.registry import prepass
from .plan import PruningPlan
from .report import group_rows
from .validate import random_feeds, validate

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: dict
    plans: list[PruningPlan] = field(default_factory=list)


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, start: float) -> None:
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - start, 4)


def prune(
    model: str | Path | onnx.ModelProto,
    method: str = "magnitude",
    options: PruneOptions | None = None,
    calibration=None,
    calib_samples: int | None = 256,
    validation_data=None,
    validate_samples: int = 256,
    providers: str = "auto",
    run_validation: bool = True,
) -> PruneResult:
    """Prune `model` with `method` (comma-separated names chain methods) and validate the result.

    `calibration` feeds data-driven methods; `validation_data` (default: the calibration data, else
    random inputs from the signature) is run through both models for the report.
    """
    options = options or PruneOptions()
    preflight.check_numbers(calib_samples=calib_samples, validate_samples=validate_samples, seed=options.seed)
    timer = _Timer()
    start = time.perf_counter()
    from_file = not isinstance(model, onnx.ModelProto)
    current = io.load_model(model) if from_file else copy.deepcopy(model)
    source_bytes = io.source_bytes(current) if from_file else None
    io.strip_internal_metadata(current)
    preflight.check_weights(current, str(model) if from_file else "model")
    # the original is kept as its signature (inputs, outputs) plus, for validation, its file or the
    # caller's untouched proto: a model loaded from a file is never copied.
    original = io.signature(current)
    reference = str(model) if from_file else model
    preflight.check_runs(reference)
    before = _summary(current)
    current = PassManager([FOLD_CONSTANTS, CLEANUP]).run(current)
    timer.add("load", start)
    names = [n.strip() for n in method.split(",") if n.strip()]
    if not names:
        raise OptionError("--method: give at least one method name")
    methods = [get_method(n) for n in names]
    provider_list = (
        tuple(runtime.resolve_providers(providers))
        if any(m.needs_data for m in methods) or run_validation
        else ("CPUExecutionProvider",)
    )
    calib = _calibration(calibration, original, calib_samples, methods)
    checks = (
        _validation_data(validation_data, calib, current, validate_samples, options.get("input_shapes"))
        if run_validation
        else None
    )
    steps, plans, analysis = [], [], None
    iterations = int(options.get("iterations", 1))
    preflight.check_numbers(iterations=iterations, batch_size=options.get("batch_size"))
    for meth in methods:
        for iteration in range(iterations if meth.needs_data else 1):
            current, step, plan, analysis = _run_step(current, meth, options, calib, provider_list, timer)
            step["iteration"] = iteration + 1
            if iterations > 1 and meth.needs_data and checks is not None:
                step["validation"] = validate(
                    reference, current, checks.feeds, checks.labels, list(provider_list), signature=original
                )
            steps.append(step)
            plans.append(plan)
    macs_after = model_macs(GraphIndex.build(current))  # before sparse storage hides the weights' shapes
    if options.get("sparse_storage"):
        start = time.perf_counter()
        current = PassManager([prepass("sparse-storage")]).run(current)
        timer.add("sparse", start)
    report = {
        "method": ",".join(names),
        "options": _options_dict(options),
        "params_before": before["params"],
        "params_after": io.count_params(current),
        "nonzero_params_after": io.count_nonzero_params(current),
        "macs_before": before["macs"],
        "macs_after": macs_after,
        "file_bytes_before": source_bytes if source_bytes is not None else model.ByteSize(),
        "file_bytes_after": current.ByteSize(),
        "groups": steps[0]["groups"] if len(steps) == 1 else [g for s in steps for g in s["groups"]],
        "steps": steps,
    }
    if checks is not None:
        start = time.perf_counter()
        report["validation"] = validate(
            reference, current, checks.feeds, checks.labels, list(provider_list), signature=original
        )
        report["validation_source"] = (
            "calibration data"
            if validation_data is None and calib is not None
            else ("given data" if validation_data is not None else "random inputs (seed 0)")
        )
        timer.add("validate", start)
    report["seconds"] = timer.seconds
    return PruneResult(current, report, plans)


def _summary(model: onnx.ModelProto) -> dict:
    return {"params": io.count_params(model), "macs": model_macs(GraphIndex.build(model))}


def _calibration(calibration, model, limit, methods) -> Dataset | None:
    if calibration is None:
        needing = [m.name for m in methods if m.needs_data]
        if needing:
            raise OptionError(
                f"--method {needing[0]} needs calibration data: pass --calib FILE.npz (arrays keyed by "
                "input name, first axis = samples)"
            )
        return None
    return load_dataset(calibration, model, limit)


def _validation_data(validation_data, calib: Dataset | None, model, count: int, shapes=None) -> Dataset:
    if validation_data is not None:
        return load_dataset(validation_data, model, count, where="--validate-data")
    if calib is not None:
        return calib.take(count)
    return Dataset(random_feeds(model, batch=8, seed=0, shapes=shapes))


def _run_step(model, meth, options, calib, providers, timer):
    start = time.perf_counter()
    for name in meth.prepasses:
        model = PassManager([prepass(name)]).run(model)
    index = GraphIndex.build(model)
    analysis = analyze(index)
    preflight.check_selection([p.node for g in analysis.groups for p in g.producers], options.include, options.exclude)
    timer.add("analyze", start)
    start = time.perf_counter()
    ctx = MethodContext(model, index, analysis, options, calib, providers)
    plan = meth.decide(ctx)
    del ctx
    index.release()
    timer.add("decide", start)
    _check_finite(plan)
    start = time.perf_counter()
    manager = PassManager([shrink_pass(analysis, plan), CLEANUP, CHECK])
    pruned = manager.run(model)
    timer.add("shrink", start)
    step = {
        "method": meth.name,
        "removed_channels": len(plan.removed),
        "groups": group_rows(analysis, plan),
        "params_after": io.count_params(pruned),
        "nonzero_params_after": io.count_nonzero_params(pruned),
    }
    step.update({k: v for k, v in plan.notes.items() if isinstance(k, str)})
    return pruned, step, plan, analysis


def _check_finite(plan: PruningPlan) -> None:
    for name, value in plan.updates.items():
        if not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            raise ValidationError(
                f"method {plan.method}: new values of '{name}' are not finite; nothing is written. "
                "Use more calibration samples or a larger damping"
            )


def _options_dict(options: PruneOptions) -> dict:
    base = {k: getattr(options, k) for k in ("ratio", "round_to", "min_keep", "include", "exclude", "seed")}
    base.update(options.extra)
    return base


def inspect_model(model: str | Path | onnx.ModelProto) -> tuple[Analysis, dict]:
    """Analysis of `model` plus totals (params, MACs, prunable share) for `onnxprune inspect`."""
    loaded = io.load_model(model) if not isinstance(model, onnx.ModelProto) else copy.deepcopy(model)
    loaded = PassManager([FOLD_CONSTANTS, CLEANUP]).run(loaded)
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
