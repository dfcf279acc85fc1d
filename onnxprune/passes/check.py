"""Re-infer shapes and run the full ONNX checker on the rewritten model."""

from __future__ import annotations

import onnx

from ..errors import ValidationError
from ..io import TWO_GB
from .base import Pass, PassResult


def infer_and_check(model: onnx.ModelProto) -> PassResult:
    """Shape inference in strict mode (a shape contradiction is an error) and the full checker."""
    if model.ByteSize() >= TWO_GB:
        return PassResult(model, False)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        onnx.checker.check_model(inferred, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValidationError(
            f"pruned model: fails the ONNX checker: {first}; this is a bug, please report it"
        ) from None
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    return PassResult(model, True)


CHECK = Pass("infer-shapes+check", infer_and_check)
