"""Re-infer shapes and run the full ONNX checker on the rewritten model."""

from __future__ import annotations

import onnx

from ..errors import ModelLoadError, ValidationError
from ..io import check_model, checkable, skeleton
from .base import Pass, PassResult

#: below this size the checker runs on the model itself; above, on its skeleton (no copy of the weights)
FULL_CHECK_BYTES = 64 * 2**20


def infer_and_check(model: onnx.ModelProto) -> PassResult:
    """Shape inference in strict mode (a shape contradiction is an error) and the full checker, run on a
    skeleton of the model (weights as typed inputs), plus a byte-count check of every initializer."""
    check_initializer_sizes(model)
    subject = checkable(model if model.ByteSize() < FULL_CHECK_BYTES else skeleton(model))
    try:
        inferred = onnx.shape_inference.infer_shapes(subject, strict_mode=True, data_prop=True)
        onnx.checker.check_model(inferred, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValidationError(
            f"pruned model: fails the ONNX checker: {first}; this is a bug, please report it"
        ) from None
    weights = {t.name for t in model.graph.initializer}
    del model.graph.value_info[:]
    model.graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in weights)
    return PassResult(model, True)


def check_initializer_sizes(model: onnx.ModelProto) -> None:
    try:
        check_model(model, where="pruned model")
    except ModelLoadError as exc:
        raise ValidationError(f"{exc}; this is a bug, please report it") from None


CHECK = Pass("infer-shapes+check", infer_and_check)
