"""Graph rewrites run by the PassManager."""

from .base import Pass, PassManager, PassResult
from .check import CHECK
from .cleanup import CLEANUP
from .shrink import shrink, shrink_pass

__all__ = ["CHECK", "CLEANUP", "Pass", "PassManager", "PassResult", "shrink", "shrink_pass"]
