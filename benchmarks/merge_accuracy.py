"""Test accuracy vs fraction of hidden neurons/channels removed: data-free merging against the baselines.

Models: models/mlp.onnx (LeNet-300-100) and models/lenet5.onnx, trained on sklearn digits; accuracy on the 797
test samples of models/digits_test.npz. For LeNet-5 two settings: the fully connected layers only (as in
Srinivas & Babu 2015; --include Gemm) and every layer. Columns:

- merge: neuron merging with the normalized saliency and the least-squares surgery scale (default),
- merge-paper: --merge-scale paper (the paper's surgery scale |W_j|/|W_i|), merge-plain: --no-merge-normalize,
- no-surgery: merge's choice of channel, deleted without adding its outgoing weights (the paper's ablation),
- magnitude: L2 norm of the channel's incoming weights, random: mean over 3 seeds.

The ratio is the fraction removed from every prunable group. Then where --ratio auto lands. No data is used by any
method; runs in about 15 s on 2 cores.

    python benchmarks/merge_accuracy.py
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

from onnxprune import PruneOptions, prune

ROOT = Path(__file__).resolve().parent.parent
TEST = str(ROOT / "models" / "digits_test.npz")
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SETTINGS = (
    ("MLP 300-100", "mlp.onnx", None),
    ("LeNet-5, FC layers", "lenet5.onnx", "Gemm"),
    ("LeNet-5, all layers", "lenet5.onnx", None),
)
COLUMNS = (
    ("merge", "merge", {}),
    ("merge-paper", "merge", {"merge_scale": "paper"}),
    ("merge-plain", "merge", {"merge_normalize": False}),
    ("no-surgery", "merge", {"no_surgery": True}),
    ("magnitude", "magnitude", {}),
    ("random", "random", {}),
)
RANDOM_SEEDS = (0, 1, 2)


def accuracy(model: Path, method: str, ratio, include: str | None, extra: dict, seed: int = 0) -> tuple[float, dict]:
    options = PruneOptions(ratio=ratio, include=include, seed=seed, extra=dict(extra))
    result = prune(str(model), method, options, validation_data=TEST, validate_samples=797, providers="cpu")
    return result.report["validation"]["accuracy_after"], result.report


def table(name: str, model: Path, include: str | None) -> tuple[list[str], dict[str, list[float]]]:
    base = accuracy(model, "magnitude", 0.0, include, {})[0]
    lines = [f"### {name} (unpruned test accuracy {base:.4f})", ""]
    lines.append("| removed | " + " | ".join(c for c, _, _ in COLUMNS) + " |")
    lines.append("|---|" + "---|" * len(COLUMNS))
    scores: dict[str, list[float]] = {c: [] for c, _, _ in COLUMNS}
    for ratio in RATIOS:
        row = []
        for column, method, extra in COLUMNS:
            seeds = RANDOM_SEEDS if method == "random" else (0,)
            value = float(np.mean([accuracy(model, method, ratio, include, extra, s)[0] for s in seeds]))
            scores[column].append(value)
            row.append(value)
        best = max(row)
        cells = [f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in row]
        lines.append(f"| {ratio:.0%} | " + " | ".join(cells) + " |")
    means = [float(np.mean(scores[c])) for c, _, _ in COLUMNS]
    lines.append("| mean | " + " | ".join(f"{v:.4f}" for v in means) + " |")
    return lines, scores


def auto_line(name: str, model: Path, include: str | None) -> str:
    acc, report = accuracy(model, "merge", "auto", include, {})
    parts = []
    for row in report["groups"]:
        note = row.get("notes", {})
        if "auto_ratio" in note:
            parts.append(f"{row['producers'][0]} {row['size'] - row['kept']}/{row['size']}")
    removed = sum(r["size"] - r["kept"] for r in report["groups"] if "auto_ratio" in r.get("notes", {}))
    total = sum(r["size"] for r in report["groups"] if "auto_ratio" in r.get("notes", {}))
    params = f"{report['params_before']:,} -> {report['params_after']:,} params"
    return f"| {name} | {removed}/{total} ({removed / total:.0%}) | {', '.join(parts)} | {params} | {acc:.4f} |"


def main() -> int:
    logging.disable(logging.WARNING)
    start = time.perf_counter()
    lines = ["## Data-free neuron merging: test accuracy vs channels removed (no data, no retraining)", ""]
    summary = []
    for name, file, include in SETTINGS:
        block, scores = table(name, ROOT / "models" / file, include)
        lines += block + [""]
        for column in ("merge", "merge-paper"):
            wins = sum(m >= g for m, g in zip(scores[column], scores["magnitude"], strict=True))
            summary.append(f"- {name}: {column} >= magnitude at {wins}/{len(RATIOS)} ratios")
    lines += summary + ["", "### Where --ratio auto lands (knee of each group's saliency curve, --max-ratio 0.9)", ""]
    lines += ["| model | hidden removed | per group | params | test accuracy |", "|---|---|---|---|---|"]
    for name, file, include in SETTINGS:
        lines.append(auto_line(name, ROOT / "models" / file, include))
    lines += ["", f"({time.perf_counter() - start:.0f} s)"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
