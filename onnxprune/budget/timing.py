"""How the latency cost model and the latency check time models with onnxruntime.

A `Timer` is any callable `timer([(model, feeds), ...]) -> [seconds, ...]` giving the typical time
of one run of each model on its feeds; the cost model only calls that, so tests inject a fake one
and never time anything. `OrtTimer` is the real one: a session per model with every graph
optimization on (what a user deploys) and the chosen providers; the models take turns run by run
(`warmup` untimed turns, then `repeats` timed ones; the median per model), so that a change of the
machine's load during a measurement hits every model of the call alike. `interleaved` is that loop;
its `clock` is injectable for tests.

Which statistic of the repeats: other processes only ever add time to a run, and on a busy machine
they add a lot, unevenly: on this project's shared 2-core machine (load 8), twelve sessions of the
same 512->352 3x3 conv timed in turns had medians from 2.1 to 6.1 ms but minima of 1.9-2.1 ms. The
tables therefore use a low quantile (`quantile`, default 0 = the fastest run: the time the runtime
itself needs); a latency *check* reports the median (what a user sees) and the minimum.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from .. import runtime
from ..errors import OptionError

Run = tuple[onnx.ModelProto, dict[str, np.ndarray]]
Timer = Callable[[Sequence[Run]], list[float]]


def check_providers(providers: str | Sequence[str]) -> list[str]:
    """Execution providers by name (a list) or by choice ("auto", "cpu", "cuda"), each one usable
    here; anything else is one OptionError saying what is available."""
    if isinstance(providers, str):
        return runtime.resolve_providers(providers)
    providers = list(providers)
    available = ort.get_available_providers()
    for name in providers:
        if name not in available:
            raise OptionError(
                f"providers: '{name}' is not available in this onnxruntime {ort.__version__} "
                f"(available: {', '.join(available)}); choose one of those, or 'cpu'/'auto'"
            )
    if not providers:
        raise OptionError("providers: the list is empty; give at least one, e.g. CPUExecutionProvider")
    if "CUDAExecutionProvider" in providers and runtime.resolve_providers("auto")[0] != "CUDAExecutionProvider":
        raise OptionError(
            "providers: CUDAExecutionProvider is installed but cannot run here (CUDA libraries missing); "
            "use CPUExecutionProvider"
        )
    return providers


def session(model: onnx.ModelProto | str, providers: Sequence[str], threads: int = 0) -> ort.InferenceSession:
    """The session a deployment would run: every graph optimization on."""
    return runtime.session(model, list(providers), optimize=True, threads=threads)


@dataclass(frozen=True)
class OrtTimer:
    """The `quantile` of `repeats` interleaved runs' seconds after `warmup` (0: the fastest), onnxruntime
    with all optimizations on; at most `chunk` sessions are open at once (more are timed chunk by chunk).

    Chunks take random members (seeded), not consecutive ones: a change of the machine's load between
    two chunks then scatters over the widths instead of drawing a step at a chunk border (on the MLP,
    consecutive chunks made widths 209-224 of a probe look 35% faster than 161-208)."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    repeats: int = 15
    warmup: int = 3
    threads: int = 0
    chunk: int = 16
    quantile: float = 0.0

    def __call__(self, runs: Sequence[Run]) -> list[float]:
        seconds = np.zeros(len(runs))
        order = np.random.default_rng(0).permutation(len(runs))  # chunks of random members: see below
        for start in range(0, len(runs), self.chunk):
            part = order[start : start + self.chunk]
            sessions = [session(runs[i][0], self.providers, self.threads) for i in part]
            times = interleaved(sessions, [runs[i][1] for i in part], self.repeats, self.warmup)
            seconds[part] = [float(np.quantile(t, self.quantile)) for t in times]
        return seconds.tolist()


def interleaved(
    sessions: Sequence[ort.InferenceSession],
    feeds: dict[str, np.ndarray] | Sequence[dict[str, np.ndarray]],
    repeats: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
) -> list[list[float]]:
    """Per session, the seconds of `repeats` runs, the sessions taking turns; `warmup` untimed turns
    first. `feeds`: one dict for every session, or one per session."""
    per_session = [feeds] * len(sessions) if isinstance(feeds, dict) else list(feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for turn in range(warmup + repeats):
        for i, sess in enumerate(sessions):
            start = clock()
            runtime.run(sess, per_session[i])
            if turn >= warmup:
                times[i].append(clock() - start)
    return times
