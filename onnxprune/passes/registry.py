"""Pre-passes a method may ask for by name (e.g. BatchNorm folding before neuron merging)."""

from __future__ import annotations

from .base import Pass

_PREPASSES: dict[str, Pass] = {}


def register_prepass(p: Pass) -> Pass:
    _PREPASSES[p.name] = p
    return p


def prepass(name: str) -> Pass:
    if name not in _PREPASSES:
        raise KeyError(f"no pre-pass named {name!r}; known: {sorted(_PREPASSES)}")
    return _PREPASSES[name]
