"""Rewrite a transpose of the last two axes written through a merged batch axis into one Transpose.

torch's dynamo exporter writes the key transpose of scaled-dot-product attention, k of shape
[B, H, S, D], as

    Reshape(k, [-1, S, D]) -> Transpose(perm=[0, 2, 1]) -> Reshape(.., [B, H, D, S])

with both targets built at run time from Shape(k). The first Reshape merges the batch and head axes
into one axis of B*H positions; the analysis cannot label an axis of unknown length, so the heads of k
would be lost there. The chain equals `Transpose(k, perm=[0, 1, 3, 2])`: in row-major order, element
(b, h, s, d) of k sits at flat offset ((b*H + h)*S + s)*D + d, so the first Reshape puts it at
(b*H + h, s, d) (merging leading axes keeps the order of the trailing [S, D] blocks); the Transpose moves
it to (b*H + h, d, s), at offset ((b*H + h)*D + d)*S + s, which the second Reshape (splitting the leading
axis back into B, H) reads as (b, h, d, s): the element Transpose(k, [0, 1, 3, 2]) has there.

The rewrite is made only when that is proven from the graph: k has rank 4; the first target's traced
entries (onnxprune.shape_trace) are -1 or B*H, then S, then D; the Transpose's perm is [0, 2, 1]; the
second target's entries are B, H, D, S; and the two intermediate tensors have no other reader and are
no graph outputs. An entry is proven to be k's size on an axis when it is read from k by Shape, or when
it is a static value equal to k's static (positive) size there; a size read from another tensor whose
dim is not statically k's does not qualify. Anything unproven keeps the chain (and the analysis freezes
what it touches, with its reason). The rewritten node keeps the second Reshape's output name; the Shape
chains that only built the targets are left for cleanup. On an empty k the original Reshapes may fail
(a -1 or a copied 0 on zero elements) where the Transpose returns the empty result; on every non-empty
k both compute the same values.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from ..graph import GraphIndex
from ..nodes import attributes
from ..shape_trace import Entry, trace_vector
from .base import Pass, PassResult
from .cleanup import subgraph_inputs

log = logging.getLogger(__name__)

#: the rewrite's perm on the 4-D tensor, and the Transpose perm of the merged 3-D chain it replaces
PERM = (0, 1, 3, 2)
MERGED_PERM = (0, 2, 1)
#: the axes of k the entries of the first target (after the merged one) and of the second target read
FIRST_AXES = (2, 3)
SECOND_AXES = (0, 1, 3, 2)


def rewrite_reshaped_transposes(model: onnx.ModelProto) -> PassResult:
    chains = _candidates(model)
    if not chains:
        return PassResult(model, False)
    index = GraphIndex.build(model)
    proven = [chain for chain in chains if _proven(index, *chain)]
    if not proven:
        return PassResult(model, False)
    _replace(model, proven)
    log.info("rewrote %d Reshape-Transpose-Reshape chains into one Transpose of the last two axes", len(proven))
    return PassResult(model, True)


def _candidates(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]]:
    """(first Reshape, Transpose, second Reshape) chains whose intermediates only feed the next node."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output if out}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    shared = {o.name for o in graph.output} | {n for node in graph.node for n in subgraph_inputs(node)}
    chains = []
    for second in graph.node:
        if not _is(second, "Reshape") or len(second.input) < 2:
            continue
        transpose = producer.get(second.input[0])
        if not _is(transpose, "Transpose") or tuple(attributes(transpose).get("perm", ())) != MERGED_PERM:
            continue
        first = producer.get(transpose.input[0])
        if not _is(first, "Reshape") or len(first.input) < 2:
            continue
        middle = (first.output[0], transpose.output[0])
        if all(readers.get(name, 0) == 1 and name not in shared for name in middle):
            chains.append((first, transpose, second))
    return chains


def _is(node: onnx.NodeProto | None, op: str) -> bool:
    return node is not None and node.op_type == op and node.domain in ("", "ai.onnx")


def _proven(index: GraphIndex, first: onnx.NodeProto, transpose: onnx.NodeProto, second: onnx.NodeProto) -> bool:
    """Whether the chain provably equals Transpose(k, PERM) (the module docstring's conditions)."""
    k = first.input[0]
    shape = index.shape(k)
    if shape is None or len(shape) != 4:
        return False
    merged = trace_vector(index, first.input[1])
    split = trace_vector(index, second.input[1])
    if merged is None or split is None or len(merged) != 1 + len(FIRST_AXES) or len(split) != len(SECOND_AXES):
        return False
    return (
        _is_merged(merged[0], k, shape)
        and all(_is_size(e, k, shape, axis) for e, axis in zip(merged[1:], FIRST_AXES, strict=True))
        and all(_is_size(e, k, shape, axis) for e, axis in zip(split, SECOND_AXES, strict=True))
    )


def _is_size(entry: Entry, k: str, shape: tuple, axis: int) -> bool:
    """Entry proven to be k's size on `axis`: read from k by Shape, or a static value equal to k's
    static positive size there (a 0 would copy the Reshape input's dim)."""
    if entry.origin == "shape" and entry.source == k and entry.index == axis:
        return True
    dim = shape[axis]
    return isinstance(dim, int) and dim > 0 and entry.value == dim


def _is_merged(entry: Entry, k: str, shape: tuple) -> bool:
    """Entry proven to be k's B*H: -1 (the other entries are k's S and D), the product of k's sizes on
    axes 0 and 1 read by Shape, or a static value equal to their static product."""
    if entry.value == -1:
        return True
    if entry.origin == "product" and entry.multiplier == 1 and entry.divisor == 1:
        if sorted(entry.reads) == [(k, 0), (k, 1)]:
            return True
    dims = shape[:2]
    static = all(isinstance(d, int) and d > 0 for d in dims)
    return static and entry.value == int(np.prod(dims))


def _replace(model: onnx.ModelProto, chains) -> None:
    """Each chain's second Reshape becomes Transpose(k, PERM) under the Transpose's name; the first
    Reshape and the Transpose go, with any value_info of the tensors between them."""
    graph = model.graph
    gone = {name for first, transpose, _ in chains for name in (first.output[0], transpose.output[0])}
    new = {
        second.output[0]: onnx.helper.make_node(
            "Transpose", [first.input[0]], [second.output[0]], name=transpose.name or second.name, perm=list(PERM)
        )
        for first, transpose, second in chains
    }
    first_outputs = [n.output[0] if n.output else "" for n in graph.node]
    nodes = [new.get(out, n) for out, n in zip(first_outputs, graph.node, strict=True) if out not in gone]
    kept_info = [v for v in graph.value_info if v.name not in gone]
    copies = [onnx.NodeProto() for _ in nodes]
    for target, source in zip(copies, nodes, strict=True):
        target.CopyFrom(source)
    del graph.node[:]
    graph.node.extend(copies)
    if len(kept_info) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(kept_info)


REWRITE_RESHAPED_TRANSPOSES = Pass("reshaped-transposes", rewrite_reshaped_transposes)
