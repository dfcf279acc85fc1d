"""The statistics stage of a prune: one object that runs calibration data through onnxruntime when a
method asks, returns values keyed by layer, and keeps a record of every pass.

A method declares the kinds it reads (Method.statistics: "hessian", "activity", "ranges", "outputs");
the pipeline builds one Statistics per prune (the calibration data and how passes run) and hands each
step a view limited to its method's kinds, so a method cannot read what it did not declare. Results
of the small kinds (activity, ranges) are kept per request (kind, model, layers) within one step: the
same request on the same model object is answered without another pass. Not across steps: the
pipeline rewrites the model in place between steps, so the same object then holds other weights. Hessians
are not kept (they are large and a method frees each as it goes): every request is a pass. `passes`
lists every onnxruntime pass made, for the report.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from .. import progress
from ..feeds import Dataset
from ..graph import GraphIndex
from ..layers import Layer
from .activity import InputStats, Range, input_ranges, layer_statistics
from .collect import CollectSettings
from .hessian import LayerStats, collect_on_updated
from .probe import OutputProbe

#: the kinds of statistics a method may declare
KINDS = ("hessian", "activity", "ranges", "outputs")
#: activity and range results kept for reuse (each holds its model alive: its id cannot be reused)
CACHED = 4

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Collection:
    """One onnxruntime pass over the calibration data (not a graph rewrite: see onnxprune.passes)."""

    kind: str
    description: str
    layers: int
    samples: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("kind", "description", "layers", "samples", "seconds")}


@dataclass(frozen=True)
class Statistics:
    """The statistics stage (see the module docstring): `data` through onnxruntime as `settings` say,
    for a method that declared `kinds`."""

    data: Dataset
    settings: CollectSettings
    kinds: frozenset[str] = frozenset(KINDS)
    log: list[Collection] = field(default_factory=list, compare=False)  # shared by every view of a prune
    cache: OrderedDict = field(default_factory=OrderedDict, compare=False)

    def for_method(self, name: str, kinds: Sequence[str]) -> Statistics:
        """The view one step's method gets: only the kinds it declared, the prune's record of passes,
        and a cache of its own. Results are reused within a step only: between steps the pipeline
        rewrites the model in place, so the same model object then holds other weights."""
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"method {name}: unknown statistics {unknown}; known: {', '.join(KINDS)}")
        return replace(self, kinds=frozenset(kinds), cache=OrderedDict())

    @property
    def passes(self) -> list[Collection]:
        return list(self.log)

    # ---- the kinds -----------------------------------------------------------------------------
    def hessians(
        self,
        model: onnx.ModelProto,
        layers: Sequence[Layer],
        updates: Mapping[str, np.ndarray] | None = None,
        max_positions: int | None = None,
        seed: int = 0,
        description: str = "hessians",
        samples: int | None = None,
    ) -> dict[str, LayerStats]:
        """Input statistics of `layers` (H, and with `updates` C and H_ref: taken on `model` with the
        updates applied, paired with `model` itself, the target of --sequential), keyed by node; on the
        first `samples` calibration samples when given (all by default)."""
        self._allow("hessian")
        settings = replace(self.settings, max_positions=max_positions, seed=seed)
        data = self.data if samples is None else self.data.take(samples)
        with self._pass("hessian", description, len(layers), len(data)):
            return collect_on_updated(model, list(layers), data, dict(updates or {}), settings, description)

    def activity(
        self, model: onnx.ModelProto, layers: Sequence[Layer], relief_weights: GraphIndex | None = None
    ) -> dict[str, InputStats]:
        """Activity statistics of the inputs of `layers` (norms, means; relief numerators of each Conv
        computed with its weights as `relief_weights` holds them)."""
        key = ("activity", tuple(layer.node for layer in layers), id(relief_weights))  # the index: held below

        def run() -> dict[str, InputStats]:
            return layer_statistics(model, self.data, list(layers), self.settings, relief_weights)

        return self._answer("activity", (model, relief_weights), key, run, "activity", len(layers))

    def ranges(self, model: onnx.ModelProto, reads: Mapping[str, int | None]) -> dict[str, Range]:
        """Per-position minimum and maximum of each tensor of `reads` (name -> feature axis)."""
        key = ("ranges", tuple(sorted(reads.items(), key=lambda item: item[0])))

        def run() -> dict[str, Range]:
            return input_ranges(model, self.data, dict(reads), self.settings)

        return self._answer("ranges", model, key, run, "ranges", len(reads))

    def output_probe(self, model: onnx.ModelProto, names: Sequence[str], samples: int | None) -> OutputProbe:
        """A session that measures the model's outputs on `samples` calibration samples with the
        initializers `names` replaced (its reference outputs are computed once, here)."""
        self._allow("outputs")
        with self._pass("outputs", "output probe", len(names)):
            return OutputProbe(model, names, self.data.take(samples), self.settings.batch_size, self.settings.providers)

    # ---- bookkeeping -----------------------------------------------------------------------------
    def _allow(self, kind: str) -> None:
        if kind not in self.kinds:
            raise RuntimeError(
                f"statistics '{kind}' asked for by a method that declared only {sorted(self.kinds)}; "
                "method developer: add it to Method.statistics"
            )

    def _answer(self, kind: str, subject, key: tuple, run, description: str, layers: int):
        """The kept result of `key` on `subject` (the model, or the model and the index whose weights
        the result used: the entry holds them, so the ids in the key stay theirs), or a new pass."""
        self._allow(kind)
        cache = self.cache
        model = subject[0] if isinstance(subject, tuple) else subject
        full_key = (id(model), *key)
        if full_key in cache:
            cache.move_to_end(full_key)
            return dict(cache[full_key][1])
        with self._pass(kind, description, layers):
            result = run()
        cache[full_key] = (subject, result)
        while len(cache) > CACHED:
            cache.popitem(last=False)
        return dict(result)

    @contextmanager
    def _pass(self, kind: str, description: str, layers: int, samples: int | None = None) -> Iterator[None]:
        """One onnxruntime pass over `samples` (default all): logged as a stage (onnxprune.progress) and
        recorded in `log`."""
        samples = len(self.data) if samples is None else samples
        with progress.stage(log, f"statistics: {description}", layers=layers, samples=samples) as stage:
            yield
        self.log.append(Collection(kind, description, layers, samples, round(stage.seconds, 4)))
