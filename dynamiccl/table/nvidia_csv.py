"""A decision table as the CSV of NVIDIA's example tuner plugin (``NCCL_TUNER_CONFIG_FILE``).

The example plugin is NVIDIA/nccl ``plugins/tuner/example``; its config has one rule per line::

    collective_type,min_bytes,max_bytes,algorithm,protocol,channels,nNodes,nRanks[,numPipeOps[,regBuff]]

-- note nNodes before nRanks. NVIDIA's parser silently mis-reads unknown names (as ring / simple /
allreduce), non-integers, empty fields, extra fields and lines longer than 255 bytes; ``read``
rejects all of these with the line and field. The CSV has no position key and no "keep NCCL's
algorithm/protocol", so such rules cannot be written (``inexpressible``).
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from typing import Any

from dynamiccl import __version__
from dynamiccl.errors import InputError
from dynamiccl.nccl import FUNC_OP, KEEP
from dynamiccl.table.model import ALGORITHM_BY_NAME, COLL_BY_NAME, PROTOCOL_BY_NAME, DecisionTable, Rule

MAX_LINE_BYTES = 255  # NVIDIA's parser: fgets into a 256-byte buffer, so 255 bytes + NUL
FIELDS = ("collective_type", "min_bytes", "max_bytes", "algorithm", "protocol", "channels",
          "nNodes", "nRanks", "numPipeOps", "regBuff")
_REQUIRED_FIELDS = 8
_FIELD_OF_RULE = {
    "coll": "collective_type", "min_bytes": "min_bytes", "max_bytes": "max_bytes",
    "algorithm": "algorithm", "protocol": "protocol", "channels": "channels", "nnodes": "nNodes",
    "nranks": "nRanks", "num_pipe_ops": "numPipeOps", "reg_buff": "regBuff", "position": "position",
}
# NVIDIA's example plugin sets *nChannels = 1, then copies the field unless it is -1; 0 is what
# leaves NCCL's own channel choice in place (NCCL treats nChannels 0 as "keep").
_KEEP_CHANNELS = 0
_UNSIGNED_RE = re.compile(r"[0-9]+")
_SIGNED_RE = re.compile(r"-?[0-9]+")


def inexpressible(rule: Rule) -> list[str]:
    """Why the CSV cannot hold ``rule`` (a position key, keeping NCCL's algorithm or protocol);
    empty if it can."""
    reasons = []
    if rule.position != KEEP:
        reasons.append(f"position {rule.position}")
    if rule.algorithm is None:
        reasons.append("keeps NCCL's algorithm")
    if rule.protocol is None:
        reasons.append("keeps NCCL's protocol")
    return reasons


def write(table: DecisionTable, *, lossy: bool = False) -> str:
    """The table as NVIDIA's example tuner plugin CSV (all 10 fields on every line).

    A header comment says what wrote it, the provenance, and that NVIDIA's plugin initialises
    nChannels to 1 (so channels -1 means 1 channel there, not NCCL's default).

    Args:
        lossy: drop the rules the CSV cannot express (position-specific, or keeping NCCL's
            algorithm or protocol) and say so in the header, instead of raising.

    Raises:
        InputError: (source None, field ``rules``) if some rules cannot be expressed and ``lossy``
            is False; it gives how many and their indices.
    """
    dropped = {index: reasons for index, rule in enumerate(table.rules) if (reasons := inexpressible(rule))}
    if dropped and not lossy:
        listed = "; ".join(f"rules[{index}] ({', '.join(reasons)})"
                           for index, reasons in list(dropped.items())[:20])
        more = f"; and {len(dropped) - 20} more" if len(dropped) > 20 else ""
        raise InputError(None, "rules", f"{len(dropped)} of {len(table.rules)} rules cannot "
                         f"be written as NCCL's example CSV: {listed}{more}. That CSV has no "
                         "position key and reads -1 as ring/simple; save as .json for the "
                         "dynamiccl plugin, or pass lossy=True to drop them")
    lines = [
        "# NCCL tuner configuration for NVIDIA's example tuner plugin (NCCL_TUNER_CONFIG_FILE).",
        f"# Written by dynamiccl {__version__} from a decision table (format version "
        f"{table.version}); the first matching line wins.",
    ]
    lines += _comment_lines("provenance: " + json.dumps(table.provenance, sort_keys=True))
    lines += _comment_lines(
        "channels 0 = keep NCCL's channel count: NVIDIA's example plugin initialises nChannels "
        "to 1 and copies any value but -1, so -1 would mean 1 channel there and 0 hands the "
        "choice back to NCCL. WARNING: with that plugin, calls that match no line still run on "
        "1 channel (NVIDIA/nccl plugins/tuner/example; RCCL changed the default to 0 in "
        "ROCm/rccl#1985); the dynamiccl plugin has no such default.")
    if dropped:
        indices = ", ".join(str(index) for index in dropped)
        lines += _comment_lines(
            f"Dropped {len(dropped)} of {len(table.rules)} rules that this format cannot "
            "express (position-specific, or keeping NCCL's algorithm/protocol): rules "
            f"{indices}. Later lines may now match calls that those rules handled.")
    lines.append("# " + ",".join(FIELDS))
    for index, rule in enumerate(table.rules):
        if index in dropped:
            continue
        lines.append(",".join(str(value) for value in (
            FUNC_OP[rule.coll], rule.min_bytes, rule.max_bytes, rule.algorithm.name_lower,
            rule.protocol.name_lower, _KEEP_CHANNELS if rule.channels == KEEP else rule.channels,
            rule.nnodes, rule.nranks,
            rule.num_pipe_ops, rule.reg_buff)))
    return "\n".join(lines) + "\n"


def read(text: str, source: str | os.PathLike = "<csv>") -> DecisionTable:
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
        if len(line.encode("utf-8")) > MAX_LINE_BYTES:
            raise InputError(source, where, f"{len(line.encode('utf-8'))} bytes long; NVIDIA's "
                             f"parser reads at most {MAX_LINE_BYTES} bytes per line and "
                             "would read the rest as another line")
        if line.startswith("#") or not line.strip():
            continue
        if line.lstrip().startswith("#"):
            raise InputError(source, where, "comment must start with '#' in the first column; "
                             "NVIDIA's parser reads an indented comment as a data line")
        rules.append(_rule(line, lineno, source))
    provenance = {"imported_from": "nccl-example-csv", "source": os.fspath(source)}
    return DecisionTable(tuple(rules), provenance)


def _comment_lines(text: str) -> list[str]:
    # Wrapped well under 255 bytes: NVIDIA's parser would read the tail of a longer comment as data.
    return textwrap.wrap(text, width=100, initial_indent="# ", subsequent_indent="#   ",
                         break_long_words=True, break_on_hyphens=False)


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


def _rule(line: str, lineno: int, source) -> Rule:
    tokens = [token.strip(" \t") for token in line.split(",")]
    if not _REQUIRED_FIELDS <= len(tokens) <= len(FIELDS):
        raise InputError(source, f"line {lineno}", f"{len(tokens)} fields; expected 8 to 10: "
                         f"{','.join(FIELDS)}")
    fields = dict(zip(FIELDS, tokens))
    for name, token in fields.items():
        if not token:
            raise InputError(source, f"line {lineno}, field {name}", "empty; NVIDIA's parser skips "
                             "empty fields and would shift the following ones")

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
    if values["channels"] == _KEEP_CHANNELS:
        values["channels"] = KEEP
    try:
        return Rule(**values)
    except InputError as err:
        raise InputError(source, where(_FIELD_OF_RULE.get(err.field, err.field)), err.problem) from None


__all__ = ["FIELDS", "MAX_LINE_BYTES", "inexpressible", "read", "write"]
