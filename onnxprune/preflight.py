"""Checks that run before any work, so that a run either fails at once with one line or goes through.

- paths: no output may be, or overlap, an input (the model, its external-data files, calibration and
  validation files, the report); an output is not a directory, its folder exists and is writable;
  --report is not -o.
- numbers: every count option in its range (the RANGES table).
- --input-shape NAME=d0,d1,...: parsed here, checked against the model's inputs in feeds.py.
- the model's weights: every floating-point initializer finite (a NaN weight would be copied out).
- --include/--exclude: each must match at least one producer node of the analysis.

Every refusal is an OnnxPruneError: OptionError (exit 2) for option values, OutputPathError (exit 1)
for paths, ModelLoadError (exit 1) for the model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

from .errors import ModelLoadError, OptionError, OutputPathError

#: option -> (smallest allowed value, what the option means); None values are "not given".
RANGES: dict[str, tuple[int, str]] = {
    "--calib-samples": (1, "the number of calibration samples to use"),
    "--batch-size": (1, "samples per onnxruntime run"),
    "--iterations": (1, "pruning rounds"),
    "--validate-samples": (1, "samples to validate on"),
    "--samples": (1, "samples to compare on"),
    "--seed": (0, "the seed of random choices"),
    "--repeats": (1, "timed runs per batch size"),
    "--warmup": (0, "untimed runs before timing"),
    "--threads": (0, "onnxruntime intra-op threads (0: its choice)"),
    "--batch-sizes": (1, "batch sizes to time"),
    "--target-probes": (0, "counts per group at which --target measures the output error (0: none)"),
    "--target-samples": (1, "calibration samples of those measurements"),
    "--latency-batch": (1, "the batch size at which a latency target is measured"),
}
SEED_LIMIT = 2**32  # numpy's legacy seeding and onnxruntime take 32-bit seeds


def check_numbers(**values) -> None:
    """Refuse an option below its smallest allowed value; keys are option names with '_' for '-'."""
    for key, value in values.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        low, meaning = RANGES[flag]
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if item < low:
                raise OptionError(f"{flag} {item}: must be at least {low} ({meaning})")
            if flag == "--seed" and item >= SEED_LIMIT:
                raise OptionError(f"{flag} {item}: must be below 2**32")


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise OptionError(f"--batch-sizes {text}: give integers separated by commas, e.g. 1,8") from None
    if not sizes:
        raise OptionError(f"--batch-sizes {text}: give at least one batch size, e.g. 1,8")
    check_numbers(batch_sizes=sizes)
    return sizes


_SHAPE = re.compile(r"^([^=]+)=(\d+(?:,\d+)*)$")


def parse_input_shapes(items: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """`--input-shape NAME=1,3,640,640` (repeatable) -> {NAME: (1, 3, 640, 640)}."""
    shapes = {}
    for item in items or ():
        match = _SHAPE.match(item.replace(" ", ""))
        if not match:
            raise OptionError(
                f"--input-shape {item}: expected NAME=D0,D1,... with positive integers, e.g. images=1,3,640,640"
            )
        dims = tuple(int(d) for d in match.group(2).split(","))
        if min(dims) < 1:
            raise OptionError(f"--input-shape {item}: every dimension must be at least 1")
        shapes[match.group(1)] = dims
    return shapes


# ---- paths --------------------------------------------------------------------------------------
def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def model_files(model: Path) -> list[Path]:
    """The model file and the external-data files it names (read without loading their data)."""
    files = [model]
    if model.is_file():
        try:
            proto = onnx.load(str(model), load_external_data=False)
        except Exception:  # noqa: BLE001 - load_model reports an unreadable model with its own line
            return files
        from .io import external_locations

        files += [model.parent / location for location in external_locations(proto)]
    return files


def data_files(source) -> list[Path]:
    """A calibration/validation path and, for a folder, the files inside it."""
    if not isinstance(source, (str, os.PathLike)):
        return []
    path = Path(source)
    if path.is_dir():
        return [path, *(p for p in path.iterdir() if p.is_file())]
    return [path]


def check_outputs(inputs: dict[str, Iterable[Path]], outputs: dict[str, Path | None]) -> None:
    """Refuse outputs that are, or would overwrite, an input or each other, or that cannot be written.

    `inputs` maps a role ("model", "calibration data (--calib)") to its files; `outputs` maps an option to its path.
    """
    given = {flag: Path(p) for flag, p in outputs.items() if p is not None}
    for flag, path in given.items():
        for role, files in inputs.items():
            for file in files:
                if _same(path, file):
                    raise OutputPathError(
                        f"{flag} {path}: equals the input {role} ({file}); writing there would destroy it, "
                        "choose another file"
                    )
        check_writable(flag, path)
    flags = list(given)
    for i, first in enumerate(flags):
        for second in flags[i + 1 :]:
            if _same(given[first], given[second]):
                raise OutputPathError(
                    f"{second} {given[second]}: is also {first}; one file cannot hold both, choose two names"
                )


def check_writable(flag: str, path: Path) -> None:
    """The path can receive a new file: not a directory, its folder exists and is writable."""
    if path.is_dir():
        example = path / ("report.json" if flag == "--report" else "pruned.onnx")
        raise OutputPathError(f"{flag} {path}: is a directory; give a file name, e.g. {example}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise OutputPathError(f"{flag} {path}: folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise OutputPathError(f"{flag} {path}: {folder} is a file, not a folder; fix the path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path}: folder {folder} is not writable; write elsewhere")


def check_prune(
    model: Path,
    output: Path,
    report: Path | None,
    calib,
    validate_data,
    plan: Path | None = None,
    plot: str | Path | None = None,
) -> Path:
    """The paths of `onnxprune prune`, checked before loading anything (its numbers are checked by
    PipelineOptions); returns the output's full path. `plan` (--save-plan) is written with an .npz
    beside it: both are outputs; so is `plot` (--plot with --target: a .png, drawn with matplotlib)."""
    if plot is not None:
        check_plot(Path(plot))
    if not model.exists():
        raise ModelLoadError(f"{model}: no such file; check the path")
    inputs = {
        "model": model_files(model),
        "calibration data (--calib)": data_files(calib),
        "validation data (--validate-data)": data_files(validate_data),
    }
    plans = {"--save-plan": plan, "--save-plan (its .npz)": None if plan is None else Path(plan).with_suffix(".npz")}
    figure = {"--plot": None if plot is None else Path(plot)}
    check_outputs(inputs, {"-o": output, "--report": report, **plans, **figure})
    return output.resolve()


def check_plot(path: Path) -> None:
    """--plot with --target: a PNG file, and matplotlib to draw it."""
    if path.suffix.lower() != ".png":
        raise OptionError(f"--plot {path}: with --target, give a .png file for the allocation figure")
    check_matplotlib()


def check_matplotlib() -> None:
    """--plot needs matplotlib (the `plot` extra): one clear line when it is missing."""
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        raise OptionError("--plot: matplotlib is not installed; pip install 'onnxprune[plot]' or drop --plot") from None


def check_apply(model: Path, plan: Path, output: Path) -> Path:
    """`onnxprune apply`: the output overwrites neither the model nor the plan's files."""
    if not model.exists():
        raise ModelLoadError(f"{model}: no such file; check the path")
    check_outputs({"model": model_files(model), "plan": [plan, plan.with_suffix(".npz")]}, {"-o": output})
    return output.resolve()


# ---- the model --------------------------------------------------------------------------------
def check_runs(model: str | onnx.ModelProto) -> None:
    """onnxruntime can load the model (file or proto): what it cannot run is refused before any work,
    with its reason and the node. A proto above 2 GB cannot be handed over in memory and is not tried."""
    from . import runtime
    from .io import TWO_GB

    if isinstance(model, str) or model.ByteSize() < TWO_GB:
        runtime.session(model)


def check_weights(model: onnx.ModelProto, where: str = "model") -> None:
    """Refuse a model with a NaN or infinite floating-point weight, naming the first such tensor."""
    from .io import tensor_array

    for tensor in model.graph.initializer:
        if tensor.data_type not in _FLOATS:
            continue
        array = tensor_array(tensor)
        if array.size and not np.isfinite(array).all():
            bad = int(np.size(array) - np.isfinite(array).sum())
            raise ModelLoadError(
                f"{where}: weight '{tensor.name}' holds {bad} NaN/Inf value(s) of {array.size}; the model is "
                "broken (a diverged training run or a bad export): fix it before pruning"
            )


_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def check_selection(producers: Iterable[str], include: str | None, exclude: str | None) -> None:
    """--include and --exclude must each match at least one producer node name."""
    names = sorted(set(producers))
    for flag, pattern in (("--include", include), ("--exclude", exclude)):
        if pattern is not None and not any(re.search(pattern, n) for n in names):
            shown = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")
            raise OptionError(
                f"{flag} {pattern!r}: matches no producer node (they are: {shown or 'none'}); "
                "`onnxprune inspect MODEL` lists them"
            )
