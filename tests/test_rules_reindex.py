"""Golden tests of the re-indexing rules (analysis/ops_reindex.py): Flatten, Reshape (constant and
computed targets), Transpose, Concat, Split, Slice, channel shuffle, Squeeze/Unsqueeze, Gather, Pad,
Resize/Upsample, Expand, Tile. Each test with free channels also checks shrink == mask."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import Builder, G, assert_groups, group_of, labels_of, run_analysis, shrink_matches_mask
from onnx import TensorProto

from onnxprune.analysis.rewrites import DimEntry, GatherIndices, SliceRange, SplitSizes
from onnxprune.graph import GraphIndex

OUT = "reaches graph output '{}'"


def _stem(b: Builder, channels: int = 4, hw: int = 3, batch="N"):
    x = b.input("x", [batch, 3, hw, hw])
    return b.relu(b.conv(x, 3, channels, 3, name="c1"))


# ---- Flatten / Reshape to a classifier ------------------------------------------------------------
def test_flatten_to_gemm_gives_each_channel_its_spatial_block():
    b = Builder()
    y = b.node("Flatten", [_stem(b)], axis=1)
    b.output(b.gemm(y, 36, 5, name="fc"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["fc"], 4), G(["fc"], [], 5, frozen=OUT.format("fc_out")))
    assert labels_of(a, "fc.w", 0) == np.repeat(labels_of(a, "c1.w", 0), 9).tolist()
    shrink_matches_mask(model)


@pytest.mark.parametrize("target,rewritten", [([0, -1], False), ([-1, 36], True)], ids=["0,-1", "-1,36"])
def test_reshape_constant_target(target, rewritten):
    b = Builder()
    y = b.node("Reshape", [_stem(b), b.ints(target, "shape")], name="rs")
    b.output(b.gemm(y, 36, 5, trans_b=1, name="fc"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["fc"], 4), G(["fc"], [], 5, frozen=OUT.format("fc_out")))
    assert (DimEntry("rs", 1, "shape", 1, "rs_out", 1) in a.rewrites) == rewritten
    new, _ = shrink_matches_mask(model)
    if rewritten:
        target = next(n for n in new.graph.node if n.name == "rs").input[1]
        assert target != "shape"  # a private copy of the constant, edited


def test_reshape_target_computed_at_run_time_with_minus_one():
    """Shape -> Gather(0) -> Unsqueeze -> Concat([n, -1]) -> Reshape: the batch is read at run time,
    the labeled axis is -1 and adapts by itself."""
    b = Builder()
    y = _stem(b)
    n = b.node("Unsqueeze", [b.node("Gather", [b.node("Shape", [y]), b.ints(0)], axis=0), b.ints([0])])
    target = b.node("Concat", [n, b.ints([-1])], axis=0)
    y = b.node("Reshape", [y, target], name="rs")
    b.output(b.gemm(y, 36, 5, name="fc"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["fc"], 4), G(["fc"], [], 5, frozen=OUT.format("fc_out")))
    assert not [r for r in a.rewrites if isinstance(r, DimEntry)]
    shrink_matches_mask(model)


def test_reshape_keeping_channels_read_from_shape():
    """x.view(n, c, -1): the channel entry is read by Shape from the same labeled tensor, so it follows
    the shrink by itself."""
    b = Builder()
    y = _stem(b, channels=5, hw=4)
    shape = b.node("Shape", [y])
    n, c = (b.node("Unsqueeze", [b.node("Gather", [shape, b.ints(i)], axis=0), b.ints([0])]) for i in (0, 1))
    y = b.node("Reshape", [y, b.node("Concat", [n, c, b.ints([-1])], axis=0)], name="rs")
    b.output(b.matmul(b.node("Transpose", [y], perm=[0, 2, 1]), 5, 3, name="mm"))
    model = b.model()
    a = run_analysis(model)
    assert GraphIndex.build(model).shape("rs_out") == ("N", 5, 16)
    assert_groups(a, G(["c1"], ["mm"], 5), G(["mm"], [], 3, frozen=OUT.format("mm.add_out")))
    shrink_matches_mask(model)


def test_head_split_with_minus_one_on_symbolic_batch():
    """view(b, t, heads, -1) and back: ONNX leaves the -1 unknown when the batch is symbolic; the index
    resolves it from the traced target, so the value/output-projection channels stay free."""
    b = Builder()
    x = b.input("x", ["B", 3, 6])
    v = b.matmul(x, 6, 4, name="v")
    heads = b.node("Reshape", [v, b.ints([0, 0, 2, -1])], name="split")
    heads = b.node("Relu", [b.node("Transpose", [heads], perm=[0, 2, 1, 3])])
    merged = b.node("Reshape", [b.node("Transpose", [heads], perm=[0, 2, 1, 3]), b.ints([0, 0, -1])], name="merge")
    b.output(b.matmul(merged, 4, 6, name="o"))
    model = b.model()
    index = GraphIndex.build(model)
    assert index.shape("split_out") == ("B", 3, 2, 2) and index.shape("merge_out") == ("B", 3, 4)
    a = run_analysis(model)
    # heads split the 4 channels as [2, 2]: position j of both heads goes together
    assert_groups(a, G(["v"], ["o"], 2), G(["o"], [], 6, frozen=OUT.format("o.add_out")))
    v_labels = labels_of(a, "v.w", 1)
    assert v_labels[:2] == v_labels[2:]
    shrink_matches_mask(model)


def test_reshape_target_concat_of_constants_is_rewritten_in_place():
    b = Builder()
    y = _stem(b)
    target = b.node("Concat", [b.ints([-1], "batch"), b.ints([36], "features")], axis=0)
    y = b.node("Reshape", [y, target], name="rs")
    b.output(b.gemm(y, 36, 5, name="fc"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["fc"], 4), G(["fc"], [], 5, frozen=OUT.format("fc_out")))
    assert DimEntry("rs", -1, "features", 0, "rs_out", 1) in a.rewrites
    shrink_matches_mask(model)


def _count_reshape(op: str, factor: int, width: int):
    """c1 [N, 4, 3, 3] -> Reshape to [-1, C op factor] with C read at run time -> Gemm."""
    b = Builder()
    y = _stem(b)
    shape = b.node("Shape", [y], name="shape")
    c = b.node("Gather", [shape, b.ints([1])], axis=0)
    flat = b.node(op, [c, b.ints([factor])])
    target = b.node("Concat", [b.ints([-1]), flat], axis=0)
    y = b.node("Reshape", [y, target], name="rs")
    b.output(b.gemm(y, width, 5, name="fc"))
    return b.model()


def test_reshape_target_from_channel_count_times_spatial_prunes():
    """x.view(-1, c * 9): the run-time product counts the kept channels times 9, as the new axis."""
    model = _count_reshape("Mul", 9, 36)
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["fc"], 4), G(["fc"], [], 5, frozen=OUT.format("fc_out")))
    shrink_matches_mask(model)


def test_reshape_target_from_channel_count_scaled_then_divided_prunes():
    """[N, C, 3, 3] -> [N, C * 9 / 3, 3] with C read at run time: each channel holds 3 positions of axis 1,
    and (C' * 9) // 3 is exact for every kept count C'."""
    b = Builder()
    y = _stem(b)
    shape = b.node("Shape", [y])
    n, c = (b.node("Gather", [shape, b.ints([k])], axis=0) for k in (0, 1))
    rows = b.node("Div", [b.node("Mul", [c, b.ints([9])]), b.ints([3])])
    y = b.node("Reshape", [y, b.node("Concat", [n, rows, b.ints([3])], axis=0)], name="rs")
    y = b.node("Reshape", [y, b.ints([-1, 36])])
    b.output(b.gemm(y, 36, 5, name="fc"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["fc"], 4), G(["fc"], [], 5, frozen=OUT.format("fc_out")))
    shrink_matches_mask(model)


def test_reshape_target_from_channel_count_plus_constant_is_frozen():
    """C + 32 does not follow the removed channels: the Shape rule freezes (an Add is traced, but the
    Reshape's check of the entry fails)."""
    a = run_analysis(_count_reshape("Add", 32, 36))
    reason = "Reshape 'rs': the size of labeled axis 1 is computed at run time"
    assert_groups(a, G(["c1"], [], 4, frozen=reason), G(["fc"], [], 5, frozen=OUT.format("fc_out")))


def test_channel_count_sizing_an_axis_without_channels_is_frozen():
    """A channel count read at run time may only size the axis that holds those channels."""
    b = Builder()
    y = _stem(b)
    c = b.node("Gather", [b.node("Shape", [y]), b.ints([1])], axis=0)
    other = b.node("Reshape", [b.input("z", [4, 9]), b.node("Concat", [c, b.ints([-1])], axis=0)], name="rs")
    b.output(b.conv(y, 4, 2, name="c2"))
    b.output(other)
    a = run_analysis(b.model())
    reason = "Reshape 'rs': the size of an axis that holds no channels is computed from a channel count"
    assert group_of(a, "c1").frozen == reason


def test_slice_with_int32_bounds_keeps_their_type():
    """The rewritten starts/ends keep int32 when the steps are int32 (ONNX wants one type for all)."""
    b = Builder()
    y = _stem(b, channels=6)
    bounds = [b.const(np.array(v, np.int32)) for v in ([1], [5], [1], [1])]
    y = b.node("Slice", [y, *bounds], name="sl")
    b.output(b.conv(y, 4, 2, name="c2"))
    model = b.model()
    new, _ = shrink_matches_mask(model, removed={1, 4})
    sliced = next(n for n in new.graph.node if n.op_type == "Slice")
    types = {t.name: t.data_type for t in new.graph.initializer}
    assert {types[name] for name in sliced.input[1:]} == {TensorProto.INT32}


# ---- Transpose / Concat ---------------------------------------------------------------------------
def test_transpose_to_channels_last_matmul():
    b = Builder()
    y = b.node("Transpose", [_stem(b)], perm=[0, 2, 3, 1])
    b.output(b.matmul(y, 4, 5, name="mm"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["mm"], 4), G(["mm"], [], 5, frozen=OUT.format("mm.add_out")))
    shrink_matches_mask(model)


def test_dense_concat_with_graph_input():
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    y1 = b.relu(b.conv(x, 3, 4, 3, name="c1"))
    cat = b.node("Concat", [x, y1], axis=1)
    y2 = b.relu(b.conv(cat, 7, 5, 3, name="c2"))
    cat = b.node("Concat", [cat, y2], axis=1)
    b.output(b.conv(cat, 12, 2, 1, name="c3"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["c2", "c3"], 4), G(["c2"], ["c3"], 5), G(["c3"], [], 2, frozen=OUT.format("c3_out")))
    assert labels_of(a, "c3.w", 1) == [-1] * 3 + labels_of(a, "c1.w", 0) + labels_of(a, "c2.w", 0)
    shrink_matches_mask(model)


def test_concat_on_a_spatial_axis_unifies_channels():
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    y = b.node("Concat", [b.conv(x, 3, 4, 3, name="c1"), b.conv(x, 3, 4, 1, name="c2")], axis=2)
    b.output(b.conv(y, 4, 2, 1, name="c3"))
    model = b.model()
    assert_groups(run_analysis(model), G(["c1", "c2"], ["c3"], 4), G(["c3"], [], 2, frozen=OUT.format("c3_out")))
    shrink_matches_mask(model)


# ---- Split ----------------------------------------------------------------------------------------
def _split_model(opset: int, form: str):
    b = Builder(opset=opset)
    x = b.input("x", ["N", 3, 4, 4])
    y = b.relu(b.conv(x, 3, 6, 3, name="c1"))
    if form == "attribute":
        parts = b.node("Split", [y], n_out=2, name="sp", axis=1, split=[2, 4])
    elif form == "input":
        parts = b.node("Split", [y, b.ints([2, 4])], n_out=2, name="sp", axis=1)
    elif form == "num_outputs":
        parts = b.node("Split", [y], n_out=2, name="sp", axis=1, num_outputs=2)
    else:  # equal parts, no sizes at all
        parts = b.node("Split", [y], n_out=2, name="sp", axis=1)
    first, second = parts
    sizes = (2, 4) if form in ("attribute", "input") else (3, 3)
    left = b.conv(first, sizes[0], 3, 1, name="ca")
    right = b.conv(second, sizes[1], 3, 1, name="cb")
    b.output(b.node("Add", [left, right], name="add"))
    return b.model(ir_version=8 if opset < 18 else 9), sizes


@pytest.mark.parametrize(
    "opset,form", [(11, "attribute"), (13, "input"), (13, "equal"), (18, "num_outputs")], ids=lambda v: str(v)
)
def test_split_on_channels(opset, form):
    model, sizes = _split_model(opset, form)
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["ca", "cb"], 6), G(["ca", "cb"], [], 3, frozen=OUT.format("add_out")))
    c1 = labels_of(a, "c1.w", 0)
    assert labels_of(a, "ca.w", 1) == c1[: sizes[0]] and labels_of(a, "cb.w", 1) == c1[sizes[0] :]
    assert SplitSizes("sp", 1) in a.rewrites
    new, _ = shrink_matches_mask(model, removed={c1[0], c1[-1]})
    split = next(n for n in new.graph.node if n.name == "sp")
    assert "num_outputs" not in [att.name for att in split.attribute]


# ---- Slice / Gather -------------------------------------------------------------------------------
@pytest.mark.parametrize("starts,ends", [([1], [4]), ([-4], [2**62])], ids=["1:4", "-4:max"])
def test_slice_on_channel_axis(starts, ends):
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    stem = b.relu(b.conv(x, 3, 6, 3, name="c1"))
    y = b.node("Slice", [stem, b.ints(starts), b.ints(ends), b.ints([1])], name="sl")
    read = len(range(6)[slice(starts[0], min(ends[0], 6))])
    b.output(b.conv(y, read, 2, 1, name="c2"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["c2"], 6), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    c1 = labels_of(a, "c1.w", 0)
    assert labels_of(a, "c2.w", 1) == c1[starts[0] : ends[0]]
    assert [r for r in a.rewrites if isinstance(r, SliceRange)] == [SliceRange("sl", 1, stem)]
    sliced = set(c1[starts[0] : ends[0]])
    outside = [c for c in c1 if c not in sliced]
    shrink_matches_mask(model, removed={outside[0], sorted(sliced)[1]})
    shrink_matches_mask(model, seed=3)


def test_slice_opset9_attribute_form():
    b = Builder(opset=9)
    x = b.input("x", ["N", 3, 4, 4])
    y = b.relu(b.conv(x, 3, 6, 3, name="c1"))
    y = b.node("Slice", [y], name="sl", starts=[2], ends=[6], axes=[1])
    b.output(b.conv(y, 4, 2, 1, name="c2"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["c2"], 6), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    c1 = labels_of(a, "c1.w", 0)
    shrink_matches_mask(model, removed={c1[0], c1[3]})


def test_slice_with_step_on_channels_is_frozen():
    b = Builder()
    y = _stem(b, channels=6)
    y = b.node("Slice", [y, b.ints([0]), b.ints([6]), b.ints([1]), b.ints([2])], name="sl")
    b.output(b.conv(y, 3, 2, 1, name="c2"))
    a = run_analysis(b.model())
    reason = "Slice 'sl': a step of 2 on a labeled axis has no rule"
    assert_groups(a, G(["c1"], [], 6, frozen=reason), G(["c2"], [], 2, frozen=OUT.format("c2_out")))


def test_slice_on_spatial_axis_is_transparent():
    b = Builder()
    y = b.node("Slice", [_stem(b, hw=5), b.ints([1]), b.ints([4]), b.ints([3])])
    b.output(b.conv(y, 4, 2, 1, name="c2"))
    model = b.model()
    assert_groups(run_analysis(model), G(["c1"], ["c2"], 4), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    shrink_matches_mask(model)


@pytest.mark.parametrize("indices", [[0, 2, 3, 5], [5, 0, 0, -3]], ids=["sorted", "repeats-negative"])
def test_gather_constant_indices_on_channels(indices):
    b = Builder()
    stem = _stem(b, channels=6)
    y = b.node("Gather", [stem, b.ints(indices)], name="ga", axis=1)
    b.output(b.conv(y, 4, 2, 1, name="c2"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["c2"], 6), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    c1 = np.array(labels_of(a, "c1.w", 0))
    assert labels_of(a, "c2.w", 1) == c1[indices].tolist()
    assert GatherIndices("ga", 1, stem) in a.rewrites
    shrink_matches_mask(model, removed={int(c1[1]), int(c1[3])})


def test_gather_single_channel_is_frozen():
    b = Builder()
    y = b.node("Gather", [_stem(b), b.ints(2)], name="ga", axis=1)
    b.output(b.node("Relu", [y]))
    model = b.model()
    a = run_analysis(model)
    # only the selected channel is frozen (it reaches the output); nothing reads the other three
    reason = "1 of 4 channels frozen: Gather 'ga' selects a single channel"
    assert_groups(a, G(["c1"], [], 4, free=3, frozen=reason))
    shrink_matches_mask(model)


def test_gather_run_time_indices_on_channels_is_frozen():
    b = Builder()
    idx = b.input("idx", [2], TensorProtoInt64)
    y = b.node("Gather", [_stem(b), idx], name="ga", axis=1)
    b.output(b.node("Relu", [y]))
    a = run_analysis(b.model())
    assert_groups(a, G(["c1"], [], 4, frozen="Gather 'ga': indices on a labeled axis are computed at run time"))


def test_gather_on_spatial_axis_is_transparent():
    b = Builder()
    y = b.node("Gather", [_stem(b), b.ints([2, 0])], axis=3)
    b.output(b.conv(y, 4, 2, 1, name="c2"))
    model = b.model()
    assert_groups(run_analysis(model), G(["c1"], ["c2"], 4), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    shrink_matches_mask(model)


TensorProtoInt64 = 7


# ---- channel shuffle --------------------------------------------------------------------------------
def _shuffle(b: Builder, y, groups: int, per_group: int, hw: int):
    y = b.node("Reshape", [y, b.ints([0, groups, per_group, hw, hw])], name="rs1")
    y = b.node("Transpose", [y], perm=[0, 2, 1, 3, 4])
    return b.node("Reshape", [y, b.ints([0, groups * per_group, hw, hw])], name="rs2")


def test_channel_shuffle_between_plain_convs_ties_the_shuffled_positions():
    """Reshape [N,2,3,H,W] splits the channel axis: position j of both halves is removed together, so
    the shuffle still lines up; 6 channels become 3 removable pairs."""
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    y = _shuffle(b, b.relu(b.conv(x, 3, 6, 3, name="c1")), 2, 3, 4)
    b.output(b.conv(y, 6, 2, 1, name="c2"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["c2"], 3), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    c1 = labels_of(a, "c1.w", 0)
    assert c1[:3] == c1[3:] and len(set(c1)) == 3
    assert labels_of(a, "c2.w", 1) == [c1[0], c1[0], c1[1], c1[1], c1[2], c1[2]]
    shrink_matches_mask(model)


def test_channel_shuffle_between_grouped_convs_collapses_to_one_channel():
    """By design: the grouped convs tie each conv group, the shuffle ties position j of every group, so
    every channel ends in one atom (a whole-layer group that can never be removed entirely)."""
    b = Builder()
    x = b.input("x", ["N", 3, 4, 4])
    y = b.relu(b.conv(x, 3, 8, 1, name="c0"))
    y = b.relu(b.conv(y, 8, 8, 1, group=2, name="g1"))
    y = b.conv(_shuffle(b, y, 2, 4, 4), 8, 8, 1, group=2, name="g2")
    b.output(b.conv(y, 8, 2, 1, name="head"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c0", "g1", "g2"], ["head"], 1), G(["head"], [], 2, frozen=OUT.format("head_out")))


# ---- Squeeze / Unsqueeze ---------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_after_global_pool(opset):
    b = Builder(opset=opset)
    y = b.node("GlobalAveragePool", [_stem(b)])
    y = b.node("Squeeze", [y], axes=[2, 3]) if opset < 13 else b.node("Squeeze", [y, b.ints([-1, -2])])
    b.output(b.gemm(y, 4, 3, name="fc"))
    model = b.model()
    assert_groups(run_analysis(model), G(["c1"], ["fc"], 4), G(["fc"], [], 3, frozen=OUT.format("fc_out")))
    shrink_matches_mask(model)


def test_squeeze_without_axes():
    b = Builder()
    y = b.node("Squeeze", [b.node("GlobalMaxPool", [_stem(b, batch=2)])])
    b.output(b.gemm(y, 4, 3, name="fc"))
    model = b.model()
    assert_groups(run_analysis(model), G(["c1"], ["fc"], 4), G(["fc"], [], 3, frozen=OUT.format("fc_out")))
    shrink_matches_mask(model)


@pytest.mark.parametrize("opset", [11, 13])
def test_unsqueeze_before_conv(opset):
    b = Builder(opset=opset)
    x = b.input("x", ["N", 6])
    y = b.relu(b.gemm(x, 6, 5, name="fc"))
    y = b.node("Unsqueeze", [y], axes=[2, 3]) if opset < 13 else b.node("Unsqueeze", [y, b.ints([2, 3])])
    b.output(b.conv(y, 5, 2, 1, name="c2"))
    model = b.model()
    assert_groups(run_analysis(model), G(["fc"], ["c2"], 5), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    shrink_matches_mask(model)


# ---- Pad / Resize / Upsample / Expand / Tile --------------------------------------------------------
@pytest.mark.parametrize("opset", [11, 17])
def test_pad_on_spatial_axes(opset):
    b = Builder(opset=opset)
    y = b.node("Pad", [_stem(b), b.ints([0, 0, 1, 2, 0, 0, 2, 1])], mode="reflect")
    b.output(b.conv(y, 4, 2, 1, name="c2"))
    model = b.model()
    assert_groups(run_analysis(model), G(["c1"], ["c2"], 4), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    shrink_matches_mask(model)


def test_pad_with_axes_input_opset18():
    b = Builder(opset=18)
    y = b.node("Pad", [_stem(b), b.ints([1, 1, 1, 1]), b.const(np.array(0.5)), b.ints([2, 3])])
    b.output(b.conv(y, 4, 2, 1, name="c2"))
    model = b.model(ir_version=9)
    assert_groups(run_analysis(model), G(["c1"], ["c2"], 4), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    shrink_matches_mask(model)


def test_pad_on_channel_axis_is_frozen():
    b = Builder()
    y = b.node("Pad", [_stem(b), b.ints([0, 1, 0, 0, 0, 0, 0, 0])], name="pad")
    b.output(b.conv(y, 5, 2, 1, name="c2"))
    a = run_analysis(b.model())
    assert_groups(
        a, G(["c1"], [], 4, frozen="Pad 'pad': pads a labeled axis"), G(["c2"], [], 2, frozen=OUT.format("c2_out"))
    )


def test_resize_with_scales():
    b = Builder()
    y = b.node("Resize", [_stem(b), "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    b.output(b.conv(y, 4, 2, 1, name="c2"))
    model = b.model()
    assert_groups(run_analysis(model), G(["c1"], ["c2"], 4), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    shrink_matches_mask(model)


def test_resize_with_constant_sizes_is_rewritten():
    b = Builder()
    sizes = b.ints([2, 4, 6, 6], "sizes")
    y = b.node("Resize", [_stem(b, batch=2), "", "", sizes], name="rz", mode="linear")
    b.output(b.conv(y, 4, 2, 1, name="c2"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["c2"], 4), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    assert DimEntry("rz", 3, "sizes", 1, "rz_out", 1) in a.rewrites
    shrink_matches_mask(model)


def test_resize_scaling_channels_is_frozen():
    b = Builder()
    y = b.node("Resize", [_stem(b), "", b.const(np.array([1, 2, 1, 1], np.float32))], name="rz")
    b.output(b.node("Relu", [y]))
    a = run_analysis(b.model())
    assert_groups(a, G(["c1"], [], 4, frozen="Resize 'rz': scales on a labeled axis are not constant 1"))


def test_upsample_opset9():
    b = Builder(opset=9)
    y = b.node("Upsample", [_stem(b), b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    b.output(b.conv(y, 4, 2, 1, name="c2"))
    model = b.model()
    assert_groups(run_analysis(model), G(["c1"], ["c2"], 4), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    shrink_matches_mask(model)


@pytest.mark.parametrize("target", [[1, 1, 3, 3], [1, 4, 3, 3]], ids=["broadcast-channels", "explicit-channels"])
def test_expand_pooled_channels(target):
    b = Builder()
    y = _stem(b)
    gate = b.node("Expand", [b.node("GlobalAveragePool", [y]), b.ints(target, "target")], name="ex")
    b.output(b.conv(b.node("Mul", [y, gate]), 4, 2, 1, name="c2"))
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["c1"], ["c2"], 4), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    assert bool([r for r in a.rewrites if isinstance(r, DimEntry)]) == (target[1] == 4)
    shrink_matches_mask(model)


def test_tile_on_spatial_axes():
    b = Builder()
    y = b.node("Tile", [_stem(b), b.ints([1, 1, 2, 1])])
    b.output(b.conv(y, 4, 2, 1, name="c2"))
    model = b.model()
    assert_groups(run_analysis(model), G(["c1"], ["c2"], 4), G(["c2"], [], 2, frozen=OUT.format("c2_out")))
    shrink_matches_mask(model)
