"""Whole attention heads in raw (decomposed) and fused exports, with GQA, rotary embeddings, masks and
KV caches (onnxprune/analysis/ops_heads.py), on the tiny transformers of tests/data/transformers loaded
as the CLI loads them (Constant nodes lifted, shared shape vectors and constants unshared).

Oracles: `inspect` lists each layer's heads as one group of `head` units and each FFN as a group of
neurons; keeping everything is bitwise identical; removing heads equals zeroing, in the original, the
output-projection rows that read them (shrink equals mask); a KV cache shrinks with its heads: the
pruned model, fed the past cache at the kept heads, returns the masked original's present cache at them,
and the report lists the changed graph inputs and outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import (
    Builder,
    cache_shrink_matches_mask,
    run_analysis,
    run_session,
    shrink_matches_mask,
    shrunk_model,
)

from onnxprune.analysis.labels import reshape_ids
from onnxprune.graph import GraphIndex
from onnxprune.io import count_params, load_model
from onnxprune.pipeline import _prologue
from onnxprune.report import compose_io_changes
from onnxprune.shape_trace import trace_vector
from onnxprune.validate import random_feeds

DATA = Path(__file__).resolve().parent / "data" / "transformers"
MODELS = sorted(p.stem for p in DATA.glob("*.onnx"))
CACHED = [m for m in MODELS if "cache" in m]


def _prepared(name: str) -> onnx.ModelProto:
    return _prologue(load_model(DATA / f"{name}.onnx"))


def _heads(analysis):
    return [g for g in analysis.prunable_groups() if "head of 8" in g.unit]


@pytest.mark.parametrize("name", MODELS)
def test_every_layer_has_a_head_group_and_an_ffn_group(name):
    a = run_analysis(_prepared(name))
    heads = _heads(a)
    ffn = [g for g in a.prunable_groups() if g.unit == "channel" and g.size == 64 and len(g.free) == 64]
    assert len(heads) == 2 and len(ffn) == 2
    kv = name.startswith("llama")  # 2 KV heads, each read by 2 of the 4 query heads
    for g in heads:
        assert g.unit == ("KV head of 8 with 2 query heads" if kv else "head of 8")
        assert g.size == (2 if kv else 4) and len(g.free) == g.size and len(g.consumers) == 1


@pytest.mark.parametrize("name", MODELS)
def test_keeping_every_head_is_bitwise_identical(name):
    model = _prepared(name)
    same = shrunk_model(model, run_analysis(model), set())
    feeds = random_feeds(model, 2, 0)
    original = load_model(DATA / f"{name}.onnx")
    for a, b in zip(run_session(original, feeds), run_session(same, feeds), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", [m for m in MODELS if m not in CACHED])
def test_removing_heads_matches_the_masked_original(name):
    model = _prepared(name)
    a = run_analysis(model)
    removed = {g.channels[0] for g in _heads(a)} | {a.prunable_groups()[-1].channels[0]}
    new, _ = shrink_matches_mask(model, removed=removed, batch=2)
    per_head = 3 * 8 * 32 + 8 * 32  # q, k, v columns and output-projection rows (no bias counted)
    assert count_params(model) - count_params(new) >= 2 * (per_head if not name.startswith("llama") else 4 * 8 * 32)


@pytest.mark.parametrize("name", CACHED)
def test_kv_cache_inputs_and_outputs_shrink_with_their_heads(name):
    model = _prepared(name)
    a = run_analysis(model)
    removed = {g.channels[1] for g in _heads(a)}
    changes = cache_shrink_matches_mask(model, removed)
    kv = 2 if name.startswith("llama") else 4
    assert sorted(c["name"] for c in changes) == sorted(
        f"{kind}.{layer}.{part}" for kind in ("past", "present") for layer in (0, 1) for part in ("key", "value")
    )
    assert all(c["before"] == kv and c["after"] == kv - (1 if kv == 2 else 1) and c["axis"] == 1 for c in changes)


def test_prune_reports_the_changed_cache_inputs_and_outputs(tmp_path):
    from onnxprune import prune
    from onnxprune.report import summary_lines

    result = prune(str(DATA / "gpt2_cache.onnx"), method="magnitude")
    changed = {c["name"]: (c["before"], c["after"]) for c in result.report["changed_io"]}
    assert changed == {
        f"{k}.{layer}.{part}": (4, 2) for k in ("past", "present") for layer in (0, 1) for part in ("key", "value")
    }
    assert result.report["validation"]["outputs"]["present.0.key"]["max_abs"] == 0  # layer 0 reads no pruned layer
    assert any(line.startswith("changed    graph input 'past.0.key'") for line in summary_lines(result.report))


def test_io_changes_of_two_steps_compose():
    first = [{"name": "past", "kind": "input", "axis": 1, "before": 4, "after": 3, "kept": [0, 2, 3]}]
    then = [{"name": "past", "kind": "input", "axis": 1, "before": 3, "after": 2, "kept": [0, 2]}]
    assert compose_io_changes(first, then) == [
        {"name": "past", "kind": "input", "axis": 1, "before": 4, "after": 2, "kept": [0, 3]}
    ]


def test_cli_inspect_lists_heads_of_a_raw_export(capsys):
    from onnxprune.cli import main

    main(["inspect", str(DATA / "bert.onnx")])
    out = capsys.readouterr().out
    assert out.count("[units: head of 8]") == 2


# ---- the rules on tiny graphs ----------------------------------------------------------------------
def _attention(b: Builder, heads: int, d: int, dv: int, shared_kv: int | None = None):
    """x [N, T, 8] -> multi-head attention with q/k of size d and v of size dv per head; `shared_kv`:
    that many KV heads, repeated (Unsqueeze -> Expand -> Reshape) for the query heads (GQA)."""
    kv = shared_kv or heads
    x = b.input("x", ["N", 5, 8])
    q = b.node("Transpose", [b.node("Reshape", [b.matmul(x, 8, heads * d, name="q"), b.ints([0, 5, heads, d])])],
               perm=[0, 2, 1, 3])  # fmt: skip
    k = b.node("Transpose", [b.node("Reshape", [b.matmul(x, 8, kv * d, name="k"), b.ints([0, 5, kv, d])])],
               perm=[0, 2, 3, 1])  # fmt: skip
    v = b.node("Transpose", [b.node("Reshape", [b.matmul(x, 8, kv * dv, name="v"), b.ints([0, 5, kv, dv])])],
               perm=[0, 2, 1, 3])  # fmt: skip
    if shared_kv:
        rep = heads // kv
        k = b.node("Reshape", [b.node("Expand", [b.node("Unsqueeze", [k, b.ints([2])]), b.ints([1, kv, rep, d, 5])]),
                               b.ints([0, heads, d, 5])])  # fmt: skip
        v = b.node("Reshape", [b.node("Expand", [b.node("Unsqueeze", [v, b.ints([2])]), b.ints([1, kv, rep, 5, dv])]),
                               b.ints([0, heads, 5, dv])])  # fmt: skip
    scores = b.node("Softmax", [b.node("Mul", [b.node("MatMul", [q, k]), b.const(np.float32(0.3))])], axis=-1)
    out = b.node("Transpose", [b.node("MatMul", [scores, v])], perm=[0, 2, 1, 3])
    b.output(b.matmul(b.node("Reshape", [out, b.ints([0, 5, heads * dv])]), heads * dv, 8, name="o"))
    return b.model()


def test_heads_with_a_value_size_of_their_own_are_units():
    model = _attention(Builder(), heads=3, d=4, dv=6)
    a = run_analysis(model)
    (group,) = _heads_any(a)
    assert group.unit == "head of 4 (value 6)" and group.size == 3
    shrink_matches_mask(model, removed={group.channels[1]})


def test_grouped_query_heads_go_with_their_kv_head():
    model = _attention(Builder(), heads=4, d=2, dv=2, shared_kv=2)
    a = run_analysis(model)
    (group,) = _heads_any(a)
    assert group.unit == "KV head of 2 with 2 query heads" and group.size == 2
    new, _ = shrink_matches_mask(model, removed={group.channels[0]})
    q = next(t for t in new.graph.initializer if t.dims[:1] == [8] and t.dims[1] == 4)  # 2 query heads of 2 left
    assert q is not None


def _heads_any(analysis):
    return [g for g in analysis.prunable_groups() if "head of" in g.unit]


def test_a_channel_shuffle_still_ties_positions_across_groups():
    b = Builder()
    x = b.input("x", ["N", 4, 3, 3])
    y = b.conv(x, 4, 6, name="c1")
    y = b.node("Reshape", [b.node("Transpose", [b.node("Reshape", [y, b.ints([0, 2, 3, 3, 3])])], perm=[0, 2, 1, 3, 4]),
                           b.ints([0, 6, 3, 3])])  # fmt: skip
    b.output(b.conv(y, 6, 2, name="c2"))
    a = run_analysis(b.model())
    group = next(g for g in a.groups if any(p.node == "c1" for p in g.producers))
    assert group.unit == "channel" and group.size == 3 and group.prunable


def test_a_decomposed_group_norm_prunes_whole_groups():
    """Reshape [N, 6, 3, 3] -> [N, 3, 18], normalize over axis 2 (per group): a group is one unit."""
    b = Builder()
    x = b.input("x", ["N", 4, 3, 3])
    y = b.node("Reshape", [b.conv(x, 4, 6, name="c1"), b.ints([0, 3, 18])])
    mean = b.node("ReduceMean", [y], axes=[2])
    y = b.node("Reshape", [b.node("Sub", [y, mean]), b.ints([0, 6, 3, 3])])
    b.output(b.conv(y, 6, 2, name="c2"))
    model = b.model(ir_version=8)
    a = run_analysis(model)
    group = next(g for g in a.groups if any(p.node == "c1" for p in g.producers))
    assert group.size == 3 and group.prunable and group.unit == "group of 2 channels"
    shrink_matches_mask(model, removed={group.channels[2]})


def test_reshape_labels_set_aside_shared_symbolic_trailing_axes():
    ids = np.array([5, 7]).reshape(1, 2, 1, 1, 1)
    out = reshape_ids(ids, ("B", 2, 2, "S", 8), ("B", 4, "S", 8))
    assert out.reshape(-1).tolist() == [5, 5, 7, 7] and out.shape == (1, 4, 1, 1)


def test_torch_expand_minus_one_pattern_is_traced():
    """Where(Equal(s, ConstantOfShape(Shape(s)) * -1), 1, s) of torch's expand: the entries of s."""
    b = Builder()
    x = b.input("x", ["N", 4])
    size = b.node("Unsqueeze", [b.node("Gather", [b.node("Shape", [x]), b.const(np.int64(1))]), b.ints([0])])
    s = b.node("Concat", [b.ints([2]), size], axis=0)
    ones = b.node("ConstantOfShape", [b.node("Shape", [s])], value=onnx.helper.make_tensor("v", 7, [1], [1]))
    picked = b.node("Where", [b.node("Equal", [s, b.node("Mul", [ones, b.ints([-1])])]), ones, s])
    b.output(b.node("Expand", [x, picked]))
    index = GraphIndex.build(b.model())
    entries = trace_vector(index, picked)
    assert [e.origin for e in entries] == ["const", "shape"] and entries[0].value == 2 and entries[1].value == 4


def test_a_shape_vector_shared_by_two_layers_gets_a_copy_per_reader():
    """dynamo shares one Concat-built target between the repeat_kv Expands of every layer; after the
    prologue each Expand reads its own Concat (and its own constants), so each layer's KV-head count
    can be rewritten on its own."""
    from onnxprune.passes.unshare import unshare_shape_vectors

    model = load_model(DATA / "llama_dynamo.onnx")
    producer = {out: n.op_type for n in model.graph.node for out in n.output}
    shared = [n.name for n in model.graph.node if n.op_type == "Expand" and producer.get(n.input[1]) == "Concat"]
    targets = lambda m: {n.input[1] for n in m.graph.node if n.name in shared}  # noqa: E731
    assert len(shared) == 4 and len(targets(model)) == 1  # 2 layers x (key, value)
    assert unshare_shape_vectors(model).modified and len(targets(model)) == 4


def test_a_dim_onnx_inference_names_itself_is_recovered():
    """BERT's merged head output, Reshape(x, [*input_shape, -1]) on symbolic batch and sequence, is
    ('unk__..', 'unk__..', 'unk__..') for ONNX inference: onnxruntime's symbolic tool gives 32."""
    model = load_model(DATA / "bert.onnx")
    index = GraphIndex.build(model)
    merged = next(n.output[0] for n in model.graph.node if n.name.endswith("attention/self/Reshape_3"))
    assert index.shape(merged)[-1] == 32


def test_latency_of_a_cache_model_feeds_the_pruned_caches_their_kept_heads():
    """The pruned model's past caches are smaller: the latency check feeds them sliced (as validation
    does); with the original's feeds unchanged onnxruntime refuses the run."""
    import itertools

    from onnxprune import prune
    from onnxprune.budget.latency_check import measure_latency_ratio
    from onnxprune.pipeline import _kept

    original = str(DATA / "gpt2_cache.onnx")
    result = prune(original, method="magnitude")
    kept = _kept(result.report["changed_io"])
    assert kept and all(name.startswith(("past.", "present.")) for name in kept)
    ticks = itertools.count()
    ratio, details = measure_latency_ratio(
        original, result.model, batch=2, repeats=3, warmup=1, kept=kept, clock=lambda: float(next(ticks))
    )
    assert ratio == 1.0 and details["repeats"] == 3
    with pytest.raises(Exception, match="(?i)dim|shape"):
        measure_latency_ratio(original, result.model, batch=2, repeats=1, warmup=0)
