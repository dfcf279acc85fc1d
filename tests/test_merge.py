"""merge (methods/merge.py): data-free neuron merging.

Oracles: merging two exactly equal neurons leaves the outputs unchanged (Gemm chain, Conv chain, across a
Flatten, across a residual group) while deleting one of them without surgery changes them; the normalized variant
merges a neuron into a positive multiple of itself exactly; the saliency and the surgery of a 3-neuron layer
match a hand computation; groups that cannot be merged are skipped with a reason.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from graphs import Builder

from onnxprune import PruneOptions, prune, runtime
from onnxprune.cli import cli
from onnxprune.errors import OptionError
from onnxprune.io import make_tensor, tensor_array
from onnxprune.validate import random_feeds

MODELS = Path(__file__).resolve().parent.parent / "models"


def _copy_slice(model: onnx.ModelProto, name: str, axis: int, src: int, dst: int, scale: float = 1.0) -> None:
    """Initializer `name`: index dst along `axis` := scale * index src."""
    tensor = next(t for t in model.graph.initializer if t.name == name)
    value = np.array(tensor_array(tensor))
    moved = np.moveaxis(value, axis, 0)
    moved[dst] = scale * moved[src]
    tensor.CopyFrom(make_tensor(value, name))


def _merge(model: onnx.ModelProto, ratio, include: str | None = None, **extra):
    options = PruneOptions(ratio=ratio, include=include, extra=extra)
    return prune(copy.deepcopy(model), "merge", options, run_validation=False)


def _max_change(model: onnx.ModelProto, pruned: onnx.ModelProto) -> float:
    feeds = random_feeds(model, batch=4, seed=3)
    before = runtime.run(runtime.session(model), feeds)
    after = runtime.run(runtime.session(pruned), feeds)
    return max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(before, after, strict=True))


def _check_twin_merge(model, ratio: float, include: str, twins: set[int]) -> None:
    """One channel removed, one of the twins; outputs kept to float32 rounding; plain deletion changes them."""
    merged = _merge(model, ratio, include)
    assert len(merged.plans[0].removed) == 1 and merged.plans[0].removed <= twins
    assert _max_change(model, merged.model) < 1e-5
    deleted = _merge(model, ratio, include, no_surgery=True)
    assert deleted.plans[0].removed == merged.plans[0].removed
    assert _max_change(model, deleted.model) > 1e-3


# ---- the surgery identity ---------------------------------------------------------------------------------


def _gemm_chain():
    b = Builder(seed=11)
    x = b.input("x", [4, 6])
    h = b.relu(b.gemm(x, 6, 5, trans_b=1, name="fc1"))
    b.output(b.gemm(h, 5, 3, name="fc2"))
    return b.model()


def test_twins_in_a_gemm_chain():
    model = _gemm_chain()
    _copy_slice(model, "fc1.w", 0, 1, 3)
    _copy_slice(model, "fc1.b", 0, 1, 3)
    _check_twin_merge(model, 0.2, "fc1", {1, 3})


def test_twins_in_a_conv_chain():
    b = Builder(seed=12)
    x = b.input("x", [2, 3, 6, 6])
    h = b.relu(b.conv(x, 3, 4, k=3, name="c1"))
    b.output(b.conv(h, 4, 5, k=3, name="c2"))
    model = b.model()
    _copy_slice(model, "c1.w", 0, 0, 2)
    _copy_slice(model, "c1.b", 0, 0, 2)
    _check_twin_merge(model, 0.25, "c1", {0, 2})


def test_twins_across_a_flatten():
    """The consumer reads each channel at H*W positions; the surgery adds the blocks position by position."""
    b = Builder(seed=13)
    x = b.input("x", [2, 2, 4, 4])
    h = b.relu(b.conv(x, 2, 4, k=3, name="c1"))
    flat = b.node("Flatten", [b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])], axis=1)
    b.output(b.gemm(flat, 16, 3, trans_b=1, name="fc"))
    model = b.model()
    _copy_slice(model, "c1.w", 0, 3, 1)
    _copy_slice(model, "c1.b", 0, 3, 1)
    _check_twin_merge(model, 0.25, "c1", {1, 3})


def test_twins_across_a_residual_group():
    """z = relu(conv_b(y) + y), y = relu(conv_a(x)): conv_a and conv_b are one group; twins in both."""
    b = Builder(seed=14)
    x = b.input("x", [2, 3, 5, 5])
    y = b.relu(b.conv(x, 3, 4, k=3, name="ca"))
    z = b.relu(b.node("Add", [b.conv(y, 4, 4, k=3, name="cb"), y]))
    b.output(b.conv(z, 4, 2, k=1, name="cc"))
    model = b.model()
    for name in ("ca.w", "ca.b", "cb.w", "cb.b"):
        _copy_slice(model, name, 0, 2, 0)
    result = _merge(model, 0.25, "ca")
    group = next(g for g in result.report["groups"] if "ca" in g["producers"])
    assert sorted(group["producers"]) == ["ca", "cb"] and group["kept"] == 3
    _check_twin_merge(model, 0.25, "ca", {0, 2})


def test_normalized_merge_absorbs_a_scaled_twin():
    """ReLU is positively homogeneous: relu(2.5 z) = 2.5 relu(z), so a_i += (|W_j|/|W_i|) a_j is exact."""
    model = _gemm_chain()
    _copy_slice(model, "fc1.w", 0, 1, 3, scale=2.5)
    _copy_slice(model, "fc1.b", 0, 1, 3, scale=2.5)
    normalized = _merge(model, 0.2, "fc1")
    assert normalized.plans[0].removed <= {1, 3} and _max_change(model, normalized.model) < 1e-5
    assert normalized.report["groups"][0]["notes"]["normalized"] is True
    plain = _merge(model, 0.2, "fc1", merge_normalize=False)
    assert plain.report["groups"][0]["notes"]["normalized"] is False
    assert _max_change(model, plain.model) > 1e-3


def test_frozen_channel_absorbs_but_stays():
    """Channels 0 and 1 reach a graph output (frozen): a free twin of channel 0 merges into it."""
    b = Builder(seed=15)
    x = b.input("x", [3, 6])
    h = b.relu(b.gemm(x, 6, 5, trans_b=1, name="fc1"))
    b.output(b.gemm(h, 5, 3, name="fc2"))
    b.output(b.node("Slice", [h, b.ints([0]), b.ints([2]), b.ints([1])]))
    model = b.model()
    _copy_slice(model, "fc1.w", 0, 0, 4)
    _copy_slice(model, "fc1.b", 0, 0, 4)
    _copy_slice(model, "fc1.w", 0, 0, 1)  # a frozen twin: may not be deleted
    _copy_slice(model, "fc1.b", 0, 0, 1)
    result = _merge(model, 0.2, "fc1")
    assert result.plans[0].removed == {4}
    assert _max_change(model, result.model) < 1e-5


# ---- the saliency and the surgery by hand --------------------------------------------------------------------

W_IN = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 3.0]])  # fc1 rows (transB=1): the weight-sets, bias 0
A_OUT = np.array([[1.0, 1.0], [2.0, 0.0], [0.5, 0.5]])  # fc2 rows (transB=0): the outgoing weights a_i


def _hand_model():
    b = Builder()
    x = b.input("x", [4, 2])
    h = b.relu(b.node("Gemm", [x, b.const(W_IN, "fc1.w"), b.const(np.zeros(3), "fc1.b")], name="fc1", transB=1))
    b.output(b.node("Gemm", [h, b.const(A_OUT, "fc2.w"), b.const(np.zeros(2), "fc2.b")], name="fc2"))
    return b.model()


def test_saliency_and_surgery_by_hand():
    """s(i, j) = <a_j^2> ||W_i - W_j||^2: s(1,0) = 1*1, s(0,1) = 2*1, s(1,2) = 0.25*5, s(0,2) = 0.25*10, s(2,0) = 10,
    s(2,1) = 2*5; the least is s(1,0) = 1: delete neuron 0, a_1 = [2, 0] + [1, 1] = [3, 1]."""
    result = _merge(_hand_model(), 1 / 3, merge_normalize=False)
    assert result.plans[0].removed == {0}
    assert result.report["steps"][0]["saliency_curves"][0] == pytest.approx([1.0])
    np.testing.assert_allclose(result.plans[0].updates["fc2.w"][1], [3.0, 1.0])


def test_normalized_saliency_and_surgery_by_hand():
    """Unit rows u0 = [1,0], u1 = [1,1]/sqrt2, u2 = [0,1]; a'_j = |W_j| a_j with mean squares 1, 4, 2.25;
    s(1,0) = 1 * (2 - sqrt2) is the least; the paper's surgery a_1 += (|W_0|/|W_1|) a_0 = [2, 0] + [1, 1]/sqrt2."""
    result = _merge(_hand_model(), 1 / 3, merge_scale="paper")
    assert result.plans[0].removed == {0}
    assert result.report["steps"][0]["saliency_curves"][0] == pytest.approx([2 - np.sqrt(2)])
    np.testing.assert_allclose(result.plans[0].updates["fc2.w"][1], [2 + 1 / np.sqrt(2), 1 / np.sqrt(2)], rtol=1e-6)
    assert result.report["groups"][0]["notes"]["surgery_scale"] == "paper"


def test_least_squares_surgery_by_hand():
    """Same pair (same saliency); alpha = argmin ||W_0 - alpha W_1||^2 = <W_0, W_1> / |W_1|^2 = 1/2 (the default):
    a_1 = [2, 0] + [1, 1] / 2, and the bound <a_0^2> ||W_0 - W_1/2||^2 = 1 * 0.5 is below the paper's 2 - sqrt2."""
    alphas = np.linspace(0.0, 2.0, 2001)
    w0, w1 = W_IN[0], W_IN[1]
    residual = ((w0[None, :] - alphas[:, None] * w1[None, :]) ** 2).sum(1)
    alpha = alphas[int(np.argmin(residual))]  # brute force over alpha
    assert alpha == pytest.approx(0.5) and residual.min() == pytest.approx(0.5)
    assert residual.min() < 2 - np.sqrt(2)
    result = _merge(_hand_model(), 1 / 3)
    assert result.plans[0].removed == {0}
    assert result.report["steps"][0]["saliency_curves"][0] == pytest.approx([2 - np.sqrt(2)])
    np.testing.assert_allclose(result.plans[0].updates["fc2.w"][1], A_OUT[1] + alpha * A_OUT[0], rtol=1e-6)
    assert result.report["groups"][0]["notes"]["surgery_scale"] == "lsq"
    # the next layer moves by at most <a_0^2> ||W_0 - alpha W_1||^2 ||x||^2 (per output, sum over the batch)
    feeds = random_feeds(_hand_model(), batch=64, seed=5)
    before = runtime.run(runtime.session(_hand_model()), feeds)[0]
    after = runtime.run(runtime.session(result.model), feeds)[0]
    x = next(iter(feeds.values())).astype(np.float64)
    bound = np.sum(A_OUT[0] ** 2) * residual.min() * (np.sum(x**2, axis=1) + 1.0)  # x~ = [x; 1]
    assert np.all(np.sum((after - before) ** 2, axis=1) <= bound + 1e-5)


def test_least_squares_surgery_of_an_opposite_neuron_is_a_deletion():
    """cos(W_0, W_1) < 0: the least-squares alpha is 0, so the survivor's outgoing weights stay as they were."""
    w, a = np.array([[1.0, 0.2], [-1.0, 0.1]]), A_OUT[:2]
    b = Builder()
    x = b.input("x", [4, 2])
    h = b.relu(b.node("Gemm", [x, b.const(w, "fc1.w"), b.const(np.zeros(2), "fc1.b")], name="fc1", transB=1))
    b.output(b.node("Gemm", [h, b.const(a, "fc2.w"), b.const(np.zeros(2), "fc2.b")], name="fc2"))
    model = b.model()
    lsq = _merge(model, 0.5)
    (gone,) = lsq.plans[0].removed
    kept = 1 - gone
    assert lsq.plans[0].removed == _merge(model, 0.5, no_surgery=True).plans[0].removed
    np.testing.assert_array_equal(lsq.plans[0].updates.get("fc2.w", a)[kept], a[kept])
    paper = _merge(model, 0.5, merge_scale="paper")
    scale = np.linalg.norm(w[gone]) / np.linalg.norm(w[kept])
    np.testing.assert_allclose(paper.plans[0].updates["fc2.w"][kept], a[kept] + scale * a[gone], rtol=1e-6)


def test_unknown_merge_scale_is_an_option_error():
    with pytest.raises(OptionError, match="--merge-scale"):
        _merge(_hand_model(), 1 / 3, merge_scale="median")


def test_greedy_of_the_method_equals_brute_force():
    """Through the whole method: the removal order on a 9-neuron layer is the brute-force greedy's."""
    b = Builder(seed=16)
    x = b.input("x", [4, 5])
    h = b.relu(b.gemm(x, 5, 9, trans_b=1, name="fc1"))
    b.output(b.gemm(h, 9, 4, name="fc2"))
    model = b.model()
    weights = {t.name: tensor_array(t).astype(np.float64) for t in model.graph.initializer}
    w = np.concatenate([weights["fc1.w"], weights["fc1.b"][:, None]], axis=1)
    a = weights["fc2.w"].copy()
    alive, expected = list(range(9)), []
    for _ in range(5):
        j, i = min(((j, i) for j in alive for i in alive if i != j), key=lambda p: _s(w, a, *p))
        expected.append(_s(w, a, j, i))
        a[i] += a[j]
        alive.remove(j)
    result = _merge(model, 5 / 9, "fc1", merge_normalize=False)
    assert result.report["steps"][0]["saliency_curves"][0] == pytest.approx(expected, rel=1e-6)
    assert result.plans[0].removed == set(range(9)) - set(alive)


def _s(w: np.ndarray, a: np.ndarray, j: int, i: int) -> float:
    return float(np.mean(a[j] ** 2) * np.sum((w[i] - w[j]) ** 2))


# ---- auto ratio, options, reports ---------------------------------------------------------------------------


def _near_twins_model(pairs: int = 6, distinct: int = 10):
    """`distinct` random neurons, `pairs` of them with a near-copy (noise 1e-4): a saliency curve with a knee."""
    rng = np.random.default_rng(17)
    n = distinct + pairs
    w = rng.standard_normal((n, 8))
    w[distinct:] = w[:pairs] + 1e-4 * rng.standard_normal((pairs, 8))
    b = Builder()
    x = b.input("x", [4, 8])
    h = b.relu(b.node("Gemm", [x, b.const(w, "fc1.w"), b.const(np.zeros(n), "fc1.b")], name="fc1", transB=1))
    b.output(b.node("Gemm", [h, b.const(rng.standard_normal((n, 3)), "fc2.w")], name="fc2"))
    return b.model()


def test_auto_ratio_stops_at_the_knee():
    result = _merge(_near_twins_model(), "auto")
    note = result.report["groups"][0]["notes"]
    assert note["removed"] == 6 and note["auto_ratio"] == pytest.approx(6 / 16, abs=1e-3)
    assert note["curve_steps"] == 14  # --max-ratio 0.9 of 16 channels
    assert _max_change(_near_twins_model(), result.model) < 1e-3


def test_max_ratio_caps_auto():
    result = _merge(_near_twins_model(), "auto", max_ratio=0.25)
    assert result.report["groups"][0]["notes"]["removed"] <= 4
    with pytest.raises(OptionError, match="--max-ratio"):
        _merge(_near_twins_model(), "auto", max_ratio=1.5)


def test_single_channel_frozen_and_consumerless_groups_are_skipped():
    b = Builder(seed=18)
    x = b.input("x", [3, 6])
    one = b.relu(b.gemm(x, 6, 1, trans_b=1, name="narrow"))
    h = b.gemm(one, 1, 4, trans_b=1, name="frozen")
    b.output(h)
    b.output(b.gemm(b.relu(h), 4, 2, name="head"))
    result = _merge(b.model(), 0.5)
    notes = {g["producers"][0]: g.get("notes", {}) for g in result.report["groups"]}
    assert "fewer than 2 channels" in notes["narrow"]["skipped"]
    assert "frozen" in notes["frozen"]["skipped"]
    assert result.report["params_after"] == result.report["params_before"]
    # two projections contracted with each other (q k^T of one head, no value): no weight reads them
    b = Builder(seed=19)
    x = b.input("x", [3, 6])
    scores = b.node("MatMul", [b.gemm(x, 6, 4, name="q"), b.node("Transpose", [b.gemm(x, 6, 4, name="k")])])
    b.output(scores)
    contracted = _merge(b.model(), 0.5)
    skipped = [g["notes"]["skipped"] for g in contracted.report["groups"] if "skipped" in g.get("notes", {})]
    assert any("feed no weights" in s for s in skipped)


def test_gelu_group_is_marked_bound_not_guaranteed():
    b = Builder(seed=19)
    x = b.input("x", [3, 6])
    h = b.gemm(x, 6, 8, trans_b=1, name="fc1")
    erf = b.node("Erf", [b.node("Div", [h, b.const(np.float32(np.sqrt(2.0)))])])
    gelu = b.node("Mul", [b.node("Mul", [h, b.node("Add", [erf, b.const(np.float32(1.0))])]), b.const(np.float32(0.5))])
    b.output(b.gemm(gelu, 8, 2, name="fc2"))
    note = _merge(b.model(), 0.5).report["groups"][0]["notes"]
    assert note["activation"] == "gelu" and note["bound"] == "bound not guaranteed"
    assert note["normalized"] is False and note["removed"] == 4


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.onnx")), ids=lambda p: p.stem)
def test_every_sample_model_merges(path):
    result = prune(path, "merge", PruneOptions(ratio=0.5), validate_samples=8)
    onnx.checker.check_model(result.model, full_check=True)
    assert all(np.isfinite(m["max_abs"]) for m in result.report["validation"]["outputs"].values())
    assert result.report["params_after"] <= result.report["params_before"]


def test_cli_auto_with_plots(tmp_path):
    out, report, plots = tmp_path / "m.onnx", tmp_path / "r.json", tmp_path / "plots"
    args = [
        "prune",
        str(MODELS / "mlp.onnx"),
        "-o",
        str(out),
        "--method",
        "merge",
        "--ratio",
        "auto",
        "--plot",
        str(plots),
    ]
    result = CliRunner().invoke(
        cli, [*args, "--report", str(report), "-q", "--no-merge-normalize", "--max-ratio", "0.8"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    curves = data["steps"][0]["saliency_curves"]
    assert set(curves) == {"0", "1"} and all(len(c) <= 200 for c in curves.values())
    assert data["options"]["merge_normalize"] is False and data["options"]["max_ratio"] == 0.8
    assert sorted(p.name for p in plots.iterdir()) == ["group0_fc1_Gemm.png", "group1_fc2_Gemm.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in plots.iterdir())


def test_plot_without_matplotlib_is_an_option_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(OptionError, match=re.escape("pip install")):
        _merge(_gemm_chain(), 0.2, plot=str(tmp_path))


def test_least_squares_surgery_across_a_prelu_group():
    """PRelu slopes add to D, so the scale comes from the unit weight-sets: a scaled twin with the same slope still
    merges exactly (alpha = |W_j| / |W_i|); a twin with another slope is not chosen while an exact one exists."""
    rng = np.random.default_rng(21)
    w = rng.standard_normal((5, 4))
    w[3] = 2.0 * w[1]
    slope = np.array([0.1, 0.2, 0.3, 0.2, 0.5])
    b = Builder()
    x = b.input("x", [4, 4])
    z = b.node("Gemm", [x, b.const(w, "fc1.w"), b.const(np.zeros(5), "fc1.b")], name="fc1", transB=1)
    h = b.node("PRelu", [z, b.const(slope, "slope")], name="prelu")
    b.output(b.node("Gemm", [h, b.const(rng.standard_normal((5, 3)), "fc2.w")], name="fc2"))
    model = b.model()
    merged = _merge(model, 0.2, "fc1")
    assert merged.plans[0].removed <= {1, 3} and len(merged.plans[0].removed) == 1
    note = merged.report["groups"][0]["notes"]
    assert note["normalized"] is True and note["surgery_scale"] == "lsq"
    assert _max_change(model, merged.model) < 1e-5
