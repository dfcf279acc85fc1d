"""Command line: `onnxprune inspect | prune | apply | validate | bench`. A thin skin over the library calls.

Errors caused by the input print one line on stderr: exit code 1, or 2 for bad options.
Output: results on stdout (tables, or JSON with --json); progress bars on stderr when it is a terminal;
-v logs every stage with its time and sizes on stderr; -q drops bars, logs and the prune/apply summary,
leaving results, warnings and errors (onnxprune.progress). -v and -q go before or after the command name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from . import atomic, failure, io, preflight, progress
from .budget.plot import plot_allocation
from .datasplit import HOLDOUT, MIN_HELD, RANDOM_SAMPLES
from .gate import Gate, GateError, alarms
from .methods.base import TARGET_PROBES, TARGET_SAMPLES, PruneOptions, Target
from .methods.registry import METHODS, method_options
from .pipeline import PipelineOptions, apply, inspect_model, prune
from .report import inspect_table, summary_lines


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """-v/-q, given before or after the command name: kept in ctx.meta (shared by nested contexts); the
    logging set up for the command is undone when the command's context closes."""
    if "onnxprune.restore" not in ctx.meta:
        ctx.meta["onnxprune.restore"] = progress.logging_restorer()
        ctx.find_root().call_on_close(ctx.meta["onnxprune.restore"])
    if value:
        ctx.meta[f"onnxprune.{param.name}"] = True
    progress.configure(verbose=_flag(ctx, "verbose"), quiet=_flag(ctx, "quiet"))
    return value


def _flag(ctx: click.Context, name: str) -> bool:
    return bool(ctx.meta.get(f"onnxprune.{name}", False))


def _verbosity(func):
    """-v (log each stage with its time and sizes) and -q (no bars, no logs, no prune/apply summary)."""
    func = click.option(
        "-q", "--quiet", is_flag=True, expose_value=False, callback=_set_verbosity,
        help="No progress bars, no logs, no summary after prune/apply (results of inspect, validate and bench "
        "are still printed; so are warnings and errors).",
    )(func)  # fmt: skip
    return click.option(
        "-v", "--verbose", is_flag=True, expose_value=False, callback=_set_verbosity,
        help="Log each stage on stderr with its time and sizes.",
    )(func)  # fmt: skip


def _quiet() -> bool:
    return _flag(click.get_current_context(), "quiet")


def _bars() -> bool:
    """Progress bars: stderr is a terminal and not -q."""
    return progress.bars_wanted(_quiet())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@_verbosity
def cli() -> None:
    """Prune ONNX models: data-free merging, layer-wise OBS, relief masks; validated in onnxruntime."""


@cli.command()
@_verbosity
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the groups and totals as JSON.")
def inspect(model: Path, as_json: bool) -> None:
    """List the groups of coupled channels, what they cost and why some are frozen."""
    analysis, totals = inspect_model(model)
    if as_json:
        from .plan import jsonable
        from .report import group_rows

        click.echo(json.dumps(jsonable({"groups": group_rows(analysis), "totals": totals}), indent=1))
    else:
        click.echo("\n".join(inspect_table(analysis, totals)))


def _method_option_decorators(func, skip: frozenset[str] = frozenset()):
    for option in reversed([o for o in method_options() if o.dest not in skip]):
        kwargs = {"default": option.default, "help": option.help, "show_default": True}
        if option.is_flag:
            kwargs["is_flag"] = True
        elif option.type is not None:
            kwargs["type"] = option.type
        func = click.option(option.flags, option.dest, **kwargs)(func)
    return func


_INPUT_SHAPE = click.option(
    "--input-shape", multiple=True, help="NAME=1,3,640,640: size of random inputs where the model's dims are symbolic."
)


@cli.command(name="prune")
@_verbosity
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the model.")
@click.option(
    "--method",
    default="magnitude",
    show_default=True,
    help=f"One of {', '.join(sorted(METHODS))}; chain with commas (merge,obs): each method analyzes what the "
    "previous one left and applies --ratio to it, so merge,obs at 0.5 keeps about a quarter of each group.",
)
@click.option(
    "--ratio",
    default="0.5",
    show_default=True,
    help="Fraction of each group's channels to remove, or auto (not with --target).",
)
@click.option(
    "--target",
    default=None,
    help="KIND=FRACTION, KIND params, macs or latency: keep at most FRACTION of the original's cost, the removals "
    "spread over the groups by damage (obs: measured output error; data-free methods: normalized saliency). "
    "Exclusive with --ratio. In a chain (merge,obs) every method that takes it removes an equal geometric share and "
    "the last meets FRACTION of the original. --plot PATH.png draws the allocation.",
)
@click.option(
    "--target-probes",
    default=TARGET_PROBES,
    show_default=True,
    type=int,
    help="--target: counts per group at which the model's output error is measured to calibrate obs curves (0: none).",
)
@click.option(
    "--target-samples",
    default=TARGET_SAMPLES,
    show_default=True,
    type=int,
    help="--target: calibration samples of each output-error measurement.",
)
@click.option(
    "--latency-batch",
    default=1,
    show_default=True,
    type=int,
    help="--target latency=...: the batch size at which layers are timed and the written model is measured "
    "against the original (median of interleaved runs, all onnxruntime optimizations on).",
)
@click.option("--round-to", default=1, show_default=True, type=int, help="Keep a multiple of N channels per group.")
@click.option("--min-keep", default=1, show_default=True, type=int, help="Keep at least N channels per group.")
@click.option("--include", default=None, help="Only prune groups with a producer node name matching this regex.")
@click.option("--exclude", default=None, help="Never prune groups with a producer node name matching this regex.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of random choices.")
@click.option(
    "--calib",
    default=None,
    type=click.Path(path_type=Path),
    help="Calibration data: .npz keyed by input name (first axis = samples) or a folder of .npy/.npz.",
)
@click.option(
    "--calib-samples",
    default=PipelineOptions.calib_samples,
    show_default=True,
    type=int,
    help="Calibrate on at most N samples (the first ones, after the holdout); the summary says when this caps.",
)
@click.option(
    "--holdout",
    default=HOLDOUT,
    show_default=True,
    type=float,
    help=f"Without --validate-data: validate on the last FRACTION of --calib (at least {MIN_HELD} samples), which then "
    "does not calibrate; 0 validates on the calibration data itself (optimistic, and labelled so).",
)
@click.option("--batch-size", default=32, show_default=True, type=int, help="Batch size of onnxruntime runs.")
@click.option(
    "--providers",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="onnxruntime execution providers (auto: CUDA when it really works).",
)
@click.option(
    "--validate-data",
    default=None,
    type=click.Path(path_type=Path),
    help="Data to compare original and pruned outputs on (default: the --holdout part of --calib, else random inputs).",
)
@click.option(
    "--validate-samples",
    default=None,
    type=int,
    help=f"Compare on at most N samples (default: all of the validation data; {RANDOM_SAMPLES} random inputs without "
    "data).",
)
@click.option("--no-validate", is_flag=True, help="Skip running both models (the checker still runs).")
@click.option(
    "--iterations",
    default=1,
    show_default=True,
    type=int,
    help="Data-driven methods: prune K times, recollecting statistics on the pruned model in between.",
)
@click.option("--sparse-storage", is_flag=True, help="Store weights with many zeros as sparse initializers.")
@click.option("--report", "report_path", default=None, type=click.Path(path_type=Path), help="Write the JSON report.")
@click.option(
    "--save-plan",
    "plan_path",
    default=None,
    type=click.Path(path_type=Path),
    help="Write the plan (JSON, plus an .npz beside it for new weights) that `onnxprune apply` replays.",
)
@click.option(
    "--max-drop",
    default=None,
    type=float,
    help="Quality gate: if accuracy on labeled validation data drops by more than this (0.01 = one point), "
    "write nothing and exit 3.",
)
@click.option(
    "--max-drift",
    default=None,
    type=float,
    help="Quality gate: if any output's relative L2 distance to the original exceeds this, write nothing and exit 3.",
)
@_INPUT_SHAPE
@_method_option_decorators
def prune_command(
    model: Path,
    output: Path,
    method: str,
    ratio: str,
    target: str | None,
    target_probes: int,
    target_samples: int,
    latency_batch: int,
    round_to: int,
    min_keep: int,
    include,
    exclude,
    seed: int,
    calib,
    calib_samples: int,
    holdout: float,
    batch_size: int,
    providers: str,
    validate_data,
    validate_samples: int | None,
    no_validate: bool,
    iterations: int,
    sparse_storage: bool,
    report_path,
    plan_path,
    max_drop: float | None,
    max_drift: float | None,
    input_shape: tuple[str, ...],
    **extra,
) -> None:
    """Prune MODEL and write the smaller model to OUTPUT (never over MODEL, never half-written)."""
    given = click.get_current_context().get_parameter_source
    chosen = {name: value for name, value in extra.items() if given(name) is not ParameterSource.DEFAULT}
    plot = chosen.pop("plot", None) if target is not None else None  # --plot: the allocation's figure
    goal = Target.parse(target, target_probes, target_samples, latency_batch) if target is not None else None
    ratio = ratio if goal is None or given("ratio") is not ParameterSource.DEFAULT else None
    options = PruneOptions(ratio, round_to, min_keep, include, exclude, seed, chosen, goal)
    written = preflight.check_prune(model, output, report_path, calib, validate_data, plan=plan_path, plot=plot)
    gate = Gate(max_drop, max_drift)
    gate.check_possible(not no_validate)
    pipeline = PipelineOptions(
        calib_samples=calib_samples,
        validate_samples=validate_samples,
        holdout=holdout,
        run_validation=not no_validate,
        providers=providers,
        batch_size=batch_size,
        iterations=iterations,
        sparse_storage=sparse_storage,
        progress=_bars(),
        input_shapes=preflight.parse_input_shapes(input_shape),
    )
    result = prune(model, method, options, calib, validate_data, pipeline)
    missed = gate.failure(result.report)
    if missed is not None:
        raise GateError(missed)
    with atomic.Transaction() as transaction:  # the model, the report and the plan appear together or not at all
        result.save(written, report_path, transaction)
        if plan_path is not None:
            result.plan_file.save(plan_path, transaction)
        if plot is not None:
            plot_allocation(result.report, transaction.path(plot))
    for warning in alarms(result.report):  # after the write: they belong to a run that succeeded
        click.echo(f"onnxprune: warning: {warning}", err=True)
    if not _quiet():
        click.echo("\n".join(summary_lines(result.report)))
        extras = [f"plan {plan_path}"] * (plan_path is not None) + [f"plot {plot}"] * (plot is not None)
        click.echo(f"wrote      {output}" + "".join(f" and {e}" for e in extras))


@cli.command(name="apply")
@_verbosity
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("plan", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the model.")
def apply_command(model: Path, plan: Path, output: Path) -> None:
    """Replay a plan saved by `prune --save-plan` on MODEL (no data needed): the same model prune wrote."""
    target = preflight.check_apply(model, plan, output)
    written = io.save_model(apply(model, plan), target)
    if not _quiet():
        click.echo(f"wrote      {output} ({written:,} B)")


_JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (for pipelines).")


@cli.command(name="validate")
@_verbosity
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("pruned", type=click.Path(path_type=Path))
@click.option("--data", default=None, type=click.Path(path_type=Path), help=".npz inputs (and labels) to compare on.")
@click.option(
    "--samples",
    default=None,
    type=int,
    help=f"Compare on at most N samples of --data (default: all), or on N random inputs without --data (default "
    f"{RANDOM_SAMPLES}).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random inputs.")
@click.option("--providers", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@_INPUT_SHAPE
@_JSON
def validate_command(
    original: Path, pruned: Path, data, samples: int | None, seed: int, providers: str, input_shape, as_json: bool
) -> None:
    """Run ORIGINAL and PRUNED on the same inputs and print how far the outputs moved (and the accuracy
    of both with labeled --data)."""
    from . import runtime
    from .feeds import load_dataset
    from .report import comparison_lines
    from .validate import random_dataset, validate

    preflight.check_numbers(samples=samples, seed=seed)
    reference, candidate = io.load_model(original), io.load_model(pruned)
    shapes = preflight.parse_input_shapes(input_shape)
    with progress.showing(_bars()):
        if data:
            dataset = load_dataset(data, reference, samples, "--data")
            source = f"--data {data}"
        else:
            dataset = random_dataset(reference, samples or RANDOM_SAMPLES, seed, shapes)
            source = f"random inputs (seed {seed}): drift only"
        result = validate(reference, candidate, dataset.feeds, dataset.labels, runtime.resolve_providers(providers))
    if as_json:
        click.echo(json.dumps({"original": str(original), "pruned": str(pruned), "data": source, **result}, indent=1))
        return
    lines = [f"original   {original}", f"pruned     {pruned}", f"data       {result['samples']} samples, {source}"]
    click.echo("\n".join([*lines, *comparison_lines(result, source)]))


@cli.command(name="bench")
@_verbosity
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--batch-sizes", default="1,8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--repeats", default=20, show_default=True, type=int, help="Timed runs per batch size.")
@click.option("--warmup", default=3, show_default=True, type=int)
@click.option("--threads", default=0, show_default=True, type=int, help="intra-op threads (0: onnxruntime's choice).")
@click.option("--providers", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@_INPUT_SHAPE
@_JSON
def bench_command(
    models, batch_sizes: str, repeats: int, warmup: int, threads: int, providers: str, input_shape, as_json: bool
) -> None:
    """Median onnxruntime latency of each model per batch size, and the speed-up against the first model
    (give the original first, then pruned versions) measured in the same run."""
    from . import runtime
    from .bench import as_json as bench_json
    from .bench import check_batches, distinct_labels, measure, table

    sizes = preflight.parse_batch_sizes(batch_sizes)
    preflight.check_numbers(repeats=repeats, warmup=warmup, threads=threads)
    shapes = preflight.parse_input_shapes(input_shape)
    labels = distinct_labels(list(models))
    for path, label in zip(models, labels, strict=True):  # every refusal before the first timing
        check_batches(io.load_model(path), sizes, label)
    chosen = runtime.resolve_providers(providers)
    with progress.showing(_bars()):
        rows = [
            measure(str(path), b, chosen, warmup, repeats, threads, label, shapes)
            for path, label in zip(models, labels, strict=True)
            for b in sizes
        ]
    click.echo(json.dumps(bench_json(rows), indent=1) if as_json else "\n".join(table(rows)))


@cli.command(name="sweep")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--method",
    "methods",
    multiple=True,
    default=("magnitude",),
    show_default=True,
    help="A method or a comma chain (merge,obs: one chain, --ratio applied at each step). Give --method "
    "several times to compare: one line each in the table, one curve each in the plot.",
)
@click.option(
    "--ratios", default=None, help="Fractions to remove, each in (0, 1) [default: 0.1,0.3,0.5 without --targets]."
)
@click.option("--targets", default=None, help="Budgets to prune to, e.g. macs=0.7,macs=0.5 (as prune --target).")
@click.option("--calib", default=None, type=click.Path(path_type=Path), help="Calibration data (as for prune).")
@click.option("--calib-samples", default=256, show_default=True, type=int)
@click.option(
    "--validate-data",
    default=None,
    type=click.Path(path_type=Path),
    help="Data every point is compared on (default: calibration data, else random inputs).",
)
@click.option("--validate-samples", default=None, type=int, help="Compare on at most N samples [default: all].")
@click.option("--batch-size", default=32, show_default=True, type=int, help="Batch size of onnxruntime runs.")
@click.option("--providers", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--plot", "plot_path", default=None, type=click.Path(path_type=Path), help="Write the curves as PNG.")
@click.option("--keep-dir", default=None, type=click.Path(path_type=Path), help="Also write every pruned model here.")
@click.option("--repeats", default=20, show_default=True, type=int, help="Timed runs per latency (median).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of the table.")
@_INPUT_SHAPE
@lambda func: _method_option_decorators(func, skip=frozenset({"plot"}))  # sweep's --plot is the curve
def sweep_command(model: Path, methods, ratios: str | None, targets: str | None, calib, calib_samples: int,
                  validate_data, validate_samples: int, batch_size: int, providers: str, plot_path, keep_dir,
                  repeats: int, as_json: bool, input_shape, **extra) -> None:  # fmt: skip
    """Prune MODEL at each ratio and --targets budget with each --method, validate and time every result, print a
    table and plot accuracy (or drift) against params, MACs and latency kept. Writes no model unless --keep-dir."""
    from .sweep import check_plot_path, parse_ratios, parse_targets, plot, sweep, table

    points = [] if ratios is None and targets is not None else parse_ratios(ratios or "0.1,0.3,0.5")
    points += parse_targets(targets) if targets is not None else []
    if plot_path is not None:
        check_plot_path(plot_path, {"model": preflight.model_files(model)})
    given = click.get_current_context().get_parameter_source
    chosen = {name: value for name, value in extra.items() if given(name) is not ParameterSource.DEFAULT}
    pipeline = PipelineOptions(
        calib_samples=calib_samples,
        validate_samples=validate_samples,
        providers=providers,
        batch_size=batch_size,
        progress=_bars(),
        input_shapes=preflight.parse_input_shapes(input_shape),
    )
    options = PruneOptions(extra=chosen)
    with progress.showing(pipeline.progress):
        result = sweep(model, methods, points, options, calib, validate_data, pipeline, keep_dir, repeats)
    if plot_path is not None:
        plot(result, plot_path)
    click.echo(json.dumps(result.as_dict(), indent=1) if as_json else "\n".join(table(result)))


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr for user errors (exit 1; 2 for bad options); see failure.py."""
    try:
        with atomic.signals_interrupt():
            cli.main(args=argv, prog_name="onnxprune", standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 - failure.exit_code sorts user errors from bugs
        sys.exit(failure.exit_code(exc))


if __name__ == "__main__":
    main()
