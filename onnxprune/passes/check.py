"""Re-infer shapes and run the full ONNX checker on the rewritten model."""

from __future__ import annotations

import onnx

from ..errors import ModelLoadError
from ..io import check_model, checkable, skeleton
from .base import Pass, PassError, PassResult

#: below this size the checker runs on the model itself; above, on its skeleton (no copy of the weights)
FULL_CHECK_BYTES = 64 * 2**20


def infer_and_check(model: onnx.ModelProto) -> PassResult:
    """Shape inference in strict mode (a shape contradiction is an error) and the full checker, run on a
    skeleton of the model (weights as typed inputs), plus a byte-count check of every initializer.

    A failure here means our own rewrite produced an invalid model: a bug, raised as PassError with
    the checker's exception chained (the traceback is kept). `modified` says whether the re-inferred
    value_info differs from what the model held."""
    check_initializer_sizes(model)
    subject = checkable(model if model.ByteSize() < FULL_CHECK_BYTES else skeleton(model))
    try:
        inferred = onnx.shape_inference.infer_shapes(subject, strict_mode=True, data_prop=True)
        onnx.checker.check_model(inferred, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise PassError(f"pruned model: fails the ONNX checker: {first}; this is a bug, please report it") from exc
    weights = {t.name for t in model.graph.initializer}
    before = [v.SerializeToString() for v in model.graph.value_info]
    del model.graph.value_info[:]
    model.graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in weights)
    return PassResult(model, before != [v.SerializeToString() for v in model.graph.value_info])


def check_initializer_sizes(model: onnx.ModelProto) -> None:
    try:
        check_model(model, where="pruned model")
    except ModelLoadError as exc:
        raise PassError(f"{exc}; this is a bug, please report it") from exc


CHECK = Pass("infer-shapes+check", infer_and_check)
