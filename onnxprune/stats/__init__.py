"""The statistics stage: everything that runs calibration data through onnxruntime and returns values
keyed by layer (onnxprune.layers.Layer node names).

collect     stream a dataset through a model, handing chosen tensors to accumulators (CollectSettings)
hessian     layer input Hessians H = (1/n) X~^T X~ (and the pairs of --sequential), input_rows, waves
linalg      damping, dead inputs, Cholesky inverses and the error forms of those Hessians
activity    per-input activity statistics (norms, means, ranges, relief numerators)
probe       the model's outputs with some initializers replaced (OutputProbe)
provider    Statistics: the stage object a method asks (declared kinds only), with the record of passes
patches     im2col of a Conv input, in the order of its weight
"""

from .activity import InputStats, Range, input_ranges, layer_statistics
from .collect import CollectSettings, collect
from .hessian import LayerStats, collect_on_updated, collect_stats, downstream, layer_waves
from .probe import OutputProbe
from .provider import KINDS, Statistics

__all__ = [
    "KINDS",
    "CollectSettings",
    "InputStats",
    "LayerStats",
    "OutputProbe",
    "Range",
    "Statistics",
    "collect",
    "collect_on_updated",
    "collect_stats",
    "input_ranges",
    "layer_statistics",
    "downstream",
    "layer_waves",
]
