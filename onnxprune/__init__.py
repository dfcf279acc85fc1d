"""onnxprune: make trained ONNX models smaller by rewriting their graphs."""

from .analysis import Analysis, Group, analyze
from .errors import OnnxPruneError
from .feeds import Dataset, load_dataset
from .graph import GraphIndex
from .io import load_model, save_model
from .methods.base import PruneOptions
from .pipeline import PipelineOptions, PruneResult, apply, inspect_model, prune
from .plan import PlanFile, PruningPlan

__all__ = [
    "Analysis",
    "Dataset",
    "GraphIndex",
    "Group",
    "OnnxPruneError",
    "PipelineOptions",
    "PlanFile",
    "PruneOptions",
    "PruneResult",
    "PruningPlan",
    "analyze",
    "apply",
    "inspect_model",
    "load_model",
    "load_dataset",
    "prune",
    "save_model",
]
__version__ = "0.1.0"
