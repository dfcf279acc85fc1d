"""Measured latency against the latency cost model's prediction and against MACs (issue #11, item 3).

    python benchmarks/latency.py [--models mlp lenet5 resnet_digits resnet18 ddddocr_det rapidocr_det]
                                 [--targets 0.7 0.5] [--ratios 0.3 0.5 0.7] [--repeats 30] [--threads 1]
                                 [--sections uniform allocator]

For each model: the LatencyCostModel (onnxprune/budget/latency.py) is built on this machine
(onnxruntime CPU, every graph optimization on, batch 1, `--threads` intra-op threads); each group's
round-to is read from its probe curve and R = the round-to of the groups holding most MACs.

1. Prediction accuracy: magnitude pruning at uniform `--ratio` r (every group loses that share of its
   channels) with `--round-to` 1 and R; predicted = the cost model's cost(kept) / cost({}),
   measured = median run time of the pruned model / the original's (same process, interleaved,
   `--repeats` runs after 5 warm-up turns, random inputs), and MACs kept.
2. Targets: for latency=T, the smallest uniform ratio (steps of 0.01) whose kept counts, rounded up to
   multiples of R, the cost model predicts at or below T; pruned with magnitude at that ratio and
   --round-to R, then measured. Also the same ratio with --round-to 1 (channel counts as they fall).
   "gap" = measured latency ratio - MACs ratio.
3. The allocator: `prune(model, "magnitude", PruneOptions(target="latency=T"), providers="cpu")`, the
   way `onnxprune prune --target latency=T` runs (onnxprune.budget: the pipeline's own cost model,
   removals spread over the groups by damage, every group on its preferred widths, then the written
   model measured against the original by budget/latency_check.written_latency). Printed: the
   planned fraction (cost model), the measured latency ratio and met (both from the report's "target"),
   MACs ratio (report macs_after / macs_before), gap = measured - MACs, and the seconds prune() took.
   The pipeline times with onnxruntime's default intra-op threads (not `--threads`) at batch 1, and
   at the model's own input shapes: a model with symbolic spatial dims is given fixed ones first
   (RapidOCR: 640 x 640), so the pipeline times what the other sections time.

Models: the sample MLP, LeNet-5 and ResNet-style models (models/), a torchvision-style ResNet-18 graph
with random weights (benchmarks/resnet18_graph.py, 224 x 224), ddddocr's YOLO-style detector
(`common_det.onnx` in the ddddocr wheel: `pip install --no-deps ddddocr==1.6.1`, [1, 3, 416, 416])
and RapidOCR's PP-OCRv4 text detector (fetched with `pip download --no-deps rapidocr-onnxruntime==1.4.4`
into a temporary folder, timed at [1, 3, 640, 640]).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from onnxprune import PruneOptions, prune
from onnxprune.analysis import analyze
from onnxprune.budget.latency import LatencyCostModel
from onnxprune.budget.latency_check import measure_latency_ratio
from onnxprune.graph import GraphIndex
from onnxprune.io import load_model
from onnxprune.methods.base import Target
from onnxprune.methods.select import keep_count
from onnxprune.pipeline import _prologue

sys.path.insert(0, str(Path(__file__).parent))
from resnet18_graph import resnet18  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _sample(name: str):
    return lambda tmp: (load_model(str(ROOT / "models" / f"{name}.onnx")), None)


def _ddddocr_det(tmp: Path):
    import ddddocr

    return load_model(str(Path(ddddocr.__file__).parent / "common_det.onnx")), None


def _rapidocr_det(tmp: Path):
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "rapidocr-onnxruntime==1.4.4", "-d", tmp],
        check=True,
    )
    with zipfile.ZipFile(next(tmp.glob("rapidocr_onnxruntime-*.whl"))) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith("_det_infer.onnx"))
        wheel.extract(member, tmp)
    return load_model(str(tmp / member)), {"x": (1, 3, 640, 640)}


MODELS = {
    "mlp": _sample("mlp"),
    "lenet5": _sample("lenet5"),
    "resnet_digits": _sample("resnet_digits"),
    "resnet18": lambda tmp: (resnet18(), None),
    "ddddocr_det": _ddddocr_det,
    "rapidocr_det": _rapidocr_det,
}


def kept_for(analysis, ratio: float, round_to: int) -> dict[int, int]:
    """What magnitude keeps per group at a uniform --ratio and --round-to (methods/select.keep_count)."""
    options = PruneOptions(ratio=ratio, round_to=round_to)
    return {g.id: keep_count(g, ratio, options) for g in analysis.prunable_groups()}


def common_round_to(cost: LatencyCostModel, analysis) -> tuple[int, dict[int, int]]:
    """Each group's round-to, and the one of the groups holding most MACs."""
    per_group = {g.id: cost.round_to(g) for g in analysis.prunable_groups()}
    weight = Counter()
    for group in analysis.prunable_groups():
        weight[per_group[group.id]] += group.macs
    return (weight.most_common(1)[0][0] if weight else 1), per_group


def run_pruned(model, ratio: float, round_to: int, args, shapes) -> tuple[float, float, dict]:
    result = prune(model, "magnitude", PruneOptions(ratio=ratio, round_to=round_to), run_validation=False)
    measured, details = measure_latency_ratio(
        model, result.model, 1, "cpu", args.repeats, 5, threads=args.threads, shapes=shapes
    )
    macs = result.report["macs_after"] / result.report["macs_before"]
    return measured, macs, details


def _print_curve(cost: LatencyCostModel, analysis, per_group: dict[int, int]) -> None:
    """The probe curve of the group with most MACs: milliseconds per kept count (cached: no new timing)."""
    group = max(analysis.prunable_groups(), key=lambda g: g.macs)
    curve = cost.probe(group)
    if curve:
        points = " ".join(f"{k}:{1000 * t:.3f}" for k, t in curve.items())
        print(f"probe of group {group.id} ({group.size} channels, round-to {per_group[group.id]}), k:ms: {points}\n")


def search_ratio(cost: LatencyCostModel, analysis, target: float, round_to: int) -> float | None:
    for ratio in np.arange(0.0, 0.96, 0.01):
        if cost.ratio(kept_for(analysis, float(ratio), round_to)) <= target:
            return round(float(ratio), 2)
    return None


def fixed_inputs(model, shapes: dict[str, tuple] | None):
    """A copy of `model` whose inputs named in `shapes` have those fixed dims (symbolic ones replaced)."""
    if not shapes:
        return model
    fixed = type(model)()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name in shapes:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name], strict=True):
                dim.Clear()
                dim.dim_value = size
    return fixed


def bench_allocator(name: str, model, targets: list[float]) -> None:
    """Section 3: `--target latency=T` through prune(), numbers from its report."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n### {name}: the allocator (prune --target latency=T; load average {load})\n")
    print("| target | timed while planning | planned | measured latency (median) | MACs kept | gap | met | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    messages = []
    for target in targets:
        start = time.perf_counter()
        options = PruneOptions(target=Target("latency", target, batch=1))
        result = prune(model, "magnitude", options, providers="cpu", run_validation=False)
        seconds = time.perf_counter() - start
        summary = result.report["target"]
        macs = result.report["macs_after"] / result.report["macs_before"]
        measured = summary["measured_fraction"]
        planned = summary.get("planned_fraction", float("nan"))
        timed = ", ".join(f"{r['measured']:.2f}" for r in summary.get("closed_loop", []))
        print(f"| {target} | {timed} | {planned:.3f} | {measured:.3f} | {macs:.3f} | {measured - macs:+.3f} | "
              f"{'yes' if summary['met'] else 'no'} | {seconds:.0f} |", flush=True)  # fmt: skip
        messages.append(f"latency={target}: {summary['measured_message']}")
    print("\n" + "\n".join(messages), flush=True)


def bench_model(name: str, args, tmp: Path) -> None:
    raw, shapes = MODELS[name](tmp)
    raw, shapes = fixed_inputs(raw, shapes), None
    if "uniform" in args.sections:
        bench_uniform(name, raw, shapes, args)
    if "allocator" in args.sections:
        bench_allocator(name, raw, args.targets)


def bench_uniform(name: str, raw, shapes, args) -> None:
    """Sections 1 and 2: uniform ratios, the cost model's prediction against measurement."""
    model = _prologue(raw)
    index = GraphIndex.build(model)
    analysis = analyze(index)
    start = time.perf_counter()
    cost = LatencyCostModel(model, analysis, index, "cpu", batch=1, shapes=shapes, threads=args.threads)
    built = time.perf_counter() - start
    start = time.perf_counter()
    round_to, per_group = common_round_to(cost, analysis)
    probed = time.perf_counter() - start
    counts = Counter(per_group.values())
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    groups = len(analysis.prunable_groups())
    print(f"\n## {name} (load average {load} on {os.cpu_count()} cores): {groups} prunable groups, "
          f"{len(cost.layers)} timed layers, original {1000 * cost.whole:.2f} ms (fastest of 15)")  # fmt: skip
    calib = cost.calibration or {}
    rho, lam = calib.get("half_ratio", float("nan")), calib.get("tables_half_ratio", float("nan"))
    print(f"cost model built in {built:.0f} s: half-width model measured {rho:.3f}, tables {lam:.3f} -> alpha "
          f"{1000 * cost.alpha:.3f} ms, beta {cost.beta:.3f}; round-to probes {probed:.0f} s: per group "
          f"{dict(sorted(counts.items()))} -> R = {round_to}\n")  # fmt: skip
    _print_curve(cost, analysis, per_group)
    print("| --ratio | --round-to | MACs kept | predicted latency | measured (median) | measured (fastest) |")
    print("|---|---|---|---|---|---|")
    for ratio in args.ratios:
        for rt in dict.fromkeys((1, round_to)):
            predicted = cost.ratio(kept_for(analysis, ratio, rt))
            measured, macs, details = run_pruned(model, ratio, rt, args, shapes)
            print(f"| {ratio:.2f} | {rt} | {macs:.3f} | {predicted:.3f} | {measured:.3f} | "
                  f"{details['ratio_fastest']:.3f} |", flush=True)  # fmt: skip
    print("\n| target | --ratio found | --round-to | predicted | measured latency | MACs kept | gap | met |")
    print("|---|---|---|---|---|---|---|---|")
    for target in args.targets:
        ratio = search_ratio(cost, analysis, target, round_to)
        if ratio is None:
            best = cost.ratio(kept_for(analysis, 0.95, round_to))
            print(f"| {target} | unreachable (prediction at 0.95: {best:.3f}) | | | | | | no |")
            continue
        for rt in dict.fromkeys((round_to, 1)):
            predicted = cost.ratio(kept_for(analysis, ratio, rt))
            measured, macs, _ = run_pruned(model, ratio, rt, args, shapes)
            met = "yes" if measured <= target * 1.1 else "no"
            print(f"| {target} | {ratio:.2f} | {rt} | {predicted:.3f} | {measured:.3f} | {macs:.3f} | "
                  f"{measured - macs:+.3f} | {met} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sections", nargs="+", default=["uniform", "allocator"], choices=["uniform", "allocator"])
    args = parser.parse_args()
    print(f"onnxruntime CPU, batch 1, {args.threads} intra-op thread(s), repeats {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            bench_model(name, args, Path(tmp))


if __name__ == "__main__":
    main()
