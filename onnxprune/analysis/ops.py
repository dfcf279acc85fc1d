"""The table of op rules: op_type -> rule. One place to find how any op moves channels.

A rule reads the labels of a node's inputs and sets the labels of its outputs (see context.py). An op
missing from this table freezes every channel that reaches it, with the reason "no rule": freezing is
always correct, a guess is not.
"""

from __future__ import annotations

from . import ops_attention as attention
from . import ops_axes as axes
from . import ops_fused as fused
from . import ops_layers as layers
from . import ops_pointwise as pointwise
from . import ops_recurrent as recurrent
from . import ops_reindex as reindex

_UNARY = (
    "Relu LeakyRelu Elu Selu Celu ThresholdedRelu Sigmoid HardSigmoid HardSwish Tanh Softplus Softsign Mish "
    "Gelu Erf Exp Log Abs Neg Sqrt Reciprocal Floor Ceil Round Sign Sin Cos Not IsNaN IsInf Clip Identity "
    "Dropout Cast CastLike Shrink Relu6"
).split()
_JOIN = "Add Sub Mul Div Max Min Pow PRelu Where Equal Less LessOrEqual Greater GreaterOrEqual And Or Xor Mod Sum Mean"

RULES = {
    **{op: pointwise.transparent for op in _UNARY},
    **{op: pointwise.join for op in _JOIN.split()},
    "BatchNormalization": pointwise.channel_norm,
    "InstanceNormalization": pointwise.channel_norm,
    "Conv": layers.conv,
    "ConvTranspose": layers.conv_transpose,
    "Gemm": layers.gemm,
    "MatMul": layers.matmul,
    **{op: recurrent.recurrent for op in recurrent.GATES},
    "Reshape": reindex.reshape,
    "Flatten": reindex.flatten,
    "Transpose": reindex.transpose,
    "Squeeze": reindex.squeeze,
    "Unsqueeze": reindex.unsqueeze,
    "Concat": reindex.concat,
    "Split": reindex.split,
    "Slice": reindex.slice_,
    "Gather": reindex.gather,
    "Pad": reindex.pad,
    "Resize": reindex.resize,
    "Upsample": reindex.resize,
    "Expand": reindex.expand,
    "Tile": reindex.tile,
    "Shape": reindex.shape,
    "MaxPool": axes.spatial_pool,
    "AveragePool": axes.spatial_pool,
    "LpPool": axes.spatial_pool,
    "GlobalAveragePool": axes.spatial_pool,
    "GlobalMaxPool": axes.spatial_pool,
    "GlobalLpPool": axes.spatial_pool,
    **{
        op: axes.reduce
        for op in (
            "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp "
            "ReduceSumSquare"
        ).split()
    },
    "Softmax": axes.along_axis,
    "LogSoftmax": axes.along_axis,
    "Hardmax": axes.along_axis,
    "LayerNormalization": axes.layer_norm,
    "GroupNormalization": axes.group_norm,
    "LpNormalization": axes.lp_norm,
    "RMSNormalization": fused.simplified_norm,
    "SimplifiedLayerNormalization": fused.simplified_norm,  # onnxruntime's contrib op, in the ONNX domain
}

#: onnxruntime's contrib ops (ops_fused.py, ops_attention.py), keyed by their domain
CONTRIB_RULES = {
    **{op: fused.bias_activation for op in "Gelu QuickGelu FastGelu BiasGelu BiasAdd".split()},
    "FusedMatMul": fused.fused_matmul,
    "SkipLayerNormalization": fused.skip_norm,
    "SkipSimplifiedLayerNormalization": fused.skip_norm,
    "SimplifiedLayerNormalization": fused.simplified_norm,
    "Attention": attention.attention,
    "MultiHeadAttention": attention.multi_head_attention,
    "GroupQueryAttention": attention.group_query_attention,
    "RotaryEmbedding": attention.rotary_embedding,
}
DOMAIN_RULES = {"": RULES, "ai.onnx": RULES, "com.microsoft": CONTRIB_RULES}


def rule_for(node):
    """The rule of `node` (by its domain and op_type), or None."""
    return DOMAIN_RULES.get(node.domain, {}).get(node.op_type)


#: ops that create channels even when no input is labeled
PRODUCERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "FusedMatMul", *recurrent.GATES})
