"""Pass machinery: a pass rewrites the model in place and says whether it changed anything.

The manager runs passes in order, checks each pass's contract (it must return the very model it was
given: passes are in place) and records what each one modified. A crash is wrapped with the pass's
name and the passes before it, so a bug report says where the rewrite broke.
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
    """A pass crashed or broke its contract (a bug, not the user's fault: the traceback is kept)."""


@dataclass
class PassManager:
    """Runs `passes` in order on one model, in place. `modified[name]` says whether the pass changed
    the model (or-ed over repeated runs), `timings[name]` how long it took."""

    passes: Sequence[Pass]
    timings: dict[str, float] = field(default_factory=dict)
    modified: dict[str, bool] = field(default_factory=dict)

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        done: list[str] = []
        for p in self.passes:
            start = time.perf_counter()
            try:
                result = p.run(model)
            except (OnnxPruneError, PassError):
                raise
            except Exception as exc:
                raise PassError(f"pass '{p.name}' failed (after {_listed(done)}): {type(exc).__name__}: {exc}") from exc
            if result.model is not model:
                raise PassError(
                    f"pass '{p.name}' (after {_listed(done)}) returned a different model object; passes rewrite "
                    "the model they are given in place. Pass developer: edit `model` and return "
                    "PassResult(model, modified)"
                )
            self.timings[p.name] = self.timings.get(p.name, 0.0) + time.perf_counter() - start
            self.modified[p.name] = self.modified.get(p.name, False) or bool(result.modified)
            log.debug("pass %s: modified=%s", p.name, result.modified)
            done.append(p.name)
        return model


def _listed(names: list[str]) -> str:
    return ", ".join(names) or "nothing"
