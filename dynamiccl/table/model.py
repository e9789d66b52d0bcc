"""The decision table: which NCCL algorithm, protocol, channel count and chunk size to use for a
collective call, which ``ncclConfig_t`` settings each communicator gets, and the job's environment.

This module is the model and its lookup semantics; the file formats are separate modules of
``dynamiccl.table`` (``json_format``, ``nvidia_csv``, ``plugin_text``), and ``dynamiccl.table.load``
/ ``save`` pick one by file extension.

A table is an ordered tuple of ``Rule``s. Each rule has keys (collective, inclusive byte range,
nranks, nnodes, position-in-step, numPipeOps, regBuff) and a choice (algorithm, protocol,
channels, chunk size). Besides the rules (format version 3): ``communicators``, an ordered tuple of
``CommunicatorRule``s (group kind and shape -> :class:`~dynamiccl.knobs.comm_config.CommConfig`),
and ``job_env``, the per-job NCCL settings of :mod:`dynamiccl.knobs.job_env`. Names are the
spellings of NVIDIA's example tuner CSV (``COLL_BY_NAME``, ``ALGORITHM_BY_NAME``,
``PROTOCOL_BY_NAME``) in every format.

Lookup semantics
----------------
There is one semantics, implemented here and in the C plugin, and it is the one NCCL's example
plugin uses: **first match wins**.

A call is described by its :class:`~dynamiccl.callkey.CallKey`: its collective (``ncclFunc_t``),
``nbytes`` (NCCL's ``nBytes``, in bytes), the ``nranks`` and ``nnodes`` of its communicator, its
``position`` (0-based index of the call among the collectives issued on the same communicator
within one training step; -1 = unknown), ``num_pipe_ops`` (NCCL's numPipeOps, >= 1) and
``reg_buff`` (0 or 1).

A rule *matches* a call when its collective is the call's, ``min_bytes <= nbytes <= max_bytes``,
and each of nranks, nnodes, position, num_pipe_ops and reg_buff is -1 ("any") in the rule or equal
to the call's value. So a call whose position is unknown (-1) matches only rules with position -1.

``DecisionTable.lookup`` returns the first matching rule in table (file) order, or None.

Positions at run time
---------------------
NCCL never says where a call sits in a training step, so the plugin counts. A table's ``steps``
hold ``StepShape`` lines for communicator shapes (nranks, nnodes): the number of tunable
collectives per step and the step's first call (the *anchor*: collective and nBytes). Several
communicators of one shape (a DP group and a world group of 8 ranks, say) get one line each,
told apart by their anchors. ``PositionCounter`` is the counting rule, the same in Python and C:
after a call that matches the anchor of one of its shape's lines (the first in table order) the
position is 0 and counts up; once that line's ``calls_per_step`` calls have passed, the next call
must be an anchor again, else the position is unknown (-1) until an anchor comes. Warm-up calls that no trace saw
(DDP's initial broadcast, a bucket rebuild) so cost position rules at most one step. Every rank
of a communicator sees the same sequence of collectives, so every rank decides alike.

``DecisionTable.choose`` applies the table to NCCL's cost table (predicted µs per
[algorithm][protocol]; a negative or NaN entry is a cell NCCL disabled) exactly as the plugin does:

1. Walk the rules in order and skip those that do not match.
2. A matching rule's candidate cells are (algorithm, protocol) when both are set; every enabled
   cell of its algorithm when protocol is None; every enabled cell with its protocol when
   algorithm is None; NCCL's own arg-min cell when both are None (a channels-only rule).
3. The rule *applies* if at least one candidate cell is enabled (a cell NCCL disabled is never
   revived; for a channels-only rule: if NCCL has any enabled cell). It then picks the candidate
   with the lowest NCCL cost (ties: lowest algorithm, then protocol index, NCCL's own scan order),
   and its channels (-1 = keep NCCL's, reported as 0).
4. The first rule that applies wins. A matching rule that does not apply is skipped and the walk
   goes on, as NCCL's example plugin does when the requested cell is IGNORE.
5. If no rule applies: NCCL's own arg-min over enabled cells (algorithm-major, then protocol;
   the lowest index wins ties), channels 0 ("NCCL decides"). If every cell is disabled, NCCL
   itself fails the call; ``choose`` raises ValueError.

Chunk sizes
-----------
The rule that decided a call also gives its chunk size (``Choice.chunk_bytes``; -1 keeps NCCL's),
which the plugin hands NCCL through tuner ABI v6's ``getChunkSize`` (NCCL 2.30.3+). NCCL does not
ask it right after ``getCollInfo`` with the same nBytes (NVIDIA/nccl v2.30.3 ``src/enqueue.cc``):
``ncclPrepareTasks`` calls ``getCollInfo`` once per set of a group's tasks of one (collective,
op, type) within 4x of each other in size, with their summed nBytes; later, while scheduling,
``calcCollChunking`` calls ``getChunkSize`` for each task, once per part of it (the bytes it puts
on one channel, with nChannels 1; the whole task on CollNet), with the cell NCCL settled on. So
the plugin remembers, per communicator and per collective, the last decision (nBytes, cell, chunk:
``ChunkMemory``) and writes its chunk into ``*chunkSize`` only when

- the deciding rule (or the instrumented variant's override) sets ``chunk_bytes``,
- ``getChunkSize``'s collective has a decision and its nBytes is at most that decision's (a part
  of the decided call; anything larger was not decided by it: NCCL's value stays),
- the algorithm and protocol NCCL ended up with are the cell the decision chose (if NCCL runs
  something else, the chunk was not chosen for it), and
- ``DYNAMICCL_TUNER_NO_CHUNK`` was not ``1`` when the communicator was created (the launcher sets
  it where :func:`dynamiccl.knobs.safety.refusals` refuses the table's chunk sizes).

A group with two sets of one collective (two data types, or sizes more than 4x apart) is decided
twice before either is scheduled; the parts of the first then get the second's chunk where the
cell and size allow, as one memory per collective cannot tell them apart. The value is written as
the rule gives it: NCCL clamps it to the largest chunk its buffers allow (``bufferMaxChunkSize`` in
``calcCollChunking``), so a chunk is never above what NCCL's buffers hold. A NULL ``chunkSize`` or
context is left alone.

Communicators
-------------
``DecisionTable.communicator_config(kind, nranks, nnodes)``: the config of the first
``CommunicatorRule`` (table order) whose kind is None ("any") or the group's kind
(:data:`dynamiccl.trace.schema.GROUP_KINDS`) and whose nranks and nnodes are -1 ("any") or the
group's; ``CommConfig()`` (all NCCL's defaults) when none matches. The launcher applies it when the
group's communicator is created (``ncclConfig_t``); the tuner plugin never sees it.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field
from typing import Any, Sequence

from dynamiccl.callkey import CallKey
from dynamiccl.errors import InputError
from dynamiccl.knobs.chunk import KEEP_CHUNK, check_chunk_bytes
from dynamiccl.knobs.comm_config import CommConfig
from dynamiccl.knobs.job_env import check_job_env_value
from dynamiccl.nccl import (
    FUNC_OP,
    KEEP,
    MAX_CHANNELS,
    TUNABLE_FUNCS,
    Algorithm,
    Func,
    Protocol,
    nccl_argmin,
    supported_configs,
)

# Newest version of the table's JSON format (``json_format``); a table keeps the version it was
# read with. Version 2 added ``steps`` and ``nccl_env`` (now ``job_env``); 3 added rules'
# ``chunk_bytes`` and ``communicators``, and renamed ``nccl_env`` to ``job_env``.
FORMAT_VERSION = 3
MAX_BYTES = 2**64 - 1  # NCCL's nBytes is a size_t
C_INT_MAX = 2**31 - 1  # the plugins store counts in C ints

# The spellings of NVIDIA's example tuner CSV (its parser uses strcmp: case matters); every format
# of a table uses them.
COLL_BY_NAME = {FUNC_OP[f]: f for f in TUNABLE_FUNCS}
ALGORITHM_BY_NAME = {a.name_lower: a for a in Algorithm}
PROTOCOL_BY_NAME = {p.name_lower: p for p in Protocol}

RULE_INT_FIELDS = ("min_bytes", "max_bytes", "nranks", "nnodes", "position", "num_pipe_ops",
                   "reg_buff", "channels")
# The keys a rule matches a call by besides its collective and byte range (-1 = any).
MATCH_KEYS = ("nranks", "nnodes", "position", "num_pipe_ops", "reg_buff")


# --- Rule ------------------------------------------------------------------------------------------

def _as_int(value: Any, name: str) -> int:
    # bool is an int subclass; True as a byte count is always a mistake.
    if isinstance(value, bool):
        raise InputError(None, name, f"expected an integer, got boolean {value!r}")
    try:
        return operator.index(value)  # accepts int and numpy integers, refuses floats and strings
    except TypeError:
        raise InputError(None, name, f"expected an integer, got {type(value).__name__} {value!r}") from None


def _as_enum(value: Any, enum_type, name: str, allow_keep: bool):
    if value is None and allow_keep:
        return None
    if isinstance(value, enum_type):
        return value
    number = _as_int(value, name)
    if allow_keep and number == KEEP:
        return None
    try:
        return enum_type(number)
    except ValueError:
        names = ", ".join(f"{m.name.lower()} ({m.value})" for m in enum_type)
        raise InputError(None, name, f"unknown {name} {number}; expected one of {names}") from None


def _names(members) -> str:
    return ", ".join(m.name_lower for m in members)


def _tunable_func(value: Any, name: str) -> Func:
    """``value`` as one of the collectives NCCL's tuner is asked about.

    Raises:
        InputError: naming ``name``, for another collective or something that is not one.
    """
    coll = _as_enum(value, Func, name, allow_keep=False)
    if coll not in TUNABLE_FUNCS:
        raise InputError(None, name, f"NCCL's tuner is never asked about {FUNC_OP[coll]}; "
                         f"expected one of {', '.join(COLL_BY_NAME)}")
    return coll


@dataclass(frozen=True)
class Rule:
    """One line of a decision table: keys that a call must match, and the choice to apply.

    Keys (-1 = any): ``coll`` (one of the 5 collectives NCCL's tuner sees), ``min_bytes`` ..
    ``max_bytes`` (inclusive, bytes, 0 .. 2**64-1), ``nranks`` and ``nnodes`` of the communicator
    (>= 1; nnodes <= nranks), ``position`` (>= 0: index of the call among the collectives on its
    communicator within one training step), ``num_pipe_ops`` (>= 1), ``reg_buff`` (0 or 1).

    Choice: ``algorithm`` / ``protocol`` (None = keep NCCL's), ``channels`` (-1 = keep NCCL's,
    else 1..MAX_CHANNELS), ``chunk_bytes`` (bytes, tuner ABI v6 getChunkSize; -1 = keep NCCL's, else
    a power of two 4 KiB .. 64 MiB, :func:`dynamiccl.knobs.chunk.check_chunk_bytes`). Integers (also
    numpy integers) given for enum fields are converted; -1 for algorithm/protocol means None.

    Raises:
        InputError: (source None, field = the Rule field) for a wrong type, a value out of range,
            or an (algorithm, protocol) that NCCL cannot run for ``coll`` -- if only one of them is
            set, at least one supported pair with it must exist.
    """

    coll: Func
    min_bytes: int
    max_bytes: int
    nranks: int = KEEP
    nnodes: int = KEEP
    position: int = KEEP
    num_pipe_ops: int = KEEP
    reg_buff: int = KEEP
    algorithm: Algorithm | None = None
    protocol: Protocol | None = None
    channels: int = KEEP
    chunk_bytes: int = KEEP_CHUNK

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # frozen dataclass: normalise in place once, here
        set_field(self, "coll", _tunable_func(self.coll, "coll"))
        for name in RULE_INT_FIELDS:
            set_field(self, name, _as_int(getattr(self, name), name))
        try:
            set_field(self, "chunk_bytes", check_chunk_bytes(_as_int(self.chunk_bytes, "chunk_bytes")))
        except ValueError as err:
            raise InputError(None, "chunk_bytes", str(err).removeprefix("chunk_bytes: ")) from None
        set_field(self, "algorithm", _as_enum(self.algorithm, Algorithm, "algorithm", allow_keep=True))
        set_field(self, "protocol", _as_enum(self.protocol, Protocol, "protocol", allow_keep=True))
        self._check_ranges()
        self._check_supported()

    def _check_ranges(self) -> None:
        for name in ("min_bytes", "max_bytes"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_BYTES:
                raise InputError(None, name, f"{value} is out of range; expected 0 .. 2**64-1 bytes")
        if self.min_bytes > self.max_bytes:
            raise InputError(None, "min_bytes", f"min_bytes {self.min_bytes} > max_bytes "
                             f"{self.max_bytes}; expected an inclusive range min <= max")
        for name, lowest, what in (("nranks", 1, "ranks"), ("nnodes", 1, "nodes"),
                                   ("position", 0, "a 0-based position"),
                                   ("num_pipe_ops", 1, "pipelined ops")):
            value = getattr(self, name)
            if value != KEEP and not lowest <= value <= C_INT_MAX:
                raise InputError(None, name, f"{value} is out of range; expected -1 (any) or "
                                 f"{lowest} .. {C_INT_MAX} {what}")
        if self.nranks != KEEP and self.nnodes != KEEP and self.nnodes > self.nranks:
            raise InputError(None, "nnodes", f"nnodes {self.nnodes} > nranks {self.nranks}; "
                             "a communicator has at least one rank per node")
        if self.reg_buff not in (KEEP, 0, 1):
            raise InputError(None, "reg_buff", f"{self.reg_buff} is out of range; expected -1 (any), 0 or 1")
        if self.channels != KEEP and not 1 <= self.channels <= MAX_CHANNELS:
            raise InputError(None, "channels", f"{self.channels} is out of range; expected -1 "
                             f"(keep NCCL's) or 1 .. {MAX_CHANNELS}")

    def _check_supported(self) -> None:
        pairs = supported_configs(self.coll)
        coll_name = FUNC_OP[self.coll]
        algos = sorted({a for a, _ in pairs})
        if self.algorithm is not None and self.algorithm not in algos:
            raise InputError(None, "algorithm", f"NCCL cannot run {coll_name} with "
                             f"{self.algorithm.name_lower}; expected one of {_names(algos)}")
        if self.protocol is None:
            return
        if self.algorithm is not None:
            protos = [p for a, p in pairs if a == self.algorithm]
            if self.protocol not in protos:
                raise InputError(None, "protocol", f"NCCL cannot run {coll_name} with "
                                 f"{self.algorithm.name_lower}/{self.protocol.name_lower}; "
                                 f"{self.algorithm.name_lower} runs only {_names(protos)}")
        elif not any(p == self.protocol for _, p in pairs):
            raise InputError(None, "protocol", f"NCCL cannot run {coll_name} with protocol "
                             f"{self.protocol.name_lower} under any algorithm")

    @property
    def keeps_nccl(self) -> bool:
        """Whether the rule keeps NCCL's algorithm, protocol, channels and chunk size (it then changes
        nothing)."""
        return (self.algorithm is None and self.protocol is None and self.channels == KEEP
                and self.chunk_bytes == KEEP_CHUNK)

    def overlaps(self, other: "Rule", *, position: bool = True) -> bool:
        """Whether some call could match both rules: the same collective, byte ranges that share a
        size, and each of nranks, nnodes, num_pipe_ops, reg_buff -- and position, unless
        ``position`` is False -- -1 ("any") in either rule or equal in both."""
        keys = MATCH_KEYS if position else tuple(key for key in MATCH_KEYS if key != "position")
        return (self.coll == other.coll and self.min_bytes <= other.max_bytes and other.min_bytes <= self.max_bytes
                and all(KEEP in (getattr(self, key), getattr(other, key))
                        or getattr(self, key) == getattr(other, key) for key in keys))

    def matches(self, call: CallKey) -> bool:
        """Whether this rule's keys all match ``call`` (see the module docstring); a call whose
        position is unknown (-1) matches only rules with position -1."""
        return (call.coll == self.coll
                and self.min_bytes <= call.nbytes <= self.max_bytes
                and (self.nranks == KEEP or self.nranks == call.nranks)
                and (self.nnodes == KEEP or self.nnodes == call.nnodes)
                and (self.position == KEEP or self.position == call.position)
                and (self.num_pipe_ops == KEEP or self.num_pipe_ops == call.num_pipe_ops)
                and (self.reg_buff == KEEP or self.reg_buff == call.reg_buff))


@dataclass(frozen=True)
class StepShape:
    """How the plugin counts positions on communicators of one shape (see the module docstring).

    ``nranks`` and ``nnodes`` name the communicator shape (exact); ``calls_per_step`` (>= 1) is the
    number of tunable collectives per training step on it; ``anchor_coll`` / ``anchor_bytes``
    (bytes, NCCL's nBytes) are the step's first call.

    Raises:
        InputError: (source None, field = the StepShape field) for a wrong type or value.
    """

    nranks: int
    nnodes: int
    calls_per_step: int
    anchor_coll: Func
    anchor_bytes: int

    def __post_init__(self) -> None:
        for name in ("nranks", "nnodes", "calls_per_step", "anchor_bytes"):
            object.__setattr__(self, name, _as_int(getattr(self, name), name))
        object.__setattr__(self, "anchor_coll", _tunable_func(self.anchor_coll, "anchor_coll"))
        for name in ("nranks", "nnodes", "calls_per_step"):
            if not 1 <= getattr(self, name) <= C_INT_MAX:
                raise InputError(None, name, f"{getattr(self, name)} is out of range; expected 1 .. {C_INT_MAX}")
        if self.nnodes > self.nranks:
            raise InputError(None, "nnodes", f"nnodes {self.nnodes} > nranks {self.nranks}")
        if not 0 <= self.anchor_bytes <= MAX_BYTES:
            raise InputError(None, "anchor_bytes", f"{self.anchor_bytes} is out of range; expected 0 .. 2**64-1")


def _group_kinds() -> tuple[str, ...]:
    # Imported here: dynamiccl.trace.schema brings pandas and pyarrow, which reading a table (the
    # launcher, the plugin tools) does not otherwise need.
    from dynamiccl.trace.schema import GROUP_KINDS

    return GROUP_KINDS


def _comm_config(value: Any) -> CommConfig:
    """``value`` (a ``CommConfig`` or its ``set_fields`` dict) as a ``CommConfig``.

    Raises:
        InputError: field ``config.<name>`` for an unknown or bad field, ``config`` for a wrong type.
    """
    if isinstance(value, CommConfig):
        return value
    if not isinstance(value, dict):
        raise InputError(None, "config", f"expected a CommConfig or an object of its fields, got "
                         f"{type(value).__name__} {value!r}")
    names = tuple(CommConfig.__dataclass_fields__)
    for key in value:
        if key not in names:
            raise InputError(None, f"config.{key}", f"unknown setting; expected one of {', '.join(names)}")
    try:
        return CommConfig(**value)
    except ValueError as err:
        message = str(err)
        head, _, rest = message.partition(": ")
        if head in names:  # "max_ctas: expected ..."
            raise InputError(None, f"config.{head}", rest) from None
        first = message.split(" ", 1)[0]  # "min_ctas 4 is above max_ctas 2"
        raise InputError(None, f"config.{first}" if first in names else "config", message) from None


@dataclass(frozen=True)
class CommunicatorRule:
    """The ``ncclConfig_t`` settings for the communicators of one group kind and shape.

    ``kind``: one of :data:`dynamiccl.trace.schema.GROUP_KINDS` (``dp``, ``tp``, ...) or None (any);
    ``nranks`` / ``nnodes``: the communicator's (-1 = any; >= 1, nnodes <= nranks); ``config``: a
    :class:`~dynamiccl.knobs.comm_config.CommConfig` (a dict of its fields is converted).

    Raises:
        InputError: (source None, field = ``kind``, ``nranks``, ``nnodes`` or ``config.<field>``) for
            a wrong type or value.
    """

    kind: str | None = None
    nranks: int = KEEP
    nnodes: int = KEEP
    config: CommConfig = CommConfig()

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in _group_kinds():
            raise InputError(None, "kind", f"unknown group kind {self.kind!r}; expected one of "
                             f"{', '.join(_group_kinds())} or none (any)")
        for name, what in (("nranks", "ranks"), ("nnodes", "nodes")):
            value = _as_int(getattr(self, name), name)
            if value != KEEP and not 1 <= value <= C_INT_MAX:
                raise InputError(None, name, f"{value} is out of range; expected -1 (any) or 1 .. {C_INT_MAX} {what}")
            object.__setattr__(self, name, value)
        if self.nranks != KEEP and self.nnodes != KEEP and self.nnodes > self.nranks:
            raise InputError(None, "nnodes", f"nnodes {self.nnodes} > nranks {self.nranks}; "
                             "a communicator has at least one rank per node")
        object.__setattr__(self, "config", _comm_config(self.config))

    def matches(self, kind: str | None, nranks: int, nnodes: int) -> bool:
        """Whether a communicator of group ``kind`` with ``nranks`` ranks on ``nnodes`` nodes takes
        this rule (kind None and -1 in the rule match anything)."""
        return ((self.kind is None or self.kind == kind)
                and (self.nranks == KEEP or self.nranks == nranks)
                and (self.nnodes == KEEP or self.nnodes == nnodes))


class PositionCounter:
    """One communicator's position-in-step counter, as the plugin keeps it (module docstring).

    ``lines``: the step lines of the communicator's shape, in table order (``steps_for``); with
    none, every position is unknown (-1).
    """

    def __init__(self, lines: Sequence[StepShape]):
        self.lines = tuple(lines)
        self.line: StepShape | None = None
        self.position = -1

    def advance(self, coll: Func, nbytes: int) -> int:
        """Count one tunable call; returns its position (-1 = unknown)."""
        if self.line is not None and 0 <= self.position < self.line.calls_per_step - 1:
            self.position += 1
            return self.position
        self.line, self.position = None, -1
        for line in self.lines:
            if coll == line.anchor_coll and nbytes == line.anchor_bytes:
                self.line, self.position = line, 0
                break
        return self.position


@dataclass(frozen=True)
class Choice:
    """What the plugin makes NCCL run for one call.

    ``channels`` is 0 for "NCCL decides" (the plugin leaves ``*nChannels`` at 0), else the rule's
    channel count. ``rule_index`` is the index of the rule that applied, None for NCCL's own choice.
    ``chunk_bytes`` is the rule's chunk size, which getChunkSize gives NCCL when NCCL runs
    (``algorithm``, ``protocol``) (module docstring); -1 keeps NCCL's.
    """

    algorithm: Algorithm
    protocol: Protocol
    channels: int
    rule_index: int | None
    chunk_bytes: int = KEEP_CHUNK


class ChunkMemory:
    """One communicator's last decision per collective and the chunk ``getChunkSize`` gives for it,
    as the plugin keeps them (module docstring, "Chunk sizes").

    ``no_chunk``: ``DYNAMICCL_TUNER_NO_CHUNK=1`` at the communicator's init (NCCL's chunk always).
    """

    def __init__(self, no_chunk: bool = False):
        self.no_chunk = no_chunk
        self.last: dict[Func, tuple[int, Choice | None]] = {}

    def remember(self, coll: Func, nbytes: int, choice: Choice | None) -> None:
        """Note getCollInfo's decision for (``coll``, ``nbytes``); None: NCCL decided (no rule)."""
        self.last[Func(coll)] = (nbytes, choice)

    def chunk(self, coll: Func, nbytes: int, algorithm: int, protocol: int, nccl_chunk_bytes: int) -> int:
        """The chunk size (bytes) getChunkSize leaves for NCCL's (collective, part's nBytes, the cell
        NCCL runs), NCCL's own ``nccl_chunk_bytes`` passed in."""
        nbytes_decided, choice = self.last.get(Func(coll), (0, None))
        if (self.no_chunk or choice is None or choice.chunk_bytes == KEEP_CHUNK or nbytes > nbytes_decided
                or (int(choice.algorithm), int(choice.protocol)) != (algorithm, protocol)):
            return nccl_chunk_bytes
        return choice.chunk_bytes


def _cost_rows(cost_table: Sequence[Sequence[float]]) -> list[list[float]]:
    try:
        rows = [[float(cost) for cost in row] for row in cost_table]
    except (TypeError, ValueError) as err:
        raise ValueError(f"cost_table must be {len(Algorithm)}x{len(Protocol)} numbers: {err}") from None
    if len(rows) != len(Algorithm) or any(len(row) != len(Protocol) for row in rows):
        raise ValueError(f"cost_table must be {len(Algorithm)}x{len(Protocol)} "
                         f"([algorithm][protocol]); got {len(rows)} rows of "
                         f"{sorted({len(row) for row in rows})} entries")
    return rows


# --- DecisionTable ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class DecisionTable:
    """An ordered tuple of rules, the provenance that produced them, and the format version; the
    step lines, the per-communicator settings and the job's environment.

    ``provenance`` is free-form JSON data (policy, cost model, NCCL version...); it is stored as
    its JSON round trip, so tuples become lists. ``job_env``: setting name -> integer value, the
    settings of :data:`dynamiccl.knobs.job_env.JOB_ENV_SETTINGS` the launcher exports.
    ``communicators``: ``CommunicatorRule``s, first match wins (``communicator_config``). Lookup
    semantics: see the module docstring.

    Raises:
        TypeError: if ``rules`` / ``steps`` / ``communicators`` hold something else, or
            ``provenance`` is not a JSON-serialisable dict (NaN and infinities are not JSON).
        InputError: (source None, field ``job_env.NAME``) for a setting a table may not carry or a
            bad value; (field ``steps[i]``) for a repeated step anchor.
        ValueError: if ``version`` is not 1 .. FORMAT_VERSION, or too old for what the table has
            (steps and job_env need 2; chunk sizes and communicators need 3).
    """

    rules: tuple[Rule, ...] = ()
    provenance: dict = field(default_factory=dict)
    version: int = FORMAT_VERSION
    steps: tuple[StepShape, ...] = ()
    job_env: dict = field(default_factory=dict)
    communicators: tuple[CommunicatorRule, ...] = ()

    def __post_init__(self) -> None:
        rules = tuple(self.rules)
        for index, rule in enumerate(rules):
            if not isinstance(rule, Rule):
                raise TypeError(f"rules[{index}] is a {type(rule).__name__}, expected a Rule")
        steps = tuple(self.steps)
        anchors = set()
        for index, step in enumerate(steps):
            if not isinstance(step, StepShape):
                raise TypeError(f"steps[{index}] is a {type(step).__name__}, expected a StepShape")
            key = (step.nranks, step.nnodes, step.anchor_coll, step.anchor_bytes)
            if key in anchors:
                raise InputError(None, f"steps[{index}]", f"a second step line for {step.nranks} ranks "
                                 f"on {step.nnodes} nodes with the same anchor; expected one per anchor")
            anchors.add(key)
        job_env = dict(self.job_env)
        for key, value in job_env.items():
            try:
                check_job_env_value(key, value)
            except ValueError as err:
                raise InputError(None, f"job_env.{key}", str(err).removeprefix(f"{key}: ")) from None
        communicators = tuple(self.communicators)
        for index, rule in enumerate(communicators):
            if not isinstance(rule, CommunicatorRule):
                raise TypeError(f"communicators[{index}] is a {type(rule).__name__}, expected a CommunicatorRule")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "job_env", job_env)
        object.__setattr__(self, "communicators", communicators)
        if not isinstance(self.provenance, dict):
            raise TypeError(f"provenance must be a dict, got {type(self.provenance).__name__}")
        try:
            provenance = json.loads(json.dumps(self.provenance, allow_nan=False))
        except (TypeError, ValueError) as err:
            raise TypeError(f"provenance must be JSON-serialisable: {err}") from None
        if isinstance(self.version, bool) or not isinstance(self.version, int) \
                or not 1 <= self.version <= FORMAT_VERSION:
            raise ValueError(f"version must be 1 .. {FORMAT_VERSION}, got {self.version!r}")
        if (steps or job_env) and self.version < 2:
            raise ValueError("steps and job_env need format version 2")
        if self.version < 3 and (communicators or any(rule.chunk_bytes != KEEP_CHUNK for rule in rules)):
            raise ValueError("chunk sizes and communicators need format version 3")
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "provenance", provenance)

    def communicator_config(self, kind: str | None, nranks: int, nnodes: int) -> CommConfig:
        """The ``ncclConfig_t`` settings for a communicator of group ``kind`` with ``nranks`` ranks on
        ``nnodes`` nodes: the first matching ``CommunicatorRule``'s config, else ``CommConfig()``
        (NCCL's defaults)."""
        for rule in self.communicators:
            if rule.matches(kind, nranks, nnodes):
                return rule.config
        return CommConfig()

    def steps_for(self, nranks: int, nnodes: int) -> tuple[StepShape, ...]:
        """The step lines of communicators with ``nranks`` ranks on ``nnodes`` nodes, table order."""
        return tuple(step for step in self.steps if step.nranks == nranks and step.nnodes == nnodes)

    # --- lookup ---

    def lookup(self, call: CallKey) -> Rule | None:
        """The first rule (table order) whose keys all match ``call``, or None."""
        for rule in self.rules:
            if rule.matches(call):
                return rule
        return None

    def choose(self, cost_table: Sequence[Sequence[float]], call: CallKey) -> Choice:
        """Apply the table to NCCL's cost table exactly as the tuner plugin does.

        Args:
            cost_table: 7x3 array-like, NCCL's predicted time in µs per [algorithm][protocol];
                a negative (or NaN) entry is a cell NCCL disabled and is never chosen.
            call: what the plugin sees about the call.

        Returns:
            The ``Choice`` of the first rule that applies (see the module docstring), else NCCL's
            own arg-min with channels 0 and rule_index None.

        Raises:
            ValueError: if ``cost_table`` is not 7x3 numbers, or every cell is disabled (NCCL
                itself errors out then).
        """
        costs = _cost_rows(cost_table)
        nccl_cell = nccl_argmin(costs)
        if nccl_cell is None:
            raise ValueError("every cell of the cost table is disabled (< 0); NCCL fails the call")
        for index, rule in enumerate(self.rules):
            if not rule.matches(call):
                continue
            # The rule's cheapest cell (NCCL's own for a channels-only rule).
            cell = nccl_argmin(costs, rule.algorithm, rule.protocol)
            if cell is None:
                continue  # every requested cell is disabled: never revive one, try the next rule
            channels = 0 if rule.channels == KEEP else rule.channels
            return Choice(cell[0], cell[1], channels, index, rule.chunk_bytes)
        return Choice(nccl_cell[0], nccl_cell[1], 0, None)

    # --- display ---

    def describe(self) -> str:
        """A fixed-width text table of the rules (K/M/G = 2**10/2**20/2**30 bytes; -1 shown as
        "any" for keys and "nccl" for choices), then one line per communicator rule and one for the
        job's environment, if the table has them."""
        header = ("#", "coll", "bytes", "nranks", "nnodes", "position", "pipe_ops", "reg_buff",
                  "algorithm", "protocol", "channels", "chunk")
        rows = [header]
        for index, rule in enumerate(self.rules):
            rows.append((
                str(index), FUNC_OP[rule.coll],
                f"{exact_bytes_text(rule.min_bytes)}..{exact_bytes_text(rule.max_bytes)}",
                _any(rule.nranks), _any(rule.nnodes), _any(rule.position), _any(rule.num_pipe_ops),
                _any(rule.reg_buff),
                rule.algorithm.name_lower if rule.algorithm is not None else "nccl",
                rule.protocol.name_lower if rule.protocol is not None else "nccl",
                "nccl" if rule.channels == KEEP else str(rule.channels),
                "nccl" if rule.chunk_bytes == KEEP_CHUNK else exact_bytes_text(rule.chunk_bytes),
            ))
        widths = [max(len(row[col]) for row in rows) for col in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                 for row in rows]
        if not self.rules:
            lines.append("(no rules: NCCL decides every call)")
        for rule in self.communicators:
            lines.append(f"communicator kind={rule.kind or 'any'} nranks={_any(rule.nranks)} "
                         f"nnodes={_any(rule.nnodes)}: {rule.config.describe()}")
        if self.job_env:
            lines.append("job_env: " + " ".join(f"{k}={v}" for k, v in self.job_env.items()))
        return "\n".join(lines) + "\n"


# --- helpers: display ------------------------------------------------------------------------------

_BYTE_UNITS = ((2**40, "T"), (2**30, "G"), (2**20, "M"), (2**10, "K"))


def exact_bytes_text(nbytes: int) -> str:
    """64K, 1M, 64K-1 (65535), 64K+1 (65537), "max" for 2**64-1, else the plain number."""
    if nbytes == MAX_BYTES:
        return "max"
    for unit, suffix in _BYTE_UNITS:
        for offset, tail in ((0, ""), (1, "-1"), (-1, "+1")):
            rounded = nbytes + offset
            if rounded >= unit and rounded % unit == 0:
                return f"{rounded // unit}{suffix}{tail}"
    return str(nbytes)


def _any(value: int) -> str:
    return "any" if value == KEEP else str(value)


__all__ = [
    "ALGORITHM_BY_NAME", "COLL_BY_NAME", "C_INT_MAX", "FORMAT_VERSION", "MAX_BYTES",
    "PROTOCOL_BY_NAME", "RULE_INT_FIELDS", "Choice", "ChunkMemory", "CommunicatorRule", "DecisionTable",
    "PositionCounter", "Rule",
    "StepShape",
]
