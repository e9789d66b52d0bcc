"""Decision tables: the model and its lookup semantics, its file formats, and one ``load``/``save``.

- ``model``: ``Rule``, ``StepShape``, ``PositionCounter``, ``Choice``, ``DecisionTable`` (lookup,
  choose) -- the semantics the C plugin implements;
- ``json_format``: versioned JSON, what users keep (``.json``);
- ``nvidia_csv``: the CSV of NVIDIA's example tuner plugin (``.csv``, ``.conf``);
- ``plugin_text``: the plain text the dynamiccl C plugin reads (``.txt``);
- ``policy_export``: a learned policy written down as a table, ``evidence``: each of its acting
  rules confined to the call sizes where it beat NCCL's default, ``check``: ``dynamiccl table
  check`` (a step replayed with and without a table), ``sweep``: that check over a sweep file
  (these four are imported on their own: they need the tuning stack).

Every command that reads a table reads it with ``load``, so each accepts every format.
"""

from __future__ import annotations

import os
from pathlib import Path

from dynamiccl import schema
from dynamiccl.atomic import write_text
from dynamiccl.errors import InputError
from dynamiccl.table import json_format, nvidia_csv, plugin_text
from dynamiccl.table.model import (
    FORMAT_VERSION,
    MAX_BYTES,
    Choice,
    ChunkMemory,
    CommunicatorRule,
    DecisionTable,
    PositionCounter,
    Rule,
    StepShape,
)

# Extension -> format, for ``load`` and ``save``.
FORMATS = {".json": "json", ".csv": "csv", ".conf": "csv", ".txt": "plugin-text"}


def format_of(path: str | os.PathLike) -> str:
    """The format ``path``'s extension names: ``json``, ``csv`` or ``plugin-text`` (see ``FORMATS``).

    Raises:
        InputError: naming the file, for any other extension.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(path, None, f"unknown extension {suffix or '(none)'!r}; expected .json "
                         "(dynamiccl decision table), .csv/.conf (NCCL example tuner CSV) or .txt "
                         "(the dynamiccl plugin's text)")
    return FORMATS[suffix]


def load(path: str | os.PathLike) -> DecisionTable:
    """Read a table from ``path`` in the format its extension names (``format_of``).

    ``.txt`` is checked exactly as the C plugin checks it (``plugin_text.read``).

    Raises:
        InputError: naming the file, for an unknown extension, an unreadable or (JSON, CSV)
            non-UTF-8 file, or any parse error with its line or key and field.
    """
    kind = format_of(path)
    data = schema.read_bytes(path, "decision table")  # capped: /dev/zero is an error, not a memory kill
    if kind == "plugin-text":
        return plugin_text.read(data, path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(path, f"byte {err.start}", "not UTF-8 text") from None
    if kind == "json":
        return json_format.read(text, source=path)
    return nvidia_csv.read(text, source=path)


def save(table: DecisionTable, path: str | os.PathLike, lossy: bool = False) -> None:
    """Write ``table`` to ``path`` atomically, in the format its extension names.

    Only JSON keeps everything. The CSV is written only where NVIDIA's example plugin will do what
    the table means (``nvidia_csv.write``: no position rules, and NCCL's own choice spelled out as
    explicit lines, and it has no chunk sizes, communicators or job_env); the plugin's text has no
    ``job_env`` or ``communicators`` (the launcher applies those from a .json table). With ``lossy``
    (the CLI's ``--lossy``)
    what cannot be expressed is dropped (and the CSV says so in its header) instead of refused. Neither
    reads back the provenance (the CSV keeps it as a comment). On any error an existing file at
    ``path`` is left untouched.

    Raises:
        InputError: naming the file, for an unknown extension or what the format cannot express.
        OSError: if the file cannot be written.
    """
    kind = format_of(path)
    if kind == "json":
        text = json_format.write(table)
    elif kind == "csv":
        try:
            text = nvidia_csv.write(table, lossy=lossy)
        except InputError as err:
            raise InputError(path, err.field, err.problem) from None
    else:
        for name, present, what in (
                ("job_env", table.job_env, f"the launcher exports {', '.join(table.job_env)}"),
                ("communicators", table.communicators,
                 f"the launcher applies its {len(table.communicators)} communicator rule(s)")):
            if present and not lossy:
                raise InputError(path, name, f"the plugin's text format has no {name} ({what} from a .json "
                                 "table); save as .json, or pass --lossy to drop them")
        text = plugin_text.write(table)
    write_text(path, text)


__all__ = ["FORMATS", "FORMAT_VERSION", "MAX_BYTES", "Choice", "ChunkMemory", "CommunicatorRule",
           "DecisionTable",
           "PositionCounter", "Rule", "StepShape", "format_of", "load", "save"]
