"""Command line: `onnxprune inspect | prune | validate`. A thin skin over the library calls.

Errors caused by the input print one line on stderr: exit code 1, or 2 for bad options.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from . import atomic, failure, io, preflight
from .budget.plot import plot_allocation
from .gate import Gate, GateError, alarms
from .methods.base import PruneOptions, Target
from .methods.registry import METHODS, method_options
from .pipeline import PipelineOptions, apply, inspect_model, prune
from .report import inspect_table, summary_lines


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what each stage does.")
def cli(verbose: bool) -> None:
    """Prune ONNX models: data-free merging, layer-wise OBS, relief masks; validated in onnxruntime."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@cli.command()
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


def _method_option_decorators(func):
    for option in reversed(method_options()):
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
    default=3,
    show_default=True,
    type=int,
    help="--target: counts per group at which the model's output error is measured to calibrate obs curves (0: none).",
)
@click.option(
    "--target-samples",
    default=32,
    show_default=True,
    type=int,
    help="--target: calibration samples of each output-error measurement.",
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
@click.option("--calib-samples", default=256, show_default=True, type=int, help="Use at most N calibration samples.")
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
    help="Data to compare original and pruned outputs on (default: calibration data, else random).",
)
@click.option("--validate-samples", default=256, show_default=True, type=int)
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
@click.option("--quiet", "-q", is_flag=True, help="No summary, no progress bars.")
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
    round_to: int,
    min_keep: int,
    include,
    exclude,
    seed: int,
    calib,
    calib_samples: int,
    batch_size: int,
    providers: str,
    validate_data,
    validate_samples: int,
    no_validate: bool,
    iterations: int,
    sparse_storage: bool,
    report_path,
    plan_path,
    quiet: bool,
    max_drop: float | None,
    max_drift: float | None,
    input_shape: tuple[str, ...],
    **extra,
) -> None:
    """Prune MODEL and write the smaller model to OUTPUT (never over MODEL, never half-written)."""
    given = click.get_current_context().get_parameter_source
    chosen = {name: value for name, value in extra.items() if given(name) is not ParameterSource.DEFAULT}
    plot = chosen.pop("plot", None) if target is not None else None  # --plot: the allocation's figure
    goal = Target.parse(target, target_probes, target_samples) if target is not None else None
    ratio = ratio if goal is None or given("ratio") is not ParameterSource.DEFAULT else None
    options = PruneOptions(ratio, round_to, min_keep, include, exclude, seed, chosen, goal)
    written = preflight.check_prune(model, output, report_path, calib, validate_data, plan=plan_path, plot=plot)
    gate = Gate(max_drop, max_drift)
    gate.check_possible(not no_validate)
    pipeline = PipelineOptions(
        calib_samples=calib_samples,
        validate_samples=validate_samples,
        run_validation=not no_validate,
        providers=providers,
        batch_size=batch_size,
        iterations=iterations,
        sparse_storage=sparse_storage,
        progress=not quiet and sys.stderr.isatty(),
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
    if not quiet:
        click.echo("\n".join(summary_lines(result.report)))
        extras = [f"plan {plan_path}"] * (plan_path is not None) + [f"plot {plot}"] * (plot is not None)
        click.echo(f"wrote      {output}" + "".join(f" and {e}" for e in extras))


@cli.command(name="apply")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("plan", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the model.")
def apply_command(model: Path, plan: Path, output: Path) -> None:
    """Replay a plan saved by `prune --save-plan` on MODEL (no data needed): the same model prune wrote."""
    target = preflight.check_apply(model, plan, output)
    written = io.save_model(apply(model, plan), target)
    click.echo(f"wrote      {output} ({written:,} B)")


@cli.command(name="validate")
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("pruned", type=click.Path(path_type=Path))
@click.option("--data", default=None, type=click.Path(path_type=Path), help=".npz inputs (and labels) to compare on.")
@click.option("--samples", default=256, show_default=True, type=int)
@click.option("--providers", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@_INPUT_SHAPE
def validate_command(original: Path, pruned: Path, data, samples: int, providers: str, input_shape) -> None:
    """Run ORIGINAL and PRUNED on the same inputs and print how far the outputs moved."""
    from . import runtime
    from .feeds import Dataset, load_dataset
    from .validate import random_feeds, validate

    preflight.check_numbers(samples=samples)
    reference, candidate = io.load_model(original), io.load_model(pruned)
    shapes = preflight.parse_input_shapes(input_shape)
    dataset = (
        load_dataset(data, reference, samples, "--data") if data else Dataset(random_feeds(reference, 8, 0, shapes))
    )
    result = validate(reference, candidate, dataset.feeds, dataset.labels, runtime.resolve_providers(providers))
    click.echo(json.dumps(result, indent=1))


@cli.command(name="bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--batch-sizes", default="1,8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--repeats", default=20, show_default=True, type=int, help="Timed runs per batch size.")
@click.option("--warmup", default=3, show_default=True, type=int)
@click.option("--threads", default=0, show_default=True, type=int, help="intra-op threads (0: onnxruntime's choice).")
@click.option("--providers", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@_INPUT_SHAPE
def bench_command(
    models, batch_sizes: str, repeats: int, warmup: int, threads: int, providers: str, input_shape
) -> None:
    """Median onnxruntime latency of each model (e.g. original and pruned) per batch size."""
    from . import runtime
    from .bench import measure, table

    sizes = preflight.parse_batch_sizes(batch_sizes)
    preflight.check_numbers(repeats=repeats, warmup=warmup, threads=threads)
    chosen = runtime.resolve_providers(providers)
    rows = []
    for path in models:
        io.load_model(path)  # one clear line for a bad file before onnxruntime sees it
        shapes = preflight.parse_input_shapes(input_shape)
        rows.extend(measure(str(path), b, chosen, warmup, repeats, threads, path.name, shapes) for b in sizes)
    click.echo("\n".join(table(rows)))


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr for user errors (exit 1; 2 for bad options); see failure.py."""
    try:
        with atomic.signals_interrupt():
            cli.main(args=argv, prog_name="onnxprune", standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 - failure.exit_code sorts user errors from bugs
        sys.exit(failure.exit_code(exc))


if __name__ == "__main__":
    main()
