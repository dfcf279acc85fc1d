"""Attention heads in decomposed (raw) exports: a head is one unit, wherever a Reshape splits it out.

An exporter writes multi-head attention as

    q = Reshape(x Wq, [B, S, H, d]) -> Transpose -> [B, H, S, d]        (k, v alike; v with size dv)
    o = Softmax(q k^T * scale + mask) v                                 (MatMuls batched over B, H)
    y = Reshape(Transpose(o), [B, S, H*dv]) Wo

A Reshape that splits a labeled axis into (outer, inner) can keep the tensor rectangular in two ways:
tie each inner position across the outer slices (a channel shuffle: position j of every group goes
together) or tie the inner positions of each outer slice (a whole head, a whole group). `split_ties_slices`
chooses the second when the split tensor reaches a *per-slice* computation: a MatMul between run-time
tensors that is batched over the outer axis (attention), or a reduction over the inner axis that leaves
the outer one alone (a decomposed GroupNorm). Removing head h then removes its q, k and v columns and the
rows of Wo it feeds; every other head's softmax(q_h k_h^T) v_h is unchanged, and the Reshape constants
that count heads (or H*dv) are rewritten like any channel count.

- Multi-query / grouped-query attention: repeat_kv (Unsqueeze -> Expand -> Reshape) repeats each KV head's
  label n_rep times, and the batched q k^T MatMul unifies query head h with KV head h // n_rep: a KV head
  goes only with every query head that reads it.
- Rotary embeddings act inside the head dimension (Slice, Neg, Concat, Mul by cos/sin on the inner axis),
  which carries no labels: they are transparent.
- Attention masks broadcast over the head axis (size 1 there) and stay as they are.
- KV caches: a graph input concatenated with a head-labeled tensor (past key/value) takes its labels, and
  a head-labeled graph output (present key/value) shrinks with its heads: both change the model's I/O
  shapes, recorded as IoDim rewrites and listed by the report.
"""

from __future__ import annotations

import numpy as np

from .context import Propagation
from .labels import Unsupported, compress, reshape_ids, varying_axes, with_rank
from .rewrites import IoDim

#: how many nodes past a split Reshape the look for a per-slice computation may walk
_LOOKAHEAD = 32

_ELEMENTWISE = frozenset(
    "Add Sub Mul Div Neg Pow Sqrt Reciprocal Exp Tanh Sigmoid Relu Gelu Erf Cast Identity Dropout Where "
    "Softmax LogSoftmax Clip Max Min".split()
)
_REDUCE = frozenset("ReduceMean ReduceSum ReduceMax ReduceMin ReduceL2 ReduceSumSquare".split())


# ---- the split decision ---------------------------------------------------------------------------
def split_ties_slices(p: Propagation, name: str, out: np.ndarray) -> str | None:
    """ "head" when tensor `name` (labels `out`, varying on outer axes and a last inner axis) reaches a
    MatMul batched over the outer axes, "group" when it reaches a reduction over the inner axis only
    (the inner positions of each outer slice then go together), else None."""
    axes = varying_axes(out)
    outer = _probe(out.shape, axes[:-1])
    inner = _probe(out.shape, axes[-1:])
    seen: set[str] = set()
    frontier = [(name, outer, inner)]
    steps = 0
    while frontier and steps < _LOOKAHEAD:
        tensor, o, i = frontier.pop()
        for position, slot in p.index.consumers.get(tensor, []):
            node = p.index.nodes[position]
            steps += 1
            verdict = _per_slice(p, node, slot, o, i)
            if isinstance(verdict, str):
                return verdict
            if verdict is None or node.output[0] in seen:
                continue
            seen.add(node.output[0])
            frontier.append((node.output[0], *(_fit(p, node.output[0], x) for x in verdict)))
    return None


def _fit(p: Propagation, name: str, x: np.ndarray) -> np.ndarray:
    """The probe `x` re-made on tensor `name`'s static sizes (a Concat along the inner axis, as rotary
    embeddings write it, restores the size a Slice halved)."""
    shape = p.index.shape(name)
    if shape is None or len(shape) != x.ndim:
        return x
    axes = varying_axes(x)
    if any(not isinstance(shape[a], int) for a in axes):
        return x
    return _probe(shape, axes)


def _probe(shape, axes) -> np.ndarray:
    """Labels 1..n along `axes` only (broadcast elsewhere): where those axes go through an op."""
    dims = [shape[a] if a in axes else 1 for a in range(len(shape))]
    return np.arange(1, int(np.prod(dims)) + 1, dtype=np.int64).reshape(dims)


def _per_slice(p: Propagation, node, slot: int, o: np.ndarray, i: np.ndarray):
    """ "head"/"group": `node` computes per outer slice over the inner axis; None: the walk stops here;
    else the probes (outer, inner) on the node's output."""
    op = node.op_type
    rank = o.ndim
    try:
        if op == "MatMul" and not p.index.is_constant(node.input[1]):
            o_axes, i_axes = varying_axes(o), varying_axes(i)
            batched = o_axes and all(a < rank - 2 for a in o_axes)
            if batched and i_axes and all(a >= rank - 2 for a in i_axes):
                return "head"
            return None
        if op in _REDUCE or op in ("LayerNormalization", "InstanceNormalization"):
            return "group" if _reduces_inner(p, node, o, i) else None
        if op == "Slice" and slot == 0:
            return _slice_probe(p, node, o), _slice_probe(p, node, i)
        if op in _ELEMENTWISE or op in ("Concat", "Split", "Pad"):
            out_rank = p.index.rank(node.output[0]) or rank
            return with_rank(o, out_rank), with_rank(i, out_rank)
        if op == "Transpose":
            perm = [a.ints for a in node.attribute if a.name == "perm"]
            perm = list(perm[0]) if perm else list(range(rank))[::-1]
            return np.transpose(o, perm), np.transpose(i, perm)
        if op == "Gather" and slot == 0 and p.constant(node.input[1]) is not None:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % rank
            picks = np.asarray(p.constant(node.input[1]))
            take = [lambda x: np.take(x, picks if x.shape[axis] > 1 else np.zeros_like(picks), axis=axis)][0]
            return take(o), take(i)
        if op == "Expand" and slot == 0:
            out_rank = p.index.rank(node.output[0]) or rank
            return with_rank(o, out_rank), with_rank(i, out_rank)
        if op in ("Unsqueeze", "Squeeze", "Reshape") and slot == 0:
            shape, out_shape = p.index.shape(node.input[0]), p.index.shape(node.output[0])
            if shape is None or out_shape is None:
                return None
            return reshape_ids(o, shape, out_shape), reshape_ids(i, shape, out_shape)
    except (Unsupported, ValueError):
        return None
    return None


def _slice_probe(p: Propagation, node, x: np.ndarray) -> np.ndarray:
    """Slice (opset >= 10, constant starts/ends/axes/steps) applied to a probe on its varying axes."""
    bounds = [p.constant(name) if name else None for name in list(node.input[1:5]) + [""] * (5 - len(node.input))]
    if bounds[0] is None or bounds[1] is None:
        raise Unsupported("run-time slice bounds")
    starts, ends = np.asarray(bounds[0]).reshape(-1), np.asarray(bounds[1]).reshape(-1)
    axes = np.asarray(bounds[2]).reshape(-1) if bounds[2] is not None else np.arange(len(starts))
    steps = np.asarray(bounds[3]).reshape(-1) if bounds[3] is not None else np.ones(len(starts), dtype=np.int64)
    for axis, start, end, step in zip(axes.tolist(), starts.tolist(), ends.tolist(), steps.tolist(), strict=True):
        axis %= x.ndim
        if x.shape[axis] > 1:
            x = np.take(x, np.arange(x.shape[axis])[slice(start, end, step)], axis=axis)
    return x


def _reduces_inner(p: Propagation, node, o: np.ndarray, i: np.ndarray) -> bool:
    rank = o.ndim
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "LayerNormalization":
        axis = attrs["axis"].i if "axis" in attrs else -1
        axes = list(range(axis % rank, rank))
    elif node.op_type == "InstanceNormalization":
        axes = list(range(2, rank))
    else:
        value = p.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        axes = list(attrs["axes"].ints) if "axes" in attrs else np.asarray(value if value is not None else []).tolist()
        axes = [int(a) % rank for a in np.reshape(axes, -1)]
    return bool(set(varying_axes(i)) <= set(axes)) and not set(varying_axes(o)) & set(axes)


def tie_slices(p: Propagation, out: np.ndarray, kind: str) -> np.ndarray:
    """Unify the inner positions of each outer slice of `out` and name the unit: "head of d" (d the
    channels of one slice), or "group of n channels" for a per-group reduction."""
    inner = varying_axes(out)[-1]
    rows = np.moveaxis(out, inner, -1).reshape(-1, out.shape[inner])
    size = max(np.unique(p.uf.roots(row[row >= 0])).size for row in rows)
    for row in rows:
        p.unify(np.full_like(row, row.max()), row, f"a {kind} mixes positions that cannot be removed")
    tied = compress(p.uf.roots(out))
    for atom in np.unique(tied[tied >= 0]).tolist():
        p.units[atom] = f"head of {size}" if kind == "head" else f"group of {size} channels"
        if kind == "head":
            p.head_sizes[atom] = size
    return tied


# ---- batched MatMul: heads on a batch axis ----------------------------------------------------------
def batched_matmul(p: Propagation, node, a: np.ndarray, b: np.ndarray, rank: int) -> None:
    """A @ B with heads on batch axes: the heads of A and B are unified position by position (each
    query head with the key or value head it reads) and the product carries them. An operand that is
    not labeled there must be broadcast over those axes (size 1), or the heads it meets are frozen."""
    if any(axis >= rank - 2 for ids in (a, b) for axis in varying_axes(ids)):
        raise Unsupported("channels on a batch axis and a matrix axis at once")
    labeled_axes = sorted({axis for ids in (a, b) for axis in varying_axes(ids)})
    reason = f"MatMul '{node.name}' is batched over heads with an operand that has them all"
    joined = None
    for ids in (a, b):
        if (ids >= 0).any():
            joined = ids if joined is None else p.unify(joined, ids, reason)
    for slot, ids in enumerate((a, b)):
        if not (ids >= 0).any():
            shape = p.index.shape(node.input[slot])
            if shape is None:
                raise Unsupported(f"the shape of '{node.input[slot]}' is unknown")
            aligned = (1,) * (rank - len(shape)) + tuple(shape)
            if any(aligned[axis] != 1 for axis in labeled_axes):
                p.freeze(joined, reason)
    if (a >= 0).any() and (b >= 0).any():
        _name_unit(p, a.reshape(-1), b.reshape(-1))
    p.set(node.output[0], joined)


def _name_unit(p: Propagation, a: np.ndarray, b: np.ndarray) -> None:
    """Name the unit of a q k^T or probs v product: "head of d", "(value dv)" when v's head size
    differs, "KV head of d with n query heads" when each key/value head serves n query heads."""
    if a.size != b.size:
        return
    da, db = p.head_sizes.get(int(a[0])), p.head_sizes.get(int(b[0]))
    if da is None or db is None:
        return
    share = a.size // max(1, np.unique(b).size)
    size = f"{da}" + (f" (value {db})" if db != da else "")
    name = f"KV head of {size} with {share} query heads" if share > 1 else f"head of {size}"
    for atom in np.unique(np.concatenate([a, b])).tolist():
        if atom >= 0:
            p.units[atom] = name
            p.head_sizes.setdefault(atom, da)


# ---- KV caches: graph inputs and outputs with heads -----------------------------------------------
def is_head_line(p: Propagation, ids: np.ndarray) -> bool:
    """True when every labeled position of `ids` belongs to an attention head."""
    atoms = np.unique(ids[ids >= 0])
    return atoms.size > 0 and all(int(a) in p.head_sizes for a in atoms.tolist())


#: ops a past cache may pass through unchanged between the graph input and the Concat that extends it
_PASS_THROUGH = frozenset({"Identity", "Cast", "Concat"})


def adopt_graph_input(p: Propagation, node, name: str, ids: np.ndarray) -> bool:
    """Give `name` (an input of Concat `node`: a past key/value cache, maybe through Identity, Cast or a
    one-input Concat) the head labels `ids` it is concatenated with, when it comes from a graph input
    that nothing else reads but Shape nodes picking other sizes; the graph input then shrinks with the
    heads (an IoDim rewrite)."""
    if not is_head_line(p, ids):
        return False
    chain = [name]
    while chain[-1] not in p.index.input_names:
        producer = p.index.node_producer(chain[-1])
        if producer is None or producer.op_type not in _PASS_THROUGH or len([i for i in producer.input if i]) != 1:
            return False
        if len(p.index.consumers.get(chain[-1], [])) != 1:
            return False
        chain.append(producer.input[0])
    source = chain[-1]
    if p.index.is_constant(source):
        return False
    first = node if len(chain) == 1 else p.index.node_producer(chain[-2])
    readers = [p.index.nodes[i] for i, _ in p.index.consumers.get(source, [])]
    if not all(r.name == first.name or _reads_other_sizes(p, r, varying_axes(ids)) for r in readers):
        return False
    for tensor in chain:
        p.labels[tensor] = compress(ids)
    for axis in varying_axes(ids):
        p.rewrite(IoDim("", source, axis, "input"))
    return True


def _reads_other_sizes(p: Propagation, reader, axes: list[int]) -> bool:
    """`reader` is a Shape whose sizes are only picked (Gather of constant indices) off `axes`."""
    if reader.op_type != "Shape" or any(a.name in ("start", "end") for a in reader.attribute):
        return False
    for user in p.index.node_consumers(reader.output[0]):
        picks = p.constant(user.input[1]) if user.op_type == "Gather" and len(user.input) > 1 else None
        if picks is None or set(np.asarray(picks).reshape(-1).tolist()) & set(axes):
            return False
    return True


def head_output(p: Propagation, name: str) -> bool:
    """A graph output whose labels are all heads (present key/value) shrinks with them."""
    ids = p.get(name)
    if ids is None or not is_head_line(p, ids):
        return False
    for axis in varying_axes(ids):
        p.rewrite(IoDim("", name, axis, "output"))
    return True
