"""Pre-passes a method may ask for by name (e.g. BatchNorm folding before neuron merging).

A pass module registers its passes with register_prepass when imported; _MODULES lists them.
"""

from __future__ import annotations

import importlib

from .base import Pass

_PREPASSES: dict[str, Pass] = {}
_MODULES = ("onnxprune.passes.fold", "onnxprune.passes.sparse")


def register_prepass(p: Pass) -> Pass:
    _PREPASSES[p.name] = p
    return p


def prepass(name: str) -> Pass:
    for module in _MODULES:
        importlib.import_module(module)
    if name not in _PREPASSES:
        raise KeyError(f"no pre-pass named {name!r}; known: {sorted(_PREPASSES)}")
    return _PREPASSES[name]
