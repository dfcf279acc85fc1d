"""Pass machinery: a pass rewrites the model in place and says whether it changed anything.

The manager runs passes in order and wraps a crash with the pass's name and the passes before it, so
a bug report says where the rewrite broke.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import onnx

from ..errors import OnnxPruneError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    modified: bool


@dataclass(frozen=True)
class Pass:
    """A named rewrite: `run(model) -> PassResult`."""

    name: str
    run: Callable[[onnx.ModelProto], PassResult]


class PassError(RuntimeError):
    """A pass crashed (a bug, not the user's fault)."""


@dataclass
class PassManager:
    passes: Sequence[Pass]
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        done: list[str] = []
        for p in self.passes:
            start = time.perf_counter()
            try:
                result = p.run(model)
            except OnnxPruneError:
                raise
            except Exception as exc:
                after = ", ".join(done) or "nothing"
                raise PassError(f"pass '{p.name}' failed (after {after}): {type(exc).__name__}: {exc}") from exc
            model = result.model
            self.timings[p.name] = self.timings.get(p.name, 0.0) + time.perf_counter() - start
            log.debug("pass %s: modified=%s", p.name, result.modified)
            done.append(p.name)
        return model
