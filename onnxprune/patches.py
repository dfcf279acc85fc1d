"""im2col: the receptive-field patches of a Conv, in the order of W.reshape(O, -1).

For a Conv with weight W [O, C/g, k1, ..., kd], patches(x)[g] has shape [positions, C/g * k1 * ... * kd]
and patches(x)[g] @ W[g-th block].reshape(O/g, -1).T equals the Conv output of group g (before bias),
with positions ordered as (n, out_1, ..., out_d). Pads (explicit or auto_pad), strides and dilations
follow the ONNX Conv definition.
"""

from __future__ import annotations

import math

import numpy as np


def conv_geometry(attrs: dict, in_spatial: tuple[int, ...], kernel: tuple[int, ...]):
    """(pads_begin, pads_end, strides, dilations) of a Conv, auto_pad resolved."""
    dims = len(kernel)
    strides = list(attrs.get("strides", [1] * dims))
    dilations = list(attrs.get("dilations", [1] * dims))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(in_spatial, kernel, strides, dilations, strict=True):
            out = math.ceil(size / s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else large)
            end.append(large if auto_pad == "SAME_UPPER" else small)
    elif auto_pad == "VALID":
        begin, end = [0] * dims, [0] * dims
    else:
        pads = list(attrs.get("pads", [0] * (2 * dims)))
        begin, end = pads[:dims], pads[dims:]
    return begin, end, strides, dilations


def patches(
    x: np.ndarray,
    attrs: dict,
    kernel: tuple[int, ...],
    groups: int = 1,
    max_positions: int | None = None,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Per group, the [positions, C/g * prod(kernel)] patch matrix of input `x` [N, C, *spatial].

    With `max_positions`, a random subset of that many positions (seeded by `rng`) is returned.
    """
    begin, end, strides, dilations = conv_geometry(attrs, x.shape[2:], kernel)
    width = [(0, 0), (0, 0)] + list(zip(begin, end, strict=True))
    padded = np.pad(x, width)
    windows = padded
    for axis, (k, d) in enumerate(zip(kernel, dilations, strict=True)):
        span = (k - 1) * d + 1
        windows = np.lib.stride_tricks.sliding_window_view(windows, span, axis=2 + axis)
    # windows: [N, C, out_1.., span_1..]; apply strides and dilations
    dims = len(kernel)
    index = [slice(None), slice(None)]
    index += [slice(None, None, s) for s in strides]
    index += [slice(None, None, d) for d in dilations]
    windows = windows[tuple(index)]
    n, channels = x.shape[:2]
    out_shape = windows.shape[2 : 2 + dims]
    per_group = channels // groups
    rows = n * int(np.prod(out_shape))
    chosen = None
    if max_positions is not None and rows > max_positions:
        chosen = np.sort((rng or np.random.default_rng(0)).choice(rows, max_positions, replace=False))
        where = np.unravel_index(chosen, (n, *out_shape))
    result = []
    for g in range(groups):
        block = windows[:, g * per_group : (g + 1) * per_group]
        if chosen is not None:
            # gather the chosen positions before copying anything: [positions, C/g, k...]
            matrix = block[(where[0], slice(None), *where[1:])].reshape(len(chosen), -1)
        else:
            # -> [N, out..., C/g, k...]
            order = [0] + list(range(2, 2 + dims)) + [1] + list(range(2 + dims, 2 + 2 * dims))
            matrix = np.transpose(block, order).reshape(rows, -1)
        result.append(np.ascontiguousarray(matrix))
    return result
