"""A latency cost model measured with onnxruntime on this machine (ZipLM-style layer tables), the
channel counts the runtime executes fast, and the check of a pruned model's measured latency.

**Layer tables.** Every Conv, ConvTranspose, Gemm and MatMul with a constant weight whose input or
output channels a prunable group can change is timed alone (a single-node model at its real
activation shape and the chosen batch, budget/single_node.py) on a grid of widths: input and output
channel counts at the kept fractions GRID (rounded to multiples of 8 on axes of at least 32
channels that are multiples of 8, the widths the runtime's blocked kernels run fast; an axis no
group can change is timed at its full width only). `T_l(a, b)` is the time of layer l with input
fraction a and output fraction b kept, bilinear between grid points, constant beyond the smallest.
Tables are cached per (layer shape incl. batch, timer) within the process.

**Fractions kept.** A choice `kept[g] = k` keeps the share f_c = k / n_g of every channel c of group g
(n_g = the group's size; channels of groups not in `kept` and unlabeled positions keep 1). A
tensor's kept fraction is the mean of f over its label positions (a Flatten's H*W positions per
channel, a Concat's pieces from several groups: each position counts once). Layer l's input
fraction is that of its activation input, its output fraction that of its output. A table is made
monotone before use: T(a, b) = min over a' >= a, b' >= b of the measured times (a narrower layer
never needs more time than a wider one, which it could run padded; on a busy machine a small
layer's timing can come out slower than a larger one's, and such noise would make removing channels
look like a slowdown).

**The whole model.** L(kept) = sum_l T_l(a_l, b_l). Timed alone, a layer carries the run's fixed
overhead and its own layout conversions, and the whole model runs other ops (pooling, residual
adds, activations onnxruntime does not fuse) and overhead of its own, so the model's time is fitted
as an affine function of L:

    cost(kept) = alpha + beta * L(kept)

from the whole model timed at full width (W_1) and, with `calibrate=True`, at a uniform half
(every prunable group keeps ceil(n_g / 2), rounded up to a multiple of 8 when n_g >= 32; W_half).
The fit uses only ratios, each measured within one interleaved call, so that a machine whose load
changes between the tables and the whole-model runs does not bend it: rho = W_half / W_1 and
lambda = L(half) / L(full) give b' = (1 - rho) / (1 - lambda), and

    cost(kept) = W_1 (1 - b' + b' L(kept) / L(full)),  i.e. beta = W_1 b' / L(full), alpha = W_1 (1 - b')

(alpha may be negative: the single-node copies each carry a run's overhead the whole model pays
once; no cost goes below FLOOR W_1). Without that second point, or when it shows no speed-up
(b' <= 0), beta = 1 and alpha = W_1 - L(full) (the rest kept constant), or, if that is negative,
alpha = 0 and beta = W_1 / L(full). In every case cost({}) = W_1: the measured time of the original model.
Timings are the fastest of interleaved repeats (budget/timing.py says why).

**Closed loop** (measure(kept), used by budget/run.py for a latency target). The fit above is exact at
two points, the original and the uniform half; a non-uniform choice far from both can run slower or
faster than it predicts (layers outside the tables, kernels that change with the widths). So the
allocator's choice is shrunk and timed against the original, and the budget given to the allocator is
corrected until the measured ratio meets the target (budget/run.py: measured_allocation).

**What it does not see.** Only the four weight ops are timed; recurrent layers (LSTM/GRU/RNN), fused
attention and MatMuls between two activations are part of alpha + the fit, so pruning them predicts
no speed-up. The tables are timed at fast widths (multiples of 8 on wide axes), so a choice of counts
off the preferred widths is predicted optimistically (benchmarks/RESULTS_latency.md measures by how
much): the allocator restricts each group to preferred_widths for that reason.

**Preferred widths.** For each group, its most expensive timed layer (at full width) is timed at
every kept count k of a window below 3/4 of the group's size (the axis the group labels changed,
the other one full): t(k). For a round-to m (1, 2, 4, 8, 16, 32, at most half the group), rounding
every k of the window up to a multiple of m costs on average C_m = mean_k t(ceil_m(k)). The group's
round-to is the largest m with C_m <= (1 + TOLERANCE) min_m' C_m': coarser counts that lose no
speed. A runtime whose kernels are fast at multiples of 8 makes C_1 (every count) slow and C_8 the
minimum; C_16 and C_32 keep more channels than needed and lose time. preferred_widths(group) =
the multiples of m up to the group's size, and the size itself (None when m = 1).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..analysis import Analysis, Group
from ..bench import check_batches
from ..feeds import input_shapes
from ..graph import GraphIndex
from ..validate import random_feeds
from .latency_check import CHECK_REPEATS, CHECK_WARMUP
from .single_node import TIMED_OPS, LayerShape, layer_shape
from .timing import OrtTimer, Timer, check_providers

log = logging.getLogger(__name__)

#: kept fractions of each changeable channel axis at which a layer is timed
GRID = (0.125, 0.25, 0.5, 0.75, 1.0)
#: round-to candidates for the preferred widths of a group
ROUND_TO = (1, 2, 4, 8, 16, 32)
#: a coarser round-to is chosen when its mean time is within this share of the best one
TOLERANCE = 0.02
#: the whole model (and its half-width copy) is timed in this many calls, the fastest kept: the
#: fit rests on these two numbers
CALIBRATION_CALLS = 2
#: no prediction goes below this share of the original's time (a fit with alpha < 0 would, for a
#: choice that removes nearly everything)
FLOOR = 0.01
#: a probe timing this many times the median of its neighbours is timed again
SPIKE = 1.25
#: axes at least this wide whose width is a multiple of 8 are timed at multiples of 8
BLOCK, BLOCK_FROM = 8, 32

_TABLES: dict[tuple, LayerTable] = {}
_PROBES: dict[tuple, dict[int, float]] = {}


@dataclass(frozen=True, eq=False)
class LayerTable:
    """Seconds of one layer on a grid of kept input fractions x kept output fractions."""

    layer: LayerShape
    fin: tuple[float, ...]
    fout: tuple[float, ...]
    seconds: np.ndarray  # [len(fin), len(fout)]

    def at(self, a: float, b: float) -> float:
        """Bilinear in (a, b); constant beyond the grid's ends."""
        rows = [np.interp(b, self.fout, row) for row in self.seconds]
        return float(np.interp(a, self.fin, rows))


@dataclass(frozen=True)
class Timed:
    """A timed layer of the model: its table and the tensors whose kept fractions it reads."""

    table: LayerTable
    input: str
    output: str


@dataclass
class LatencyCostModel:
    """kind "latency": seconds of one run of the model at `batch`, for a choice of kept channels.

    `index` is the analysis's index: used as is when its input shapes are those at `batch`, else
    shapes are inferred again at `batch`. `providers`: names (["CPUExecutionProvider"]) or a choice
    ("cpu", "auto", "cuda"); `timer`
    replaces the onnxruntime timer of the tables (tests pass a fake one), `check_timer` the one of
    `measure` (medians, as the written model's check); `shapes` sizes symbolic input dims like
    --input-shape. Building it times every layer table and the whole model (seconds to minutes);
    preferred widths are measured on first request per group.
    """

    model: onnx.ModelProto
    analysis: Analysis
    index: GraphIndex
    providers: str | Sequence[str] = "cpu"
    batch: int = 1
    timer: Timer | None = None
    check_timer: Timer | None = None
    shapes: dict[str, tuple] | None = None
    calibrate: bool = True
    threads: int = 0
    kind: str = field(default="latency", init=False)

    def __post_init__(self) -> None:
        self.providers = tuple(check_providers(self.providers))
        check_batches(self.model, [self.batch], "the model", "--latency-batch")
        if self.timer is None:
            self.timer = OrtTimer(self.providers, threads=self.threads)
        if self.check_timer is None:
            self.check_timer = OrtTimer(
                self.providers, repeats=CHECK_REPEATS, warmup=CHECK_WARMUP, threads=self.threads, quantile=0.5
            )
        shapes = input_shapes(self.model, self.batch, self.shapes, source=self.model)
        self._feeds = random_feeds(self.model, self.batch, shapes=shapes, source=self.model)
        self._concrete = self.index if _static_at(self.index, shapes) else _concrete_index(self.model, shapes)
        self.calibration: dict | None = None
        self._groups = {g.id: g for g in self.analysis.prunable_groups()}
        self._changeable = self._changeable_channels()
        self.layers = self._timed_layers()
        self.whole, self.alpha, self.beta = self._fit()
        self._round_to: dict[int, int] = {}

    # ---- the cost -----------------------------------------------------------------------------
    def cost(self, kept: Mapping[int, int]) -> float:
        """alpha + beta * sum over timed layers of T_l(input fraction, output fraction), at least
        FLOOR * the original's time."""
        return max(self.alpha + self.beta * self.layer_sum(kept), FLOOR * self.whole)

    def ratio(self, kept: Mapping[int, int]) -> float:
        """cost(kept) / cost({}): the predicted latency ratio against the original."""
        return self.cost(kept) / self.whole

    def layer_sum(self, kept: Mapping[int, int]) -> float:
        keep = self._fractions(kept)
        return sum(t.table.at(self._share(t.input, keep), self._share(t.output, keep)) for t in self.layers)

    def _fractions(self, kept: Mapping[int, int]) -> np.ndarray:
        """f per channel id, plus a last slot (label -1) of 1."""
        keep = np.ones(self.analysis.num_channels + 1)
        for gid, count in kept.items():
            group = self.analysis.group(gid)
            keep[list(group.channels)] = min(max(count, 0), group.size) / group.size
        return keep

    def _share(self, tensor: str, keep: np.ndarray) -> float:
        ids = self.analysis.tensor_labels.get(tensor)
        return 1.0 if ids is None else float(np.mean(keep[ids]))

    def as_report(self) -> dict:
        """What the report says about the cost model: the measured original, the fit, the round-to of
        every group probed so far."""
        return {
            "providers": list(self.providers),
            "batch": self.batch,
            "original_ms": 1000 * self.whole,
            "timed_layers": len(self.layers),
            "fit": {"alpha_ms": 1000 * self.alpha, "beta": self.beta},
            "calibration": self.calibration,
            "round_to": {str(g): m for g, m in sorted(self._round_to.items())},
        }

    # ---- tables -------------------------------------------------------------------------------
    def _changeable_channels(self) -> np.ndarray:
        mask = np.zeros(self.analysis.num_channels + 1, dtype=bool)
        for group in self._groups.values():
            mask[list(group.channels)] = True
        return mask

    def _varies(self, tensor: str) -> bool:
        ids = self.analysis.tensor_labels.get(tensor)
        return ids is not None and bool(self._changeable[ids].any())

    def _timed_layers(self) -> list[Timed]:
        timed, skipped = [], []
        for node in self._concrete.nodes:
            if not node.output or not (self._varies(node.input[0]) or self._varies(node.output[0])):
                continue
            shape = layer_shape(self._concrete, node)
            if shape is None:
                if node.op_type in TIMED_OPS:
                    skipped.append(node.name or node.output[0])
                continue
            table = self._table(shape, self._varies(node.input[0]), self._varies(node.output[0]))
            timed.append(Timed(table, node.input[0], node.output[0]))
        if skipped:
            log.info("latency: %d prunable layers not timed alone (shapes unknown): %s", len(skipped), skipped[:5])
        return timed

    def _table(self, shape: LayerShape, vary_in: bool, vary_out: bool) -> LayerTable:
        key = (shape.key, vary_in, vary_out, self.timer)
        if key not in _TABLES:
            cins = grid_widths(shape.cin) if vary_in else (shape.cin,)
            couts = (None,) if shape.depthwise else grid_widths(shape.cout) if vary_out else (shape.cout,)
            points = [(i, shape.cout if o is None else o) for i in cins for o in couts]
            seconds = np.array(self.timer([shape.model(*p) for p in points])).reshape(len(cins), len(couts))
            seconds = np.minimum.accumulate(np.minimum.accumulate(seconds[::-1, ::-1], axis=0), axis=1)[::-1, ::-1]
            fout = (1.0,) if shape.depthwise else tuple(o / shape.cout for o in couts)
            _TABLES[key] = LayerTable(shape, tuple(i / shape.cin for i in cins), fout, seconds)
        return _TABLES[key]

    def _fit(self) -> tuple[float, float, float]:
        """(whole, alpha, beta): the original's measured seconds, and cost = alpha + beta L."""
        full = self.layer_sum({})
        runs = [(self.model, self._feeds)]
        if self.calibrate and self._groups:
            half_kept = uniform_half(self._groups.values())
            runs.append((_shrunk(self.model, self.analysis, half_kept), self._feeds))
        whole, *rest = np.min([self.timer(runs) for _ in range(CALIBRATION_CALLS)], axis=0).tolist()
        if full <= 0:
            return whole, whole, 0.0
        if rest:
            measured = rest[0] / whole  # rho: both timed in the same interleaved call
            tabled = self.layer_sum(half_kept) / full  # lambda: both from the tables
            self.calibration = {"whole_s": whole, "half_s": rest[0], "layers_full_s": full}
            self.calibration.update(half_ratio=measured, tables_half_ratio=tabled)
            fit = _through(whole, full, measured, tabled)
            if fit is not None:
                return (whole, *fit)
            log.info("latency: the half-width model ran no faster (measured %.3f, tables %.3f)", measured, tabled)
        if whole >= full:
            return whole, whole - full, 1.0
        return whole, 0.0, whole / full

    def measure(self, kept: Mapping[int, int]) -> float:
        """The measured latency ratio of the model shrunk to `kept` against the original, by the statistic
        the written model is checked with (latency_check: the medians of CHECK_REPEATS interleaved runs),
        so that the closed loop aims at what the check reads; a busy machine moves a median more than the
        fastest run the tables use."""
        runs = [(self.model, self._feeds), (_shrunk(self.model, self.analysis, kept), self._feeds)]
        whole, pruned = self.check_timer(runs)
        return pruned / whole

    # ---- preferred widths ---------------------------------------------------------------------
    def preferred_widths(self, group: Group) -> tuple[int, ...] | None:
        """Multiples of round_to(group) up to its size, and the size; None when any count runs as fast."""
        step = self.round_to(group)
        if step <= 1:
            return None
        return tuple(sorted({*range(step, group.size + 1, step), group.size}))

    def round_to(self, group: Group) -> int:
        """The largest m whose window-mean time t(ceil_m k) is within TOLERANCE of the best m's."""
        if group.id not in self._round_to:
            curve = self.probe(group)
            self._round_to[group.id] = 1 if curve is None else choose_round_to(curve, group.size)
        return self._round_to[group.id]

    def probe(self, group: Group) -> dict[int, float] | None:
        """t(k) for the kept counts k of the group's window, on its most expensive timed layer."""
        candidates = [m for m in ROUND_TO if 2 * m <= group.size]
        if group.id not in self._groups or len(candidates) < 2:
            return None
        nodes = {r.node for r in (*group.producers, *group.consumers)}
        timed = [t for t in self.layers if t.table.layer.node in nodes]
        if not timed:
            return None
        target = max(timed, key=lambda t: float(t.table.seconds[-1, -1]))
        layer = target.table.layer
        key = (layer.key, target.input, target.output, group.id, self.timer)
        if key not in _PROBES:
            window = probe_window(group.size, max(candidates))
            runs = []
            for k in window:
                keep = self._fractions({group.id: k})
                cin = round(self._share(target.input, keep) * layer.cin)
                runs.append(layer.model(cin, round(self._share(target.output, keep) * layer.cout)))
            _PROBES[key] = dict(zip(window, self._retime_spikes(runs, self.timer(runs)), strict=True))
        return _PROBES[key]

    def _retime_spikes(self, runs: list, seconds: list[float]) -> list[float]:
        """Time again the runs more than SPIKE times slower than the median of their 8 neighbours (a
        session that ran slow throughout: seen on a busy machine even with the fastest of 15 runs);
        keep the faster of the two timings."""
        times = np.asarray(seconds, dtype=np.float64)
        local = np.array([np.median(times[max(0, i - 4) : i + 5]) for i in range(len(times))])
        spikes = np.flatnonzero(times > SPIKE * local)
        if spikes.size:
            again = self.timer([runs[i] for i in spikes])
            times[spikes] = np.minimum(times[spikes], again)
        return times.tolist()


def grid_widths(full: int) -> tuple[int, ...]:
    """Widths at the GRID fractions of `full`: multiples of BLOCK on wide axes that are multiples of it."""
    blocked = full >= BLOCK_FROM and full % BLOCK == 0
    widths = set()
    for fraction in GRID:
        width = max(1, round(fraction * full))
        if blocked:
            width = max(BLOCK, BLOCK * round(width / BLOCK))
        widths.add(min(width, full))
    return tuple(sorted(widths))


def probe_window(size: int, largest: int) -> range:
    """Kept counts hi - w + 1 .. hi, hi the largest multiple of `largest` at most 3/4 of `size` (at
    least `largest`), w = min(2 * largest, hi): every count rounds up to a multiple of each
    candidate m <= largest without leaving the window."""
    hi = max(largest, (3 * size // 4) // largest * largest)
    width = min(2 * largest, hi)
    return range(hi - width + 1, hi + 1)


def choose_round_to(curve: Mapping[int, float], size: int) -> int:
    """The largest m (ROUND_TO, 2m <= size) with mean_k t(ceil_m k) <= (1 + TOLERANCE) * the best mean."""
    means = {}
    for m in (m for m in ROUND_TO if 2 * m <= size):
        rounded = [curve.get(math.ceil(k / m) * m) for k in curve]
        if all(t is not None for t in rounded):
            means[m] = float(np.mean(rounded))
    if not means:
        return 1
    best = min(means.values())
    return max(m for m, mean in means.items() if mean <= (1 + TOLERANCE) * best)


def uniform_half(groups) -> dict[int, int]:
    """Each group keeps half its channels (rounded up; to a multiple of BLOCK from BLOCK_FROM channels
    on), and at least its frozen ones."""
    kept = {}
    for group in groups:
        half = math.ceil(group.size / 2)
        if group.size >= BLOCK_FROM:
            half = min(group.size, math.ceil(half / BLOCK) * BLOCK)
        kept[group.id] = max(half, group.size - len(group.free))
    return kept


def _through(whole: float, full: float, measured: float, tabled: float) -> tuple[float, float] | None:
    """(alpha, beta) of cost = alpha + beta L through the original (L(full), whole) and a second choice
    whose time ratio measured `measured` (rho) where the tables give `tabled` (lambda):
    b' = (1 - rho) / (1 - lambda), beta = whole b' / L(full), alpha = whole (1 - b'). None when the
    choice shows no speed-up or the tables no change (b' undefined or <= 0)."""
    if full <= 0 or tabled >= 1:
        return None
    slope = (1 - measured) / (1 - tabled)
    return (whole * (1 - slope), whole * slope / full) if slope > 0 else None


def _shrunk(model: onnx.ModelProto, analysis: Analysis, kept: Mapping[int, int]) -> onnx.ModelProto:
    """A copy of `model` in which each group keeps kept[g] channels (its first free ones removed last)."""
    from ..passes import CLEANUP, PassManager
    from ..passes.shrink import shrink_pass
    from ..plan import PruningPlan, empties

    removed: set[int] = set()
    for gid, count in kept.items():
        group = analysis.group(gid)
        removable = group.size - count
        if removable > 0:
            removed.update(group.free[len(group.free) - removable :])
    for line in empties(analysis, removed):  # keep one channel of any weight axis the removal would empty
        removed.discard(int(line[0]))
    plan = PruningPlan(frozenset(removed), method="latency-calibration")
    return PassManager([shrink_pass(analysis, plan), CLEANUP]).run(copy.deepcopy(model))


def _static_at(index: GraphIndex, shapes: Mapping[str, tuple]) -> bool:
    """Whether `index`'s model already has exactly these input shapes (nothing to infer again)."""
    return all(index.shape(name) == tuple(dims) for name, dims in shapes.items())


def _concrete_index(model: onnx.ModelProto, shapes: Mapping[str, tuple]) -> GraphIndex:
    """The index of a copy of `model` whose inputs have the concrete `shapes` (batch included), so
    that shape inference gives every tensor concrete dims."""
    concrete = copy.deepcopy(model)
    for info in concrete.graph.input:
        if info.name in shapes:
            dims = info.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[info.name], strict=True):
                dim.Clear()
                dim.dim_value = int(size)
    del concrete.graph.value_info[:]
    return GraphIndex.build(concrete)
