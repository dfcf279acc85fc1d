"""Golden and onnxruntime-equivalence tests of onnxruntime's fused ops (analysis/ops_fused.py and
ops_attention.py): fused activations and skip normalizations, and whole heads of Attention,
MultiHeadAttention, GroupQueryAttention and RotaryEmbedding."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import Builder, G, assert_groups, cache_shrink_matches_mask, run_analysis, shrink_matches_mask, shrunk_model
from onnx import helper

from onnxprune.graph import attributes

MS = "com.microsoft"
B, S = 3, 4
OUT = "reaches graph output '{}'"
ATTENTION = ("Attention", "MultiHeadAttention", "GroupQueryAttention")


def _builder() -> Builder:
    b = Builder()
    b.extra_opsets = [helper.make_opsetid(MS, 1)]
    return b


def _attrs(model, name: str) -> dict:
    return next(attributes(n) for n in model.graph.node if n.name == name)


def _ffn(activation: str, bias_slot: bool = True, norm: str = "SkipLayerNormalization"):
    """x -> fc1 (8->16) -> fused activation (+ bias) -> fc2 (16->8) -> skip norm with x -> output."""
    b = _builder()
    x = b.input("x", [B, S, 8])
    h = b.node("MatMul", [x, b.rand((8, 16), "w1")], name="fc1")
    extra = [b.rand((16,), "b1")] if bias_slot else []
    h = b.node(activation, [h, *extra], domain=MS, name="act", **({"alpha": 1.5} if activation == "QuickGelu" else {}))
    h = b.node("MatMul", [h, b.rand((16, 8), "w2")], name="fc2")
    gamma, beta, bias = b.const(np.linspace(0.5, 1.5, 8)), b.rand((8,), "beta"), b.rand((8,), "b2")
    ins = [h, x, gamma, beta, bias] if norm == "SkipLayerNormalization" else [h, x, gamma, bias]
    b.output(b.node(norm, ins, domain=MS, name="norm"), [B, S, 8])
    return b.model()


@pytest.mark.parametrize(
    "activation,bias", [("BiasGelu", True), ("FastGelu", True), ("FastGelu", False), ("Gelu", False),
                        ("QuickGelu", False)]
)  # fmt: skip
@pytest.mark.parametrize("norm", ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"])
def test_fused_ffn_prunes_hidden_neurons_and_the_norm_blocks_the_residual(activation, bias, norm):
    model = _ffn(activation, bias, norm)
    a = run_analysis(model)
    blocked = f"{norm} 'norm': {norm} normalizes over labeled axis [2]"
    assert_groups(a, G(["fc1"], ["fc2"], 16), G(["fc2"], [], 8, frozen=blocked))
    if bias:
        assert a.const_labels["b1"][0].tolist() == a.const_labels["w1"][1].tolist()
    shrink_matches_mask(model)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fused_matmul_is_a_layer_without_transposes(trans_b):
    b = _builder()
    x = b.input("x", [B, S, 8])
    h = b.node("FusedMatMul", [x, b.rand((8, 12), "w1")], domain=MS, name="fc1", alpha=0.5)
    w2 = b.rand((8, 12) if trans_b else (12, 8), "w2")
    h = b.node("FusedMatMul", [b.node("Relu", [h]), w2], domain=MS, name="fc2", alpha=2.0, transB=trans_b)
    b.output(b.node("MatMul", [h, b.rand((8, 4), "w3")], name="fc3"), [B, S, 4])
    model = b.model()
    a = run_analysis(model)
    if trans_b:
        frozen = "FusedMatMul 'fc2': FusedMatMul with transB has no rule"
        assert_groups(a, G(["fc1"], [], 12, frozen=frozen), G(["fc3"], [], 4, frozen=OUT.format("fc3_out")))
        return
    assert_groups(a, G(["fc1"], ["fc2"], 12), G(["fc2"], ["fc3"], 8), G(["fc3"], [], 4, frozen=OUT.format("fc3_out")))
    shrink_matches_mask(model)


def test_bias_add_joins_bias_and_skip():
    """BiasAdd(x, bias, skip) = x + bias + skip: the bias is sliced with x's channels and the skip's
    channels (another layer's) are tied to them. (onnxruntime has BiasAdd on CUDA only: no run here.)"""
    b = _builder()
    x = b.input("x", [B, S, 8])
    left = b.node("MatMul", [x, b.rand((8, 6), "wl")], name="left")
    right = b.node("MatMul", [x, b.rand((8, 6), "wr")], name="right")
    b.output(b.node("BiasAdd", [left, b.rand((6,), "bias"), right], domain=MS, name="badd"), [B, S, 6])
    a = run_analysis(b.model())
    assert_groups(a, G(["left", "right"], [], 6, frozen=OUT.format("badd_out")))
    assert a.const_labels["bias"][0].tolist() == a.const_labels["wl"][1].tolist() == a.const_labels["wr"][1].tolist()


@pytest.mark.parametrize("op", ["SimplifiedLayerNormalization", "RMSNormalization"])
def test_rms_norm_blocks_its_axes_and_passes_the_others(op):
    """RMSNorm over axes [axis:] freezes channels there and leaves channel axis 1 of a [B, C, H, W] map
    normalized over axes 2.. free. onnxruntime's contrib SimplifiedLayerNormalization sits in the ONNX
    domain, which the ONNX checker does not know: golden test only; opset 23 RMSNormalization runs."""
    b = Builder(opset=23 if op == "RMSNormalization" else 17)
    x = b.input("x", [B, 3, 4, 4])
    y = b.conv(x, 3, 6, 1, name="c1")
    y = b.node(op, [y, b.const(np.linspace(0.5, 1.5, 16).reshape(4, 4))], name="rms", axis=2)
    y = b.node(op, [y, b.const(np.linspace(0.5, 1.5, 16).reshape(4, 4))], axis=2)
    b.output(b.conv(y, 6, 4, 1, name="c2"), [B, 4, 4, 4])
    y = b.node(op, [b.node("Transpose", ["c2_out"], perm=[0, 2, 3, 1]), b.const(np.ones(4))], name="last")
    b.output(b.conv(b.node("Transpose", [y], perm=[0, 3, 1, 2]), 4, 2, 1, name="c3"), [B, 2, 4, 4])
    model = b.model(ir_version=11 if op == "RMSNormalization" else 8)
    blocked = f"{op} 'last': {op} normalizes over labeled axis [3]"
    assert_groups(
        run_analysis(model),
        G(["c1"], ["c2"], 6),
        G(["c2"], [], 4, frozen=blocked),
        G(["c3"], [], 2, frozen=OUT.format("c3_out")),
    )
    if op == "RMSNormalization":
        shrink_matches_mask(model)


# ---- attention ---------------------------------------------------------------------------------------
def _attention(qkv_sizes=None):
    """x -> Attention (packed QKV weight, 2 heads) -> proj -> output."""
    b = _builder()
    x = b.input("x", [B, S, 8])
    q, k, v = qkv_sizes or (8, 8, 8)
    ins = [x, b.rand((8, q + k + v), "wqkv"), b.rand((q + k + v,), "bqkv")]
    attrs = {"num_heads": 2, **({"qkv_hidden_sizes": [q, k, v]} if qkv_sizes else {})}
    a = b.node("Attention", ins, domain=MS, name="att", **attrs)
    b.output(b.node("MatMul", [a, b.rand((v, 8), "wo")], name="proj"), [B, S, 8])
    return b.model()


@pytest.mark.parametrize("sizes", [None, (8, 8, 12)])
def test_attention_heads_are_units_of_the_packed_projection(sizes):
    model = _attention(sizes)
    a = run_analysis(model)
    assert_groups(a, G(["att"], ["proj"], 2), G(["proj"], [], 8, frozen=OUT.format("proj_out")))
    assert a.groups[0].unit == ("head of 4 (value 6)" if sizes else "head of 4")
    q, k, v = sizes or (8, 8, 8)
    assert a.node_macs["att"] == S * 8 * (q + k + v) + S * S * (q + v)  # projection, Q K^T, weights x V
    q, k, v = sizes or (8, 8, 8)
    line = a.const_labels["wqkv"][1]
    heads = [np.unique(line[h * q // 2 : (h + 1) * q // 2]).tolist() for h in range(2)]
    assert heads[0] != heads[1] and all(len(h) == 1 for h in heads)
    assert line[q : q + k // 2].tolist() == [heads[0][0]] * (k // 2)  # head 0's key columns
    assert line[q + k : q + k + v // 2].tolist() == [heads[0][0]] * (v // 2)  # head 0's value columns
    new, _ = shrink_matches_mask(model, removed={heads[1][0]})
    assert _attrs(new, "att")["num_heads"] == 1
    if sizes:
        assert _attrs(new, "att")["qkv_hidden_sizes"] == [4, 4, 6]


def _mha(value_width: int = 12, rotary: bool = True):
    b = _builder()
    x = b.input("x", [B, S, 8])
    q = b.node("MatMul", [x, b.rand((8, 8), "wq")], name="q")
    k = b.node("MatMul", [x, b.rand((8, 8), "wk")], name="k")
    v = b.node("MatMul", [x, b.rand((8, value_width), "wv")], name="v")
    if rotary:
        pos = b.const(np.tile(np.arange(S), (B, 1)), "pos", dtype=np.int64)
        cos, sin = b.rand((16, 2), "cos"), b.rand((16, 2), "sin")
        q = b.node("RotaryEmbedding", [q, pos, cos, sin], domain=MS, name="rope_q", num_heads=2)
        k = b.node("RotaryEmbedding", [k, pos, cos, sin], domain=MS, name="rope_k")
    bias = b.rand((16 + value_width,), "bqkv")
    o = b.node("MultiHeadAttention", [q, k, v, bias], domain=MS, name="mha", num_heads=2)
    b.output(b.node("MatMul", [o, b.rand((value_width, 8), "wo")], name="proj"), [B, S, 8])
    return b.model()


@pytest.mark.parametrize("rotary", [False, True])
def test_multi_head_attention_ties_q_k_v_heads_of_three_projections(rotary):
    model = _mha(rotary=rotary)
    a = run_analysis(model)
    assert_groups(a, G(["k", "q", "v"], ["proj"], 2), G(["proj"], [], 8, frozen=OUT.format("proj_out")))
    assert next(g.unit for g in a.groups if g.prunable) == "head of 4 (value 6)"
    head = a.const_labels["wq"][1][0]
    assert a.const_labels["wk"][1][:4].tolist() == [head] * 4
    assert a.const_labels["wv"][1][:6].tolist() == [head] * 6
    assert a.const_labels["bqkv"][0].tolist() == a.const_labels["wq"][1].tolist() * 2 + a.const_labels["wv"][1].tolist()
    new, _ = shrink_matches_mask(model, removed={int(head)})
    assert _attrs(new, "mha")["num_heads"] == 1
    if rotary:
        assert _attrs(new, "rope_q")["num_heads"] == 1


def _gqa(heads: int = 4, kv_heads: int = 2, packed: bool = False, present_out: bool = False):
    """GQA with head size 8 (the CPU kernel wants a multiple of 8), batch 3, sequence 4, no past."""
    b = _builder()
    x = b.input("x", [B, S, 8])
    seqlens = b.const(np.full(B, S - 1, np.int32), "seqlens", dtype=np.int32)
    total = b.const(np.array([S], np.int32), "total", dtype=np.int32)
    if packed:
        qkv = b.node("MatMul", [x, b.rand((8, 8 * (heads + 2 * kv_heads)), "wqkv")], name="qkv")
        ins = [qkv, "", ""]
    else:
        ins = [b.node("MatMul", [x, b.rand((8, 8 * n), f"w{t}")], name=t) for t, n in
               (("q", heads), ("k", kv_heads), ("v", kv_heads))]  # fmt: skip
    outs = b.node("GroupQueryAttention", [*ins, "", "", seqlens, total], n_out=3, domain=MS, name="gqa",
                  num_heads=heads, kv_num_heads=kv_heads)  # fmt: skip
    b.output(b.node("MatMul", [outs[0], b.rand((8 * heads, 8), "wo")], name="proj"), [B, S, 8])
    if present_out:
        b.output(outs[1], [B, kv_heads, S, 8])
    return b.model()


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 1), (2, 2)])
def test_group_query_attention_removes_a_kv_head_with_its_query_heads(heads, kv_heads):
    model = _gqa(heads, kv_heads)
    a = run_analysis(model)
    assert_groups(
        a, G(["k", "q", "v"], ["proj"], kv_heads, frozen=None), G(["proj"], [], 8, frozen=OUT.format("proj_out"))
    )
    q, k = a.const_labels["wq"][1], a.const_labels["wk"][1]
    share = heads // kv_heads
    unit = f"KV head of 8 with {share} query heads" if share > 1 else "head of 8"
    assert next(g.unit for g in a.groups if g.prunable) == unit
    for j in range(kv_heads):
        assert set(q[j * share * 8 : (j + 1) * share * 8].tolist()) == {k[j * 8]}
    if kv_heads > 1:
        new, _ = shrink_matches_mask(model, removed={int(k[0])})
        assert (_attrs(new, "gqa")["num_heads"], _attrs(new, "gqa")["kv_num_heads"]) == (heads - share, kv_heads - 1)


def test_group_query_attention_packed_qkv():
    model = _gqa(4, 2, packed=True)
    a = run_analysis(model)
    assert_groups(a, G(["qkv"], ["proj"], 2), G(["proj"], [], 8, frozen=OUT.format("proj_out")))
    line = a.const_labels["wqkv"][1]
    new, _ = shrink_matches_mask(model, removed={int(line[-1])})
    assert (_attrs(new, "gqa")["num_heads"], _attrs(new, "gqa")["kv_num_heads"]) == (2, 1)


def test_group_query_attention_present_cache_shrinks_with_its_kv_heads():
    model = _gqa(present_out=True)
    a = run_analysis(model)
    group = next(g for g in a.groups if "q" in {p.node for p in g.producers})
    assert group.free == group.channels and group.size == 2
    changes = cache_shrink_matches_mask(model, {group.channels[0]}, batch=B)
    assert [(c["name"], c["axis"], c["before"], c["after"], c["kept"]) for c in changes] == [("gqa_out1", 1, 2, 1, [1])]


def test_attention_consumes_the_channels_of_its_input():
    """A layer feeding Attention directly: its channels are rows of the packed QKV weight."""
    b = _builder()
    x = b.input("x", [B, S, 8])
    h = b.node("Relu", [b.node("MatMul", [x, b.rand((8, 6), "w_in")], name="inp")])
    a = b.node("Attention", [h, b.rand((6, 24), "wqkv"), b.rand((24,), "bqkv")], domain=MS, name="att", num_heads=2)
    b.output(b.node("MatMul", [a, b.rand((8, 8), "wo")], name="proj"), [B, S, 8])
    model = b.model()
    a = run_analysis(model)
    assert_groups(a, G(["inp"], ["att"], 6), G(["att"], ["proj"], 2), G(["proj"], [], 8, frozen=OUT.format("proj_out")))
    assert a.const_labels["wqkv"][0].tolist() == a.const_labels["w_in"][1].tolist()
    shrink_matches_mask(model)


# ---- fused attention with KV caches: graph inputs and outputs shrink with their heads ---------------
P = 3  # past sequence length


def _mha_cache():
    """MultiHeadAttention with past_key/past_value graph inputs [B, 2, P, 4] and present caches as graph
    outputs [B, 2, P + S, 4]."""
    b = _builder()
    x = b.input("x", [B, S, 8])
    q, k, v = (b.node("MatMul", [x, b.rand((8, 8), f"w{t}")], name=t) for t in "qkv")
    past = [b.input(f"past_{t}", [B, 2, P, 4]) for t in ("key", "value")]
    o, present_k, present_v = b.node("MultiHeadAttention", [q, k, v, "", "", "", *past], n_out=3, domain=MS,
                                     name="mha", num_heads=2)  # fmt: skip
    b.output(b.node("MatMul", [o, b.rand((8, 8), "wo")], name="proj"), [B, S, 8])
    b.output(present_k, [B, 2, P + S, 4])
    b.output(present_v, [B, 2, P + S, 4])
    return b.model()


def _attention_cache():
    """Attention (packed QKV, 2 heads of 4) with a past graph input [2, B, 2, P, 4] and its present
    output [2, B, 2, P + S, 4]."""
    b = _builder()
    x = b.input("x", [B, S, 8])
    past = b.input("past", [2, B, 2, P, 4])
    out, present = b.node("Attention", [x, b.rand((8, 24), "wqkv"), b.rand((24,), "bqkv"), "", past], n_out=2,
                          domain=MS, name="att", num_heads=2)  # fmt: skip
    b.output(b.node("MatMul", [out, b.rand((8, 8), "wo")], name="proj"), [B, S, 8])
    b.output(present, [2, B, 2, P + S, 4])
    return b.model()


@pytest.mark.parametrize(("build", "caches", "axis"), [(_mha_cache, 4, 1), (_attention_cache, 2, 2)])
def test_fused_kv_caches_shrink_with_their_heads(build, caches, axis):
    model = build()
    a = run_analysis(model)
    heads = next(g for g in a.groups if g.prunable and g.unit.startswith("head"))
    assert heads.size == 2 and len(heads.free) == 2
    changes = cache_shrink_matches_mask(model, {heads.channels[1]}, batch=B)
    assert len(changes) == caches
    assert all(c["axis"] == axis and (c["before"], c["after"], c["kept"]) == (2, 1, [0]) for c in changes)
    node = next(n for n in shrunk_model(model, a, {heads.channels[1]}).graph.node if n.op_type in ATTENTION)
    assert attributes(node)["num_heads"] == 1


def test_a_past_cache_computed_in_the_graph_still_freezes_the_heads():
    """A past that is not the caller's (here: a constant) keeps its head count."""
    model = _mha_cache()
    past = next(i for i in model.graph.input if i.name == "past_key")
    model.graph.input.remove(past)
    model.graph.initializer.append(helper.make_tensor("past_key", 1, [B, 2, P, 4], np.zeros(B * 2 * P * 4).tolist()))
    a = run_analysis(model)
    group = next(g for g in a.groups if "q" in {p.node for p in g.producers})
    assert not group.free and "reads 'past_key'" in group.frozen
