"""``Trace``: the ops table plus its metadata, stored as one Parquet file.

The metadata travels as JSON in the Parquet schema's key/value metadata (key ``dynamiccl.trace``), so
a trace is a single self-describing file that pandas, pyarrow, DuckDB or Spark can read directly.
Writes are validated first and atomic; reads are validated before anything is returned.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dynamiccl import __version__, atomic, schema
from dynamiccl.errors import InputError
from dynamiccl.trace.schema import (
    ARROW_SCHEMA, COLUMNS, METADATA_KEY, REQUIRED_COLUMNS, TraceMeta, check_arrow_schema, validate_ops,
)


@dataclass
class Trace:
    """One training step (or several, by ``step``) of one or more ranks.

    ``ops`` has the columns of ``dynamiccl.trace.schema.COLUMNS``, sorted by (step, rank, op_index).
    """

    ops: pd.DataFrame
    meta: TraceMeta

    @property
    def ranks(self) -> list[int]:
        """The ranks present in the trace, ascending."""
        return sorted(int(r) for r in self.ops["rank"].unique())

    @property
    def communication_ops(self) -> pd.DataFrame:
        """The ops that are not compute (collectives and point-to-point), in trace order."""
        return self.ops[self.ops["kind"] != "compute"]

    def rank_ops(self, rank: int, step: int | None = None) -> pd.DataFrame:
        """The ops of one rank (and optionally one step), in issue order."""
        mask = self.ops["rank"] == rank
        if step is not None:
            mask &= self.ops["step"] == step
        return self.ops[mask]

    def validate(self, source: str = "<trace>") -> None:
        """Check the ops against the schema and the metadata; raises ``InputError``."""
        validate_ops(_canonical(self.ops, source), self.meta, source)

    def write(self, path: str | os.PathLike) -> None:
        """Validate, then write atomically as Parquet (zstd); raises ``InputError`` if invalid."""
        path = Path(path)
        ops = _canonical(self.ops, str(path))
        validate_ops(ops, self.meta, str(path))
        meta = dict(self.meta.to_json_obj())
        meta["created_by"] = meta["created_by"] or f"dynamiccl {__version__}"
        TraceMeta.from_json_obj(json.loads(json.dumps(meta)), str(path))  # never write what read refuses
        table = pa.Table.from_pandas(ops, schema=ARROW_SCHEMA, preserve_index=False)
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta, separators=(",", ":"))})
        atomic.write_with(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Trace":
        """Read and validate a trace file.

        Raises:
            InputError: the file is missing, not Parquet, lacks dynamiccl metadata, or a column or
                row is wrong — the message names the file, the column and the row.
        """
        source = os.fspath(path)
        if not Path(source).is_file():
            raise InputError(source, None, "no such trace file" if not Path(source).exists()
                             else "not a trace file (a directory or a device, not a regular file)")
        try:
            table = pq.read_table(source)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(source, None, f"not a readable Parquet file ({exc})") from None
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise InputError(source, f"metadata '{METADATA_KEY.decode()}'",
                             "missing: this Parquet file is not a dynamiccl trace "
                             "(import other formats with `dynamiccl import`)")
        meta_obj = schema.parse_json(raw, source, f"metadata '{METADATA_KEY.decode()}'")
        meta = TraceMeta.from_json_obj(meta_obj, source)
        check_arrow_schema(table.schema, source)
        ops = _canonical(table.select([c for c, _, _ in COLUMNS if c in table.schema.names]).to_pandas(), source)
        validate_ops(ops, meta, source)
        return cls(ops=ops, meta=meta)


def _canonical(ops: pd.DataFrame, source: str) -> pd.DataFrame:
    """Columns in schema order and dtype, rows sorted by (step, rank, op_index), fresh index; an
    absent optional column (``OPTIONAL_COLUMNS``) is filled with its default (unknown).

    Raises:
        InputError: a required column is missing or a column holds values of the wrong type.
    """
    missing = [name for name in REQUIRED_COLUMNS if name not in ops.columns]
    if missing:
        raise InputError(source, f"column '{missing[0]}'",
                         f"missing (required columns missing: {', '.join(missing)})")
    out = {}
    for name, typ, default in COLUMNS:
        col = ops[name] if name in ops.columns else pd.Series(default, index=ops.index, dtype=typ.to_pandas_dtype())
        try:
            if pa.types.is_integer(typ):
                if col.isna().any():
                    raise ValueError("null values")
                out[name] = pd.to_numeric(col, errors="raise").astype(typ.to_pandas_dtype())
            elif pa.types.is_floating(typ):
                out[name] = pd.to_numeric(col, errors="raise").astype(np.float64)
            elif pa.types.is_list(typ):
                values = list(col)
                if not all(type(d) is np.ndarray and d.dtype == np.int32 for d in values):
                    values = [np.asarray(d if d is not None else (), dtype=np.int32) for d in values]
                out[name] = pd.Series(values, index=col.index, dtype=object)
            else:
                if col.isna().any():
                    col = col.astype(object).where(col.notna(), "")
                out[name] = col if pd.api.types.is_string_dtype(col) else col.astype(str)
        except (TypeError, ValueError) as exc:
            raise InputError(source, f"column '{name}'", f"expected values of type {typ} ({exc})") from None
    frame = pd.DataFrame(out, index=range(len(ops)))
    return frame.sort_values(["step", "rank", "op_index"], kind="stable").reset_index(drop=True)
