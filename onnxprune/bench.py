"""onnxruntime latency of one or more models: warm-up runs, then the median of timed repeats, per
batch size, with graph optimizations on (what a deployment runs)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from . import progress, runtime
from .errors import OptionError
from .feeds import fixed_batch, input_specs
from .validate import random_feeds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Latency:
    model: str
    batch: int
    median_ms: float
    p90_ms: float
    samples_per_s: float


def check_batches(model: onnx.ModelProto, sizes: list[int], label: str = "", flag: str = "--batch-sizes") -> None:
    """Refuse batch sizes `model` cannot take: its inputs fix the first axis to another size."""
    fixed = fixed_batch(input_specs(model))
    wrong = [b for b in sizes if fixed is not None and b != fixed]
    if wrong:
        raise OptionError(
            f"{flag} {','.join(map(str, wrong))}: {label or 'the model'} takes batches of exactly {fixed} "
            f"(its inputs fix the first axis); time it with {flag} {fixed}"
        )


def measure(
    model: onnx.ModelProto | str,
    batch: int,
    providers: list[str],
    warmup: int = 3,
    repeats: int = 20,
    threads: int = 0,
    label: str = "",
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> Latency:
    """Median and p90 latency of `model` at `batch`; `shapes` (--input-shape) sizes symbolic dims, its
    first axis replaced by `batch`."""
    proto = onnx.load(model, load_external_data=False) if isinstance(model, str) else model
    check_batches(proto, [batch], label)
    shapes = {name: (batch, *dims[1:]) for name, dims in (shapes or {}).items()}
    feeds = random_feeds(proto, batch=batch, seed=0, shapes=shapes, source=model)
    with progress.stage(log, f"bench {label or 'model'}", batch=batch, warmup=warmup, repeats=repeats) as stage:
        sess = runtime.session(model, providers, optimize=True, threads=threads)
        for _ in range(warmup):
            runtime.run(sess, feeds)
        times = []
        for _ in progress.bar(range(repeats), desc=f"bench {label} batch {batch}", unit="run"):
            start = time.perf_counter()
            runtime.run(sess, feeds)
            times.append(time.perf_counter() - start)
        median = float(np.median(times))
        stage.sizes["median_ms"] = round(1000 * median, 3)
    return Latency(label or str(model), batch, 1000 * median, 1000 * float(np.percentile(times, 90)), batch / median)


def distinct_labels(paths: list[str | Path]) -> list[str]:
    """The shortest trailing part of each path that tells it from the others ('a/m.onnx' and
    'b/m.onnx' rather than 'm.onnx' twice); the same path given twice gets '#2' on its second mention."""
    parts = [Path(p).parts or (str(p),) for p in paths]
    labels = []
    for mine in parts:
        depth = 1
        while depth < len(mine) and any(
            other != mine and other[-depth:] == mine[-depth:] for other in parts
        ):  # fmt: skip
            depth += 1
        labels.append(str(Path(*mine[-depth:])))
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label}#{seen[label]}"
    return labels


def speedups(rows: list[Latency]) -> list[float | None]:
    """Per row: the first model's median latency at the same batch size over this row's (>1: faster
    than the first model, measured in the same run); None where the first model has no such row."""
    first = rows[0].model if rows else None
    base = {r.batch: r.median_ms for r in rows if r.model == first}
    return [base[r.batch] / r.median_ms if r.batch in base and r.median_ms > 0 else None for r in rows]


def table(rows: list[Latency]) -> list[str]:
    """The bench table: one row per model and batch size, with the speed-up against the first model."""
    width = max([len("model"), *(len(r.model) for r in rows)])
    lines = [f"{'model':<{width}} {'batch':>5} {'median ms':>10} {'p90 ms':>8} {'samples/s':>10} {'speed-up':>8}"]
    for r, ratio in zip(rows, speedups(rows), strict=True):
        faster = "-" if ratio is None else f"{ratio:.2f}x"
        timing = f"{r.median_ms:>10.3f} {r.p90_ms:>8.3f} {r.samples_per_s:>10.1f}"
        lines.append(f"{r.model:<{width}} {r.batch:>5} {timing} {faster:>8}")
    if rows:
        lines.append(f"speed-up: median latency of {rows[0].model} / the row's, same batch size, same run")
    return lines


def as_json(rows: list[Latency]) -> list[dict]:
    return [{**asdict(r), "speedup": ratio} for r, ratio in zip(rows, speedups(rows), strict=True)]
