"""``CallKey``: the one record of what NCCL's tuner plugin sees about a collective call.

NCCL hands the plugin's ``getCollInfo`` the collective type, ``nBytes``, ``numPipeOps`` and
``regBuff``; the plugin's init gives the communicator's ``nRanks`` and ``nNodes``; the plugin itself
counts the call's position within the training step on its communicator (NVIDIA/nccl
``src/include/plugin/nccl_tuner.h``, tuner ABI v2-v6). Every rank of a communicator sees the same
values, so anything decided from a ``CallKey`` is decided alike on every rank.

The trace compiler gives each call its key, the cost tables are keyed by it (without the position:
what a call costs does not depend on where it sits in the step), the observation encodes it, a
decision table looks it up and a policy is exported over it. Field names are the same everywhere:

===============  =======================================================================
coll             ``ncclFunc_t`` (:class:`~dynamiccl.nccl.Func`): Broadcast 0 .. AllReduce 4, ...
nbytes           NCCL's ``nBytes``, bytes
nranks, nnodes   the communicator's ranks and nodes
position         index of the call among the tunable collectives of its communicator in one
                 training step; -1 = unknown
num_pipe_ops     NCCL's ``numPipeOps``: collectives fused in one group (>= 1)
reg_buff         NCCL's ``regBuff``: 1 when the buffers are registered (traces do not record it: 0)
===============  =======================================================================
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, replace

from dynamiccl.nccl import Func

FIELDS = ("coll", "nbytes", "nranks", "nnodes", "position", "num_pipe_ops", "reg_buff")
UNKNOWN_POSITION = -1


@dataclass(frozen=True, slots=True)
class CallKey:
    """What the tuner plugin sees about one call (see the module docstring for each field).

    ``position``, ``num_pipe_ops`` and ``reg_buff`` are keyword-only, so that no caller can swap them.
    """

    coll: Func
    nbytes: int
    nranks: int
    nnodes: int
    _: KW_ONLY
    position: int = UNKNOWN_POSITION
    num_pipe_ops: int = 1
    reg_buff: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "coll", Func(self.coll))  # a plain int from a table or an array

    def cost_key(self) -> "CallKey":
        """The key without its position: what the call costs does not depend on where it sits."""
        return replace(self, position=UNKNOWN_POSITION) if self.position != UNKNOWN_POSITION else self

    def as_tuple(self) -> tuple[int, int, int, int, int, int, int]:
        """The values in :data:`FIELDS` order, as plain ints (for arrays and DataFrames)."""
        return (int(self.coll), self.nbytes, self.nranks, self.nnodes, self.position, self.num_pipe_ops, self.reg_buff)


__all__ = ["CallKey", "FIELDS", "UNKNOWN_POSITION"]


def size_band(nbytes: int) -> int:
    """floor(log2 nbytes), 0 for nbytes < 1 (exact for integers): the size band of a call, as the
    static-best agent, the online learners and the table search key rules."""
    nbytes = int(nbytes)
    return nbytes.bit_length() - 1 if nbytes >= 1 else 0
