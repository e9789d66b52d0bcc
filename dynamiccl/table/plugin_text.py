"""A decision table as the plain text that the C tuner plugin reads (``$DYNAMICCL_TUNER_TABLE``).

JSON is what users keep; this is what a few hundred lines of C can parse safely: a fixed header,
one record per line, whitespace-separated fields, every field checked, lines of at most 511 bytes::

    dynamiccl-tuner-table 2
    # written by dynamiccl 0.1.0 from table.json
    # rule coll min_bytes max_bytes nranks nnodes position num_pipe_ops reg_buff algorithm protocol channels chunk_bytes
    rule allreduce 0 65535 16 2 -1 -1 -1 ring ll128 8 -1
    rule allgather 65536 18446744073709551615 -1 -1 -1 -1 -1 -1 simple -1 524288
    # step nranks nnodes calls_per_step anchor_coll anchor_bytes
    step 16 2 96 allreduce 1048576

Names are the lower-case spellings of NCCL's example CSV; -1 is "any" for keys and "keep NCCL's"
for algorithm, protocol, channels and chunk_bytes. Rules keep table order (first match wins).
Version 2 added the rules' last field, ``chunk_bytes``; version 1 files (rule lines without it) are
still read, by both parsers. The table's ``communicators`` and ``job_env`` are not here: the
launcher applies them, not the plugin. ``read`` is
the Python mirror of the C parser: both accept and reject the same files (the fuzzing harness
checks it), so ``dynamiccl doctor`` can name the line and field of a bad file.
"""

from __future__ import annotations

import os
import re

from dynamiccl import __version__
from dynamiccl.errors import InputError
from dynamiccl.knobs.chunk import KEEP_CHUNK
from dynamiccl.nccl import FUNC_OP, KEEP, MAX_CHANNELS
from dynamiccl.table.model import (
    ALGORITHM_BY_NAME,
    COLL_BY_NAME,
    C_INT_MAX,
    MAX_BYTES,
    PROTOCOL_BY_NAME,
    DecisionTable,
    Rule,
    StepShape,
)

MAGIC = "dynamiccl-tuner-table"
VERSION = 2
HEADER = f"{MAGIC} {VERSION}"
MAX_LINE_BYTES = 511
MAX_RULES = 1_000_000  # the plugin's limits (DCCL_MAX_RULES, DCCL_MAX_STEPS): more is rejected
MAX_STEPS = 4096
MAX_CHUNK_BYTES = 64 << 20  # DCCL_MAX_CHUNK_BYTES, knobs.chunk.check_chunk_bytes's highest
RULE_FIELDS = ("coll", "min_bytes", "max_bytes", "nranks", "nnodes", "position", "num_pipe_ops",
               "reg_buff", "algorithm", "protocol", "channels", "chunk_bytes")  # version 1: all but the last
STEP_FIELDS = ("nranks", "nnodes", "calls_per_step", "anchor_coll", "anchor_bytes")
_UNSIGNED = re.compile(r"[0-9]+")
_SIGNED = re.compile(r"-?[0-9]+")


def write(table: DecisionTable, source: str = "") -> str:
    """The table in the plugin's text format (``source``, the file it came from, goes into a comment)."""
    lines = [HEADER, f"# written by dynamiccl {__version__}" + (f" from {source}" if source else ""),
             "# rule " + " ".join(RULE_FIELDS)]
    for rule in table.rules:
        lines.append(" ".join(str(v) for v in (
            "rule", FUNC_OP[rule.coll], rule.min_bytes, rule.max_bytes, rule.nranks, rule.nnodes,
            rule.position, rule.num_pipe_ops, rule.reg_buff,
            rule.algorithm.name_lower if rule.algorithm is not None else KEEP,
            rule.protocol.name_lower if rule.protocol is not None else KEEP, rule.channels, rule.chunk_bytes)))
    if table.steps:
        lines.append("# step " + " ".join(STEP_FIELDS))
        for step in table.steps:
            lines.append(f"step {step.nranks} {step.nnodes} {step.calls_per_step} "
                         f"{FUNC_OP[step.anchor_coll]} {step.anchor_bytes}")
    return "\n".join(lines) + "\n"


def read(data: bytes, source: str | os.PathLike = "<plugin table>") -> DecisionTable:
    """Parse the plugin's text format exactly as the C plugin does.

    Raises:
        InputError: naming ``source`` and ``line N[, field NAME]`` for anything the plugin rejects.
    """
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()  # the C parser stops at the end of the data: no empty last line
    if not data:
        raise InputError(source, "line 1", f"empty file; expected the header {HEADER!r}")
    rules, steps, version = [], [], 0
    for lineno, raw in enumerate(lines, start=1):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        where = f"line {lineno}"
        if len(line) > MAX_LINE_BYTES:
            raise InputError(source, where, f"longer than {MAX_LINE_BYTES} bytes")
        if b"\0" in line:
            raise InputError(source, where, "contains a NUL byte; expected text")
        tokens = [t for t in re.split(rb"[ \t]+", line) if t]
        if not version:
            if len(tokens) != 2 or tokens[0] != MAGIC.encode() or tokens[1] not in (b"1", b"2"):
                raise InputError(source, where, f"expected the header {HEADER!r} (or version 1) as the first line")
            version = int(tokens[1])
            continue
        if not tokens or tokens[0].startswith(b"#"):
            continue
        words = [t.decode("latin-1") for t in tokens]
        if len(words) > 16:
            raise InputError(source, where, "more than 16 fields")
        if words[0] == "rule":
            fields = RULE_FIELDS if version > 1 else RULE_FIELDS[:-1]
            if len(rules) == MAX_RULES and len(words) == len(fields) + 1:
                raise InputError(source, where, f"more than {MAX_RULES} rules")
            rules.append(_rule(words, fields, where, source))
        elif words[0] == "step":
            if len(steps) == MAX_STEPS and len(words) == 6:
                raise InputError(source, where, f"more than {MAX_STEPS} step lines")
            steps.append(_step(words, where, source, steps))
        else:
            raise InputError(source, where, f"unknown line kind {words[0]!r}; expected rule, step or a # comment")
    return DecisionTable(tuple(rules), {"imported_from": "dynamiccl-plugin-table", "source": os.fspath(source)},
                         steps=tuple(steps))


def _int(token: str, field: str, where: str, source, lowest: int, highest: int, *, unsigned=False) -> int:
    pattern = _UNSIGNED if unsigned else _SIGNED
    if not pattern.fullmatch(token) or not lowest <= int(token) <= highest:
        raise InputError(source, f"{where}, field {field}", f"{token[:40]!r}; expected {lowest} .. {highest}")
    return int(token)


def _name(token: str, names: dict, field: str, where: str, source, allow_keep: bool):
    if allow_keep and token == "-1":
        return None
    if token not in names:
        raise InputError(source, f"{where}, field {field}", f"unknown {field} {token[:40]!r}; expected "
                         f"{'-1 or ' if allow_keep else ''}{', '.join(names)}")
    return names[token]


def _rule(words: list[str], fields: tuple[str, ...], where: str, source) -> Rule:
    if len(words) != len(fields) + 1:
        raise InputError(source, where, f"{len(words)} fields; a rule line has {len(fields) + 1}: "
                         f"rule {' '.join(fields)}")
    f = dict(zip(fields, words[1:]))
    values = {
        "coll": _name(f["coll"], COLL_BY_NAME, "coll", where, source, False),
        "min_bytes": _int(f["min_bytes"], "min_bytes", where, source, 0, MAX_BYTES, unsigned=True),
        "max_bytes": _int(f["max_bytes"], "max_bytes", where, source, 0, MAX_BYTES, unsigned=True),
        "nranks": _int(f["nranks"], "nranks", where, source, -1, C_INT_MAX),
        "nnodes": _int(f["nnodes"], "nnodes", where, source, -1, C_INT_MAX),
        "position": _int(f["position"], "position", where, source, -1, C_INT_MAX),
        "num_pipe_ops": _int(f["num_pipe_ops"], "num_pipe_ops", where, source, -1, C_INT_MAX),
        "reg_buff": _int(f["reg_buff"], "reg_buff", where, source, -1, 1),
        "algorithm": _name(f["algorithm"], ALGORITHM_BY_NAME, "algorithm", where, source, True),
        "protocol": _name(f["protocol"], PROTOCOL_BY_NAME, "protocol", where, source, True),
        "channels": _int(f["channels"], "channels", where, source, -1, MAX_CHANNELS),
        # the power-of-two rule: Rule (knobs.chunk.check_chunk_bytes), as table.c checks it
        "chunk_bytes": _int(f["chunk_bytes"], "chunk_bytes", where, source, -1, MAX_CHUNK_BYTES)
        if "chunk_bytes" in f else KEEP_CHUNK,
    }
    for key in ("nranks", "nnodes", "num_pipe_ops", "channels"):
        if values[key] == 0:
            raise InputError(source, f"{where}, field {key}", "0; expected -1 or a positive count")
    try:
        return Rule(**values)
    except InputError as err:
        raise InputError(source, f"{where}, field {err.field}", err.problem) from None


def _step(words: list[str], where: str, source, steps: list[StepShape]) -> StepShape:
    if len(words) != 6:
        raise InputError(source, where, f"{len(words)} fields; a step line has 6: step {' '.join(STEP_FIELDS)}")
    f = dict(zip(STEP_FIELDS, words[1:]))
    nranks = _int(f["nranks"], "nranks", where, source, 1, C_INT_MAX)
    nnodes = _int(f["nnodes"], "nnodes", where, source, 1, nranks)
    step = StepShape(
        nranks=nranks, nnodes=nnodes,
        calls_per_step=_int(f["calls_per_step"], "calls_per_step", where, source, 1, C_INT_MAX),
        anchor_coll=_name(f["anchor_coll"], COLL_BY_NAME, "anchor_coll", where, source, False),
        anchor_bytes=_int(f["anchor_bytes"], "anchor_bytes", where, source, 0, MAX_BYTES, unsigned=True))
    if any((s.nranks, s.nnodes, s.anchor_coll, s.anchor_bytes) ==
           (nranks, nnodes, step.anchor_coll, step.anchor_bytes) for s in steps):
        raise InputError(source, f"{where}, field anchor_bytes", f"a second step line for {nranks} ranks on "
                         f"{nnodes} nodes with the same anchor")
    return step


__all__ = ["HEADER", "MAGIC", "VERSION", "MAX_LINE_BYTES", "MAX_RULES", "MAX_STEPS", "RULE_FIELDS", "STEP_FIELDS", "read", "write"]
