"""Union-find over channel atoms (integers), growing on demand."""

from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets of atom ids with path halving and union by size."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._size: list[int] = []

    def __len__(self) -> int:
        return len(self._parent)

    def make(self, count: int) -> np.ndarray:
        """Create `count` new singleton atoms and return their ids."""
        start = len(self._parent)
        self._parent.extend(range(start, start + count))
        self._size.extend([1] * count)
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, atom: int) -> int:
        parent = self._parent
        while parent[atom] != atom:
            parent[atom] = parent[parent[atom]]
            atom = parent[atom]
        return atom

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size[rb]
        return ra

    def roots(self, ids: np.ndarray) -> np.ndarray:
        """Map every atom in `ids` to its set's root; -1 (not prunable) stays -1."""
        flat = ids.reshape(-1)
        out = np.empty_like(flat)
        cache: dict[int, int] = {}
        for i, atom in enumerate(flat.tolist()):
            if atom < 0:
                out[i] = -1
            else:
                root = cache.get(atom)
                if root is None:
                    root = cache[atom] = self.find(atom)
                out[i] = root
        return out.reshape(ids.shape)

    def all_roots(self) -> np.ndarray:
        return np.array([self.find(a) for a in range(len(self._parent))], dtype=np.int64)
