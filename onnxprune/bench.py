"""onnxruntime latency of one or more models: warm-up runs, then the median of timed repeats, per
batch size, with graph optimizations on (what a deployment runs)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx

from . import runtime
from .errors import OptionError
from .feeds import fixed_batch, input_specs
from .validate import random_feeds


@dataclass(frozen=True)
class Latency:
    model: str
    batch: int
    median_ms: float
    p90_ms: float
    samples_per_s: float


def check_batch(model: onnx.ModelProto, batch: int, label: str, flag: str = "--batch-sizes") -> None:
    """An OptionError when `model`'s inputs fix a batch size other than `batch`."""
    fixed = fixed_batch(input_specs(model))
    if fixed is not None and batch != fixed:
        raise OptionError(
            f"{flag} {batch}: {label} takes batches of exactly {fixed} (its inputs fix the first axis); "
            f"time it with {flag} {fixed}"
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
    check_batch(proto, batch, label or "the model")
    shapes = {name: (batch, *dims[1:]) for name, dims in (shapes or {}).items()}
    feeds = random_feeds(proto, batch=batch, seed=0, shapes=shapes, source=model)
    sess = runtime.session(model, providers, optimize=True, threads=threads)
    for _ in range(warmup):
        runtime.run(sess, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runtime.run(sess, feeds)
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return Latency(label or str(model), batch, 1000 * median, 1000 * float(np.percentile(times, 90)), batch / median)


def table(rows: list[Latency]) -> list[str]:
    lines = [f"{'model':<40} {'batch':>5} {'median ms':>10} {'p90 ms':>8} {'samples/s':>10}"]
    for r in rows:
        lines.append(f"{r.model:<40} {r.batch:>5} {r.median_ms:>10.3f} {r.p90_ms:>8.3f} {r.samples_per_s:>10.1f}")
    return lines
