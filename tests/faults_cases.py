"""The fault corpus: bad models, data, options, paths, file-system faults and signals, each with the
outcome a user must see, and the classifier that judges what the CLI really did.

A case writes its inputs into an empty folder and returns the command line. Running it, `classify`
names one outcome class:

- `clean-error`: exit code as expected (1, or 2 for usage), exactly one short line on stderr starting
  with "onnxprune: error:", no traceback, no file written, every input byte-identical;
- `correct-success`: exit 0 and every written file verified independently (full ONNX checker,
  onnxruntime run with outputs of the original's shape, finite weights; a report parses as JSON);
- the failures: `input-destroyed` (an input file changed or vanished), `partial-write` (a file or temp
  file left behind by a failed run, or a stray temp file after a success), `traceback`,
  `wrong-success` (exit 0 where an error was due, or a written model that fails the checks),
  `refused-valid` (an error where success was due), `noisy-error` (an error of several or overlong lines,
  or with the wrong exit code), `wrong-mode` (a correct file written without the umask's ordinary mode).

`python tests/faults_table.py` runs every case and prints the count per class (the issue's table).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from graphs import Builder, small_cnn
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
MAX_LINE = 300  # characters of a clean one-line error

ERROR, OK = "clean-error", "correct-success"
SIGNALS = {"SIGINT": 2, "SIGHUP": 1, "SIGTERM": 15}  # exit code 128 + number, as a shell reports it


@dataclass(frozen=True)
class Case:
    """One fault: `setup(folder)` writes the inputs and returns the arguments of `onnxprune`."""

    id: str
    setup: Callable[[Path], list[str]]
    expect: str = ERROR
    code: int = 1
    outputs: tuple[str, ...] = ()  # files a success must write (verified); others must not appear
    replaces: tuple[str, ...] = ()  # inputs a success may replace (an existing output file)
    check: Callable[[Path, str], str | None] | None = None  # extra check of a success: problem or None
    sparse: bool = False  # the written model uses sparse initializers (plain checker only)
    process: dict = field(default_factory=dict)  # run in a subprocess: {"rlimit": bytes} / {"signal": ...}
    size: int = 8  # the size the verifier gives symbolic non-batch dims
    complete_ok: bool = False  # an interrupted run may leave its outputs, if they are complete


# ---- models built in the test ---------------------------------------------------------------------
def _save(model: onnx.ModelProto, path: Path, **kwargs) -> Path:
    onnx.save_model(model, str(path), **kwargs)
    return path


def cnn(batch="N", spatial=(6, 6), opset: int = 17) -> onnx.ModelProto:
    return small_cnn(opset=opset, spatial=spatial, batch=batch)


def calib_arrays(n: int = 16, batch_shape=(3, 6, 6), seed: int = 0, labels: bool = True, name: str = "x"):
    rng = np.random.default_rng(seed)
    arrays = {name: rng.standard_normal((n, *batch_shape)).astype(np.float32)}
    if labels:
        arrays["labels"] = rng.integers(0, 3, n)
    return arrays


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def spatial_model(pads: int = 0) -> onnx.ModelProto:
    """Symbolic height and width that must be at least 4: an unpadded 3x3 conv, then a 2x2 max pool."""
    b = Builder(seed=3)
    x = b.input("x", ["N", 3, "H", "W"])
    y = b.relu(b.conv(x, 3, 6, 3, name="c1", pads=[pads] * 4))
    y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.relu(b.conv(y, 6, 8, 3, name="c2", pads=[1] * 4))
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    b.output(b.gemm(y, 8, 3, name="g1"), ["N", 3])
    return b.model()


def fpn_model() -> onnx.ModelProto:
    """Symbolic H/W through two stride-2 convs, a 2x Resize and a Concat with the stride-2 map (a
    detector's neck): 1x1 inputs fail (the upsampled map is larger than the one it joins)."""
    b = Builder(seed=10)
    x = b.input("x", ["N", 3, "H", "W"])
    s2 = b.relu(b.conv(x, 3, 4, 3, name="c1", strides=[2, 2]))
    s4 = b.relu(b.conv(s2, 4, 4, 3, name="c2", strides=[2, 2]))
    up = b.node("Resize", [s4, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    y = b.relu(b.conv(b.node("Concat", [s2, up], axis=1), 8, 6, 3, name="c3"))
    b.output(b.gemm(b.node("Flatten", [b.node("GlobalAveragePool", [y])]), 6, 3, name="g1"), ["N", 3])
    return b.model()


def exact_size_model() -> onnx.ModelProto:
    """Symbolic height and width that only 7x7 fits (a Reshape to a constant 49-wide row per channel)."""
    b = Builder(seed=4)
    x = b.input("x", ["N", 2, "H", "W"])
    y = b.relu(b.conv(x, 2, 4, 1, name="c1"))
    y = b.node("Reshape", [y, b.ints([0, 4 * 49])])
    b.output(b.gemm(y, 4 * 49, 3, name="g1"), ["N", 3])
    return b.model()


def if_model(scalar_input: bool) -> onnx.ModelProto:
    """A main graph around an If whose branches read an outer activation (the If freezes what it reads)."""
    b = Builder(seed=5)
    x = b.input("x", ["N", 4])
    y = b.relu(b.gemm(x, 4, 8, name="g1"))
    y = b.relu(b.gemm(y, 8, 6, name="g2"))
    if scalar_input:
        cond = b.input("flag", [], TensorProto.BOOL)
    else:
        cond = b.node("Greater", [b.node("ReduceSum", [x], keepdims=0), b.const(np.array(0.0, np.float32))])
    then_g = helper.make_graph(
        [helper.make_node("Relu", [y], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", [y], ["e"])], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)]
    )
    z = b.node("If", [cond], then_branch=then_g, else_branch=else_g, name="if1")
    b.output(b.gemm(z, 6, 3, name="g3"), ["N", 3])
    return b.model()


def loop_model() -> onnx.ModelProto:
    """A Loop that adds an outer activation to its carried value twice."""
    b = Builder(seed=6)
    x = b.input("x", ["N", 4])
    y = b.relu(b.gemm(x, 4, 8, name="g1"))
    y = b.relu(b.gemm(y, 8, 6, name="g2"))
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", y], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None),
        ],
    )
    trips, cond = b.const(np.array(2, np.int64), "trips"), b.const(np.array(True), "cond")
    z = b.node("Loop", [trips, cond, y], body=body, name="loop1")
    b.output(b.gemm(z, 6, 3, name="g3"), ["N", 3])
    return b.model()


def old_model() -> onnx.ModelProto:
    """Opset 7, IR 3: initializers listed in graph.input, as exporters of that time wrote them."""
    b = Builder(opset=7, seed=7)
    x = b.input("x", [2, 4])
    y = b.relu(b.gemm(x, 4, 6, name="g1"))
    b.output(b.gemm(y, 6, 3, name="g2"), [2, 3])
    model = b.model(ir_version=3)
    for tensor in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    onnx.checker.check_model(model, full_check=True)
    return model


def custom_op_model() -> onnx.ModelProto:
    """Passes the checker (unknown domains are not checked) but onnxruntime has no kernel for it."""
    b = Builder(seed=8)
    b.extra_opsets.append(helper.make_opsetid("com.example", 1))
    x = b.input("x", ["N", 4])
    y = b.relu(b.gemm(x, 4, 6, name="g1"))
    y = b.node("Swizzle", [y], name="swizzle1", domain="com.example")
    b.output(b.gemm(y, 6, 3, name="g2"), ["N", 3])
    return b.model()


def two_input_model() -> onnx.ModelProto:
    b = Builder(seed=9)
    x, z = b.input("x", ["N", 4]), b.input("z", ["N", 4])
    y = b.relu(b.gemm(b.node("Add", [x, z]), 4, 6, name="g1"))
    b.output(b.gemm(y, 6, 3, name="g2"), ["N", 3])
    return b.model()


def with_weight(model: onnx.ModelProto, value: float) -> onnx.ModelProto:
    """`model` with one entry of the first Conv's weight set to `value` (NaN or Inf)."""
    for tensor in model.graph.initializer:
        if tensor.name == "c1.w":
            array = numpy_helper.to_array(tensor).copy()
            array.flat[3] = value
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return model


def constant_node_model() -> onnx.ModelProto:
    model = cnn()
    nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    del model.graph.initializer[:]
    nodes.extend(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def unsorted_model() -> onnx.ModelProto:
    model = cnn()
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def inputs_listing_initializers() -> onnx.ModelProto:
    model = cnn()
    for tensor in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return model


# ---- setups ---------------------------------------------------------------------------------------
def prune_args(model="model.onnx", *extra: str) -> list[str]:
    return ["prune", model, "-o", "out.onnx", "-q", *extra]


def model_case(id_, build, *extra, expect=OK, code=1, outputs=None, **kwargs) -> Case:
    def setup(folder: Path) -> list[str]:
        _save(build(), folder / "model.onnx")
        return prune_args("model.onnx", *extra)

    return Case(
        id_, setup, expect, code, outputs if outputs is not None else (("out.onnx",) if expect == OK else ()), **kwargs
    )


def raw_model_case(id_, write: Callable[[Path], None], *extra, expect=ERROR, code=1) -> Case:
    def setup(folder: Path) -> list[str]:
        write(folder)
        return prune_args("model.onnx", *extra)

    return Case(id_, setup, expect, code, ("out.onnx",) if expect == OK else ())


def cnn_case(id_, *extra, expect=OK, code=1, calib=None, outputs=None, model=None, **kwargs) -> Case:
    """small_cnn in the folder (and calib.npz if `calib` is a dict of arrays), then `prune` with `extra`."""

    def setup(folder: Path) -> list[str]:
        _save(model() if model else cnn(), folder / "model.onnx")
        if calib is not None:
            write_npz(folder / "calib.npz", **calib())
        return prune_args("model.onnx", *extra)

    default = ("out.onnx",) if expect == OK else ()
    return Case(id_, setup, expect, code, outputs if outputs is not None else default, **kwargs)


def shipped_case(name: str, *extra: str, calib: str | None = None) -> Case:
    def setup(folder: Path) -> list[str]:
        shutil.copy(MODELS / f"{name}.onnx", folder / "model.onnx")
        args = prune_args("model.onnx", *extra)
        if calib:
            shutil.copy(MODELS / calib, folder / "calib.npz")
            args += ["--calib", "calib.npz", "--calib-samples", "64"]
        return args

    return Case(f"models/{name} {' '.join(extra)}".strip(), setup, OK, outputs=("out.onnx",))


def _write_text(name: str, text: str):
    def write(folder: Path) -> None:
        (folder / name).write_text(text)

    return write


def _truncated(folder: Path) -> None:
    data = (MODELS / "lenet5.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])


def _external(folder: Path, keep_data: bool = True) -> None:
    _save(cnn(), folder / "model.onnx", save_as_external_data=True, location="model.data", size_threshold=0)
    if not keep_data:
        (folder / "model.data").unlink()


def _damaged_initializer(folder: Path) -> None:
    model = cnn()
    tensor = model.graph.initializer[0]
    tensor.raw_data = tensor.raw_data[:-4]
    _save(model, folder / "model.onnx")


def _no_nodes(folder: Path) -> None:
    graph = helper.make_graph([], "empty", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [])
    _save(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")


def _dangling(folder: Path) -> None:
    model = cnn()
    model.graph.node[0].input[0] = "nowhere"
    _save(model, folder / "model.onnx")


def _ir(version: int):
    def write(folder: Path) -> None:
        model = cnn()
        model.ir_version = version
        _save(model, folder / "model.onnx")

    return write


# ---- verification of what a success wrote ---------------------------------------------------------
def _feeds_for(model: onnx.ModelProto, size: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feeds = {}
    initializers = {t.name for t in model.graph.initializer}
    for info in model.graph.input:
        if info.name in initializers:
            continue
        dims = [
            d.dim_value if d.dim_value > 0 else (2 if i == 0 else size)
            for i, d in enumerate(info.type.tensor_type.shape.dim)
        ]
        dtype = helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        feeds[info.name] = rng.standard_normal(dims).astype(dtype) if dtype != np.bool_ else np.array(True)
    return feeds


def _session(model_path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def verify_model(path: Path, original: Path | None, sparse: bool = False, size: int = 8) -> str | None:
    """Problem with a written model, or None: full checker, finite weights, onnxruntime run whose
    outputs have the original's shapes."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=not sparse)
        for tensor in model.graph.initializer:
            array = numpy_helper.to_array(tensor)
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                return f"{path.name}: initializer {tensor.name} is not finite"
        reference = onnx.load(str(original)) if original is not None else model
        feeds = _feeds_for(reference, size)
        got = _session(path).run(None, feeds)
        if original is not None:
            want = _session(original).run(None, feeds)
            if [g.shape for g in got] != [w.shape for w in want]:
                return f"{path.name}: output shapes {[g.shape for g in got]} differ from {[w.shape for w in want]}"
        if any(np.asarray(g).dtype.kind == "f" and not np.isfinite(g).all() for g in got):
            return f"{path.name}: non-finite outputs"
    except Exception as exc:  # what the user would hit loading the file
        return f"{path.name}: {type(exc).__name__}: {str(exc)[:200]}"
    return None


# ---- running and judging --------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    escaped: str | None = None  # an exception that escaped main() (always a traceback for the user)


def run_inprocess(args: list[str], folder: Path) -> Outcome:
    """Run `onnxprune ARGS` in this process, in `folder`, through click's CliRunner isolation."""
    from click.testing import CliRunner

    from onnxprune.cli import main

    code, escaped = 0, None
    previous = os.getcwd()
    os.chdir(folder)
    try:
        with CliRunner().isolation() as streams:
            try:
                main(args)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 - the corpus records what escaped
                escaped = traceback.format_exc()
                code = None
            out, err = streams[0].getvalue().decode(), streams[1].getvalue().decode()
    finally:
        os.chdir(previous)
    return Outcome(code, out, err, escaped)


HOOKS = {
    # where a subprocess sends itself a signal: wrap one function so the signal lands inside it
    "replace": "import os as _m; _name = 'replace'",
    "fsync": "import os as _m; _name = 'fsync'",
    "save": "import onnxprune.io as _m; _name = 'save_model'",
    "validate": "import onnxprune.validate as _m; _name = 'compare_outputs'",
}

_CHILD = """
import os, resource, signal, sys
limit, signame, hook = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
if signame != "-":
    exec({hooks}[hook])
    _original = getattr(_m, _name)
    def _wrapped(*a, **k):
        os.kill(os.getpid(), getattr(signal, signame))
        return _original(*a, **k)
    setattr(_m, _name, _wrapped)
from onnxprune.cli import main
main(sys.argv[4:])
"""


def run_subprocess(args: list[str], folder: Path, process: dict) -> Outcome:
    child = _CHILD.replace("{hooks}", repr(HOOKS))
    argv = [
        sys.executable,
        "-c",
        child,
        str(process.get("rlimit", 0)),
        process.get("signal", "-"),
        process.get("hook", "-"),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__import__("onnxprune").__file__).parent.parent), str(ROOT / "tests")]),
    }
    done = subprocess.run(argv + args, cwd=folder, capture_output=True, text=True, timeout=120, env=env)
    return Outcome(done.returncode, done.stdout, done.stderr)


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def classify(case: Case, folder: Path, before: dict[str, str], outcome: Outcome) -> tuple[str, str]:
    """(class, detail) of one run; `before` is the digest of the inputs taken before the run."""
    after = digest(folder)
    changed = [n for n, h in before.items() if after.get(n) != h and n not in case.replaces]
    if changed:
        return "input-destroyed", f"changed: {changed}"
    new = sorted(set(after) - set(before))
    if outcome.escaped is not None or "Traceback" in outcome.stderr:
        return "traceback", (outcome.escaped or outcome.stderr)[-600:]
    if outcome.code == 0:
        if case.expect != OK:
            return "wrong-success", f"exit 0, wrote {new}: {outcome.stdout[-200:]}"
        stray = [n for n in new if n not in case.outputs]
        if stray:
            return "partial-write", f"stray files after success: {stray}"
        for name in case.outputs:
            path = folder / name
            if not path.exists():
                return "wrong-success", f"{name} not written"
            if name.endswith(".json"):
                try:
                    json.loads(path.read_text())
                except ValueError as exc:
                    return "wrong-success", f"{name} is not JSON ({exc})"
            elif name.endswith(".onnx"):
                original = folder / "model.onnx"
                problem = verify_model(path, original if original.exists() else None, case.sparse, case.size)
                if problem:
                    return "wrong-success", problem
        problem = case.check(folder, outcome.stdout) if case.check else None
        if problem:
            return "wrong-success", problem
        modes = {name: (folder / name).stat().st_mode & 0o777 for name in case.outputs}
        if any(mode != 0o666 & ~_umask() for mode in modes.values()):
            return "wrong-mode", f"modes {modes}, umask {oct(_umask())}"
        return OK, ""
    leftovers = [n for n in new]
    if leftovers and case.complete_ok and sorted(leftovers) == sorted(case.outputs):
        problems = [verify_model(folder / n, folder / "model.onnx") for n in leftovers if n.endswith(".onnx")]
        leftovers = [] if not any(problems) else leftovers
    if leftovers:
        return "partial-write", f"left after a failed run: {leftovers}"
    if case.expect == OK:
        return "refused-valid", outcome.stderr.strip()[:300]
    lines = outcome.stderr.strip().splitlines()
    if (
        len(lines) != 1
        or not lines[0].startswith("onnxprune: ")
        or len(lines[0]) > MAX_LINE
        or outcome.code != case.code
    ):
        return "noisy-error", f"exit {outcome.code}: {outcome.stderr.strip()[:400]}"
    return ERROR, lines[0]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def run_case(case: Case, folder: Path) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    args = case.setup(folder)
    before = digest(folder)
    outcome = run_subprocess(args, folder, case.process) if case.process else run_inprocess(args, folder)
    return classify(case, folder, before, outcome)


# ---- checks of successes beyond the written model -------------------------------------------------
def stdout_json(key: str):
    def check(folder: Path, stdout: str) -> str | None:
        try:
            data = json.loads(stdout)
        except ValueError:
            return f"stdout is not JSON: {stdout[:200]}"
        return None if key in data else f"stdout JSON lacks {key}"

    return check


def report_has(*keys: str):
    def check(folder: Path, stdout: str) -> str | None:
        data = json.loads((folder / "report.json").read_text())
        validation = data.get("validation", {})
        missing = [k for k in keys if k not in validation and k not in data]
        return f"report lacks {missing}" if missing else None

    return check


def bench_rows(*batches: int):
    def check(folder: Path, stdout: str) -> str | None:
        rows = [line.split() for line in stdout.strip().splitlines()[1:-1]]  # below the header, above the note
        got = [int(r[1]) for r in rows]
        return None if sorted(set(got)) == sorted(batches) else f"bench batches {got}, expected {batches}"

    return check


def main_graph_pruned(folder: Path, stdout: str) -> str | None:
    """The main graph around an If/Loop was pruned, and the report says why the rest is frozen."""
    report = json.loads((folder / "r.json").read_text())
    frozen = " ".join(str(g["frozen"]) for g in report["groups"] if g["frozen"])
    if report["params_after"] >= report["params_before"]:
        return "nothing pruned around the subgraph"
    return None if "subgraph" in frozen else f"no subgraph reason among the frozen groups: {frozen}"


def stale_removed(folder: Path, stdout: str) -> str | None:
    return None if not list(folder.glob(".out.onnx.*")) else "stale temp file left"


# ---- the corpus -----------------------------------------------------------------------------------
def _copy_digits(folder: Path, name: str = "calib.npz", source: str = "digits_calib.npz", **changes) -> Path:
    with np.load(MODELS / source) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    return write_npz(folder / name, **arrays)


def lenet_case(id_, *extra, expect=OK, code=1, calib_changes=None, validate_changes=None, outputs=None, **kw) -> Case:
    """LeNet-5 with digits calibration (calib.npz, changed by `calib_changes`) and maybe --validate-data."""

    def setup(folder: Path) -> list[str]:
        shutil.copy(MODELS / "lenet5.onnx", folder / "model.onnx")
        args = prune_args("model.onnx", *extra)
        if calib_changes is not None:
            _copy_digits(folder, **calib_changes)
            args += ["--calib", "calib.npz"]
        if validate_changes is not None:
            _copy_digits(folder, "val.npz", "digits_test.npz", **validate_changes)
            args += ["--validate-data", "val.npz"]
        return args

    default = ("out.onnx",) if expect == OK else ()
    return Case(id_, setup, expect, code, outputs if outputs is not None else default, **kw)


def _models() -> list[Case]:
    cases = [
        raw_model_case("model: not onnx (csv text)", _write_text("model.onnx", "name,value\na,1\n")),
        raw_model_case("model: empty file", _write_text("model.onnx", "")),
        raw_model_case("model: truncated", _truncated),
        raw_model_case("model: missing file", lambda folder: None),
        raw_model_case("model: a directory", lambda folder: (folder / "model.onnx").mkdir()),
        raw_model_case("model: external data missing", lambda folder: _external(folder, keep_data=False)),
        raw_model_case("model: external data present", _external, expect=OK),
        raw_model_case("model: initializer shorter than its shape", _damaged_initializer),
        raw_model_case("model: no nodes", _no_nodes),
        raw_model_case("model: node reads an undefined tensor", _dangling),
        raw_model_case("model: IR 14, newer than onnxruntime", _ir(14)),
        raw_model_case("model: IR 99", _ir(99)),
        model_case("model: opset 7, IR 3", old_model),
        model_case("model: opset 11, IR 6", lambda: cnn(opset=11)),
        model_case("model: opset 13, IR 7", lambda: cnn(opset=13)),
        model_case("model: opset 21, IR 10", lambda: cnn(opset=21)),
        model_case(
            "model: NaN weight, --no-validate", lambda: with_weight(cnn(), np.nan), "--no-validate", expect=ERROR
        ),
        model_case(
            "model: Inf weight, --no-validate", lambda: with_weight(cnn(), np.inf), "--no-validate", expect=ERROR
        ),
        model_case("model: NaN weight", lambda: with_weight(cnn(), np.nan), expect=ERROR),
        model_case("model: fixed batch 1", lambda: cnn(batch=1)),
        model_case("model: fixed batch 1, --no-validate", lambda: cnn(batch=1), "--no-validate"),
        model_case("model: fixed batch 2", lambda: cnn(batch=2)),
        model_case("model: symbolic H/W that 1x1 does not fit", spatial_model),
        model_case("model: symbolic H/W, Resize and Concat (detector neck)", fpn_model),
        model_case("model: symbolic H/W, --input-shape given", exact_size_model, "--input-shape", "x=1,2,7,7", size=7),
        model_case("model: symbolic H/W no common size fits", exact_size_model, expect=ERROR, code=2),
        *(
            model_case(name, build, "--report", "r.json", outputs=("out.onnx", "r.json"), check=main_graph_pruned)
            for name, build in (
                ("model: If on a computed scalar condition", lambda: if_model(False)),
                ("model: If on a scalar graph input", lambda: if_model(True)),
                ("model: Loop reading an outer activation", loop_model),
            )
        ),
        model_case("model: op onnxruntime cannot run", custom_op_model, expect=ERROR),
        model_case("model: op onnxruntime cannot run, --no-validate", custom_op_model, "--no-validate", expect=ERROR),
        model_case("model: nodes out of order", unsorted_model),
        model_case("model: weights as Constant nodes", constant_node_model),
        model_case("model: initializers listed as inputs", inputs_listing_initializers),
        model_case("model: two inputs", two_input_model),
        model_case("model: float16", lambda: small_cnn(dtype=np.float16)),
    ]
    for name in (
        "lenet5",
        "mlp",
        "resnet_basic",
        "mobilenetv2",
        "se_block",
        "densenet_concat",
        "c2f_split",
        "conv1d",
        "channel_shuffle",
        "vgg_bn",
        "transformer_encoder",
        "resnet_bottleneck",
        "constant_weights",
    ):
        cases.append(shipped_case(name))
    cases += [
        shipped_case("lenet5", "--method", "obs", calib="digits_calib.npz"),
        shipped_case("mlp", "--method", "lobs", calib="digits_calib.npz"),
        shipped_case("mlp", "--method", "merge"),
        shipped_case("lenet5", "--method", "wanda", calib="digits_calib.npz"),
        shipped_case("lenet5", "--method", "relief", calib="digits_calib.npz"),
        model_case(
            "model: fixed batch 1, obs with calibration",
            lambda: cnn(batch=1),
            "--method",
            "obs",
            "--calib",
            "calib.npz",
            expect=OK,
        ),
    ]
    # the last case needs calib.npz: give it one
    last = cases[-1]

    def setup(folder: Path, _setup=last.setup) -> list[str]:
        write_npz(folder / "calib.npz", **calib_arrays(12))
        return _setup(folder)

    cases[-1] = Case(last.id, setup, OK, outputs=("out.onnx",))
    cases.append(
        Case(
            "model: fixed batch 1, --validate-data with labels",
            lambda folder: (
                _save(cnn(batch=1), folder / "model.onnx"),
                write_npz(folder / "val.npz", **calib_arrays(10)),
                prune_args("model.onnx", "--validate-data", "val.npz", "--report", "report.json"),
            )[-1],
            OK,
            outputs=("out.onnx", "report.json"),
            check=report_has("accuracy_after"),
        )
    )
    return cases


def _data() -> list[Case]:
    obs = ("--method", "obs")
    n = 500
    return [
        lenet_case("data: calibration file missing", *obs, "--calib", "nothere.npz", expect=ERROR),
        Case(
            "data: calibration not npz",
            lambda f: (
                shutil.copy(MODELS / "lenet5.onnx", f / "model.onnx"),
                (f / "c.npz").write_text("x"),
                prune_args("model.onnx", *obs, "--calib", "c.npz"),
            )[-1],
        ),
        lenet_case("data: wrong input name", *obs, calib_changes={"image": None}, expect=ERROR),
        lenet_case("data: wrong rank", *obs, calib_changes={"image": np.zeros((n, 64), np.float32)}, expect=ERROR),
        lenet_case(
            "data: wrong shape", *obs, calib_changes={"image": np.zeros((n, 1, 9, 9), np.float32)}, expect=ERROR
        ),
        lenet_case("data: string dtype", *obs, calib_changes={"image": np.full((n, 1, 8, 8), "a")}, expect=ERROR),
        lenet_case(
            "data: NaN sample", *obs, calib_changes={"image": np.full((n, 1, 8, 8), np.nan, np.float32)}, expect=ERROR
        ),
        lenet_case(
            "data: zero samples",
            *obs,
            calib_changes={"image": np.zeros((0, 1, 8, 8), np.float32), "labels": None},
            expect=ERROR,
        ),
        lenet_case("data: float64 samples (cast)", *obs, calib_changes={"image": np.ones((n, 1, 8, 8))}),
        lenet_case(
            "data: integer samples for a float input",
            *obs,
            "--no-validate",
            calib_changes={"image": np.ones((n, 1, 8, 8), np.int64)},
            expect=ERROR,
        ),
        lenet_case(
            "data: one calibration sample",
            *obs,
            calib_changes={"image": np.ones((1, 1, 8, 8), np.float32), "labels": np.array([1])},
        ),
        lenet_case("data: extra arrays ignored", *obs, calib_changes={"other": np.zeros(3)}),
        lenet_case(
            "data: labels of the wrong length", *obs, calib_changes={"labels": np.zeros(7, np.int64)}, expect=ERROR
        ),
        lenet_case(
            "data: one-hot labels",
            *obs,
            "--report",
            "report.json",
            calib_changes={"labels": np.eye(10, dtype=np.float32)[np.load(MODELS / "digits_calib.npz")["labels"]]},
            outputs=("out.onnx", "report.json"),
            check=report_has("accuracy_after"),
        ),
        lenet_case("data: labels 2-D, not one-hot", *obs, calib_changes={"labels": np.ones((n, 3))}, expect=ERROR),
        lenet_case("data: fractional labels", *obs, calib_changes={"labels": np.full(n, 0.5)}, expect=ERROR),
        lenet_case("data: labels above the class count", *obs, calib_changes={"labels": np.full(n, 99)}, expect=ERROR),
        lenet_case(
            "data: validation data of the wrong shape",
            validate_changes={"image": np.zeros((5, 1, 2, 2), np.float32)},
            expect=ERROR,
        ),
        lenet_case(
            "data: validation labels of the wrong length",
            validate_changes={"labels": np.zeros(3, np.int64)},
            expect=ERROR,
        ),
        lenet_case(
            "data: validation data with labels",
            "--report",
            "report.json",
            validate_changes={},
            outputs=("out.onnx", "report.json"),
            check=report_has("accuracy_after"),
        ),
        lenet_case("data: calibration needed, none given", *obs, expect=ERROR, code=2),
        Case(
            "data: calibration folder empty",
            lambda f: (
                shutil.copy(MODELS / "lenet5.onnx", f / "model.onnx"),
                (f / "cal").mkdir(),
                prune_args("model.onnx", *obs, "--calib", "cal"),
            )[-1],
        ),
        Case(
            "data: calibration folder of .npy",
            lambda f: (
                shutil.copy(MODELS / "lenet5.onnx", f / "model.onnx"),
                (f / "cal").mkdir(),
                [np.save(f / "cal" / f"{i}.npy", np.ones((1, 8, 8), np.float32) * i) for i in range(4)],
                prune_args("model.onnx", *obs, "--calib", "cal"),
            )[-1],
            OK,
            outputs=("out.onnx",),
        ),
        Case(
            "data: pickled object array",
            lambda f: (
                shutil.copy(MODELS / "lenet5.onnx", f / "model.onnx"),
                np.save(f / "c.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True),
                prune_args("model.onnx", *obs, "--calib", "c.npy"),
            )[-1],
        ),
        Case(
            "data: inputs with different sample counts",
            lambda f: (
                _save(two_input_model(), f / "model.onnx"),
                write_npz(f / "c.npz", x=np.ones((4, 4), np.float32), z=np.ones((5, 4), np.float32)),
                prune_args("model.onnx", *obs, "--calib", "c.npz"),
            )[-1],
        ),
    ]


def _options() -> list[Case]:
    def cal():
        return calib_arrays(16)

    usage = {"expect": ERROR, "code": 2}

    def obs_case(id_, *extra, **kw) -> Case:
        return cnn_case(id_, "--method", "obs", "--calib", "calib.npz", *extra, calib=cal, **kw)

    cases = [
        cnn_case("option: --ratio -0.1", "--ratio", "-0.1", **usage),
        cnn_case("option: --ratio 1", "--ratio", "1", **usage),
        cnn_case("option: --ratio abc", "--ratio", "abc", **usage),
        cnn_case("option: --ratio auto with magnitude", "--ratio", "auto", **usage),
        cnn_case("option: --sequential with magnitude", "--sequential", **usage),
        cnn_case("option: --alpha with merge", "--method", "merge", "--alpha", "0.9", **usage),
        cnn_case("option: --lobs-mode unknown", "--method", "lobs", "--lobs-mode", "turbo", **usage),
        cnn_case("option: --round-to 0", "--round-to", "0", **usage),
        cnn_case("option: --min-keep 0", "--min-keep", "0", **usage),
        cnn_case("option: --include invalid regex", "--include", "(", **usage),
        cnn_case("option: --include matching no node", "--include", "nosuchnode", **usage),
        cnn_case("option: --exclude matching no node", "--exclude", "nosuchnode", **usage),
        cnn_case("option: --include c1", "--include", "c1"),
        cnn_case("option: --exclude g1", "--exclude", "g1"),
        obs_case("option: --calib-samples -1", "--calib-samples", "-1", **usage),
        obs_case("option: --calib-samples 0", "--calib-samples", "0", **usage),
        obs_case("option: --batch-size 0", "--batch-size", "0", **usage),
        obs_case("option: --batch-size -3", "--batch-size", "-3", **usage),
        obs_case("option: --iterations 0", "--iterations", "0", **usage),
        cnn_case("option: --iterations -1", "--iterations", "-1", **usage),
        cnn_case("option: --validate-samples -1", "--validate-samples", "-1", **usage),
        cnn_case("option: --validate-samples 0", "--validate-samples", "0", **usage),
        cnn_case("option: --seed -1", "--method", "random", "--seed", "-1", **usage),
        cnn_case("option: --method unknown", "--method", "prune-it", **usage),
        cnn_case("option: --method empty", "--method", ",", **usage),
        cnn_case("option: --providers bogus", "--providers", "tpu", **usage),
        cnn_case("option: unknown flag", "--frobnicate", **usage),
        cnn_case("option: --ratio 0 keeps everything", "--ratio", "0"),
        cnn_case("option: --round-to 2", "--round-to", "2"),
        cnn_case("option: --min-keep 4", "--min-keep", "4"),
        cnn_case("option: --seed 7 random", "--method", "random", "--seed", "7"),
        cnn_case("option: --no-validate", "--no-validate"),
        cnn_case("option: merge,magnitude chain", "--method", "merge,magnitude"),
        obs_case("option: obs --iterations 2", "--iterations", "2"),
        obs_case("option: obs --batch-size 1", "--batch-size", "1"),
        obs_case("option: --calib-samples 5", "--calib-samples", "5"),
        cnn_case("option: --validate-samples 3", "--validate-samples", "3"),
        cnn_case("option: --input-shape bad syntax", "--input-shape", "x=1,a", **usage),
        cnn_case("option: --input-shape unknown input", "--input-shape", "nothing=1,3,6,6", **usage),
        cnn_case("option: --input-shape contradicts a fixed dim", "--input-shape", "x=1,3,9,9", **usage),
        Case("option: -o missing", lambda f: (_save(cnn(), f / "model.onnx"), ["prune", "model.onnx"])[-1], ERROR, 2),
        cnn_case(
            "option: lobs --sparse-storage",
            "--method",
            "lobs",
            "--calib",
            "calib.npz",
            "--sparse-storage",
            calib=cal,
            sparse=True,
        ),
    ]
    return cases


def _other_commands() -> list[Case]:
    def val(build_b=None, *extra, expect=OK, code=1, check=None):
        def setup(folder: Path) -> list[str]:
            shutil.copy(MODELS / "lenet5.onnx", folder / "a.onnx")
            if build_b is None:
                shutil.copy(MODELS / "lenet5.onnx", folder / "b.onnx")
            else:
                build_b(folder / "b.onnx")
            return ["validate", "a.onnx", "b.onnx", "--json", *extra]

        return setup

    def bench(build, *extra):
        def setup(folder: Path) -> list[str]:
            _save(build(), folder / "m.onnx")
            return ["bench", "m.onnx", "--repeats", "2", "--warmup", "1", *extra]

        return setup

    def pair(build):
        def setup(folder: Path) -> list[str]:
            _save(build(), folder / "a.onnx")
            _save(build(), folder / "b.onnx")
            return ["validate", "a.onnx", "b.onnx", "--json"]

        return setup

    mlp = lambda p: shutil.copy(MODELS / "mlp.onnx", p)  # noqa: E731
    digits = lambda p: shutil.copy(MODELS / "digits_test.npz", p)  # noqa: E731
    return [
        Case("validate: same model twice", val(), OK, check=stdout_json("outputs")),
        Case("validate: unrelated models", val(mlp)),
        Case(
            "validate: pruned file missing",
            lambda f: (shutil.copy(MODELS / "lenet5.onnx", f / "a.onnx"), ["validate", "a.onnx", "b.onnx"])[-1],
        ),
        Case("validate: --samples 0", val(None, "--samples", "0"), ERROR, 2),
        Case("validate: --samples -4", val(None, "--samples", "-4"), ERROR, 2),
        Case(
            "validate: --data with labels",
            lambda f: (
                val()(f),
                digits(f / "d.npz"),
                ["validate", "a.onnx", "b.onnx", "--data", "d.npz", "--samples", "50", "--json"],
            )[-1],
            OK,
            check=stdout_json("accuracy_after"),
        ),
        Case(
            "validate: --data for another model",
            lambda f: (
                val()(f),
                shutil.copy(MODELS / "digits_test.npz", f / "d.npz"),
                write_npz(f / "d.npz", pixels=np.zeros((3, 64), np.float32)),
                ["validate", "a.onnx", "b.onnx", "--data", "d.npz"],
            )[-1],
        ),
        Case("validate: fixed batch 1 models", pair(lambda: cnn(batch=1)), OK, check=stdout_json("outputs")),
        Case("validate: symbolic H/W models", pair(spatial_model), OK, check=stdout_json("outputs")),
        Case("validate: model onnxruntime cannot run", pair(custom_op_model)),
        Case("bench: batch fixed at 1, --batch-sizes 8", bench(lambda: cnn(batch=1), "--batch-sizes", "8"), ERROR, 2),
        Case(
            "bench: batch fixed at 1, --batch-sizes 1",
            bench(lambda: cnn(batch=1), "--batch-sizes", "1"),
            OK,
            check=bench_rows(1),
        ),
        Case("bench: --batch-sizes 1,4", bench(cnn, "--batch-sizes", "1,4"), OK, check=bench_rows(1, 4)),
        Case("bench: --batch-sizes 0", bench(cnn, "--batch-sizes", "0"), ERROR, 2),
        Case("bench: --batch-sizes x", bench(cnn, "--batch-sizes", "x"), ERROR, 2),
        Case("bench: --repeats 0", bench(cnn, "--repeats", "0"), ERROR, 2),
        Case("bench: symbolic H/W", bench(spatial_model, "--batch-sizes", "2"), OK, check=bench_rows(2)),
        Case("bench: only 7x7 fits, no --input-shape", bench(exact_size_model, "--batch-sizes", "2"), ERROR, 2),
        Case(
            "bench: only 7x7 fits, --input-shape",
            bench(exact_size_model, "--batch-sizes", "1,2", "--input-shape", "x=1,2,7,7"),
            OK,
            check=bench_rows(1, 2),
        ),
        Case("validate: only 7x7 fits, no --input-shape", pair(exact_size_model), ERROR, 2),
        Case(
            "validate: only 7x7 fits, --input-shape",
            lambda f: [*pair(exact_size_model)(f), "--input-shape", "x=1,2,7,7"],
            OK,
            check=stdout_json("outputs"),
        ),
        Case("bench: IR 14 model", lambda f: (_ir(14)(f), ["bench", "model.onnx", "--repeats", "1"])[-1]),
        Case("bench: op onnxruntime cannot run", bench(custom_op_model, "--batch-sizes", "1")),
        Case("inspect: not onnx", lambda f: (_write_text("m.onnx", "x")(f), ["inspect", "m.onnx"])[-1]),
        Case(
            "inspect: lenet5",
            lambda f: (shutil.copy(MODELS / "lenet5.onnx", f / "m.onnx"), ["inspect", "m.onnx"])[-1],
            OK,
        ),
        Case(
            "inspect: --json",
            lambda f: (shutil.copy(MODELS / "lenet5.onnx", f / "m.onnx"), ["inspect", "m.onnx", "--json"])[-1],
            OK,
            check=stdout_json("groups"),
        ),
    ]


def _paths() -> list[Case]:
    def lenet(folder: Path, *extra) -> list[str]:
        shutil.copy(MODELS / "lenet5.onnx", folder / "model.onnx")
        shutil.copy(MODELS / "digits_calib.npz", folder / "calib.npz")
        shutil.copy(MODELS / "digits_test.npz", folder / "val.npz")
        return ["prune", "model.onnx", "-q", *extra]

    def path_case(id_, *extra, expect=ERROR, code=1, outputs=(), prepare=None, **kw) -> Case:
        def setup(folder: Path) -> list[str]:
            args = lenet(folder, *extra)
            if prepare:
                prepare(folder)
            return args

        return Case(id_, setup, expect, code, outputs, **kw)

    obs = ("--method", "obs", "--calib", "calib.npz")
    ext = lambda f: _external(f)  # noqa: E731
    return [
        path_case("path: -o equals the model", "-o", "model.onnx"),
        path_case(
            "path: -o equals the model through ..", "-o", "sub/../model.onnx", prepare=lambda f: (f / "sub").mkdir()
        ),
        path_case(
            "path: -o is a symlink to the model",
            "-o",
            "link.onnx",
            prepare=lambda f: (f / "link.onnx").symlink_to(f / "model.onnx"),
        ),
        path_case(
            "path: -o is a hard link to the model",
            "-o",
            "hard.onnx",
            prepare=lambda f: os.link(f / "model.onnx", f / "hard.onnx"),
        ),
        path_case("path: -o equals the calibration file", "-o", "calib.npz", *obs),
        path_case("path: -o equals the validation file", "-o", "val.npz", "--validate-data", "val.npz"),
        Case(
            "path: -o equals the model's external data",
            lambda f: (_external(f), prune_args("model.onnx")[:2] + ["-o", "model.data", "-q"])[-1],
        ),
        Case(
            "path: --report equals the model's external data",
            lambda f: (_external(f), prune_args("model.onnx", "--report", "model.data"))[-1],
        ),
        path_case("path: --report equals the model", "-o", "out.onnx", "--report", "model.onnx"),
        path_case("path: --report equals the calibration file", "-o", "out.onnx", "--report", "calib.npz", *obs),
        path_case("path: --report equals -o", "-o", "out.onnx", "--report", "out.onnx"),
        path_case("path: --report equals -o through ./", "-o", "out.onnx", "--report", "./out.onnx"),
        path_case("path: -o is an existing directory", "-o", "outdir", prepare=lambda f: (f / "outdir").mkdir()),
        path_case("path: -o in a missing directory", "-o", "missing/out.onnx"),
        path_case("path: --report in a missing directory", "-o", "out.onnx", "--report", "missing/r.json"),
        path_case(
            "path: --report is a directory",
            "-o",
            "out.onnx",
            "--report",
            "rdir",
            prepare=lambda f: (f / "rdir").mkdir(),
        ),
        path_case("path: -o under a file", "-o", "model.onnx/out.onnx"),
        path_case(
            "path: -o replaces an existing file",
            "-o",
            "out.onnx",
            expect=OK,
            outputs=("out.onnx",),
            replaces=("out.onnx",),
            prepare=lambda f: (f / "out.onnx").write_text("old"),
        ),
        path_case(
            "path: -o and --report", "-o", "out.onnx", "--report", "r.json", expect=OK, outputs=("out.onnx", "r.json")
        ),
        path_case(
            "path: -o in a subfolder",
            "-o",
            "sub/out.onnx",
            expect=OK,
            outputs=("sub/out.onnx",),
            prepare=lambda f: (f / "sub").mkdir(),
        ),
        path_case("path: -o with spaces and unicode", "-o", "mödel out.onnx", expect=OK, outputs=("mödel out.onnx",)),
        path_case(
            "path: stale temp file of a killed run",
            "-o",
            "out.onnx",
            expect=OK,
            outputs=("out.onnx",),
            prepare=lambda f: (f / ".out.onnx.onnxprune-999999999.tmp").write_text("half"),
            check=stale_removed,
            replaces=(".out.onnx.onnxprune-999999999.tmp",),
        ),
        path_case("path: absolute -o", "-o", "/dev/null/out.onnx"),
        Case(
            "path: validate with the same file twice",
            lambda f: (
                shutil.copy(MODELS / "lenet5.onnx", f / "a.onnx"),
                ["validate", "a.onnx", "a.onnx", "--json"],
            )[-1],
            OK,
            check=stdout_json("outputs"),
        ),
        Case("path: inspect a missing file", lambda f: ["inspect", "nothing.onnx"]),
        Case(
            "path: model with external data, -o beside it",
            lambda f: (ext(f), prune_args("model.onnx"))[-1],
            OK,
            outputs=("out.onnx",),
        ),
    ]


def _faults() -> list[Case]:
    """Subprocess cases: file-size limits (RLIMIT_FSIZE) and signals during the work and the write."""

    def lenet(*extra):
        def setup(folder: Path) -> list[str]:
            shutil.copy(MODELS / "lenet5.onnx", folder / "model.onnx")
            return ["prune", "model.onnx", "-o", "out.onnx", "-q", *extra]

        return setup

    cases = [
        Case("fs: file-size limit 1 KB", lenet(), process={"rlimit": 1024}),
        Case("fs: file-size limit 20 KB", lenet("--ratio", "0.3"), process={"rlimit": 20_000}),
        Case(
            "fs: file-size limit lets the model through, not the report",
            lenet("--method", "merge", "--ratio", "0.9", "--report", "r.json"),  # report 10.8 kB, model 3.6 kB
            process={"rlimit": 5_000},
        ),
        Case(
            "fs: file-size limit above the output",
            lenet("--report", "r.json"),
            OK,
            outputs=("out.onnx", "r.json"),
            process={"rlimit": 1_000_000},
        ),
    ]
    hooks = {
        "SIGTERM": ("validate", "save", "fsync", "replace"),
        "SIGINT": ("fsync", "replace"),
        "SIGHUP": ("save", "fsync"),
    }
    for signame, where in hooks.items():
        for hook in where:
            cases.append(
                Case(
                    f"signal: {signame} during {hook}",
                    lenet("--report", "r.json"),
                    code=128 + SIGNALS[signame],
                    process={"signal": signame, "hook": hook},
                    outputs=("out.onnx", "r.json"),
                    complete_ok=hook == "replace",
                )
            )
    return cases


def all_cases() -> list[Case]:
    return _models() + _data() + _options() + _other_commands() + _paths() + _faults()
