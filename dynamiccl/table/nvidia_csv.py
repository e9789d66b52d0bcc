"""A decision table as the CSV of NVIDIA's example tuner plugin (``NCCL_TUNER_CONFIG_FILE``).

The example plugin is NVIDIA/nccl ``plugins/tuner/example/plugin.c`` (``ext-tuner/example`` before
2.29.7; the CSV appeared in 2.27.5 and its parser and matching are unchanged up to 2.30.7). One
configuration per line::

    collective_type,min_bytes,max_bytes,algorithm,protocol,channels,nNodes,nRanks[,numPipeOps[,regBuff]]

-- note nNodes before nRanks. What that plugin does with it (``loadConfig``, ``pluginGetCollInfo``):

- it reads a line with ``fgets`` into 256 bytes; it skips a line whose first byte is ``#`` or that
  is empty; it splits the rest with ``strtok(",")``, so empty fields vanish and later ones shift,
  keeps at most 10 fields, trims spaces and tabs from each, and skips a line with fewer than 8.
  Unknown names read as allreduce / ring / simple (names are case-sensitive); numbers are read by
  ``strtoull`` / ``atoi``: their leading digits, else 0.
- per call it first sets ``*nChannels = 1``, then takes the first line whose collective, byte range
  (inclusive) and nNodes, nRanks, numPipeOps, regBuff (-1 = any) match *and* whose
  algorithm/protocol cell NCCL has not marked IGNORE (a matching line with an IGNORE cell is passed
  over): it sets that cell's cost to 0 and, unless the line's channels is -1, ``*nChannels`` to it.
- NCCL (``ncclGetAlgoInfo``, ``src/enqueue.cc``) keeps its own channel count when ``*nChannels`` is
  0 and uses the plugin's count otherwise.

So channels 0 = NCCL's count, channels -1 = **1 channel** (NVIDIA's README says -1 keeps NCCL's
default; the code keeps the plugin's default of 1), and a call that no line takes runs NCCL's
algorithm and protocol on **1 channel** (``*nChannels = 1`` is in the example from 2.22.3 to 2.30.7;
RCCL changed its copy to 0, ROCm/rccl#1985). Since 2.28 its init also edits NCCL's tuning constants
(Blackwell Tree/Ring bandwidth at 4 nodes, NVLS network latency), so NCCL's own choice under it is
not NCCL's choice without it; a line naming a cell is not affected.

``read`` makes that explicit in the table: every line the plugin can apply becomes a rule (-1
channels as 1), every line it can never apply is skipped with a warning naming the line (in
``provenance["warnings"]``), and the table ends with ``example_default_rules``: NCCL's algorithm and
protocol on 1 channel, per collective. ``write`` writes a table only if NVIDIA's plugin then does
what the table means, else refuses (``--lossy`` drops what it cannot express); the CSV has no place
for a table's chunk sizes, communicators or job_env either, so ``write`` refuses to drop those too
(``--lossy`` drops them and its header says what went). So CSV -> table ->
CSV gives lines the plugin treats identically. ``parse_example`` / ``example_choice`` mirror the
plugin itself, misreadings included (``dynamiccl table lookup --as nvidia-example``).
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from dataclasses import dataclass
from typing import Any, Sequence

from dynamiccl import __version__
from dynamiccl.callkey import CallKey
from dynamiccl.errors import InputError
from dynamiccl.knobs.chunk import KEEP_CHUNK
from dynamiccl.nccl import FUNC_OP, KEEP, TUNABLE_FUNCS, Algorithm, Func, Protocol, is_supported
from dynamiccl.table.model import (
    ALGORITHM_BY_NAME,
    COLL_BY_NAME,
    MATCH_KEYS,
    MAX_BYTES,
    PROTOCOL_BY_NAME,
    DecisionTable,
    Rule,
)

MAX_LINE_BYTES = 255  # NVIDIA's parser: fgets into a 256-byte buffer, so 255 bytes + NUL
FIELDS = ("collective_type", "min_bytes", "max_bytes", "algorithm", "protocol", "channels",
          "nNodes", "nRanks", "numPipeOps", "regBuff")
_REQUIRED_FIELDS = 8
_FIELD_OF_RULE = {
    "coll": "collective_type", "min_bytes": "min_bytes", "max_bytes": "max_bytes",
    "algorithm": "algorithm", "protocol": "protocol", "channels": "channels", "nnodes": "nNodes",
    "nranks": "nRanks", "num_pipe_ops": "numPipeOps", "reg_buff": "regBuff", "position": "position",
}
# plugin.c, pluginGetCollInfo: "*nChannels = 1" before matching; a line's channels is copied unless
# it is -1. src/enqueue.cc, ncclGetAlgoInfo: "nMaxChannels == 0 ? info->nMaxChannels : nMaxChannels".
PLUGIN_DEFAULT_CHANNELS = 1
PLUGIN_KEEPS_DEFAULT = -1
NCCL_KEEPS_CHANNELS = 0
_UNSIGNED_RE = re.compile(r"[0-9]+")
_SIGNED_RE = re.compile(r"-?[0-9]+")
_C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale: what strtoull/atoi skip first
_ULLONG_MAX = 2**64 - 1
_LONG_MIN, _LONG_MAX = -2**63, 2**63 - 1


# --- NVIDIA's plugin, mirrored ---------------------------------------------------------------------

@dataclass(frozen=True)
class ExampleLine:
    """One configuration as NVIDIA's example plugin stores it (``TuningConfig`` in plugin.c):
    the values its parser read, misreadings included, and the 1-based ``lineno`` of the file line
    and the trimmed ``tokens`` (at most 10) it read them from."""

    lineno: int
    tokens: tuple[str, ...]
    coll: Func
    min_bytes: int
    max_bytes: int
    algorithm: Algorithm
    protocol: Protocol
    channels: int
    nnodes: int
    nranks: int
    num_pipe_ops: int
    reg_buff: int

    def matches(self, call: CallKey) -> bool:
        """plugin.c's match: collective, inclusive byte range, and nNodes, nRanks, numPipeOps,
        regBuff each -1 or equal (the position is not a key of this format)."""
        return (self.coll == call.coll and self.min_bytes <= call.nbytes <= self.max_bytes
                and self.nnodes in (KEEP, call.nnodes) and self.nranks in (KEEP, call.nranks)
                and self.num_pipe_ops in (KEEP, call.num_pipe_ops) and self.reg_buff in (KEEP, call.reg_buff))

    def never_applies(self) -> str | None:
        """Why the plugin can never apply this line (no call matches it, or NCCL marks its cell
        IGNORE for every call), or None."""
        if self.min_bytes > self.max_bytes:
            return f"min_bytes {self.min_bytes} > max_bytes {self.max_bytes}: no size is in the range"
        for field, value in (("nNodes", self.nnodes), ("nRanks", self.nranks)):
            if value == 0 or value < KEEP:
                return f"{field} reads as {value} ({self._token(field)!r}); no communicator has that many"
        if self.nnodes >= 1 and self.nranks >= 1 and self.nnodes > self.nranks:
            return f"nNodes {self.nnodes} > nRanks {self.nranks}; a communicator has a rank on every node"
        if self.num_pipe_ops == 0 or self.num_pipe_ops < KEEP:
            return f"numPipeOps reads as {self.num_pipe_ops} ({self._token('numPipeOps')!r}); NCCL passes 1 or more"
        if self.reg_buff not in (KEEP, 0, 1):
            return f"regBuff reads as {self.reg_buff} ({self._token('regBuff')!r}); NCCL passes 0 or 1"
        if not is_supported(self.coll, self.algorithm, self.protocol):
            return (f"NCCL never runs {FUNC_OP[self.coll]} with {self.algorithm.name_lower}/"
                    f"{self.protocol.name_lower}: it marks that cell IGNORE and the plugin passes over the line")
        return None

    def _token(self, field: str) -> str:
        index = FIELDS.index(field)
        return self.tokens[index] if index < len(self.tokens) else "(absent: -1)"


@dataclass(frozen=True)
class ExampleChoice:
    """What NVIDIA's example plugin makes NCCL do for one call.

    ``line``: the line that applied, None if none did (then ``algorithm``/``protocol`` are None:
    NCCL's own). ``channels``: the ``*nChannels`` it returns -- 0 = NCCL's count, else that many
    (1 when no line applied or the line's channels is -1). ``passed_over``: matching lines skipped
    because their cell was IGNORE.
    """

    line: ExampleLine | None
    algorithm: Algorithm | None
    protocol: Protocol | None
    channels: int
    passed_over: tuple[ExampleLine, ...] = ()


def parse_example(text: str) -> tuple[list[ExampleLine], list[tuple[int, str]]]:
    """The configurations NVIDIA's example plugin loads from ``text``, as its parser reads them.

    Returns:
        (lines, skipped): the configurations in file order, and (line number, reason) for each
        non-comment, non-empty piece of the file it skips (fewer than 8 fields). A line over 255
        bytes is read as several pieces, as ``fgets`` reads it.
    """
    lines, skipped = [], []
    for lineno, piece in _fgets_pieces(text):
        tokens = _strtok_fields(piece)
        if len(tokens) < _REQUIRED_FIELDS:
            skipped.append((lineno, f"{len(tokens)} field(s) once empty ones are dropped; the plugin "
                                    f"needs {_REQUIRED_FIELDS} to {len(FIELDS)}"))
            continue
        lines.append(_example_line(lineno, tokens))
    return lines, skipped


def example_choice(lines: Sequence[ExampleLine], call: CallKey,
                   cost_table: Sequence[Sequence[float]] | None = None) -> ExampleChoice:
    """What NVIDIA's example plugin does for ``call`` with these ``lines`` (``pluginGetCollInfo``).

    Args:
        cost_table: NCCL's [algorithm][protocol] times for the call (negative = IGNORE); without
            one, a cell is IGNORE when NCCL can never run the pair for the collective (a cell NCCL
            disables only at run time -- NVLS without NVLink SHARP, say -- is taken as enabled).
    """
    passed = []
    for line in lines:
        if not line.matches(call):
            continue
        if cost_table is not None:
            cost = float(cost_table[line.algorithm][line.protocol])
            ignored = not cost >= 0  # negative or NaN
        else:
            ignored = not is_supported(line.coll, line.algorithm, line.protocol)
        if ignored:
            passed.append(line)
            continue
        channels = PLUGIN_DEFAULT_CHANNELS if line.channels == PLUGIN_KEEPS_DEFAULT else line.channels
        return ExampleChoice(line, line.algorithm, line.protocol, channels, tuple(passed))
    return ExampleChoice(None, None, None, PLUGIN_DEFAULT_CHANNELS, tuple(passed))


def example_default_rules() -> tuple[Rule, ...]:
    """What NVIDIA's example plugin does with a call no line takes, as rules: for each collective,
    every size and shape, NCCL's algorithm and protocol on 1 channel."""
    return tuple(Rule(coll, 0, MAX_BYTES, channels=PLUGIN_DEFAULT_CHANNELS) for coll in TUNABLE_FUNCS)


def _fgets_pieces(text: str):
    """(line number, piece) as plugin.c's loop sees them: ``fgets`` pieces of at most 255 bytes,
    skipping those starting with '#' or '\\n', cut at the first newline."""
    for lineno, line in enumerate(text.encode("utf-8").split(b"\n"), start=1):
        pieces = [line[start:start + MAX_LINE_BYTES] for start in range(0, len(line), MAX_LINE_BYTES)]
        for piece in pieces:  # an empty line has no piece: fgets returns "\n", which is skipped
            if piece.startswith(b"#"):
                continue
            yield lineno, piece.decode("utf-8", errors="replace")


def _strtok_fields(piece: str) -> list[str]:
    """``strtok(",")`` (empty fields vanish), at most 10 fields, each trimmed of spaces and tabs."""
    return [token.strip(" \t") for token in piece.split(",") if token][:len(FIELDS)]


def _strtoull(token: str) -> int:
    match = re.match(r"([+-]?)([0-9]+)", token.lstrip(_C_SPACE))
    if not match:
        return 0
    value = min(int(match.group(2)), _ULLONG_MAX)  # overflow: ULLONG_MAX
    return (-value) % 2**64 if match.group(1) == "-" else value


def _atoi(token: str) -> int:
    match = re.match(r"[+-]?[0-9]+", token.lstrip(_C_SPACE))
    if not match:
        return 0
    value = max(_LONG_MIN, min(int(match.group(0)), _LONG_MAX))  # strtol saturates ...
    return (value + 2**31) % 2**32 - 2**31  # ... and atoi's int keeps the low 32 bits


def _example_line(lineno: int, tokens: list[str]) -> ExampleLine:
    def number(index: int) -> int:
        return _atoi(tokens[index]) if index < len(tokens) else KEEP

    return ExampleLine(
        lineno, tuple(tokens), COLL_BY_NAME.get(tokens[0], Func.ALLREDUCE),
        _strtoull(tokens[1]), _strtoull(tokens[2]),
        ALGORITHM_BY_NAME.get(tokens[3], Algorithm.RING), PROTOCOL_BY_NAME.get(tokens[4], Protocol.SIMPLE),
        number(5), number(6), number(7), number(8), number(9))


# --- writing -----------------------------------------------------------------------------------------

def inexpressible(rule: Rule) -> list[str]:
    """Why no CSV line can stand for ``rule`` (a position key, keeping NCCL's algorithm or
    protocol); empty if one can. ``write`` also omits rules that only restate the plugin's own
    default (NCCL's algorithm and protocol on 1 channel) where nothing after them could take
    their calls."""
    reasons = []
    if rule.position != KEEP:
        reasons.append(f"position {rule.position}")
    if rule.algorithm is None:
        reasons.append("keeps NCCL's algorithm")
    if rule.protocol is None:
        reasons.append("keeps NCCL's protocol")
    return reasons


def _catches_all(rule: Rule) -> bool:
    """Whether ``rule`` applies to every call of its collective that reaches it: all sizes, every
    key -1, and no algorithm/protocol (so no cell NCCL disabled can make it pass)."""
    return (rule.min_bytes == 0 and rule.max_bytes == MAX_BYTES and rule.algorithm is None
            and rule.protocol is None and all(getattr(rule, key) == KEEP for key in MATCH_KEYS))


def _restates_default(rule: Rule, later: Sequence[Rule]) -> bool:
    """A rule NVIDIA's plugin applies by its default: NCCL's algorithm and protocol on 1 channel,
    no position, and no later rule but such ones that could take the calls it leaves to the default."""
    def plugin_default(other: Rule) -> bool:
        return other.algorithm is None and other.protocol is None and other.channels == PLUGIN_DEFAULT_CHANNELS

    return (plugin_default(rule) and rule.position == KEEP
            and not any(rule.overlaps(other, position=False) and not plugin_default(other) for other in later))


def _plan(table: DecisionTable) -> tuple[list[Rule], dict[int, list[str]], list[Func]]:
    """(rules to write as lines, {rule index: why it cannot be written}, collectives whose
    unmatched calls the table leaves to NCCL)."""
    written, refused, caught = [], {}, set()
    for index, rule in enumerate(table.rules):
        if rule.coll in caught:
            continue  # after a rule that takes every call of its collective: never reached
        if _catches_all(rule):
            caught.add(rule.coll)
            if rule.channels != PLUGIN_DEFAULT_CHANNELS:
                channels = "NCCL's channel count" if rule.channels == KEEP else f"{rule.channels} channels"
                refused[index] = [f"takes every remaining {FUNC_OP[rule.coll]} call with NCCL's algorithm and "
                                  f"protocol on {channels}"]
            continue  # on 1 channel: the plugin's default does the same
        if _restates_default(rule, table.rules[index + 1:]):
            continue
        reasons = inexpressible(rule)
        if reasons:
            refused[index] = reasons
        else:
            written.append(rule)
    return written, refused, [coll for coll in TUNABLE_FUNCS if coll not in caught]


def write(table: DecisionTable, *, lossy: bool = False) -> str:
    """The table as NVIDIA's example tuner plugin CSV (all 10 fields on every line), such that
    NVIDIA's plugin does what the table means.

    A header comment says what wrote it, the provenance, and the plugin's channel rules. Rules
    restating the plugin's default (``example_default_rules``) are left to that default.

    Args:
        lossy: write what can be written and say in the header what was dropped, instead of
            raising (the CLI's ``--lossy``).

    Raises:
        InputError: (source None, field ``rules``) if NVIDIA's plugin would do something else than
            the table for some call and ``lossy`` is False: a rule it cannot express (a position
            key, keeping NCCL's algorithm or protocol), or a collective whose calls matching no
            rule keep NCCL's choice in the table but would run on 1 channel under the plugin. It
            lists them and names ``--lossy``. Also (field ``rules[i].chunk_bytes``,
            ``communicators`` or ``job_env``, the first one set) if the table has chunk sizes,
            communicators or job_env, which the CSV has no place for.
    """
    written, refused, open_colls = _plan(table)
    problems = [f"rules[{index}] ({', '.join(reasons)})" for index, reasons in refused.items()]
    if open_colls:
        problems.append(f"{'/'.join(FUNC_OP[coll] for coll in open_colls)} calls that match no rule (NCCL's own "
                        "choice in the table; 1 channel under NVIDIA's plugin, which sets *nChannels = 1 first)")
    lost = _no_place_for(table)
    no_place = ("That CSV has no place for " + "; ".join(what for _, what in lost) + ".") if lost else ""
    if problems and not lossy:
        listed = "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise InputError(None, "rules", f"NVIDIA's example plugin would not do what the table says for: {listed}. "
                         "That CSV has no position key, cannot keep NCCL's algorithm/protocol and runs unmatched "
                         f"calls on 1 channel.{' ' + no_place if no_place else ''} Save as .json for the dynamiccl "
                         "plugin, end the table with rules for every call (`dynamiccl table export --nccl-csv` "
                         "writes NCCL's own choice for the shapes of its cases), or pass --lossy to write it anyway")
    if lost and not lossy:
        raise InputError(None, lost[0][0], f"{no_place} Writing it would drop them. Save as .json (the dynamiccl "
                         "plugin gives NCCL the chunk sizes; `dynamiccl launch` applies communicators and job_env), "
                         "or pass --lossy to drop them")
    lines = [
        "# NCCL tuner configuration for NVIDIA's example tuner plugin (NCCL_TUNER_CONFIG_FILE).",
        f"# Written by dynamiccl {__version__} from a decision table (format version "
        f"{table.version}); the first matching line wins.",
    ]
    lines += _comment_lines("provenance: " + json.dumps(table.provenance, sort_keys=True))
    lines += _comment_lines(
        "channels 0 = NCCL's channel count. NVIDIA's example plugin sets nChannels to 1 before matching "
        "and copies any value but -1, so -1 would mean 1 channel and 0 hands the count back to NCCL. "
        "Calls that match no line run NCCL's algorithm and protocol on 1 channel (NVIDIA/nccl "
        "plugins/tuner/example/plugin.c; RCCL changed that default to 0 in ROCm/rccl#1985).")
    if refused:
        indices = ", ".join(str(index) for index in refused)
        lines += _comment_lines(
            f"Dropped {len(refused)} of {len(table.rules)} rules that this format cannot express "
            f"(position-specific, or keeping NCCL's algorithm/protocol): rules {indices}. Later lines "
            "may now match calls that those rules handled.")
    if lost:
        lines += _comment_lines(f"Dropped what this format has no place for: {'; '.join(what for _, what in lost)}.")
    dropped_catch_alls = [table.rules[index].coll for index in refused if _catches_all(table.rules[index])]
    if open_colls or dropped_catch_alls:
        colls = [coll for coll in TUNABLE_FUNCS if coll in open_colls or coll in dropped_catch_alls]
        lines += _comment_lines(
            f"WARNING: {'/'.join(FUNC_OP[coll] for coll in colls)} calls that match no line run on 1 "
            "channel under NVIDIA's example plugin; the table left them to NCCL.")
    lines.append("# " + ",".join(FIELDS))
    for rule in written:
        lines.append(",".join(str(value) for value in (
            FUNC_OP[rule.coll], rule.min_bytes, rule.max_bytes, rule.algorithm.name_lower,
            rule.protocol.name_lower, NCCL_KEEPS_CHANNELS if rule.channels == KEEP else rule.channels,
            rule.nnodes, rule.nranks, rule.num_pipe_ops, rule.reg_buff)))
    return "\n".join(lines) + "\n"


def _no_place_for(table: DecisionTable) -> list[tuple[str, str]]:
    """(field, what) for each part of ``table`` that NVIDIA's example CSV has no field for."""
    lost = []
    chunked = [index for index, rule in enumerate(table.rules) if rule.chunk_bytes != KEEP_CHUNK]
    if chunked:
        shown = ", ".join(str(index) for index in chunked[:20]) + (", ..." if len(chunked) > 20 else "")
        lost.append((f"rules[{chunked[0]}].chunk_bytes", f"the chunk sizes of {len(chunked)} rule(s) (rules {shown}; "
                     "tuner ABI v6 getChunkSize)"))
    if table.communicators:
        lost.append(("communicators", f"{len(table.communicators)} communicator rule(s) (ncclConfig_t settings)"))
    if table.job_env:
        lost.append(("job_env", "job_env " + " ".join(f"{k}={v}" for k, v in table.job_env.items())))
    return lost


def _comment_lines(text: str) -> list[str]:
    # Wrapped well under 255 bytes: NVIDIA's parser would read the tail of a longer comment as data.
    return textwrap.wrap(text, width=100, initial_indent="# ", subsequent_indent="#   ",
                         break_long_words=True, break_on_hyphens=False)


# --- reading -----------------------------------------------------------------------------------------

def read(text: str, source: str | os.PathLike = "<csv>") -> DecisionTable:
    """Read NVIDIA's example-plugin CSV as NVIDIA's plugin reads it.

    Comment (``#`` in the first column) and blank lines are skipped, and so is an indented comment
    with fewer than 8 fields (the plugin reads one with more as a line); fields are trimmed of
    spaces and tabs; numPipeOps and regBuff default to -1. A line the plugin can never apply -- it skips
    lines with fewer than 8 fields (a header row of names reads as nNodes 0), no call matches
    nNodes/nRanks 0, min_bytes > max_bytes and the like, and it passes over a pair NCCL never
    runs for the collective (broadcast with tree, say) -- is skipped with a warning naming the
    line, in ``provenance["warnings"]``. Channels -1 (the plugin's default: 1 channel) is read as 1,
    with a warning; 0 as -1 (keep NCCL's count). The table ends with ``example_default_rules``.

    Raises:
        InputError: naming ``source`` and ``line N[, field NAME]`` where the plugin would apply a
            line but read something else than it says: a line over 255 bytes, an empty field
            before others (they shift), more than 10 fields, a name it does not know (it would use
            ring/simple/allreduce; names are case-sensitive), -1 as algorithm or protocol, a number
            it reads only in part, or a value out of range.
    """
    rules, warnings = [], []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw  # CRLF: NVIDIA's atoi ignores the \r
        where = f"line {lineno}"
        if len(line.encode("utf-8")) > MAX_LINE_BYTES:
            raise InputError(source, where, f"{len(line.encode('utf-8'))} bytes long; NVIDIA's "
                             f"parser reads at most {MAX_LINE_BYTES} bytes per line and "
                             "would read the rest as another line")
        if line.startswith("#") or not line:
            continue
        tokens = _strtok_fields(raw)  # with a CRLF's \r, as the plugin reads it ("...,8,\r" has 9 fields)
        if len(tokens) < _REQUIRED_FIELDS:
            if not line.strip(_C_SPACE) or line.lstrip(_C_SPACE).startswith("#"):
                continue  # blank, or an indented comment: the plugin skips it too, as intended
            warnings.append(f"{where}: never applies under NVIDIA's example plugin: {len(tokens)} field(s) once "
                            f"empty ones are dropped, and it skips lines with fewer than {_REQUIRED_FIELDS}; skipped")
            continue
        reason = _example_line(lineno, tokens).never_applies()
        if reason:
            warnings.append(f"{where}: never applies under NVIDIA's example plugin: {reason}; skipped")
            continue
        rule, keeps_default = _rule(line, lineno, source)
        if keeps_default:
            warnings.append(f"{where}: channels -1 keeps NVIDIA's example plugin's default of 1 channel (not "
                            "NCCL's count, whatever its README says); read as 1. Write 0 for NCCL's count")
        rules.append(rule)
    provenance: dict[str, Any] = {"imported_from": "nccl-example-csv", "source": os.fspath(source)}
    if warnings:
        provenance["warnings"] = warnings
    return DecisionTable(tuple(rules) + example_default_rules(), provenance)


def _name(token: str, table: dict, field_name: str, default: str, where: str, source):
    if token in table:
        return table[token]
    if token == str(KEEP) and field_name in ("algorithm", "protocol"):
        raise InputError(source, where, f"-1 (keep NCCL's {field_name}) cannot be written in NCCL's "
                         f"example CSV: NVIDIA's parser reads it as {default}; expected one of "
                         f"{', '.join(table)} (use the JSON format to keep NCCL's {field_name})")
    raise InputError(source, where, f"unknown {field_name} {token!r}; expected one of "
                     f"{', '.join(table)} (lowercase; NVIDIA's parser would silently use {default})")


def _int(token: str, field_name: str, where: str, source) -> int:
    pattern = _UNSIGNED_RE if field_name in ("min_bytes", "max_bytes") else _SIGNED_RE
    if not pattern.fullmatch(token):
        expected = "a non-negative integer (bytes)" if pattern is _UNSIGNED_RE else "an integer"
        raise InputError(source, where, f"expected {expected}, got {token!r} "
                         "(NVIDIA's parser would read only its leading digits, or 0)")
    return int(token)


def _rule(line: str, lineno: int, source) -> tuple[Rule, bool]:
    """A line the plugin applies, as a rule (channels 0 -> -1, NCCL's count; -1 -> 1, the plugin's
    default), and whether its channels was -1; the fields must say exactly what the plugin reads."""
    tokens = [token.strip(" \t") for token in line.split(",")]
    while tokens and not tokens[-1]:
        tokens.pop()  # trailing commas: strtok drops the empty fields and nothing shifts
    if len(tokens) > len(FIELDS):
        raise InputError(source, f"line {lineno}", f"{len(tokens)} fields; expected 8 to 10: "
                         f"{','.join(FIELDS)} (NVIDIA's parser ignores fields after the 10th)")
    fields = dict(zip(FIELDS, tokens))
    for name, token in fields.items():
        if not token:
            raise InputError(source, f"line {lineno}, field {name}", "empty; NVIDIA's parser drops empty "
                             "fields, so it would read the following ones shifted")

    def where(name: str) -> str:
        return f"line {lineno}, field {name}"

    values: dict[str, Any] = {
        "coll": _name(fields["collective_type"], COLL_BY_NAME, "collective_type",
                      "allreduce", where("collective_type"), source),
        "algorithm": _name(fields["algorithm"], ALGORITHM_BY_NAME, "algorithm", "ring",
                           where("algorithm"), source),
        "protocol": _name(fields["protocol"], PROTOCOL_BY_NAME, "protocol", "simple",
                          where("protocol"), source),
    }
    for rule_name, csv_name in (("min_bytes", "min_bytes"), ("max_bytes", "max_bytes"),
                                ("channels", "channels"), ("nnodes", "nNodes"),
                                ("nranks", "nRanks"), ("num_pipe_ops", "numPipeOps"),
                                ("reg_buff", "regBuff")):
        token = fields.get(csv_name)
        values[rule_name] = KEEP if token is None else _int(token, csv_name, where(csv_name), source)
    keep_default = values["channels"] == PLUGIN_KEEPS_DEFAULT
    if values["channels"] == NCCL_KEEPS_CHANNELS:
        values["channels"] = KEEP
    elif keep_default:
        values["channels"] = PLUGIN_DEFAULT_CHANNELS
    try:
        return Rule(**values), keep_default
    except InputError as err:
        raise InputError(source, where(_FIELD_OF_RULE.get(err.field, err.field)), err.problem) from None


__all__ = ["FIELDS", "MAX_LINE_BYTES", "NCCL_KEEPS_CHANNELS", "PLUGIN_DEFAULT_CHANNELS", "PLUGIN_KEEPS_DEFAULT",
           "ExampleChoice", "ExampleLine", "example_choice", "example_default_rules", "inexpressible",
           "parse_example", "read", "write"]
