"""Errors the user or the model caused.

Every message reads "where: what; how to fix". The CLI prints such an error as one line on stderr and
exits with code 1. Bugs are not wrapped: they keep their traceback.
"""

from __future__ import annotations


class OnnxPruneError(Exception):
    """Base class of every error caused by the input (model, data, options), not by a bug."""


class ModelLoadError(OnnxPruneError):
    """The model file cannot be read, parsed or checked."""


class CalibrationError(OnnxPruneError):
    """Calibration data is missing, malformed or does not match the model's inputs."""


class PlanError(OnnxPruneError):
    """A pruning plan does not fit the model it is applied to."""


class OptionError(OnnxPruneError):
    """An option value is out of range or inconsistent with the model."""


class ValidationError(OnnxPruneError):
    """The pruned model failed the checker, onnxruntime, or produced non-finite values."""


class OutputPathError(OnnxPruneError):
    """The output path cannot be written (it is the input, or its folder is missing)."""
