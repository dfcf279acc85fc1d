"""Recover the shapes ONNX shape inference leaves unknown, before the analysis freezes what they touch.

ONNX shape inference knows no `com.microsoft` op (Attention, SkipLayerNormalization, ...) and gives up on
some exporters' graphs (a rank lost after a Loop, an unknown Reshape target). Two fallbacks, in order:

1. onnxruntime's symbolic shape inference (`onnxruntime.tools.symbolic_shape_infer`, needs sympy): it
   knows the contrib ops and keeps symbolic dims symbolic.
2. Two onnxruntime runs on generated feeds whose symbolic input dims differ between the runs (2, 3, ...
   in the first; one more in the second): a dim equal in both runs is static, a dim that differs is
   symbolic, named after the input dim whose two values it repeats when there is exactly one.

Tensors whose rank is unknown or that have a dim that is neither a number nor a symbol are filled;
what neither fallback types stays unknown, and `sources[name]` says what was tried. A dim ONNX inference
named with a symbol of its own (`unk__27`: a Reshape's -1 on symbolic inputs whose batch symbols it lost
track of) becomes what the symbolic tool finds for it: a number (the merged width of a multi-head
attention's output) or a symbol it shares with the dims it equals; every other symbolic dim takes the
tool's name too, so that equal dims have one name. No run is made for those alone.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np
import onnx

log = logging.getLogger(__name__)

SYMBOLIC = "onnxruntime symbolic shape inference"
RUN = "a run of onnxruntime on a generated feed"


def recover_shapes(index) -> None:
    """Fill `index.shapes` / `index.dtypes` for the tensors ONNX shape inference left unknown, and
    record in `index.shape_sources[name]` which fallback typed each (or why none did)."""
    fresh = _fresh_symbols(index)
    missing = _unknown(index)
    if not missing and not fresh:
        return
    # every symbolic shape takes the tool's names, which say which dims are equal (it may merge two
    # input symbols, 'sequence' and 'total', into one): mixing them with ONNX's would hide that
    found, failure = _symbolic(index.model, missing + _symbolic_shapes(index))
    _merge(index, found, SYMBOLIC)
    missing = _unknown(index)
    if missing:
        found, run_failure = _run(index.model, missing)
        _merge(index, found, RUN)
        failure = "; ".join(f for f in (failure, run_failure) if f)
    for name in _unknown(index):
        tried = f"ONNX shape inference, {SYMBOLIC} and {RUN} could not type it"
        index.shape_sources[name] = tried + (f" ({failure})" if failure else "")


def _unknown(index) -> list[str]:
    names = [out for node in index.nodes for out in node.output if out]
    return [n for n in names if n not in index.shapes or any(d is None for d in index.shapes[n])]


def _input_symbols(index) -> set[str]:
    return {d.dim_param for i in index.model.graph.input for d in i.type.tensor_type.shape.dim if d.dim_param}


def _fresh_symbols(index) -> list[str]:
    """Outputs with a dim named by ONNX inference itself (no graph input has that symbol)."""
    symbols = _input_symbols(index)
    names = [out for node in index.nodes for out in node.output if out]
    return [n for n in names if any(isinstance(d, str) and d not in symbols for d in index.shapes.get(n) or ())]


def _symbolic_shapes(index) -> list[str]:
    names = [*index.input_names, *(out for node in index.nodes for out in node.output if out)]
    return [n for n in names if any(isinstance(d, str) for d in index.shapes.get(n) or ())]


def _merge(index, found: dict[str, tuple[tuple, int]], source: str) -> None:
    for name, (shape, dtype) in found.items():
        old = index.shapes.get(name)
        if old is not None and len(old) == len(shape):
            shape = tuple(_merged_dim(o, s) for o, s in zip(old, shape, strict=True))
        if None in shape and old is not None:
            continue
        if shape != old:
            index.shapes[name] = shape
            index.shape_sources[name] = source
        if dtype:
            index.dtypes.setdefault(name, dtype)


def _merged_dim(old, new):
    """A number stays; an unknown dim takes the fallback's, and so does a symbol, when the fallback has
    one: a number, or its own name, which it gives every dim it knows to be equal."""
    if old is None or (isinstance(old, str) and new is not None):
        return new
    return old


def _symbolic(model: onnx.ModelProto, names: list[str]) -> tuple[dict, str]:
    try:
        SymbolicShapeInference = _symbolic_tool()
    except Exception as exc:  # sympy missing, or an onnxruntime without the tool
        return {}, f"{SYMBOLIC} is unavailable: {exc}"
    from .graph import _dim
    from .io import skeleton

    quiet = logging.getLogger("onnxprune._ort_symbolic_shape_infer")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        # SymbolicShapeInference.infer_shapes without its last step, which writes the partial result
        # to the working directory and raises: a partial result is what this fallback wants
        tool = SymbolicShapeInference(2**31 - 1, True, True, 0)
        tool._preprocess(skeleton(model, 4096))
        while tool.run_:
            tool._infer_impl()
        inferred = tool.out_mp_
    except Exception as exc:  # the tool raises on any op it cannot follow
        return {}, f"{SYMBOLIC} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        quiet.setLevel(level)
    wanted, found = set(names), {}
    for info in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        tensor_type = info.type.tensor_type
        if info.name in wanted and tensor_type.HasField("shape"):
            shape = tuple(_dim(d) for d in tensor_type.shape.dim)
            if None not in shape:
                found[info.name] = (shape, tensor_type.elem_type)
    return found, ""


def _symbolic_tool():
    """onnxruntime.tools.symbolic_shape_infer.SymbolicShapeInference, loaded from its file: importing
    the `onnxruntime.tools` package imports torch when installed (seconds) for an unrelated helper."""
    name = "onnxprune._ort_symbolic_shape_infer"
    if name not in sys.modules:
        origin = importlib.util.find_spec("onnxruntime").origin
        spec = importlib.util.spec_from_file_location(name, Path(origin).parent / "tools" / "symbolic_shape_infer.py")
        if spec is None or not spec.origin or not Path(spec.origin).exists():
            raise ImportError("onnxruntime/tools/symbolic_shape_infer.py is missing")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name].SymbolicShapeInference


def _run(model: onnx.ModelProto, names: list[str]) -> tuple[dict, str]:
    from . import runtime
    from .stats.collect import with_outputs

    exposed = with_outputs(model, names)
    params = sorted({d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim if not _static(d)})
    try:
        session = runtime.session(exposed, providers=["CPUExecutionProvider"], threads=1)
        order = [o.name for o in session.get_outputs()]
        runs = [dict(zip(order, runtime.run(session, _feeds(model, params, shift)), strict=True)) for shift in (0, 1)]
    except Exception as exc:
        return {}, f"{RUN} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    values = [{p: 2 + k + shift for k, p in enumerate(params)} for shift in (0, 1)]
    found = {}
    for name in names:
        a, b = np.asarray(runs[0][name]), np.asarray(runs[1][name])
        if a.ndim != b.ndim:
            continue
        shape = tuple(_dim_of(x, y, params, values) for x, y in zip(a.shape, b.shape, strict=True))
        found[name] = (shape, onnx.helper.np_dtype_to_tensor_dtype(a.dtype))
    return found, ""


def _static(dim) -> bool:
    return dim.HasField("dim_value")


def _dim_of(first: int, second: int, params: list[str], values: list[dict]) -> int | str:
    if first == second:
        return int(first)
    matches = [p for p in params if (values[0][p], values[1][p]) == (first, second)]
    return matches[0] if len(matches) == 1 else f"run_{first}_{second}"


def _feeds(model: onnx.ModelProto, params: list[str], shift: int) -> dict[str, np.ndarray]:
    """Feeds with symbolic dim k set to 2 + k + shift (an empty dim_param counts as its own symbol);
    integer inputs are small non-negative ids (valid token ids, masks and positions)."""
    rng = np.random.default_rng(shift)
    value = {p: 2 + k + shift for k, p in enumerate(params)}
    feeds = {}
    inits = {t.name for t in model.graph.initializer}
    for info in model.graph.input:
        if info.name in inits:
            continue
        tensor_type = info.type.tensor_type
        dims = [int(d.dim_value) if _static(d) else value[d.dim_param] for d in tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[info.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype == np.bool_:
            feeds[info.name] = np.ones(dims, dtype=bool)
        else:
            feeds[info.name] = np.ones(dims, dtype=dtype)
    return feeds
