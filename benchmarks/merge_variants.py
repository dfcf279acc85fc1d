"""Variants of data-free merging tried for issue 3, on a numpy replica of the merge_accuracy.py settings.

The replica runs the MLP and LeNet-5 forward passes in numpy and prunes group by group in topological order, like
the pipeline: for every hidden group with weight-sets W (rows [incoming weights, bias]) and outgoing weights A
(the consumer's weights reading each channel), a strategy picks the channels to remove and rewrites A (and, for
"span", W). Its magnitude, merge-paper and merge (lsq) rows equal the pipeline's columns in RESULTS_merge.md,
which checks the replica. Test data only scores the result; no strategy sees it. One row per strategy:
ratios 10%..90%, mean, and how many ratios reach magnitude's accuracy.

Strategies (s = <a_j^2>-weighted bound, u = W / |W|, c_ij = cos(W_i, W_j)):
- merge-paper: pair by the normalized saliency s' = m_j |W_j|^2 2 (1 - c_ij), a_i += |W_j|/|W_i| a_j (the paper);
- merge (lsq): same pair, a_i += max(0, c_ij) |W_j|/|W_i| a_j (the default);
- merge-plain: s = m_j ||W_i - W_j||^2, a_i += a_j;
- rank-by-lsq: pair by the least-squares bound m_j |W_j|^2 (1 - c_ij^2) itself;
- delete-action: merge-paper, but delete j instead when m_j |W_j|^2 is below the best merge;
- magnitude+lsq: remove the channels magnitude removes, each merged by least squares into its best survivor;
- span: merge i and j into one new direction u in span(u_i, u_j) that minimizes m_i (1 - <u_i,u>^2) +
  m_j (1 - <u_j,u>^2) (the survivor's incoming weights change too; its own outgoing term counts);
- conv magnitude + FC merge (LeNet-5 all layers only): magnitude on the conv groups, merge (lsq) on the FC groups.

First, LeNet-5's conv1 filters: magnitude, the data-free deletion bound and the measured contribution (test data),
and single-group runs (conv1 or conv2 alone) with magnitude, that bound, merge-plain and merge.

    python benchmarks/merge_variants.py      (about 30 s)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

MODELS = Path(__file__).resolve().parent.parent / "models"
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# (producer weight, producer bias, consumer weight, positions per channel in the consumer)
LENET = (("conv1.weight", "conv1.bias", "conv2.weight", 1), ("conv2.weight", "conv2.bias", "fc1.weight", 4),
         ("fc1.weight", "fc1.bias", "fc2.weight", 1), ("fc2.weight", "fc2.bias", "fc3.weight", 1))  # fmt: skip
MLP = (("fc1.weight", "fc1.bias", "fc2.weight", 1), ("fc2.weight", "fc2.bias", "fc3.weight", 1))
SETTINGS = (("MLP 300-100", "mlp.onnx", MLP), ("LeNet-5, FC layers", "lenet5.onnx", LENET[2:]),
            ("LeNet-5, all layers", "lenet5.onnx", LENET))  # fmt: skip


def load(name: str) -> dict[str, np.ndarray]:
    model = onnx.load(str(MODELS / name))
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}


def _conv(x, w, b):
    """3x3 convolution, stride 1, padding 1 (LeNet-5's)."""
    n, _, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, i : i + h, j : j + wd] for i in range(3) for j in range(3)], 2)
    return np.einsum("ncKhw,ocK->nohw", cols, w.reshape(w.shape[0], w.shape[1], 9)) + b[None, :, None, None]


def _pool(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max((3, 5))


def forward(p: dict, data) -> np.ndarray:
    relu = lambda z: np.maximum(z, 0.0)  # noqa: E731
    if "conv1.weight" in p:
        h = _pool(relu(_conv(data["image"], p["conv1.weight"], p["conv1.bias"])))
        h = _pool(relu(_conv(h, p["conv2.weight"], p["conv2.bias"]))).reshape(len(h), -1)
    else:
        h = data["pixels"]
    h = relu(h @ p["fc1.weight"].T + p["fc1.bias"])
    h = relu(h @ p["fc2.weight"].T + p["fc2.bias"])
    return h @ p["fc3.weight"].T + p["fc3.bias"]


def get(p, layer):
    """W [n, d+1] (incoming, bias) and A [n, m] (outgoing) of a group."""
    w, b, c, per = layer
    n = p[w].shape[0]
    weights = np.concatenate([p[w].reshape(n, -1), p[b][:, None]], 1)
    cw = p[c]
    out = cw.transpose(1, 0, 2, 3).reshape(n, -1) if cw.ndim == 4 else cw.reshape(len(cw), n, per).transpose(1, 0, 2)
    return weights, out.reshape(n, -1)


def put(p, layer, keep, weights, outgoing):
    w, b, c, per = layer
    n, o = p[w].shape[0], p[c].shape[0]
    p[w] = weights[:, :-1].reshape(p[w].shape)[keep]
    p[b] = weights[keep, -1]
    if p[c].ndim == 4:
        p[c] = outgoing.reshape(n, o, *p[c].shape[2:]).transpose(1, 0, 2, 3)[:, keep]
    else:
        p[c] = outgoing.reshape(n, o, per).transpose(1, 0, 2)[:, keep].reshape(o, -1)


def _geometry(w):
    gram = w @ w.T
    sq = np.diag(gram).copy()
    norms = np.sqrt(sq)
    cos = gram / np.maximum(np.outer(norms, norms), 1e-300)
    return gram, sq, norms, cos


def pair_greedy(select: str, scale: str, delete: bool = False):
    """Greedy of the paper's form: delete j into survivor i, a_i += alpha a_j; `select` names the bound that ranks."""

    def strategy(w, a, k, original):
        n = len(w)
        gram, sq, norms, cos = _geometry(w)
        alpha = {"one": np.ones((n, n)), "norm": norms[None, :] / np.maximum(norms[:, None], 1e-300),
                 "lsq": np.maximum(gram / np.maximum(sq[:, None], 1e-300), 0.0)}  # fmt: skip
        rank = alpha[select]
        dist = np.maximum(sq[None, :] - 2 * rank * gram + rank**2 * sq[:, None], 0.0)  # ||W_j - alpha W_i||^2
        np.fill_diagonal(dist, np.inf)
        alive = np.ones(n, bool)
        for _ in range(k):
            mean_sq = (a**2).mean(1)
            d = np.where(alive[:, None] & alive[None, :], dist, np.inf) * mean_sq[None, :]
            i, j = np.unravel_index(np.argmin(d), d.shape)
            if delete:
                drop = np.where(alive, mean_sq * sq, np.inf)
                if drop.min() < d[i, j]:
                    alive[int(np.argmin(drop))] = False
                    continue
            alive[j] = False
            a[i] += alpha[scale][i, j] * a[j]
        return np.flatnonzero(alive), w, a

    return strategy


def magnitude(w, a, k, original):
    return np.sort(np.argsort(np.linalg.norm(original, axis=1), kind="stable")[k:]), w, a


def magnitude_lsq(w, a, k, original):
    keep, _, _ = magnitude(w, a, k, original)
    gram, sq, _, _ = _geometry(w)
    alpha = np.maximum(gram / np.maximum(sq[:, None], 1e-300), 0.0)
    for j in sorted(set(range(len(w))) - set(keep.tolist())):
        residual = sq[j] - alpha[keep, j] * gram[keep, j]  # ||W_j - alpha W_i||^2 at the least-squares alpha
        i = keep[int(np.argmin(residual))]
        a[i] += alpha[i, j] * a[j]
    return keep, w, a


def span(w, a, k, original):
    """Merge i and j into the unit u in span(u_i, u_j) maximizing m_i <u_i,u>^2 + m_j <u_j,u>^2 (m: mean of a'^2)."""
    norms = np.linalg.norm(w, axis=1)
    units, weighted, alive = w / norms[:, None], a * norms[:, None], np.ones(len(w), bool)
    for _ in range(k):
        m = (weighted**2).mean(1)
        cos = units @ units.T
        mi, mj = m[:, None], m[None, :]
        cost = ((mi + mj) - np.sqrt((mi - mj) ** 2 + 4 * mi * mj * cos**2)) / 2
        cost = np.where(cos > 0, cost, np.minimum(mi, mj))
        cost[~(alive[:, None] & alive[None, :])] = np.inf
        np.fill_diagonal(cost, np.inf)
        i, j = np.unravel_index(np.argmin(cost), cost.shape)
        i, j = (j, i) if m[j] > m[i] else (i, j)
        alive[j] = False
        if cos[i, j] <= 0:
            continue
        basis = np.stack([units[i], units[j]])
        values, vectors = np.linalg.eigh(basis.T @ np.diag([m[i], m[j]]) @ basis)
        u = vectors[:, -1] * np.sign(vectors[:, -1] @ units[i])
        weighted[i] = max(0.0, u @ units[i]) * weighted[i] + max(0.0, u @ units[j]) * weighted[j]
        units[i] = u
    return np.flatnonzero(alive), units * norms[:, None], weighted / norms[:, None]


def accuracy(model: str, layers, strategies, ratio: float, data) -> float:
    p, original = load(model), load(model)
    for layer, strategy in zip(layers, strategies, strict=True):
        w, a = get(p, layer)
        k = min(int(np.floor(ratio * len(w) + 1e-9)), len(w) - 1)
        keep, w, a = strategy(w, a.copy(), k, get(original, layer)[0])
        put(p, layer, keep, w, a)
    return float((forward(p, data).argmax(1) == data["labels"]).mean())


STRATEGIES = (
    ("magnitude", magnitude),
    ("merge-paper", pair_greedy("norm", "norm")),
    ("merge (lsq)", pair_greedy("norm", "lsq")),
    ("merge-plain", pair_greedy("one", "one")),
    ("rank-by-lsq", pair_greedy("lsq", "lsq")),
    ("delete-action", pair_greedy("norm", "norm", delete=True)),
    ("magnitude+lsq", magnitude_lsq),
    ("span", span),
)


def deletion_bound(w, a, k, original):
    """Delete the k channels of least data-free deletion bound |a_j|^2 |W_j|^2, no surgery."""
    return np.sort(np.argsort((a**2).sum(1) * (w**2).sum(1), kind="stable")[k:]), w, a


def single_group(layer: int, strategy, k: int, data) -> float:
    """LeNet-5 with only group `layer` pruned by k channels."""
    p = load("lenet5.onnx")
    w, a = get(p, LENET[layer])
    keep, w, a = strategy(w, a.copy(), k, w)
    put(p, LENET[layer], keep, w, a)
    return float((forward(p, data).argmax(1) == data["labels"]).mean())


def conv_facts(data) -> list[str]:
    """conv1 per filter: data-free quantities against the measured contribution |a_j| rms(h_j); one-group runs."""
    p = load("lenet5.onnx")
    w, a = get(p, LENET[0])
    h = np.maximum(_conv(data["image"], p["conv1.weight"], p["conv1.bias"]), 0.0)
    rows = {
        "norm(W_j) (magnitude)": np.linalg.norm(w, axis=1),
        "norm(a_j) norm(W_j) (deletion bound)": np.linalg.norm(a, axis=1) * np.linalg.norm(w, axis=1),
        "norm(a_j) rms(h_j) (measured on test data)": np.linalg.norm(a, axis=1) * np.sqrt((h**2).mean((0, 2, 3))),
    }
    lines = ["### conv1 filters", "", "| quantity | " + " | ".join(f"f{j}" for j in range(len(w))) + " |"]
    lines.append("|---|" + "---|" * len(w))
    lines += [f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |" for name, values in rows.items()]
    runs = (("conv1, 2 of 6 removed", 0, 2), ("conv2, 8 of 16 removed", 1, 8))
    strategies = (
        ("magnitude", magnitude),
        ("deletion bound", deletion_bound),
        ("merge-plain", pair_greedy("one", "one")),
        ("merge (lsq)", pair_greedy("norm", "lsq")),
    )
    lines += ["", "| one group pruned | " + " | ".join(n for n, _ in strategies) + " |", "|---|" + "---|" * 4]
    for label, layer, k in runs:
        cells = " | ".join(f"{single_group(layer, f, k, data):.4f}" for _, f in strategies)
        lines.append(f"| {label} | {cells} |")
    return lines


def main() -> int:
    data = dict(np.load(MODELS / "digits_test.npz"))
    data = {key: value.astype(np.float64) if key != "labels" else value for key, value in data.items()}
    print("\n".join(conv_facts(data)) + "\n")
    for name, model, layers in SETTINGS:
        rows = [(label, [strategy] * len(layers)) for label, strategy in STRATEGIES]
        if len(layers) == 4:
            rows.append(("conv magnitude + FC merge", [magnitude, magnitude, *[pair_greedy("norm", "lsq")] * 2]))
        print(f"### {name}\n\n| strategy | " + " | ".join(f"{r:.0%}" for r in RATIOS) + " | mean | >= magnitude |")
        print("|---|" + "---|" * (len(RATIOS) + 2))
        reference = None
        for label, strategies in rows:
            scores = [accuracy(model, layers, strategies, r, data) for r in RATIOS]
            reference = scores if reference is None else reference
            wins = sum(s >= m for s, m in zip(scores, reference, strict=True))
            cells = " | ".join(f"{s:.4f}" for s in scores)
            print(f"| {label} | {cells} | {np.mean(scores):.4f} | {wins}/{len(RATIOS)} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
