"""Rules for onnxruntime's fused attention ops (domain com.microsoft): whole heads are the unit.

Per head h with query/key head size d and value head size dv, every kernel computes

    O_h = softmax(scale * Q_h K_h^T + bias/mask) V_h,      Q_h = Q[..., h d : (h+1) d], same for K, V,

and writes O_h at [..., h dv : (h+1) dv] of the output. Removing head h (its q, k and v positions, and
so the output positions that the next projection reads) leaves every other head's O unchanged, as long as
`num_heads` (and `kv_num_heads`, `qkv_hidden_sizes`) shrink with it: the CountAttribute records do that.
`scale` defaults to 1/sqrt(d), which no head removal changes. A single q/k/v position cannot go alone
(the kernels need one head size for all heads), so all positions of a head are unified into one channel.

- Attention(input, weights [C, q+k+v], bias [q+k+v], mask, past, attention_bias, ...): a producer whose
  weight columns are [Q | K | V], head-major inside each block; its output carries the V heads' atoms.
- MultiHeadAttention(query, key, value, bias, ...): q, k, v arrive from separate projections; their
  head blocks (and the bias's) are unified.
- GroupQueryAttention(query, key, value, past_key, past_value, ...): query head h reads KV head
  h // (num_heads / kv_num_heads); a KV head goes only with all its query heads (one unit per KV head).
- RotaryEmbedding(x, position_ids, cos, sin): rotates pairs inside each head: transparent by whole heads.

Past/present KV caches are run-time tensors with a head axis that the graph's caller feeds or reads:
a past cache that is a graph input and a present one that is a graph output shrink with their heads
(IoDim rewrites, listed by the report as changed inputs/outputs; the caller feeds the kept heads).
A per-head attention bias or a past cache computed inside the graph keeps its head count: heads
that reach it are frozen with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .context import ConsumerRole, ProducerRole, Propagation
from .labels import Unsupported, along, varying_axes
from .ops_heads import adopt_graph_input
from .rewrites import CountAttribute


def _line(p: Propagation, name: str, size: int, what: str) -> np.ndarray:
    """Labels of `name`'s last axis (size `size`), all -1 when it is unlabeled."""
    ids = p.get(name)
    if ids is None:
        return np.full(size, -1, dtype=np.int64)
    if [a for a in varying_axes(ids) if a != ids.ndim - 1]:
        raise Unsupported(f"{what} '{name}' carries channels on an axis other than the hidden one")
    return along(ids, ids.ndim - 1, size)


def _hidden(p: Propagation, name: str) -> int:
    rank = p.rank(name)
    if rank != 3:
        raise Unsupported(f"input '{name}' of rank {rank} (packed or BNSH layouts) has no rule")
    return p.dim(name, 2)


def _tie_units(p: Propagation, node, units: list[np.ndarray], reason: str, name: str | None) -> None:
    """Unify the positions of each unit (a head, or a KV head with its query heads) and name it; a unit
    with a position that cannot be removed is frozen whole."""
    for unit in units:
        atoms = unit[unit >= 0]
        if not atoms.size:
            continue
        if name:
            p.units[int(atoms[0])] = name
        if (unit < 0).any():
            p.freeze(atoms, reason)
        for atom in np.unique(atoms[1:]).tolist():
            p.uf.union(int(atoms[0]), atom)


def _blocks(line: np.ndarray, start: int, size: int, count: int) -> list[np.ndarray]:
    return [line[start + h * size : start + (h + 1) * size] for h in range(count)]


def _caches(p: Propagation, node, units: list[np.ndarray], atoms: np.ndarray, cache: _Cache) -> None:
    """Past inputs and present outputs with a head axis (`cache.axis` of rank `cache.rank`: BNSH, or
    [2, B, N, S, d] for Attention's packed past) shrink with their heads: a past cache fed by the
    caller (a graph input, maybe through Identity/Cast, read by nothing else) takes the heads' labels
    and the graph input shrinks (IoDim, ops_heads.adopt_graph_input); a present cache carries them on
    (a graph output shrinks too: propagate._freeze_graph_outputs). Anything else with a head axis (a
    past computed in the graph, a per-head attention bias) keeps its head count, and the heads freeze."""
    heads = [int(u[u >= 0][0]) if (u >= 0).all() else -1 for u in units]
    shape = [1] * cache.rank
    shape[cache.axis] = len(heads)
    ids = np.array(heads, dtype=np.int64).reshape(shape)
    if -1 not in heads:
        for atom in heads:
            p.head_sizes.setdefault(atom, cache.head_size)
    for slot in (*cache.pasts, *_per_head_bias(p, node, cache.bias)):
        name = node.input[slot] if slot < len(node.input) else ""
        if not name:
            continue
        adoptable = slot in cache.pasts and -1 not in heads and p.rank(name) == cache.rank
        if not adoptable or not adopt_graph_input(p, node, name, ids):
            what = "with a head axis (a KV cache computed in the graph, or a per-head bias) that is not rewritten"
            p.freeze(atoms, f"{node.op_type} '{node.name}' reads '{name}' {what}")
            return
    for slot in cache.presents:
        name = node.output[slot] if slot < len(node.output) else ""
        if name and (p.index.consumers.get(name) or name in p.index.output_names):
            if -1 in heads:
                p.freeze(atoms, f"{node.op_type} '{node.name}' writes KV cache '{name}' with heads that cannot go")
                return
            p.set(name, ids)


@dataclass(frozen=True)
class _Cache:
    """Where a fused op keeps its KV caches: past input slots, present output slots, the head axis and
    rank of both, the head size, and the slot of its attention bias (per head: never shrinks)."""

    pasts: tuple[int, ...]
    presents: tuple[int, ...]
    axis: int
    rank: int
    head_size: int
    bias: int


def _per_head_bias(p: Propagation, node, slot: int) -> list[int]:
    """The attention-bias slot, when its head axis (1) has more than one position."""
    name = node.input[slot] if slot < len(node.input) else ""
    shape = p.index.shape(name) if name else None
    return [slot] if name and (shape is None or len(shape) < 2 or shape[1] != 1) else []


def _count(node, attribute: str, entry: int, source: str, axis: int, start: int, stop: int, unit: int):
    return CountAttribute(node.name, attribute, entry, source, axis, start, stop, unit)


def attention(p: Propagation, node, attrs, opset) -> None:
    """com.microsoft Attention: a packed Q|K|V projection and the attention of its heads."""
    weight = p.constant(node.input[1])
    if weight is None or weight.ndim != 2:
        raise Unsupported("the packed QKV weight is not a constant matrix")
    heads = int(attrs["num_heads"])
    sizes = list(attrs.get("qkv_hidden_sizes") or [weight.shape[1] // 3] * 3)
    if sum(sizes) != weight.shape[1] or sizes[0] != sizes[1] or any(s % heads for s in sizes):
        raise Unsupported(f"qkv sizes {sizes} do not split the weight's {weight.shape[1]} columns into {heads} heads")
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias and not p.index.is_constant(bias):
        raise Unsupported(f"bias '{bias}' is not a constant")
    inputs = None
    if p.get(node.input[0]) is not None:
        inputs = _line(p, node.input[0], weight.shape[0], "input")
    rank = p.rank(node.output[0])
    atoms = p.new_atoms(node.input[1], 1, weight.shape[1])
    d, dv = sizes[0] // heads, sizes[2] // heads
    blocks = zip(_blocks(atoms, 0, d, heads), _blocks(atoms, sizes[0], d, heads),
                 _blocks(atoms, 2 * sizes[0], dv, heads), strict=True)  # fmt: skip
    units = [np.concatenate(b) for b in blocks]
    _tie_units(p, node, units, "", f"head of {d}" + (f" (value {dv})" if dv != d else ""))
    p.add_producer(ProducerRole(node.name, node.op_type, node.input[1], 1, bias, node.output[0]))
    p.label_const(node.input[1], 1, atoms, node, 1)
    if bias:
        p.label_const(bias, 0, atoms, node, 2)
    if inputs is not None:
        p.label_const(node.input[1], 0, inputs, node, 1)
        p.add_consumer(ConsumerRole(node.name, node.op_type, node.input[1], 0, node.input[0]))
    _caches(p, node, units, atoms, _Cache(pasts=(4,), presents=(1,), axis=2, rank=5, head_size=d, bias=5))
    v_start = 2 * sizes[0]
    p.rewrite(_count(node, "num_heads", -1, node.input[1], 1, v_start, v_start + sizes[2], dv))
    if attrs.get("qkv_hidden_sizes"):
        for entry, start in enumerate((0, sizes[0], v_start)):
            p.rewrite(_count(node, "qkv_hidden_sizes", entry, node.input[1], 1, start, start + sizes[entry], 1))
    p.set(node.output[0], atoms[v_start:].reshape((1,) * (rank - 1) + (-1,)))


def multi_head_attention(p: Propagation, node, attrs, opset) -> None:
    """com.microsoft MultiHeadAttention(query, key, value, bias, key_padding_mask, attention_bias,
    past_key, past_value, ...) with separate 3-D q, k, v."""
    if len(node.input) < 3 or not node.input[1] or not node.input[2]:
        raise Unsupported("packed QKV / KV inputs have no rule")
    heads = int(attrs["num_heads"])
    q_size, k_size, v_size = (_hidden(p, node.input[s]) for s in range(3))
    if q_size != k_size or q_size % heads or v_size % heads:
        raise Unsupported(f"hidden sizes {q_size}, {k_size}, {v_size} do not split into {heads} heads")
    q = _line(p, node.input[0], q_size, "query")
    k = _line(p, node.input[1], k_size, "key")
    v = _line(p, node.input[2], v_size, "value")
    d, dv = q_size // heads, v_size // heads
    blocks = zip(_blocks(q, 0, d, heads), _blocks(k, 0, d, heads), _blocks(v, 0, dv, heads), strict=True)
    units = [np.concatenate(b) for b in blocks]
    reason = f"MultiHeadAttention '{node.name}' mixes heads with positions that cannot be removed"
    _tie_units(p, node, units, reason, f"head of {d}" + (f" (value {dv})" if dv != d else ""))
    bias = node.input[3] if len(node.input) > 3 and node.input[3] else None
    if bias:
        if not p.index.is_constant(bias):
            raise Unsupported(f"bias '{bias}' is not a constant")
        p.label_const(bias, 0, np.concatenate([q, k, v]), node, 3)
    cache = _Cache(pasts=(6, 7), presents=(1, 2), axis=1, rank=4, head_size=d, bias=5)
    _caches(p, node, units, np.concatenate([q, k, v]), cache)
    p.rewrite(_count(node, "num_heads", -1, node.input[2], 2, 0, v_size, dv))
    p.set(node.output[0], v.reshape(1, 1, -1))


def group_query_attention(p: Propagation, node, attrs, opset) -> None:
    """com.microsoft GroupQueryAttention(query, key, value, past_key, past_value, seqlens_k,
    total_sequence_length, cos_cache, sin_cache, position_ids, attention_bias, ...): num_heads query
    heads share kv_num_heads KV heads, query head h reading KV head h // (num_heads / kv_num_heads)."""
    heads, kv_heads = int(attrs["num_heads"]), int(attrs["kv_num_heads"])
    share = heads // kv_heads
    packed = len(node.input) < 2 or not node.input[1]
    q_width = _hidden(p, node.input[0])
    if packed:
        d = q_width // (heads + 2 * kv_heads)
        line = _line(p, node.input[0], q_width, "query")
        q, k, v = line[: heads * d], line[heads * d : (heads + kv_heads) * d], line[(heads + kv_heads) * d :]
        sources = [(node.input[0], heads * d, (heads + kv_heads) * d)]
    else:
        d = q_width // heads
        q = _line(p, node.input[0], q_width, "query")
        k, v = (_line(p, node.input[s], kv_heads * d, what) for s, what in ((1, "key"), (2, "value")))
        sources = [(node.input[1], 0, kv_heads * d)]
    q_heads = _blocks(q, 0, d, heads)
    units = [
        np.concatenate([*q_heads[j * share : (j + 1) * share], kb, vb])
        for j, (kb, vb) in enumerate(zip(_blocks(k, 0, d, kv_heads), _blocks(v, 0, d, kv_heads), strict=True))
    ]
    reason = f"GroupQueryAttention '{node.name}' mixes heads with positions that cannot be removed"
    _tie_units(p, node, units, reason, f"KV head of {d} with {share} query heads" if share > 1 else f"head of {d}")
    cache = _Cache(pasts=(3, 4), presents=(1, 2), axis=1, rank=4, head_size=d, bias=10)
    _caches(p, node, units, np.concatenate([q, k, v]), cache)
    p.rewrite(_count(node, "num_heads", -1, node.output[0], 2, 0, heads * d, d))
    source, start, stop = sources[0]
    p.rewrite(_count(node, "kv_num_heads", -1, source, 2, start, stop, d))
    p.set(node.output[0], q.reshape(1, 1, -1))


def rotary_embedding(p: Propagation, node, attrs, opset) -> None:
    """com.microsoft RotaryEmbedding(x, position_ids, cos_cache, sin_cache): x is [B, S, N*d] (pairs
    rotate inside each head of size d) or [B, N, S, d] (heads on axis 1, transparent)."""
    ids = p.get(node.input[0])
    if ids is None:
        return
    for name in node.input[1:]:
        if name and p.get(name) is not None:
            raise Unsupported(f"parameter input '{name}' carries channels")
    rank = p.rank(node.input[0])
    if rank == 4:
        if varying_axes(ids) and varying_axes(ids) != [1]:
            raise Unsupported("channels inside the rotated head dimension")
        p.set(node.output[0], ids)
        return
    hidden = _hidden(p, node.input[0])
    heads = int(attrs.get("num_heads", 0))
    if heads:
        d = hidden // heads
    else:
        if int(attrs.get("rotary_embedding_dim", 0)):
            raise Unsupported("a partial rotary dimension without num_heads")
        cos = p.index.shape(node.input[2])
        if not cos or not isinstance(cos[-1], int):
            raise Unsupported("the head size (from cos_cache) is not static")
        d = 2 * cos[-1]
    line = _line(p, node.input[0], hidden, "input")
    reason = f"RotaryEmbedding '{node.name}' rotates channels with positions that cannot be removed"
    _tie_units(p, node, _blocks(line, 0, d, hidden // d), reason, None)  # the attention op names the unit
    if heads:
        p.rewrite(_count(node, "num_heads", -1, node.input[0], 2, 0, hidden, d))
    p.set(node.output[0], line.reshape(1, 1, -1))
