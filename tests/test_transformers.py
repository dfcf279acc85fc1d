"""Tiny transformers as `transformers` builds and torch exports them (TorchScript and dynamo exporters),
raw and after onnxruntime's transformer optimizer (tests/data/transformers, rebuilt by its build.py;
no torch needed here).

Each model has 2 layers, hidden 32, 4 heads of 8 and an FFN of 64 (Llama: 2 KV heads, a SwiGLU FFN).
`inspect` must list each layer's FFN neurons as a group (gate and up together in Llama) and, where the
rules reach them (fused Attention), the heads; pruning must give a checker-valid model equal to the
masked original, and bitwise equal to the original when nothing is removed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import run_analysis, run_session, shrink_matches_mask, shrunk_model

from onnxprune.validate import random_feeds

DATA = Path(__file__).resolve().parent / "data" / "transformers"
FFN, LAYERS = 64, 2

#: model -> (layers whose FFN must be prunable, layers whose heads must be prunable). Raw exports reach
#: heads only through run-time shape arithmetic (Shape -> Gather -> Concat -> Reshape), not followed yet;
#: raw GPT-2's Conv1D reshapes its FFN input the same way (x.view(-1, nf)).
EXPECTED = {
    "bert": (2, 0),
    "bert_fused": (2, 2),
    "vit": (2, 0),
    "vit_fused": (2, 0),
    "gpt2": (0, 0),
    "gpt2_fused": (2, 0),
    "gpt2_cache": (0, 0),
    "gpt2_cache_fused": (2, 0),
    "llama": (2, 0),
    "llama_fused": (2, 0),
    "llama_cache": (2, 0),
    "llama_cache_fused": (2, 0),
    **{
        f"{name}_dynamo{fused}": (0 if name == "gpt2" and not fused else 2, 0)
        for name in ("bert", "vit", "gpt2", "gpt2_cache", "llama", "llama_cache")
        for fused in ("", "_fused")
    },
}


def _load(name: str) -> onnx.ModelProto:
    return onnx.load(str(DATA / f"{name}.onnx"))


def test_every_shipped_model_is_listed_and_small():
    shipped = {p.stem for p in DATA.glob("*.onnx")}
    assert shipped == set(EXPECTED)
    assert all((DATA / f"{name}.onnx").stat().st_size < 500_000 for name in shipped)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ffn_neurons_and_heads_are_groups(name):
    ffn_layers, head_layers = EXPECTED[name]
    a = run_analysis(_load(name))
    ffn = [g for g in a.prunable_groups() if g.unit == "channel" and g.size == FFN and len(g.free) == FFN]
    heads = [g for g in a.prunable_groups() if g.unit.startswith("head of 8")]
    assert len(ffn) >= ffn_layers and len(heads) >= head_layers
    if name.startswith("llama"):  # SwiGLU: the gate and up columns of one neuron go together
        assert all(len(g.producers) == 2 and len(g.consumers) == 1 for g in ffn)
    assert all(g.size == 4 and len(g.consumers) == 1 for g in heads)


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if "cache" not in n))  # caches: test_heads.py
def test_pruning_matches_the_masked_original(name):
    shrink_matches_mask(_load(name), batch=2)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_keeping_everything_is_bitwise_identical(name):
    model = _load(name)
    same = shrunk_model(model, run_analysis(model), set())
    feeds = random_feeds(model, 2, 0)
    for a, b in zip(run_session(model, feeds), run_session(same, feeds), strict=True):
        assert np.array_equal(a, b)


def test_removing_heads_of_fused_attention_rewrites_num_heads():
    model = _load("bert_fused")
    a = run_analysis(model)
    heads = [g for g in a.prunable_groups() if g.unit == "head of 8"]
    removed = {heads[0].channels[1], heads[1].channels[0], heads[1].channels[3]}
    new, _ = shrink_matches_mask(model, removed=removed, batch=2)
    counts = [
        next(a.i for a in n.attribute if a.name == "num_heads") for n in new.graph.node if n.op_type == "Attention"
    ]
    assert counts == [3, 2]
    widths = sorted(tuple(t.dims) for t in new.graph.initializer if any(
        n.op_type == "Attention" and n.input[1] == t.name for n in new.graph.node))  # fmt: skip
    assert widths == [(32, 48), (32, 72)]


def test_inspect_prints_head_units(capsys):
    from onnxprune.cli import main

    main(["inspect", str(DATA / "bert_fused.onnx")])
    out = capsys.readouterr().out
    assert out.count("[units: head of 8] Attention_") == 2
