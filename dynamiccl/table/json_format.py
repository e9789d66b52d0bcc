"""A decision table as versioned JSON: the format users keep (``table.json``).

::

    {"format": "dynamiccl-decision-table", "version": 2, "provenance": {...}, "rules": [...],
     "steps": [...], "nccl_env": {...}}

One object per rule (keys as the ``Rule`` fields; names in NVIDIA's example CSV spellings;
``algorithm``/``protocol`` -1 = keep NCCL's; the integer keys other than the byte range default to
-1), one per step shape (keys as the ``StepShape`` fields) and the init-time Send/Recv settings
(``NCCL_ENV_KEYS``) the launcher exports. ``steps`` and ``nccl_env`` are optional and need version
2; version 1 files (rules only) are still read.

The fields are declared once below with ``dynamiccl.schema`` (which also reads the JSON strictly:
no NaN, no key given twice); ranges and the (algorithm, protocol) pairs NCCL can run are checked by
the model (``Rule``, ``StepShape``, ``DecisionTable``), and every error names the file and the key
(``rules[3].algorithm``).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

from dynamiccl import __version__, schema
from dynamiccl.errors import InputError
from dynamiccl.nccl import FUNC_OP, KEEP
from dynamiccl.table.model import (
    ALGORITHM_BY_NAME,
    COLL_BY_NAME,
    FORMAT_VERSION,
    PROTOCOL_BY_NAME,
    DecisionTable,
    Rule,
    StepShape,
)

FORMAT_NAME = "dynamiccl-decision-table"

_KEEP_HELP = "-1 = keep NCCL's"
_ANY_HELP = "-1 = any"

RULE = schema.Schema(
    schema.choice("coll", tuple(COLL_BY_NAME), help="the collective"),
    schema.integer("min_bytes", help="smallest nBytes the rule matches, bytes (inclusive)"),
    schema.integer("max_bytes", help="largest nBytes the rule matches, bytes (inclusive)"),
    schema.integer("nranks", KEEP, help=f"ranks of the communicator; {_ANY_HELP}"),
    schema.integer("nnodes", KEEP, help=f"nodes of the communicator; {_ANY_HELP}"),
    schema.integer("position", KEEP, help=f"0-based position of the call in the step; {_ANY_HELP}"),
    schema.integer("num_pipe_ops", KEEP, help=f"NCCL's numPipeOps; {_ANY_HELP}"),
    schema.integer("reg_buff", KEEP, help=f"NCCL's regBuff (0 or 1); {_ANY_HELP}"),
    schema.choice("algorithm", tuple(ALGORITHM_BY_NAME) + (KEEP,), help=f"the algorithm; {_KEEP_HELP}"),
    schema.choice("protocol", tuple(PROTOCOL_BY_NAME) + (KEEP,), help=f"the protocol; {_KEEP_HELP}"),
    schema.integer("channels", KEEP, help=f"channel count; {_KEEP_HELP}"),
)
STEP = schema.Schema(
    schema.integer("nranks", help="ranks of the communicator shape"),
    schema.integer("nnodes", help="nodes of the communicator shape"),
    schema.integer("calls_per_step", help="tunable collectives per training step on it"),
    schema.choice("anchor_coll", tuple(COLL_BY_NAME), help="the collective of the step's first call"),
    schema.integer("anchor_bytes", help="nBytes of the step's first call, bytes"),
)
_FORMAT = schema.choice("format", (FORMAT_NAME,), help="names the file as a dynamiccl decision table")
_VERSION = replace(schema.integer("version", low=1, help="2 added steps and nccl_env"),
                   expect=f"a format version (an integer 1 .. {FORMAT_VERSION})")
_HEADER = schema.Schema(_FORMAT, _VERSION)
TABLE = schema.Schema(
    _FORMAT,
    _VERSION,
    schema.json_value("provenance", {}, help="free-form: what produced the table"),
    replace(schema.tables("rules", RULE), expect="a list of rule objects"),
    replace(schema.tables("steps", STEP, []), expect="a list of step objects"),
    schema.mapping("nccl_env", schema.integer("value"), {}, help="init-time settings the launcher exports"),
)


def read(text: str | bytes, source: str | os.PathLike = "<json>") -> DecisionTable:
    """Parse versioned JSON text (see the module docstring for the format).

    Raises:
        InputError: naming ``source`` and the key (``rules[i].field``) for invalid JSON,
            duplicate or unknown keys, a wrong ``format``, a ``version`` newer than
            FORMAT_VERSION, wrong types (booleans are not integers), out-of-range values or an
            (algorithm, protocol) NCCL cannot run for the collective.
    """
    data = schema.parse_json(text, source)
    if not isinstance(data, dict):
        raise schema.expected(source, None, f"a JSON object with keys {', '.join(TABLE.names)}", data)
    # The header first: a newer file's other keys are not ours to judge.
    version = _HEADER.parse({key: data[key] for key in _HEADER.names if key in data}, source)["version"]
    if version > FORMAT_VERSION:
        raise InputError(source, "version", f"format version {version} is newer than this dynamiccl "
                         f"{__version__} reads (up to {FORMAT_VERSION}); upgrade dynamiccl")
    fields = TABLE.parse(data, source)
    rules = tuple(_rule(item, index, source) for index, item in enumerate(fields["rules"]))
    for key in ("steps", "nccl_env"):
        if key in data and version < 2:
            raise InputError(source, key, f"needs format version 2; this file says version {version}")
    steps = tuple(_step(item, index, source) for index, item in enumerate(fields["steps"]))
    try:
        return DecisionTable(rules, fields["provenance"], version, steps, fields["nccl_env"])
    except InputError as err:
        raise InputError(source, err.field, err.problem) from None


def write(table: DecisionTable) -> str:
    """The table as versioned JSON text, one rule per line (stable: same table, same text)."""
    provenance = json.dumps(table.provenance, indent=2, allow_nan=False).replace("\n", "\n  ")
    if table.rules:
        lines = ",\n".join("    " + json.dumps(_rule_object(rule)) for rule in table.rules)
        rules = "[\n" + lines + "\n  ]"
    else:
        rules = "[]"
    extra = ""
    if table.steps:
        lines = ",\n".join("    " + json.dumps(_step_object(step)) for step in table.steps)
        extra += ',\n  "steps": [\n' + lines + "\n  ]"
    if table.nccl_env:
        extra += ',\n  "nccl_env": ' + json.dumps(table.nccl_env, sort_keys=True)
    return ("{\n"
            f'  "format": {json.dumps(FORMAT_NAME)},\n'
            f'  "version": {table.version},\n'
            f'  "provenance": {provenance},\n'
            f'  "rules": {rules}{extra}\n'
            "}\n")


def _rule(fields: dict, index: int, source) -> Rule:
    """A ``Rule`` from the checked fields of ``rules[index]``; the model's errors get that prefix."""
    def name(value, by_name: dict):
        return None if value == KEEP else by_name[value]

    values = {**fields, "coll": COLL_BY_NAME[fields["coll"]],
              "algorithm": name(fields["algorithm"], ALGORITHM_BY_NAME),
              "protocol": name(fields["protocol"], PROTOCOL_BY_NAME)}
    try:
        return Rule(**values)
    except InputError as err:
        raise InputError(source, f"rules[{index}].{err.field}", err.problem) from None


def _step(fields: dict, index: int, source) -> StepShape:
    try:
        return StepShape(**{**fields, "anchor_coll": COLL_BY_NAME[fields["anchor_coll"]]})
    except InputError as err:
        raise InputError(source, f"steps[{index}].{err.field}", err.problem) from None


def _rule_object(rule: Rule) -> dict:
    return {
        "coll": FUNC_OP[rule.coll], "min_bytes": rule.min_bytes, "max_bytes": rule.max_bytes,
        "nranks": rule.nranks, "nnodes": rule.nnodes, "position": rule.position,
        "num_pipe_ops": rule.num_pipe_ops, "reg_buff": rule.reg_buff,
        "algorithm": rule.algorithm.name_lower if rule.algorithm is not None else KEEP,
        "protocol": rule.protocol.name_lower if rule.protocol is not None else KEEP,
        "channels": rule.channels,
    }


def _step_object(step: StepShape) -> dict:
    return {"nranks": step.nranks, "nnodes": step.nnodes, "calls_per_step": step.calls_per_step,
            "anchor_coll": FUNC_OP[step.anchor_coll], "anchor_bytes": step.anchor_bytes}


__all__ = ["FORMAT_NAME", "RULE", "STEP", "TABLE", "read", "write"]
