"""merge_greedy: the Gram-matrix distances, the incremental greedy against a brute-force search, the knee rule."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.methods import merge_greedy
from onnxprune.methods.merge_greedy import greedy, knee, squared_distances, subsample, undo


def _brute_force(w, a, steps, deletable=None, survivor_ok=None):
    """The greedy spelled out: every ordered pair (survivor i, deleted j) of live rows, every step."""
    n = len(w)
    deletable = np.ones(n, bool) if deletable is None else deletable
    survivor_ok = np.ones(n, bool) if survivor_ok is None else survivor_ok
    a, alive, order = a.copy(), set(range(n)), []
    for _ in range(steps):
        pairs = [(j, i) for j in alive if deletable[j] for i in alive if i != j and survivor_ok[i]]
        if not pairs:
            break
        scores = [np.mean(a[j] ** 2) * np.sum((w[i] - w[j]) ** 2) for j, i in pairs]
        j, i = pairs[int(np.argmin(scores))]
        order.append((j, i, min(scores)))
        a[i] += a[j]
        alive.discard(j)
    return order, a


def _engine(w, a, steps, deletable=None, survivor_ok=None, normalize=False):
    n = len(w)
    outgoing = a.copy()
    found = greedy(
        squared_distances(w, normalize),
        outgoing,
        np.full(n, a.shape[1]),
        np.ones(n, bool) if deletable is None else deletable,
        np.ones(n, bool) if survivor_ok is None else survivor_ok,
        steps,
    )
    return [(s.deleted, s.survivor, s.saliency) for s in found], outgoing


@pytest.mark.parametrize("seed", range(6))
def test_greedy_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 12))
    w, a = rng.standard_normal((n, 5)), rng.standard_normal((n, 3))
    expected, a_expected = _brute_force(w, a, n - 1)
    found, a_found = _engine(w, a, n - 1)
    assert [s[:2] for s in found] == [s[:2] for s in expected]
    np.testing.assert_allclose([s[2] for s in found], [s[2] for s in expected], rtol=1e-9)
    np.testing.assert_allclose(a_found, a_expected, rtol=1e-12)


def test_greedy_respects_frozen_rows_and_survivors():
    rng = np.random.default_rng(7)
    w, a = rng.standard_normal((9, 4)), rng.standard_normal((9, 2))
    deletable = np.array([1, 1, 0, 1, 1, 0, 1, 1, 1], bool)
    survivor_ok = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1], bool)
    expected, _ = _brute_force(w, a, 8, deletable, survivor_ok)
    found, _ = _engine(w, a, 8, deletable, survivor_ok)
    assert [s[:2] for s in found] == [s[:2] for s in expected]
    assert len(found) == 7  # the two frozen rows stay


def test_normalized_greedy_is_the_greedy_of_unit_rows_with_weighted_outgoing():
    """s'(i, j) = <(|W_j| a_j)^2> ||W_i/|W_i| - W_j/|W_j|||^2: the brute force on (W/|W|, |W| a)."""
    rng = np.random.default_rng(8)
    w, a = rng.standard_normal((8, 6)), rng.standard_normal((8, 3))
    norms = np.linalg.norm(w, axis=1)
    expected, _ = _brute_force(w / norms[:, None], a * norms[:, None], 6)
    found, _ = _engine(w, a * norms[:, None], 6, normalize=True)
    assert [s[:2] for s in found] == [s[:2] for s in expected]
    np.testing.assert_allclose([s[2] for s in found], [s[2] for s in expected], rtol=1e-9)


def test_squared_distances_match_direct_differences():
    rng = np.random.default_rng(9)
    w = rng.standard_normal((7, 11))
    direct = ((w[:, None, :] - w[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(squared_distances(w), direct, atol=1e-10)
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    np.testing.assert_allclose(squared_distances(w, True), ((unit[:, None] - unit[None]) ** 2).sum(-1), atol=1e-12)
    w[3] = 0.0  # a zero row stays a zero row (distance 1 to every unit row)
    assert squared_distances(w, True)[3, 0] == pytest.approx(1.0)


def test_float32_gram_of_large_groups(monkeypatch):
    """Above FLOAT32_GRAM_WORK the Gram of float32 rows comes from float32 BLAS: D errs by < 1e-6 (|W_i|^2 + |W_j|^2)
    and a pair of twins stays the closest pair."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((64, 700)).astype(np.float32)
    w[9] = w[4]
    exact = squared_distances(w.astype(np.float64))
    monkeypatch.setattr(merge_greedy, "FLOAT32_GRAM_WORK", 0)
    fast = squared_distances(w)
    sq = (w.astype(np.float64) ** 2).sum(1)
    assert np.abs(fast - exact).max() <= 1e-6 * (sq[:, None] + sq[None, :]).max()
    np.fill_diagonal(fast, np.inf)
    assert np.unravel_index(np.argmin(fast), fast.shape) in ((4, 9), (9, 4))


def test_undo_takes_back_the_last_surgeries():
    rng = np.random.default_rng(10)
    w, a = rng.standard_normal((6, 3)), rng.standard_normal((6, 4))
    all_steps = greedy(squared_distances(w), a.copy(), np.full(6, 4), np.ones(6, bool), np.ones(6, bool), 5)
    outgoing = a.copy()
    greedy(squared_distances(w), outgoing, np.full(6, 4), np.ones(6, bool), np.ones(6, bool), 5)
    undo(outgoing, all_steps[2:])
    _, first_two = _engine(w, a, 2)
    np.testing.assert_allclose(outgoing, first_two, atol=1e-12)


def test_knee_of_a_flat_then_steep_curve():
    flat, steep = [1e-3] * 7, [0.5, 2.0, 8.0, 30.0]
    assert knee(flat + steep) == 7
    assert knee([0.0] * 5) == 5  # every step free
    assert knee([]) == 0
    assert knee([5.0, 5.0, 5.0]) == 0  # no point below the chord: no knee


def test_knee_sees_a_jump_by_orders_of_magnitude():
    """Six near-duplicates (1e-8) then ordinary steps spanning 0.2..30: the linear view alone would go on."""
    curve = [1e-8] * 6 + [0.2, 0.9, 2.2, 3.9, 4.0, 13.3, 13.4, 30.1]
    assert knee(curve) == 6


def test_subsample_keeps_ends():
    values = list(range(1000))
    picked = subsample(values, 200)
    assert len(picked) <= 200 and picked[0] == 0 and picked[-1] == 999
    assert subsample([1, 2, 3]) == [1, 2, 3]


def test_least_squares_scale_is_the_brute_force_greedy_and_tightens_the_bound():
    """With scale(i, j) = max(0, <u_i, u_j>) the engine is the brute force on (W/|W|, |W| a) with a'_i += alpha a'_j;
    each step's bound <a'_j^2> ||u_j - alpha u_i||^2 (alpha from a grid search) is at most the step's saliency
    <a'_j^2> ||u_i - u_j||^2 and at most the deletion bound <a'_j^2>."""
    rng = np.random.default_rng(12)
    w, a = rng.standard_normal((9, 5)), rng.standard_normal((9, 3))
    units = w / np.linalg.norm(w, axis=1)[:, None]
    outgoing = a * np.linalg.norm(w, axis=1)[:, None]
    engine_out = outgoing.copy()
    steps = greedy(
        squared_distances(w, True), engine_out, np.full(9, 3), np.ones(9, bool), np.ones(9, bool), 7,
        scale=lambda i, j, distance: max(0.0, float(units[i] @ units[j])),
    )  # fmt: skip
    brute, alive, grid = outgoing.copy(), set(range(9)), np.linspace(0.0, 1.0, 10001)
    for step in steps:
        pairs = [(j, i) for j in alive for i in alive if i != j]
        scores = [np.mean(brute[j] ** 2) * np.sum((units[i] - units[j]) ** 2) for j, i in pairs]
        j, i = pairs[int(np.argmin(scores))]
        assert (step.deleted, step.survivor) == (j, i) and step.saliency == pytest.approx(min(scores), rel=1e-9)
        residuals = ((units[j][None, :] - grid[:, None] * units[i][None, :]) ** 2).sum(1)
        assert step.scale == pytest.approx(grid[int(np.argmin(residuals))], abs=1e-4)
        bound = np.mean(brute[j] ** 2) * residuals.min()
        assert bound <= step.saliency + 1e-12 and bound <= np.mean(brute[j] ** 2) + 1e-12
        brute[i] += step.scale * brute[j]
        alive.discard(j)
    np.testing.assert_allclose(engine_out, brute, rtol=1e-12, atol=1e-12)
    assert all(s.scale < 1.0 for s in steps)  # distinct rows: never the paper's alpha' = 1
    undo(engine_out, steps)
    np.testing.assert_allclose(engine_out, outgoing, rtol=1e-12, atol=1e-12)


def test_cosine_from_the_unit_distance():
    """merge.py's scale without PRelu slopes: max(0, 1 - D_ij / 2) = max(0, cos_ij) for the D the engine holds."""
    from onnxprune.methods.merge import cosine_from_distance

    rng = np.random.default_rng(13)
    w = rng.standard_normal((6, 4))
    units = w / np.linalg.norm(w, axis=1)[:, None]
    dist = squared_distances(w, True)
    for i in range(6):
        for j in range(6):
            expected = max(0.0, float(units[i] @ units[j]))
            assert cosine_from_distance(i, j, dist[i, j]) == pytest.approx(expected, abs=1e-12)
