"""What a long run shows while it works: progress bars and stage logs, in one place.

- `bar(iterable, total, desc, unit)`: a tqdm bar on stderr while bars are shown, else the iterable
  itself. Bars are shown inside `showing(True)` (the pipeline opens it from PipelineOptions.progress,
  the CLI when stderr is a terminal and not --quiet); `enabled=` overrides that for one bar
  (CollectSettings.progress for a statistics pass run outside a pipeline).
- `stage(log, name, **sizes)`: a context manager that logs, at INFO on the module's logger, the start
  of a stage with its sizes and its end with the elapsed seconds; it returns the Stage, whose
  `seconds` the caller may record (the report's timings).
- `configure(verbose, quiet, bars)`: the CLI's setup of the `onnxprune` logger: INFO with -v, WARNING
  by default, ERROR with -q; records are written with tqdm.write so that they do not tear a bar.

The library never prints: every line goes through logging, every bar through `bar`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

ROOT_LOGGER = "onnxprune"
_BARS: ContextVar[bool] = ContextVar("onnxprune_progress_bars", default=False)


def shown() -> bool:
    """Whether bars are shown in the current context."""
    return _BARS.get()


@contextmanager
def showing(enabled: bool) -> Iterator[None]:
    """Show bars (or not) in the code this wraps."""
    token = _BARS.set(bool(enabled))
    try:
        yield
    finally:
        _BARS.reset(token)


def bar(
    iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it", enabled: bool | None = None
) -> Iterable[T]:
    """`iterable` behind a tqdm bar on stderr when bars are shown (`enabled`, None: as `showing` says)
    and there is more than one item; else `iterable` itself. The bar is erased when it ends."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not (shown() if enabled is None else enabled) or (total is not None and total <= 1):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)


@dataclass
class Stage:
    """A stage being timed: its name, sizes (printed as key=value) and, once it ended, its seconds."""

    name: str
    sizes: dict = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> str:
        return ", ".join(f"{k}={_size(v)}" for k, v in self.sizes.items())


@contextmanager
def stage(log: logging.Logger, name: str, **sizes) -> Iterator[Stage]:
    """Log `name` with `sizes` at INFO when it starts and with its elapsed seconds when it ends (also
    when it fails: 'failed after ...'). Sizes added to the returned Stage while it runs are logged at
    the end."""
    current = Stage(name, dict(sizes))
    log.info("%s ...%s", name, f" ({current.describe()})" if current.sizes else "")
    start = time.perf_counter()
    try:
        yield current
    except BaseException:
        current.seconds = time.perf_counter() - start
        log.info("%s failed after %.2f s", name, current.seconds)
        raise
    current.seconds = time.perf_counter() - start
    log.info("%s done in %.2f s%s", name, current.seconds, f" ({current.describe()})" if current.sizes else "")


def _size(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


class _BarSafeHandler(logging.Handler):
    """Writes records to the current sys.stderr through tqdm.write, so a line never tears a bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never end a run
            self.handleError(record)


class _PlainFormatter(logging.Formatter):
    """'onnxprune: warning: ...' (the form of the CLI's other lines)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"onnxprune: {record.levelname.lower()}: {record.getMessage()}"


_PLAIN_FORMAT = _PlainFormatter()
_HANDLER = _BarSafeHandler()
_VERBOSE_FORMAT = logging.Formatter("%(asctime)s.%(msecs)03d %(name)s: %(message)s", "%H:%M:%S")


def configure(verbose: bool = False, quiet: bool = False) -> None:
    """Set up the `onnxprune` logger for the command line (idempotent): INFO records with time and
    module under -v, warnings only by default, errors only under -q (which wins over -v)."""
    logger = logging.getLogger(ROOT_LOGGER)
    logger.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)
    _HANDLER.setFormatter(_VERBOSE_FORMAT if verbose and not quiet else _PLAIN_FORMAT)
    if _HANDLER not in logger.handlers:
        logger.addHandler(_HANDLER)


def logging_restorer() -> Callable[[], None]:
    """A function that puts the `onnxprune` logger's level and handlers back as they are now (a
    command run in a process that goes on, such as a test, leaves no setting behind)."""
    logger = logging.getLogger(ROOT_LOGGER)
    level, handlers = logger.level, list(logger.handlers)

    def restore() -> None:
        logger.setLevel(level)
        logger.handlers[:] = handlers

    return restore


def bars_wanted(quiet: bool) -> bool:
    """Bars on the command line: stderr is a terminal and not --quiet."""
    return not quiet and _isatty(sys.stderr)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
