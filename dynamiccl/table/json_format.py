"""A decision table as versioned JSON: the format users keep (``table.json``).

::

    {"format": "dynamiccl-decision-table", "version": 3, "provenance": {...}, "rules": [...],
     "steps": [...], "communicators": [...], "job_env": {...}}

One object per rule (keys as the ``Rule`` fields; names in NVIDIA's example CSV spellings;
``algorithm``/``protocol`` -1 = keep NCCL's; the integer keys other than the byte range default to
-1; ``chunk_bytes`` is written only when the rule sets it), one per step shape (keys as the
``StepShape`` fields), one per communicator rule (``{"kind": "dp", "nranks": 8, "nnodes": 1,
"config": {"max_ctas": 8}}``: ``kind`` left out = any kind, ``nranks``/``nnodes`` -1 or left out =
any, ``config`` the ``CommConfig`` fields it sets) and the per-job settings
(``dynamiccl.knobs.job_env.JOB_ENV_SETTINGS``) the launcher exports. All but ``rules`` are optional.

Versions: 1 has rules only; 2 added ``steps`` and ``nccl_env``; 3 added rules' ``chunk_bytes`` and
``communicators`` and renamed ``nccl_env`` to ``job_env``. Every version is read (a version 2
file's ``nccl_env`` becomes ``job_env``), and a table is written in the version it was read with.

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
from dynamiccl.knobs.chunk import KEEP_CHUNK
from dynamiccl.knobs.comm_config import CTA_POLICIES
from dynamiccl.nccl import FUNC_OP, KEEP
from dynamiccl.table.model import (
    ALGORITHM_BY_NAME,
    COLL_BY_NAME,
    FORMAT_VERSION,
    PROTOCOL_BY_NAME,
    CommunicatorRule,
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
    schema.integer("chunk_bytes", KEEP_CHUNK, help=f"chunk size, bytes (tuner ABI v6 getChunkSize); {_KEEP_HELP}"),
)
STEP = schema.Schema(
    schema.integer("nranks", help="ranks of the communicator shape"),
    schema.integer("nnodes", help="nodes of the communicator shape"),
    schema.integer("calls_per_step", help="tunable collectives per training step on it"),
    schema.choice("anchor_coll", tuple(COLL_BY_NAME), help="the collective of the step's first call"),
    schema.integer("anchor_bytes", help="nBytes of the step's first call, bytes"),
)
COMM_CONFIG = schema.Schema(
    schema.integer("min_ctas", None, help="ncclConfig_t minCTAs"),
    schema.integer("max_ctas", None, help="ncclConfig_t maxCTAs"),
    schema.integer("nvls_ctas", None, help="ncclConfig_t nvlsCTAs"),
    schema.choice("cta_policy", CTA_POLICIES, None, help="ncclConfig_t CTAPolicy"),
    schema.integer("cga_cluster_size", None, help="ncclConfig_t cgaClusterSize"),
)
COMMUNICATOR = schema.Schema(
    schema.string("kind", None, help="the group kind (dp, tp, pp, ...); left out = any"),
    schema.integer("nranks", KEEP, help=f"ranks of the communicator; {_ANY_HELP}"),
    schema.integer("nnodes", KEEP, help=f"nodes of the communicator; {_ANY_HELP}"),
    schema.table("config", COMM_CONFIG, help="the ncclConfig_t settings it gets (those it sets)"),
)
_FORMAT = schema.choice("format", (FORMAT_NAME,), help="names the file as a dynamiccl decision table")
_VERSION = replace(schema.integer("version", low=1, help="2 added steps and nccl_env; 3 chunk_bytes, "
                                   "communicators and job_env (formerly nccl_env)"),
                   expect=f"a format version (an integer 1 .. {FORMAT_VERSION})")
_HEADER = schema.Schema(_FORMAT, _VERSION)
TABLE = schema.Schema(
    _FORMAT,
    _VERSION,
    schema.json_value("provenance", {}, help="free-form: what produced the table"),
    replace(schema.tables("rules", RULE), expect="a list of rule objects"),
    replace(schema.tables("steps", STEP, []), expect="a list of step objects"),
    replace(schema.tables("communicators", COMMUNICATOR, []), expect="a list of communicator objects"),
    schema.mapping("job_env", schema.integer("value"), {}, help="per-job NCCL settings the launcher exports"),
    schema.mapping("nccl_env", schema.integer("value"), {}, help="version 2's name of job_env"),
)
# Keys and the first version that has them.
_SINCE = {"steps": 2, "nccl_env": 2, "job_env": 3, "communicators": 3}


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
    for key, since in _SINCE.items():
        if key in data and version < since:
            raise InputError(source, key, f"needs format version {since}; this file says version {version}")
    if "nccl_env" in data and version > 2:
        raise InputError(source, "nccl_env", f"is version 2's name; version {version} calls it job_env")
    rules = tuple(_rule(item, index, source, version) for index, item in enumerate(fields["rules"]))
    steps = tuple(_step(item, index, source) for index, item in enumerate(fields["steps"]))
    communicators = tuple(_communicator(item, index, source) for index, item in enumerate(fields["communicators"]))
    job_env = fields["job_env"] if version > 2 else fields["nccl_env"]
    try:
        return DecisionTable(rules, fields["provenance"], version, steps, job_env, communicators)
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
    if table.communicators:
        lines = ",\n".join("    " + json.dumps(_communicator_object(rule)) for rule in table.communicators)
        extra += ',\n  "communicators": [\n' + lines + "\n  ]"
    if table.job_env:
        key = "job_env" if table.version > 2 else "nccl_env"  # the name of the version written
        extra += f',\n  "{key}": ' + json.dumps(table.job_env, sort_keys=True)
    return ("{\n"
            f'  "format": {json.dumps(FORMAT_NAME)},\n'
            f'  "version": {table.version},\n'
            f'  "provenance": {provenance},\n'
            f'  "rules": {rules}{extra}\n'
            "}\n")


def _rule(fields: dict, index: int, source, version: int) -> Rule:
    """A ``Rule`` from the checked fields of ``rules[index]``; the model's errors get that prefix."""
    if fields["chunk_bytes"] != KEEP_CHUNK and version < 3:
        raise InputError(source, f"rules[{index}].chunk_bytes", f"needs format version 3; this file says "
                         f"version {version}")
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


def _communicator(fields: dict, index: int, source) -> CommunicatorRule:
    try:
        return CommunicatorRule(fields.get("kind"), fields["nranks"], fields["nnodes"], fields["config"])
    except InputError as err:
        raise InputError(source, f"communicators[{index}].{err.field}", err.problem) from None


def _communicator_object(rule: CommunicatorRule) -> dict:
    return {**({"kind": rule.kind} if rule.kind is not None else {}), "nranks": rule.nranks,
            "nnodes": rule.nnodes, "config": rule.config.set_fields()}


def _rule_object(rule: Rule) -> dict:
    chunk = {"chunk_bytes": rule.chunk_bytes} if rule.chunk_bytes != KEEP_CHUNK else {}
    return {
        "coll": FUNC_OP[rule.coll], "min_bytes": rule.min_bytes, "max_bytes": rule.max_bytes,
        "nranks": rule.nranks, "nnodes": rule.nnodes, "position": rule.position,
        "num_pipe_ops": rule.num_pipe_ops, "reg_buff": rule.reg_buff,
        "algorithm": rule.algorithm.name_lower if rule.algorithm is not None else KEEP,
        "protocol": rule.protocol.name_lower if rule.protocol is not None else KEEP,
        "channels": rule.channels, **chunk,
    }


def _step_object(step: StepShape) -> dict:
    return {"nranks": step.nranks, "nnodes": step.nnodes, "calls_per_step": step.calls_per_step,
            "anchor_coll": FUNC_OP[step.anchor_coll], "anchor_bytes": step.anchor_bytes}


__all__ = ["COMMUNICATOR", "COMM_CONFIG", "FORMAT_NAME", "RULE", "STEP", "TABLE", "read", "write"]
