"""Rules for the recurrent layers LSTM, GRU and RNN: their hidden units are channels.

ONNX stacks the gates of one direction d along the rows of W [D, G*H, I] and R [D, G*H, H] (LSTM: G = 4
gates i, o, f, c; GRU: G = 3 gates z, r, h; RNN: G = 1), B [D, 2*G*H] = [Wb; Rb] and the LSTM
peepholes P [D, 3*H] (i, o, f). At every step t,

    gate_g[t] = f_g(W_g x[t] + R_g h[t-1] + Wb_g + Rb_g (+ P_g . c[t-1]))     (each gate [H])

and the new state h[t] (and c[t]) of unit j reads only gate entries j. So hidden unit j *produces* rows
j of every gate block of W, R, B and P (and entry j of initial_h/initial_c), and it is *read* by column j
of R (the recurrence) and by whatever reads Y [.., H], Y_h and Y_c downstream.

Removing unit j therefore equals the masked original in which every reader of h_j is zeroed (R[:, :, j]
and the downstream consumers): with those zeros, h_j and c_j still evolve but nothing reads them, and
no other unit's gates see them. The unit's own rows may stay in the masked model. That is the
shrink-equals-mask oracle for a recurrent group.

One `hidden_size` serves both directions of a bidirectional layer, and each direction keeps the same
count: hidden unit j of the forward and of the reverse direction are one channel (removed together).
"""

from __future__ import annotations

import numpy as np

from .context import ConsumerRole, ProducerRole, Propagation
from .labels import Unsupported, along, varying_axes
from .rewrites import AttributeSize, GatherInput

#: gates stacked along the rows of W and R
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
#: op types whose producers are recurrent (methods that cannot handle a recurrence skip their groups)
RECURRENT = frozenset(GATES)


def is_recurrent(group) -> bool:
    """Whether an analysis Group's channels are hidden units of a recurrent layer."""
    return any(role.op_type in RECURRENT for role in group.producers)


_SEQ_LENS, _INITIAL_H, _INITIAL_C, _PEEPHOLES = 4, 5, 6, 7


def _input(node, slot: int) -> str:
    return node.input[slot] if len(node.input) > slot else ""


def _constant(p: Propagation, node, slot: int, what: str) -> np.ndarray:
    value = p.constant(_input(node, slot))
    if value is None:
        raise Unsupported(f"{what} '{_input(node, slot)}' is not a constant")
    return value


def recurrent(p: Propagation, node, attrs, opset) -> None:
    """LSTM / GRU / RNN: one atom per hidden unit (shared by the directions), see the module doc."""
    gates = GATES[node.op_type]
    weight, recurrence = _input(node, 1), _input(node, 2)
    w = _constant(p, node, 1, "W")
    r = _constant(p, node, 2, "R")
    hidden = r.shape[2]
    if w.shape[1] != gates * hidden or int(attrs.get("hidden_size", hidden)) != hidden:
        raise Unsupported(f"W {w.shape} and R {r.shape} do not match {gates} gates of hidden_size {hidden}")
    atoms = p.new_atoms(recurrence, 2, hidden)
    rows = np.tile(atoms, gates)
    output = next((name for name in node.output if name), "")
    for name in (weight, recurrence):
        p.weight_atoms[(name, 1)] = atoms
        p.add_producer(ProducerRole(node.name, node.op_type, name, 1, None, output))
        p.label_const(name, 1, rows, node, 1 if name == weight else 2)
    # the recurrence reads its own hidden units: column j of R
    p.label_const(recurrence, 2, atoms, node, 2)
    p.add_consumer(ConsumerRole(node.name, node.op_type, recurrence, 2, output, recurrent=True))
    _label_optional(p, node, 3, np.tile(atoms, 2 * gates), "B")
    _label_optional(p, node, _PEEPHOLES, np.tile(atoms, 3), "P")
    for slot in (_INITIAL_H, _INITIAL_C):
        _initial_state(p, node, slot, atoms)
    _input_channels(p, node, w)
    p.rewrite(AttributeSize(node.name, "hidden_size", recurrence, 2))
    _label_outputs(p, node, atoms)


def _label_optional(p: Propagation, node, slot: int, line: np.ndarray, what: str) -> None:
    name = _input(node, slot)
    if name:
        _constant(p, node, slot, what)
        p.label_const(name, 1, line, node, slot)


def _initial_state(p: Propagation, node, slot: int, atoms: np.ndarray) -> None:
    """initial_h / initial_c, [D, batch, H] (layout 0) or [batch, D, H] (layout 1): hidden axis 2.

    A constant is sliced. A run-time state that carries channels (another layer's Y_h) must carry the
    same ones. Any other run-time state (zeros built by ConstantOfShape, a graph input) keeps its shape
    and the shrink gathers the kept units from it: the state of a removed unit only ever reaches that
    unit, which nothing reads any more, so dropping it is exact whatever its value."""
    name = _input(node, slot)
    if not name or (slot == _INITIAL_C and node.op_type != "LSTM"):
        return
    if p.index.is_constant(name):
        return p.label_const(name, 2, atoms, node, slot)
    ids = p.get(name)
    if ids is None:
        return p.rewrite(GatherInput(node.name, slot, 2, _input(node, 2), 2))
    reason = f"{node.op_type} '{node.name}' starts from state '{name}', whose channels are removed differently"
    p.unify(atoms, along(ids, 2, len(atoms)), reason)


def _input_channels(p: Propagation, node, w: np.ndarray) -> None:
    """X is [seq, batch, I] (layout 0) or [batch, seq, I] (layout 1): W's columns read axis 2."""
    ids = p.get(node.input[0])
    if ids is None:
        return
    if [a for a in varying_axes(ids) if a != 2]:
        raise Unsupported("the input carries channels on its sequence or batch axis")
    p.label_const(node.input[1], 2, along(ids, 2, w.shape[2]), node, 1)
    p.add_consumer(ConsumerRole(node.name, node.op_type, node.input[1], 2, node.input[0]))


def _label_outputs(p: Propagation, node, atoms: np.ndarray) -> None:
    """Y [seq, D, batch, H] or [batch, seq, D, H]; Y_h, Y_c [D, batch, H] or [batch, D, H]: hidden last."""
    for position, name in enumerate(node.output):
        rank = 4 if position == 0 else 3
        p.set(name, atoms.reshape((1,) * (rank - 1) + (-1,)))
