"""Graph rewrites run by the PassManager, and the table of the passes a method can ask for by name."""

from .base import Pass, PassError, PassManager, PassResult
from .check import CHECK
from .cleanup import CLEANUP
from .fold import FOLD
from .shrink import shrink, shrink_pass
from .sparse import SPARSE_STORAGE

#: passes a method names in Method.prepasses (run before its analysis), and the post-pass of --sparse-storage
PASSES: dict[str, Pass] = {p.name: p for p in (FOLD, SPARSE_STORAGE)}

__all__ = ["CHECK", "CLEANUP", "PASSES", "Pass", "PassError", "PassManager", "PassResult", "shrink", "shrink_pass"]
