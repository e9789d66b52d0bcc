"""Decision tables: which NCCL algorithm, protocol and channel count to use for a collective call.

A table is an ordered tuple of ``Rule``s. Each rule has keys (collective, inclusive byte range,
nranks, nnodes, position-in-step, numPipeOps, regBuff) and a choice (algorithm, protocol,
channels). It is stored as versioned JSON (``dynamiccl launch`` turns it into the plain-text form
the dynamiccl tuner plugin reads, see ``dynamiccl.plugin.table_text``) and can be exported as the
CSV of NVIDIA's example tuner plugin (``NCCL_TUNER_CONFIG_FILE``).

Lookup semantics
----------------
There is one semantics, implemented here and in the C plugin, and it is the one NCCL's example
plugin uses: **first match wins**.

A call is described by its collective (``ncclFunc_t``), ``nbytes`` (NCCL's ``nBytes``, in bytes),
the ``nranks`` and ``nnodes`` of its communicator, its ``position`` (0-based index of the call
among the collectives issued on the same communicator within one training step; -1 = unknown),
``num_pipe_ops`` (NCCL's numPipeOps, >= 1) and ``reg_buff`` (0 or 1).

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

Formats
-------
JSON: ``{"format": "dynamiccl-decision-table", "version": 2, "provenance": {...}, "rules": [...],
"steps": [...], "nccl_env": {...}}`` with one object per rule (keys as the ``Rule`` fields; names
in NCCL's example CSV spellings; ``algorithm``/``protocol`` -1 = keep NCCL's), one per step shape
(keys as the ``StepShape`` fields) and the init-time Send/Recv settings (``NCCL_ENV_KEYS``) the
launcher exports. ``steps`` and ``nccl_env`` are optional and need version 2; version 1 files
(rules only) are still read.

CSV (NVIDIA's example plugin): ``collective_type,min_bytes,max_bytes,algorithm,protocol,channels,
nNodes,nRanks[,numPipeOps[,regBuff]]`` -- note nNodes before nRanks. NVIDIA's parser silently
mis-reads unknown names (as ring / simple / allreduce), non-integers, empty fields, extra fields
and lines longer than 255 bytes; ``from_csv`` rejects all of these with the line and field. The
CSV has no position key and no "keep NCCL's algorithm/protocol", so such rules cannot be exported.
"""

from __future__ import annotations

import json
import operator
import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dynamiccl import __version__
from dynamiccl.atomic import write_text
from dynamiccl.errors import InputError
from dynamiccl.nccl import (
    FUNC_OP,
    KEEP,
    MAX_CHANNELS,
    TUNABLE_FUNCS,
    Algorithm,
    Func,
    Protocol,
    supported_configs,
)

FORMAT_NAME = "dynamiccl-decision-table"
FORMAT_VERSION = 2  # newest JSON format version this module reads and writes (2 adds steps, nccl_env)
MAX_BYTES = 2**64 - 1  # NCCL's nBytes is a size_t
_C_INT_MAX = 2**31 - 1  # the plugins store counts in C ints
CSV_MAX_LINE_BYTES = 255  # NVIDIA's parser: fgets into a 256-byte buffer, so 255 bytes + NUL

# Exact spellings of NVIDIA's example CSV (its parser uses strcmp: case matters).
_COLL_BY_NAME = {FUNC_OP[f]: f for f in TUNABLE_FUNCS}
_ALGO_BY_NAME = {a.name_lower: a for a in Algorithm}
_PROTO_BY_NAME = {p.name_lower: p for p in Protocol}

_RULE_INT_FIELDS = ("min_bytes", "max_bytes", "nranks", "nnodes", "position", "num_pipe_ops",
                    "reg_buff", "channels")
_JSON_KEYS = ("coll", "min_bytes", "max_bytes", "nranks", "nnodes", "position", "num_pipe_ops",
              "reg_buff", "algorithm", "protocol", "channels")
_JSON_REQUIRED = ("coll", "min_bytes", "max_bytes", "algorithm", "protocol")
_JSON_TOP_KEYS = ("format", "version", "provenance", "rules", "steps", "nccl_env")
_STEP_KEYS = ("nranks", "nnodes", "calls_per_step", "anchor_coll", "anchor_bytes")

# Init-time Send/Recv settings a table may carry for the launcher to export: NCCL reads them at
# communicator init and the tuner ABI never sees point-to-point calls (nccl-tuner-abi.md 4.4, 4.6).
NCCL_ENV_KEYS = ("NCCL_P2P_NET_CHUNKSIZE", "NCCL_P2P_NVL_CHUNKSIZE", "NCCL_P2P_PCI_CHUNKSIZE",
                 "NCCL_NCHANNELS_PER_NET_PEER", "NCCL_P2P_LL_THRESHOLD")

_CSV_FIELDS = ("collective_type", "min_bytes", "max_bytes", "algorithm", "protocol", "channels",
               "nNodes", "nRanks", "numPipeOps", "regBuff")
_CSV_FIELD_OF_RULE = {
    "coll": "collective_type", "min_bytes": "min_bytes", "max_bytes": "max_bytes",
    "algorithm": "algorithm", "protocol": "protocol", "channels": "channels", "nnodes": "nNodes",
    "nranks": "nRanks", "num_pipe_ops": "numPipeOps", "reg_buff": "regBuff", "position": "position",
}
_CSV_REQUIRED_FIELDS = 8
# NVIDIA's example plugin sets *nChannels = 1, then copies the field unless it is -1; 0 is what
# leaves NCCL's own channel choice in place (NCCL treats nChannels 0 as "keep").
_CSV_KEEP_CHANNELS = 0
_UNSIGNED_RE = re.compile(r"[0-9]+")
_SIGNED_RE = re.compile(r"-?[0-9]+")


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


@dataclass(frozen=True)
class Rule:
    """One line of a decision table: keys that a call must match, and the choice to apply.

    Keys (-1 = any): ``coll`` (one of the 5 collectives NCCL's tuner sees), ``min_bytes`` ..
    ``max_bytes`` (inclusive, bytes, 0 .. 2**64-1), ``nranks`` and ``nnodes`` of the communicator
    (>= 1; nnodes <= nranks), ``position`` (>= 0: index of the call among the collectives on its
    communicator within one training step), ``num_pipe_ops`` (>= 1), ``reg_buff`` (0 or 1).

    Choice: ``algorithm`` / ``protocol`` (None = keep NCCL's), ``channels`` (-1 = keep NCCL's,
    else 1..MAX_CHANNELS). Integers (also numpy integers) given for enum fields are converted; -1
    for algorithm/protocol means None.

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

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # frozen dataclass: normalise in place once, here
        coll = _as_enum(self.coll, Func, "coll", allow_keep=False)
        if coll not in TUNABLE_FUNCS:
            raise InputError(None, "coll", f"NCCL's tuner is never asked about {FUNC_OP[coll]}; "
                             f"expected one of {', '.join(_COLL_BY_NAME)}")
        set_field(self, "coll", coll)
        for name in _RULE_INT_FIELDS:
            set_field(self, name, _as_int(getattr(self, name), name))
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
            if value != KEEP and not lowest <= value <= _C_INT_MAX:
                raise InputError(None, name, f"{value} is out of range; expected -1 (any) or "
                                 f"{lowest} .. {_C_INT_MAX} {what}")
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

    def matches(self, coll: Func, nbytes: int, nranks: int, nnodes: int, position: int = -1,
                num_pipe_ops: int = 1, reg_buff: int = 0) -> bool:
        """Whether this rule's keys all match a call (see the module docstring).

        ``nbytes`` is NCCL's nBytes in bytes; ``position`` -1 means unknown, which only rules with
        position -1 match.
        """
        return (coll == self.coll
                and self.min_bytes <= nbytes <= self.max_bytes
                and (self.nranks == KEEP or self.nranks == nranks)
                and (self.nnodes == KEEP or self.nnodes == nnodes)
                and (self.position == KEEP or self.position == position)
                and (self.num_pipe_ops == KEEP or self.num_pipe_ops == num_pipe_ops)
                and (self.reg_buff == KEEP or self.reg_buff == reg_buff))


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
        coll = _as_enum(self.anchor_coll, Func, "anchor_coll", allow_keep=False)
        if coll not in TUNABLE_FUNCS:
            raise InputError(None, "anchor_coll", f"NCCL's tuner is never asked about {FUNC_OP[coll]}; "
                             f"expected one of {', '.join(_COLL_BY_NAME)}")
        object.__setattr__(self, "anchor_coll", coll)
        for name in ("nranks", "nnodes", "calls_per_step"):
            if not 1 <= getattr(self, name) <= _C_INT_MAX:
                raise InputError(None, name, f"{getattr(self, name)} is out of range; expected 1 .. {_C_INT_MAX}")
        if self.nnodes > self.nranks:
            raise InputError(None, "nnodes", f"nnodes {self.nnodes} > nranks {self.nranks}")
        if not 0 <= self.anchor_bytes <= MAX_BYTES:
            raise InputError(None, "anchor_bytes", f"{self.anchor_bytes} is out of range; expected 0 .. 2**64-1")


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
    """

    algorithm: Algorithm
    protocol: Protocol
    channels: int
    rule_index: int | None


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
    """An ordered tuple of rules, the provenance that produced them, and the format version.

    ``provenance`` is free-form JSON data (policy, cost model, NCCL version...); it is stored as
    its JSON round trip, so tuples become lists. Lookup semantics: see the module docstring.

    Raises:
        TypeError: if ``rules`` holds something other than ``Rule`` or ``provenance`` is not a
            JSON-serialisable dict (NaN and infinities are not JSON).
        ValueError: if ``version`` is not 1 .. FORMAT_VERSION.
    """

    rules: tuple[Rule, ...] = ()
    provenance: dict = field(default_factory=dict)
    version: int = FORMAT_VERSION
    steps: tuple[StepShape, ...] = ()
    nccl_env: dict = field(default_factory=dict)

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
        nccl_env = dict(self.nccl_env)
        for key, value in nccl_env.items():
            if key not in NCCL_ENV_KEYS:
                raise InputError(None, f"nccl_env.{key}", f"not a setting a table may carry; expected "
                                 f"one of {', '.join(NCCL_ENV_KEYS)}")
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _C_INT_MAX:
                raise InputError(None, f"nccl_env.{key}", f"expected a positive integer, got {value!r}")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "nccl_env", nccl_env)
        if not isinstance(self.provenance, dict):
            raise TypeError(f"provenance must be a dict, got {type(self.provenance).__name__}")
        try:
            provenance = json.loads(json.dumps(self.provenance, allow_nan=False))
        except (TypeError, ValueError) as err:
            raise TypeError(f"provenance must be JSON-serialisable: {err}") from None
        if isinstance(self.version, bool) or not isinstance(self.version, int) \
                or not 1 <= self.version <= FORMAT_VERSION:
            raise ValueError(f"version must be 1 .. {FORMAT_VERSION}, got {self.version!r}")
        if (steps or nccl_env) and self.version < 2:
            raise ValueError("steps and nccl_env need format version 2")
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "provenance", provenance)

    def steps_for(self, nranks: int, nnodes: int) -> tuple[StepShape, ...]:
        """The step lines of communicators with ``nranks`` ranks on ``nnodes`` nodes, table order."""
        return tuple(step for step in self.steps if step.nranks == nranks and step.nnodes == nnodes)

    # --- lookup ---

    def lookup(self, coll: Func, nbytes: int, nranks: int, nnodes: int, position: int = -1,
               num_pipe_ops: int = 1, reg_buff: int = 0) -> Rule | None:
        """The first rule (table order) whose keys all match the call, or None.

        ``nbytes`` in bytes; ``position`` -1 = unknown (matches only rules with position -1).
        """
        for rule in self.rules:
            if rule.matches(coll, nbytes, nranks, nnodes, position, num_pipe_ops, reg_buff):
                return rule
        return None

    def choose(self, cost_table: Sequence[Sequence[float]], coll: Func, nbytes: int, nranks: int,
               nnodes: int, position: int = -1, num_pipe_ops: int = 1, reg_buff: int = 0) -> Choice:
        """Apply the table to NCCL's cost table exactly as the tuner plugin does.

        Args:
            cost_table: 7x3 array-like, NCCL's predicted time in µs per [algorithm][protocol];
                a negative (or NaN) entry is a cell NCCL disabled and is never chosen.
            coll, nbytes (bytes), nranks, nnodes, position, num_pipe_ops, reg_buff: the call.

        Returns:
            The ``Choice`` of the first rule that applies (see the module docstring), else NCCL's
            own arg-min with channels 0 and rule_index None.

        Raises:
            ValueError: if ``cost_table`` is not 7x3 numbers, or every cell is disabled (NCCL
                itself errors out then).
        """
        costs = _cost_rows(cost_table)
        # Algorithm-major, then protocol: NCCL's scan order; min() keeps the first of equal costs.
        enabled = [(a, p) for a in Algorithm for p in Protocol if costs[a][p] >= 0]
        if not enabled:
            raise ValueError("every cell of the cost table is disabled (< 0); NCCL fails the call")

        def cost_of(cell: tuple[Algorithm, Protocol]) -> float:
            return costs[cell[0]][cell[1]]

        nccl_cell = min(enabled, key=cost_of)
        for index, rule in enumerate(self.rules):
            if not rule.matches(coll, nbytes, nranks, nnodes, position, num_pipe_ops, reg_buff):
                continue
            if rule.algorithm is None and rule.protocol is None:
                cell = nccl_cell  # channels-only rule
            else:
                candidates = [(a, p) for a, p in enabled
                              if rule.algorithm in (None, a) and rule.protocol in (None, p)]
                if not candidates:
                    continue  # every requested cell is disabled: never revive one, try the next rule
                cell = min(candidates, key=cost_of)
            channels = 0 if rule.channels == KEEP else rule.channels
            return Choice(cell[0], cell[1], channels, index)
        return Choice(nccl_cell[0], nccl_cell[1], 0, None)

    # --- JSON ---

    def to_json(self) -> str:
        """The table as versioned JSON text, one rule per line (stable: same table, same text)."""
        provenance = json.dumps(self.provenance, indent=2, allow_nan=False).replace("\n", "\n  ")
        if self.rules:
            lines = ",\n".join("    " + json.dumps(_rule_to_json(rule)) for rule in self.rules)
            rules = "[\n" + lines + "\n  ]"
        else:
            rules = "[]"
        extra = ""
        if self.steps:
            lines = ",\n".join("    " + json.dumps(_step_to_json(step)) for step in self.steps)
            extra += ',\n  "steps": [\n' + lines + "\n  ]"
        if self.nccl_env:
            extra += ',\n  "nccl_env": ' + json.dumps(self.nccl_env, sort_keys=True)
        return ("{\n"
                f'  "format": {json.dumps(FORMAT_NAME)},\n'
                f'  "version": {self.version},\n'
                f'  "provenance": {provenance},\n'
                f'  "rules": {rules}{extra}\n'
                "}\n")

    @classmethod
    def from_json(cls, text: str, source: str | os.PathLike = "<json>") -> DecisionTable:
        """Parse versioned JSON text (see the module docstring for the format).

        Raises:
            InputError: naming ``source`` and the key (``rules[i].field``) for invalid JSON,
                duplicate or unknown keys, a wrong ``format``, a ``version`` newer than
                FORMAT_VERSION, wrong types (booleans are not integers), out-of-range values or an
                (algorithm, protocol) NCCL cannot run for the collective.
        """
        try:
            data = json.loads(text, object_pairs_hook=_reject_duplicate_keys,
                              parse_constant=_reject_constant)
        except json.JSONDecodeError as err:
            raise InputError(source, f"line {err.lineno} column {err.colno}",
                             f"not valid JSON: {err.msg}") from None
        except _JsonProblem as err:
            raise InputError(source, None, str(err)) from None
        if not isinstance(data, dict):
            raise InputError(source, None, f"expected a JSON object with keys {', '.join(_JSON_TOP_KEYS)}; "
                             f"got {_json_type(data)}")
        unknown = [key for key in data if key not in _JSON_TOP_KEYS]
        if unknown:
            raise InputError(source, unknown[0], f"unknown key; expected only {', '.join(_JSON_TOP_KEYS)}")
        if data.get("format") != FORMAT_NAME:
            raise InputError(source, "format", f"expected {FORMAT_NAME!r}, got {data.get('format')!r}"
                             " (is this a dynamiccl decision table?)")
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InputError(source, "version",
                             f"expected a format version 1 .. {FORMAT_VERSION}, got {version!r}")
        if version > FORMAT_VERSION:
            raise InputError(source, "version", f"format version {version} is newer than this dynamiccl "
                             f"{__version__} reads (up to {FORMAT_VERSION}); upgrade dynamiccl")
        provenance = data.get("provenance", {})
        if not isinstance(provenance, dict):
            raise InputError(source, "provenance", f"expected an object, got {_json_type(provenance)}")
        if "rules" not in data:
            raise InputError(source, "rules", "missing required key (a list of rule objects)")
        items = data["rules"]
        if not isinstance(items, list):
            raise InputError(source, "rules", f"expected a list of rule objects, got {_json_type(items)}")
        rules = tuple(_rule_from_json(item, index, source) for index, item in enumerate(items))
        for key in ("steps", "nccl_env"):
            if key in data and version < 2:
                raise InputError(source, key, f"needs format version 2; this file says version {version}")
        steps_data = data.get("steps", [])
        if not isinstance(steps_data, list):
            raise InputError(source, "steps", f"expected a list of step objects, got {_json_type(steps_data)}")
        steps = tuple(_step_from_json(item, index, source) for index, item in enumerate(steps_data))
        nccl_env = data.get("nccl_env", {})
        if not isinstance(nccl_env, dict):
            raise InputError(source, "nccl_env", f"expected an object, got {_json_type(nccl_env)}")
        try:
            return cls(rules, provenance, version, steps, nccl_env)
        except InputError as err:
            raise InputError(source, err.field, err.problem) from None

    # --- NVIDIA example-plugin CSV ---

    def to_csv(self, *, lossy: bool = False) -> str:
        """The table as NVIDIA's example tuner plugin CSV (all 10 fields on every line).

        A header comment says what wrote it, the provenance, and that NVIDIA's plugin initialises
        nChannels to 1 (so channels -1 means 1 channel there, not NCCL's default).

        Args:
            lossy: drop the rules the CSV cannot express (position-specific, or keeping NCCL's
                algorithm or protocol) and say so in the header, instead of raising.

        Raises:
            InputError: if some rules cannot be expressed and ``lossy`` is False; it gives how
                many and their indices.
        """
        inexpressible = {index: reasons for index, rule in enumerate(self.rules)
                         if (reasons := _csv_inexpressible(rule))}
        if inexpressible and not lossy:
            listed = "; ".join(f"rules[{index}] ({', '.join(reasons)})"
                               for index, reasons in list(inexpressible.items())[:20])
            more = f"; and {len(inexpressible) - 20} more" if len(inexpressible) > 20 else ""
            raise InputError(None, "rules", f"{len(inexpressible)} of {len(self.rules)} rules cannot "
                             f"be written as NCCL's example CSV: {listed}{more}. That CSV has no "
                             "position key and reads -1 as ring/simple; save as .json for the "
                             "dynamiccl plugin, or pass lossy=True to drop them")
        lines = [
            "# NCCL tuner configuration for NVIDIA's example tuner plugin (NCCL_TUNER_CONFIG_FILE).",
            f"# Written by dynamiccl {__version__} from a decision table (format version "
            f"{self.version}); the first matching line wins.",
        ]
        lines += _comment_lines("provenance: " + json.dumps(self.provenance, sort_keys=True))
        lines += _comment_lines(
            "channels 0 = keep NCCL's channel count: NVIDIA's example plugin initialises nChannels "
            "to 1 and copies any value but -1, so -1 would mean 1 channel there and 0 hands the "
            "choice back to NCCL. WARNING: with that plugin, calls that match no line still run on "
            "1 channel (nccl-tuner-abi.md 4.4); the dynamiccl plugin has no such default.")
        if inexpressible:
            indices = ", ".join(str(index) for index in inexpressible)
            lines += _comment_lines(
                f"Dropped {len(inexpressible)} of {len(self.rules)} rules that this format cannot "
                "express (position-specific, or keeping NCCL's algorithm/protocol): rules "
                f"{indices}. Later lines may now match calls that those rules handled.")
        lines.append("# " + ",".join(_CSV_FIELDS))
        for index, rule in enumerate(self.rules):
            if index in inexpressible:
                continue
            lines.append(",".join(str(value) for value in (
                FUNC_OP[rule.coll], rule.min_bytes, rule.max_bytes, rule.algorithm.name_lower,
                rule.protocol.name_lower, _CSV_KEEP_CHANNELS if rule.channels == KEEP else rule.channels,
                rule.nnodes, rule.nranks,
                rule.num_pipe_ops, rule.reg_buff)))
        return "\n".join(lines) + "\n"

    @classmethod
    def from_csv(cls, text: str, source: str | os.PathLike = "<csv>") -> DecisionTable:
        """Parse NVIDIA's example-plugin CSV, rejecting what NVIDIA's parser would mis-read.

        Lines starting with ``#`` in the first column and blank lines are skipped; fields are
        trimmed of spaces and tabs; 8 to 10 fields (nNodes before nRanks; numPipeOps and regBuff
        default to -1).

        Raises:
            InputError: naming ``source`` and ``line N, field NAME`` for: a line over 255 bytes,
                an indented comment, a wrong field count, an empty field, a name NVIDIA's parser
                does not know (it would silently use ring/simple/allreduce; names are
                case-sensitive), -1 as algorithm or protocol, a non-integer, an out-of-range value
                or an (algorithm, protocol) NCCL cannot run for the collective.
        """
        rules = []
        for lineno, raw in enumerate(text.split("\n"), start=1):
            line = raw[:-1] if raw.endswith("\r") else raw  # CRLF: NVIDIA's atoi ignores the \r
            where = f"line {lineno}"
            if len(line.encode("utf-8")) > CSV_MAX_LINE_BYTES:
                raise InputError(source, where, f"{len(line.encode('utf-8'))} bytes long; NVIDIA's "
                                 f"parser reads at most {CSV_MAX_LINE_BYTES} bytes per line and "
                                 "would read the rest as another line")
            if line.startswith("#") or not line.strip():
                continue
            if line.lstrip().startswith("#"):
                raise InputError(source, where, "comment must start with '#' in the first column; "
                                 "NVIDIA's parser reads an indented comment as a data line")
            rules.append(_rule_from_csv_line(line, lineno, source))
        provenance = {"imported_from": "nccl-example-csv", "source": os.fspath(source)}
        return cls(tuple(rules), provenance)

    # --- files ---

    @classmethod
    def load(cls, path: str | os.PathLike) -> DecisionTable:
        """Read a table from ``path``: ``.json`` as JSON, ``.csv`` or ``.conf`` as NVIDIA's CSV.

        Raises:
            InputError: naming the file, for an unknown extension, an unreadable or non-UTF-8
                file, or any parse error (see ``from_json`` / ``from_csv``).
        """
        path = Path(path)
        kind = _format_of(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise InputError(path, f"byte {err.start}", "not UTF-8 text") from None
        except OSError as err:
            raise InputError(path, None, f"cannot read: {err.strerror or err}") from None
        if kind == "json":
            return cls.from_json(text, source=path)
        return cls.from_csv(text, source=path)

    def save(self, path: str | os.PathLike, *, lossy: bool = False) -> None:
        """Write the table to ``path`` atomically, in the format its extension names.

        ``.json``: versioned JSON; ``.csv``/``.conf``: NVIDIA's example CSV (``lossy`` as in
        ``to_csv``). On any error an existing file at ``path`` is left untouched.

        Raises:
            InputError: naming the file, for an unknown extension or rules the CSV cannot express.
            OSError: if the file cannot be written.
        """
        path = Path(path)
        kind = _format_of(path)
        if kind == "json":
            text = self.to_json()
        else:
            try:
                text = self.to_csv(lossy=lossy)
            except InputError as err:
                raise InputError(path, err.field, err.problem) from None
        write_text(path, text)

    # --- display ---

    def describe(self) -> str:
        """A fixed-width text table of the rules (K/M/G = 2**10/2**20/2**30 bytes; -1 shown as
        "any" for keys and "nccl" for choices)."""
        header = ("#", "coll", "bytes", "nranks", "nnodes", "position", "pipe_ops", "reg_buff",
                  "algorithm", "protocol", "channels")
        rows = [header]
        for index, rule in enumerate(self.rules):
            rows.append((
                str(index), FUNC_OP[rule.coll],
                f"{_human_bytes(rule.min_bytes)}..{_human_bytes(rule.max_bytes)}",
                _any(rule.nranks), _any(rule.nnodes), _any(rule.position), _any(rule.num_pipe_ops),
                _any(rule.reg_buff),
                rule.algorithm.name_lower if rule.algorithm is not None else "nccl",
                rule.protocol.name_lower if rule.protocol is not None else "nccl",
                "nccl" if rule.channels == KEEP else str(rule.channels),
            ))
        widths = [max(len(row[col]) for row in rows) for col in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                 for row in rows]
        if not self.rules:
            lines.append("(no rules: NCCL decides every call)")
        return "\n".join(lines) + "\n"


# --- helpers: JSON ---------------------------------------------------------------------------------

class _JsonProblem(ValueError):
    """A JSON document that parses but that we refuse (duplicate keys, NaN)."""


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise _JsonProblem(f"duplicate key {key!r} in one object")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise _JsonProblem(f"{name} is not a JSON number")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    return "a list" if isinstance(value, list) else "an object"


def _rule_to_json(rule: Rule) -> dict:
    return {
        "coll": FUNC_OP[rule.coll], "min_bytes": rule.min_bytes, "max_bytes": rule.max_bytes,
        "nranks": rule.nranks, "nnodes": rule.nnodes, "position": rule.position,
        "num_pipe_ops": rule.num_pipe_ops, "reg_buff": rule.reg_buff,
        "algorithm": rule.algorithm.name_lower if rule.algorithm is not None else KEEP,
        "protocol": rule.protocol.name_lower if rule.protocol is not None else KEEP,
        "channels": rule.channels,
    }


def _step_to_json(step: StepShape) -> dict:
    return {"nranks": step.nranks, "nnodes": step.nnodes, "calls_per_step": step.calls_per_step,
            "anchor_coll": FUNC_OP[step.anchor_coll], "anchor_bytes": step.anchor_bytes}


def _step_from_json(item: Any, index: int, source) -> StepShape:
    where = f"steps[{index}]"
    if not isinstance(item, dict):
        raise InputError(source, where, f"expected a step object, got {_json_type(item)}")
    for key in item:
        if key not in _STEP_KEYS:
            raise InputError(source, f"{where}.{key}", f"unknown key; expected {', '.join(_STEP_KEYS)}")
    for key in _STEP_KEYS:
        if key not in item:
            raise InputError(source, f"{where}.{key}", "missing required key")
    values = {key: item[key] for key in _STEP_KEYS}
    values["anchor_coll"] = _json_name(item, "anchor_coll", _COLL_BY_NAME, where, source, allow_keep=False)
    for key in ("nranks", "nnodes", "calls_per_step", "anchor_bytes"):
        if isinstance(values[key], bool) or not isinstance(values[key], int):
            raise InputError(source, f"{where}.{key}", f"expected an integer, got {_json_type(values[key])}")
    try:
        return StepShape(**values)
    except InputError as err:
        raise InputError(source, f"{where}.{err.field}", err.problem) from None


def _json_name(item: dict, key: str, table: dict, where: str, source, allow_keep: bool):
    value = item[key]
    if allow_keep and isinstance(value, int) and not isinstance(value, bool) and value == KEEP:
        return None
    if isinstance(value, str) and value in table:
        return table[value]
    keep = " or -1 (keep NCCL's)" if allow_keep else ""
    raise InputError(source, f"{where}.{key}", f"got {_json_type(value)}; expected one of "
                     f"{', '.join(table)}{keep}")


def _rule_from_json(item: Any, index: int, source) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(item, dict):
        raise InputError(source, where, f"expected a rule object, got {_json_type(item)}")
    unknown = [key for key in item if key not in _JSON_KEYS]
    if unknown:
        raise InputError(source, f"{where}.{unknown[0]}", f"unknown key; expected {', '.join(_JSON_KEYS)}")
    missing = [key for key in _JSON_REQUIRED if key not in item]
    if missing:
        raise InputError(source, f"{where}.{missing[0]}", "missing required key")
    values: dict[str, Any] = {
        "coll": _json_name(item, "coll", _COLL_BY_NAME, where, source, allow_keep=False),
        "algorithm": _json_name(item, "algorithm", _ALGO_BY_NAME, where, source, allow_keep=True),
        "protocol": _json_name(item, "protocol", _PROTO_BY_NAME, where, source, allow_keep=True),
    }
    for key in _RULE_INT_FIELDS:
        value = item.get(key, KEEP)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(source, f"{where}.{key}", f"expected an integer, got {_json_type(value)}")
        values[key] = value
    try:
        return Rule(**values)
    except InputError as err:
        raise InputError(source, f"{where}.{err.field}", err.problem) from None


# --- helpers: CSV ----------------------------------------------------------------------------------

def _csv_inexpressible(rule: Rule) -> list[str]:
    reasons = []
    if rule.position != KEEP:
        reasons.append(f"position {rule.position}")
    if rule.algorithm is None:
        reasons.append("keeps NCCL's algorithm")
    if rule.protocol is None:
        reasons.append("keeps NCCL's protocol")
    return reasons


def _comment_lines(text: str) -> list[str]:
    # Wrapped well under 255 bytes: NVIDIA's parser would read the tail of a longer comment as data.
    return textwrap.wrap(text, width=100, initial_indent="# ", subsequent_indent="#   ",
                         break_long_words=True, break_on_hyphens=False)


def _csv_name(token: str, table: dict, field_name: str, default: str, where: str, source):
    if token in table:
        return table[token]
    if token == str(KEEP) and field_name in ("algorithm", "protocol"):
        raise InputError(source, where, f"-1 (keep NCCL's {field_name}) cannot be written in NCCL's "
                         f"example CSV: NVIDIA's parser reads it as {default}; expected one of "
                         f"{', '.join(table)} (use the JSON format to keep NCCL's {field_name})")
    raise InputError(source, where, f"unknown {field_name} {token!r}; expected one of "
                     f"{', '.join(table)} (lowercase; NVIDIA's parser would silently use {default})")


def _csv_int(token: str, field_name: str, where: str, source) -> int:
    pattern = _UNSIGNED_RE if field_name in ("min_bytes", "max_bytes") else _SIGNED_RE
    if not pattern.fullmatch(token):
        expected = "a non-negative integer (bytes)" if pattern is _UNSIGNED_RE else "an integer"
        raise InputError(source, where, f"expected {expected}, got {token!r} "
                         "(NVIDIA's parser would read only its leading digits, or 0)")
    return int(token)


def _rule_from_csv_line(line: str, lineno: int, source) -> Rule:
    tokens = [token.strip(" \t") for token in line.split(",")]
    if not _CSV_REQUIRED_FIELDS <= len(tokens) <= len(_CSV_FIELDS):
        raise InputError(source, f"line {lineno}", f"{len(tokens)} fields; expected 8 to 10: "
                         f"{','.join(_CSV_FIELDS)}")
    fields = dict(zip(_CSV_FIELDS, tokens))
    for name, token in fields.items():
        if not token:
            raise InputError(source, f"line {lineno}, field {name}", "empty; NVIDIA's parser skips "
                             "empty fields and would shift the following ones")

    def where(name: str) -> str:
        return f"line {lineno}, field {name}"

    values: dict[str, Any] = {
        "coll": _csv_name(fields["collective_type"], _COLL_BY_NAME, "collective_type",
                          "allreduce", where("collective_type"), source),
        "algorithm": _csv_name(fields["algorithm"], _ALGO_BY_NAME, "algorithm", "ring",
                               where("algorithm"), source),
        "protocol": _csv_name(fields["protocol"], _PROTO_BY_NAME, "protocol", "simple",
                              where("protocol"), source),
    }
    for rule_name, csv_name in (("min_bytes", "min_bytes"), ("max_bytes", "max_bytes"),
                                ("channels", "channels"), ("nnodes", "nNodes"),
                                ("nranks", "nRanks"), ("num_pipe_ops", "numPipeOps"),
                                ("reg_buff", "regBuff")):
        token = fields.get(csv_name)
        values[rule_name] = KEEP if token is None else _csv_int(token, csv_name, where(csv_name), source)
    if values["channels"] == _CSV_KEEP_CHANNELS:
        values["channels"] = KEEP
    try:
        return Rule(**values)
    except InputError as err:
        raise InputError(source, where(_CSV_FIELD_OF_RULE.get(err.field, err.field)), err.problem) from None


# --- helpers: files and display ----------------------------------------------------------------

def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".csv", ".conf"):
        return "csv"
    raise InputError(path, None, f"unknown extension {suffix or '(none)'!r}; expected .json "
                     "(dynamiccl decision table) or .csv/.conf (NCCL example tuner CSV)")


_BYTE_UNITS = ((2**40, "T"), (2**30, "G"), (2**20, "M"), (2**10, "K"))


def _human_bytes(nbytes: int) -> str:
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
