"""The key transpose of torch's dynamo export, Reshape(k, [-1, S, D]) -> Transpose([0, 2, 1]) ->
Reshape(.., [B, H, D, S]) with targets built from Shape(k), becomes Transpose(k, [0, 1, 3, 2])
(onnxprune/passes/reshaped_transpose.py) only when the traced targets prove it.

Oracles: the rewritten graph gives onnxruntime's outputs of the original bit for bit at two batch
sizes; every variant that is not that transpose (other order, a size read from another tensor, an
intermediate read twice, a static size that differs) keeps its graph; an attention block written in
the dynamo style then lists its heads as one group, and removing heads equals masking them.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from graphs import Builder, run_analysis, run_session, shrink_matches_mask

from onnxprune.io import count_params
from onnxprune.passes.reshaped_transpose import rewrite_reshaped_transposes
from onnxprune.pipeline import _prologue, inspect_model

INT64_MAX, INT64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def _sizes(b: Builder, x: str) -> dict[str, str]:
    """dynamo's reads of Shape(x) for a 4-D x: the leading two sizes, the third and the last."""
    shape = b.node("Shape", [x])
    return {
        "lead": b.node("Slice", [shape, b.ints([INT64_MIN]), b.ints([-2])]),
        "s": b.node("Slice", [shape, b.ints([-2]), b.ints([-1])]),
        "d": b.node("Slice", [shape, b.ints([-1]), b.ints([INT64_MAX])]),
        "b": b.node("Slice", [shape, b.ints([0]), b.ints([1])]),
        "h": b.node("Slice", [shape, b.ints([1]), b.ints([2])]),
    }


def _key_transpose(b: Builder, k: str, merged: str = "minus_one", back=("lead", "d", "s"), sizes_of=None) -> str:
    """The dynamo chain on k; `merged`: the first target's first entry (-1, or B*H by Mul); `back`: the
    second target's parts; `sizes_of`: the tensor whose Shape the second target reads (default k)."""
    own = _sizes(b, k)
    first = b.ints([-1]) if merged == "minus_one" else b.node("Mul", [own["b"], own["h"]])
    flat = b.node("Reshape", [k, b.node("Concat", [first, own["s"], own["d"]], axis=0)], name="merge")
    turned = b.node("Transpose", [flat], perm=[0, 2, 1], name="turn")
    other = _sizes(b, sizes_of) if sizes_of is not None else own
    return b.node("Reshape", [turned, b.node("Concat", [other[p] for p in back], axis=0)], name="split")


def _chain_model(**variant) -> onnx.ModelProto:
    b = Builder()
    k = b.input("k", ["B", 3, "S", 4])
    if variant.get("sizes_of") == "other":
        variant["sizes_of"] = b.input("other", ["M", 3, "T", 4])
    twice = variant.pop("twice", False)
    b.output(_key_transpose(b, k, **variant))
    if twice:
        b.output(b.node("Identity", ["turn_out"]))
    return b.model()


def _rewritten(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    new = copy.deepcopy(model)
    return new, rewrite_reshaped_transposes(new).modified


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _feeds(model: onnx.ModelProto, batch: int, seq: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    feeds = {}
    for info in model.graph.input:
        dims = [d.dim_value or (batch if i == 0 else seq) for i, d in enumerate(info.type.tensor_type.shape.dim)]
        feeds[info.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


@pytest.mark.parametrize("merged", ["minus_one", "product"])
def test_the_dynamo_key_transpose_becomes_one_transpose(merged):
    model = _chain_model(merged=merged)
    new, modified = _rewritten(model)
    assert modified
    transposes = [n for n in new.graph.node if n.op_type == "Transpose"]
    assert "Reshape" not in _ops(new) and len(transposes) == 1
    assert list(transposes[0].attribute[0].ints) == [0, 1, 3, 2] and transposes[0].input[0] == "k"
    assert transposes[0].output[0] == model.graph.output[0].name
    onnx.checker.check_model(new, full_check=True)
    for batch in (1, 3):
        feeds = _feeds(model, batch, seq=2 + batch)
        (want,), (got,) = run_session(model, feeds), run_session(new, feeds)
        assert got.shape == (batch, 3, 4, 2 + batch) and np.array_equal(got, want)
        assert np.array_equal(got, np.swapaxes(feeds["k"], 2, 3))


@pytest.mark.parametrize(
    "variant",
    [
        {"back": ("lead", "s", "d")},  # back to [B, H, S, D]: a reshape, not the transpose
        {"back": ("h", "b", "d", "s")},  # the leading sizes swapped
        {"sizes_of": "other"},  # B and S read from another tensor, whose dims are not provably k's
        {"twice": True},  # the Transpose's output has a second reader
    ],
    ids=["other-order", "swapped-lead", "other-tensor", "second-reader"],
)
def test_a_chain_that_is_not_provably_the_transpose_stays(variant):
    model = _chain_model(**variant)
    new, modified = _rewritten(model)
    assert not modified and _ops(new) == _ops(model)


def test_static_sizes_prove_the_chain_and_a_wrong_static_size_does_not():
    """After constant folding a static k's targets are constants: equal sizes prove it, others do not."""

    def model(first, second):
        b = Builder()
        k = b.input("k", [2, 3, 5, 4])
        flat = b.node("Reshape", [k, b.ints(first)])
        b.output(b.node("Reshape", [b.node("Transpose", [flat], perm=[0, 2, 1]), b.ints(second)]))
        return b.model()

    assert _rewritten(model([6, 5, 4], [2, 3, 4, 5]))[1]
    assert _rewritten(model([-1, 5, 4], [2, 3, 4, 5]))[1]
    assert not _rewritten(model([6, 5, 4], [3, 2, 4, 5]))[1]  # a reshape of the heads into the batch
    assert not _rewritten(model([6, 5, 4], [2, 3, 20, 1]))[1]  # the trailing axes merged, not swapped


# ---- end to end: an attention block as dynamo writes it -----------------------------------------------
HIDDEN, HEADS, HEAD = 16, 4, 4


def _dynamo_attention() -> onnx.ModelProto:
    """x [N, T, 16] -> q, k, v projections split into 4 heads of 4 by targets built from Shape(x),
    k^T by the dynamo chain, softmax(q k^T / 2) v, heads merged by a Shape-built target, projection."""
    b = Builder(seed=3)
    x = b.input("x", ["N", "T", HIDDEN])
    shape = b.node("Shape", [x])
    n, t = (b.node("Slice", [shape, b.ints([i]), b.ints([i + 1])]) for i in (0, 1))
    split = b.node("Concat", [n, t, b.ints([-1]), b.ints([HEAD])], axis=0)

    def heads(name):
        y = b.node("Reshape", [b.matmul(x, HIDDEN, HIDDEN, name=name), split], allowzero=1)
        return b.node("Transpose", [y], perm=[0, 2, 1, 3])

    q, k, v = heads("q"), heads("k"), heads("v")
    scores = b.node("Mul", [b.node("MatMul", [q, _key_transpose(b, k)]), b.const(np.float32(0.5))])
    context = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v])
    merged = b.node("Transpose", [context], perm=[0, 2, 1, 3])
    merged = b.node("Reshape", [merged, b.node("Concat", [n, t, b.ints([HIDDEN])], axis=0)])
    b.output(b.matmul(merged, HIDDEN, HIDDEN, name="out"))
    return b.model()


def test_a_dynamo_attention_block_prunes_whole_heads():
    original = _dynamo_attention()
    frozen = [g for g in run_analysis(original).groups if "q" in {p.node for p in g.producers}]
    assert frozen and all(g.frozen for g in frozen)
    assert any("batch axis and a matrix axis" in g.frozen for g in frozen)

    model = _prologue(copy.deepcopy(original))
    assert _ops(model).count("Reshape") == 4  # q, k, v split and the merge; the k^T chain is gone
    for batch in (1, 3):
        feeds = _feeds(original, batch, seq=4 + batch)
        assert np.array_equal(run_session(model, feeds)[0], run_session(original, feeds)[0])

    analysis, totals = inspect_model(original)
    heads = [g for g in analysis.groups if g.unit == f"head of {HEAD}"]
    assert len(heads) == 1 and heads[0].size == HEADS and len(heads[0].free) == HEADS
    assert {p.node for p in heads[0].producers} == {"q", "k", "v"}
    assert {c.node for c in heads[0].consumers} == {"out"}
    assert totals["prunable_params_share"] > 0.9

    removed = {heads[0].channels[i] for i in (0, 2)}
    new, _ = shrink_matches_mask(model, removed=removed, batch=2)
    per_head = 3 * (HIDDEN * HEAD + HEAD) + HEAD * HIDDEN  # q, k, v columns and biases, output rows
    assert count_params(model) - count_params(new) == 2 * per_head
