"""Semi-structured N:M sparsity (`--pattern N:M`, e.g. 2:4): masks, checks and column orders.

A weight seen as [O, I, K] (O outputs, I inputs per output: the C/g input channels of a Conv or the
features of a Gemm/MatMul, K kernel positions) conforms to N:M when, for every output o and kernel
position k, every group of M consecutive inputs i = gM .. gM+M-1 holds at most N nonzero weights. For
a Conv that is the input-channel axis at a fixed kernel tap, the layout sparse tensor cores read (NVIDIA
Ampere and later, TensorRT: 2:4 along C of a [K, R, S, C] filter); for a Gemm/MatMul the K axis. A layer
whose I is not a multiple of M cannot conform and is left dense, with the reason. Storage stays dense:
runtimes detect the pattern from the zeros.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import OptionError
from .options import MethodOption

PATTERN_OPTION = MethodOption(
    "--pattern",
    "pattern",
    None,
    "lobs/wanda: semi-structured N:M sparsity (e.g. 2:4): every group of M consecutive weights along the input "
    "axis keeps at most N (--ratio is then 1 - N/M); layers whose input size is not a multiple of M stay dense",
    str,
)


def parse_pattern(text: str | None) -> tuple[int, int] | None:
    """'N:M' -> (N, M) with 0 < N < M; None when no pattern is asked for."""
    if text is None or text == "":
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
    if match is None or not 0 < int(match.group(1)) < int(match.group(2)):
        raise OptionError(f"--pattern {text}: must be N:M with 0 < N < M, e.g. 2:4 or 4:8")
    return int(match.group(1)), int(match.group(2))


def skip_reason(inputs: int, m: int) -> str | None:
    """Why a layer with `inputs` inputs per output (per kernel tap) cannot take an N:M pattern."""
    if inputs % m:
        return f"{inputs} inputs per output are not a multiple of M={m}: left dense"
    return None


def nm_keep(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep mask of `scores` [O, I, K]: in every group of M consecutive inputs (per output and tap), the N
    highest scores (ties: the first ones). I must be a multiple of M."""
    o, i, k = scores.shape
    grouped = np.moveaxis(scores.reshape(o, i // m, m, k), 2, -1)  # [O, I/M, K, M]
    order = np.argsort(-grouped, axis=-1, kind="stable")[..., :n]
    keep = np.zeros(grouped.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=-1)
    return np.moveaxis(keep, -1, 2).reshape(o, i, k)


def pattern_keep(scores: np.ndarray, pattern: tuple[int, int]) -> np.ndarray:
    """nm_keep of `scores` [O, I, K], or everything kept when I is not a multiple of M."""
    if skip_reason(scores.shape[1], pattern[1]):
        return np.ones(scores.shape, dtype=bool)
    return nm_keep(scores, *pattern)


def conforms(weights: np.ndarray, n: int, m: int) -> bool:
    """True when `weights` [O, I, K] has at most N nonzeros in every group of M consecutive inputs."""
    o, i, k = weights.shape
    if i % m:
        return False
    return bool(((weights.reshape(o, i // m, m, k) != 0).sum(axis=2) <= n).all())


def group_order(inputs: int, taps: int) -> np.ndarray:
    """A permutation of the columns c * taps + t of W.reshape(O, -1) that puts the inputs of each tap
    next to each other (column t * inputs + c): N:M groups become M consecutive columns."""
    return (np.arange(inputs)[None, :] * taps + np.arange(taps)[:, None]).reshape(-1)


def conformance(pattern: tuple[int, int], weights: dict[str, np.ndarray]) -> dict:
    """The report's count of the layers (node -> weight [O, I, K]) that conform to `pattern`, with the
    reason of each layer that cannot."""
    n, m = pattern
    skipped = {node: reason for node, w in weights.items() if (reason := skip_reason(w.shape[1], m))}
    failing = [node for node, w in weights.items() if node not in skipped and not conforms(w, n, m)]
    return {
        "pattern": f"{n}:{m}",
        "layers": len(weights),
        "conforming_layers": len(weights) - len(skipped) - len(failing),
        "nonconforming_layers": failing,
        "skipped_layers": skipped,
    }
