"""Method-specific command-line options, declared as data next to each method.

Each entry becomes one click option of `onnxprune prune`; its value lands in PruneOptions.extra under
`dest`. A method module declares its options in a tuple named OPTIONS; registry.py collects them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MethodOption:
    flags: str  # e.g. "--norm" or "--merge-normalize/--no-merge-normalize"
    dest: str
    default: Any
    help: str
    type: Any = None  # a click type or python type; None for boolean flags
    is_flag: bool = False
