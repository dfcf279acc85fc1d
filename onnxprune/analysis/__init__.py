"""Channel analysis: which positions of which tensors can be removed together."""

from .groups import Analysis, Group, analyze

__all__ = ["Analysis", "Group", "analyze"]
