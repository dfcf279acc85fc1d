"""im2col: the receptive-field patches of a Conv, in the order of W.reshape(O, -1).

For a Conv with weight W [O, C/g, k1, ..., kd], patches(x)[g] has shape [positions, C/g * k1 * ... * kd]
and patches(x)[g] @ W[g-th block].reshape(O/g, -1).T equals the Conv output of group g (before bias),
with positions ordered as (n, out_1, ..., out_d). Pads (explicit or auto_pad), strides and dilations
follow the ONNX Conv definition.
"""

from __future__ import annotations

import numpy as np

from ..layers import conv_geometry

#: a gathered patch value costs about this many copied input values (measured on 2 cores)
GATHER_COST = 3


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
    geometry = conv_geometry(attrs, x.shape[2:], kernel)
    out_shape = output_shape(x.shape[2:], kernel, geometry)
    rows = x.shape[0] * int(np.prod(out_shape))
    if max_positions is None or rows <= max_positions:
        return _every_position(x, kernel, groups, geometry)
    chosen = np.sort((rng or np.random.default_rng(0)).choice(rows, max_positions, replace=False))
    where = np.unravel_index(chosen, (x.shape[0], *out_shape))
    # a padded copy of the batch costs its size; a direct gather about GATHER_COST per patch value
    if x.shape[0] * int(np.prod(x.shape[2:])) > GATHER_COST * max_positions * int(np.prod(kernel)):
        return _gathered(x, kernel, groups, geometry, where)
    return _every_position(x, kernel, groups, geometry, where)


def output_shape(in_spatial: tuple[int, ...], kernel: tuple[int, ...], geometry) -> tuple[int, ...]:
    """out = floor((in + pad_begin + pad_end - ((k - 1) d + 1)) / s) + 1 per spatial axis."""
    begin, end, strides, dilations = geometry
    return tuple(
        (size + b + e - (k - 1) * d - 1) // s + 1
        for size, k, b, e, s, d in zip(in_spatial, kernel, begin, end, strides, dilations, strict=True)
    )


def _every_position(x: np.ndarray, kernel, groups: int, geometry, where=None) -> list[np.ndarray]:
    """Through strided windows of the zero-padded input: every position, or those in `where`
    (sample, out_1, ..., out_d)."""
    begin, end, strides, dilations = geometry
    dims = len(kernel)
    padding = [(0, 0), (0, 0)] + list(zip(begin, end, strict=True))
    windows = np.pad(x, padding) if any(begin) or any(end) else x
    for axis, (k, d) in enumerate(zip(kernel, dilations, strict=True)):
        windows = np.lib.stride_tricks.sliding_window_view(windows, (k - 1) * d + 1, axis=2 + axis)
    # windows: [N, C, out_1.., span_1..]; keep every s-th output and every d-th tap
    index = [slice(None), slice(None)]
    index += [slice(None, None, s) for s in strides]
    index += [slice(None, None, d) for d in dilations]
    windows = windows[tuple(index)]
    per_group = x.shape[1] // groups
    result = []
    for g in range(groups):
        block = windows[:, g * per_group : (g + 1) * per_group]
        if where is not None:  # gather the chosen positions before copying anything: [P, C/g, k...]
            matrix = block[(where[0], slice(None), *where[1:])].reshape(len(where[0]), -1)
        else:  # -> [N, out..., C/g, k...]
            order = [0] + list(range(2, 2 + dims)) + [1] + list(range(2 + dims, 2 + 2 * dims))
            matrix = np.transpose(block, order).reshape(-1, per_group * int(np.prod(kernel)))
        result.append(np.ascontiguousarray(matrix))
    return result


def _gathered(x: np.ndarray, kernel, groups: int, geometry, where: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """The patches of the positions `where`, read straight from the unpadded `x`: input coordinate
    i = out * s - pad_begin + tap * d on every axis; taps falling into the padding read 0."""
    begin, _, strides, dilations = geometry
    taps = np.indices(kernel).reshape(len(kernel), -1)  # [d, taps] in W's (k1, ..., kd) order
    coords, inside = [], np.ones((len(where[0]), taps.shape[1]), dtype=bool)
    for axis in range(len(kernel)):
        c = where[1 + axis][:, None] * strides[axis] - begin[axis] + taps[axis][None, :] * dilations[axis]
        size = x.shape[2 + axis]
        inside &= (c >= 0) & (c < size)
        coords.append(np.clip(c, 0, size - 1)[:, None, :])
    sample = where[0][:, None, None]
    per_group = x.shape[1] // groups
    result = []
    for g in range(groups):
        channels = np.arange(g * per_group, (g + 1) * per_group)[None, :, None]
        values = x[(sample, channels, *coords)]  # [P, C/g, taps]
        if not inside.all():
            values *= inside[:, None, :]
        result.append(values.reshape(len(values), -1))
    return result
