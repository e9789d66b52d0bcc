"""Measured nccl-tests tables (a measurements CSV with the :data:`COLUMNS`) and the mapping of each
table to an environment spec.

A table's rows share ``table``, ``system``, ``nccl_version``, ``coll``, ``algo``, ``proto``,
``gpus_per_node`` and ``nodes``. A table maps to the spec in ``--env-dir`` whose GPU appears in the
``system`` text (whole word: ``GH200`` is not ``H200``) and whose GPUs per node match; among those,
the one whose fabric agrees with the text (PCIe or NVLink), without congestion or overlap dynamics,
with the fewest nodes that still hold the table's nodes. The table's own NCCL version (when it gives one) replaces the spec's, because NCCL's
choices depend on it; a table measured with one process driving ``k`` GPUs (``-g k``, in its
``how`` or ``system`` text) is costed with that launch mode. A table without an NCCL version (the
AWS g5 torch.distributed timings) runs with the spec's.

``size_bytes`` is NCCL's ``nBytes`` once read: nccl-tests' size (for AllGather, the whole output
buffer). A torch.distributed harness (``torch.distributed`` in the ``system`` text) names an
AllGather by its per-rank input tensor instead (``dist.all_gather(tensor_list, t)`` with ``t`` of
``size`` bytes, as the public g5 harness does: CS244C-project-repo
``run_benchmark_aws_multinode_allgather.py``), so its sizes are multiplied by the ranks on reading
(:func:`per_rank_input_sizes`).

The calibration set is every CSV of :data:`DEFAULT_MEASUREMENT_FILES` in :data:`CALIBRATION_DIR`,
package data shipped with its sources (``dynamiccl/data/calibration/README.md``): the nccl-tests
tables of ``measurements.csv`` and the systems of ``more-systems.csv`` (PCIe, TCP-class and GB200
partitions). Being package data, it is found from any working directory and in an installed package.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dynamiccl import schema
from dynamiccl.cluster import MAX_GPUS_PER_NODE, MAX_NODES
from dynamiccl.costmodel.batch import COSTED_FUNCS
from dynamiccl.envspec import OLDEST_NCCL, NEWEST_NCCL, DynamicsSpec, EnvSpec, load_env
from dynamiccl.errors import InputError
from dynamiccl.knobs.chunk import check_chunk_bytes
from dynamiccl.nccl import KEEP, MAX_CHANNELS, Algorithm, Func, parse_algorithm, parse_func, parse_protocol, parse_version

# The calibration set, in this order, in :data:`CALIBRATION_DIR` (package data, read-only by convention).
CALIBRATION_DIR = Path(__file__).resolve().parents[1] / "data" / "calibration"
DEFAULT_MEASUREMENT_FILES = ("measurements.csv", "more-systems.csv")

MAX_CHUNK_BYTES = 64 << 20  # knobs.chunk.check_chunk_bytes' largest chunk
COLUMNS = ("table", "system", "nccl_version", "coll", "algo", "proto", "gpus_per_node", "nodes", "size_bytes",
           "time_us", "algbw_gbytes_per_s", "busbw_gbytes_per_s", "how")
# Optional columns: ``channels``, the channel count a table forced (``dynamiccl measure`` through the
# tuner plugin's override, or NCCL_MIN/MAX_NCHANNELS); empty or 0 = NCCL's own count. ``chunk_bytes``,
# the chunk size a table forced (``dynamiccl measure --chunks`` through the plugin's getChunkSize,
# tuner ABI v6); empty or 0 = NCCL's own chunk.
OPTIONAL_COLUMNS = ("channels", "chunk_bytes")
# Columns every row of one table shares (a row that differs is an error: two configurations in one table).
_TABLE_CONSTANTS = ("channels", "chunk_bytes")
# Older column spellings, still read (the public calibration set's CSV uses them).
RENAMED_COLUMNS = {"algbw_gbps": "algbw_gbytes_per_s", "busbw_gbps": "busbw_gbytes_per_s"}
# algo / proto values that leave the choice to NCCL (KEEP); any other value is an algorithm or protocol
# name (nccl.parse_algorithm / parse_protocol: NCCL_ALGO's "collnetdirect" or the tuner CSV's).
_NCCL_CHOICE = {"algo": ("default", "p2p"), "proto": ("default",)}
_PARSERS = {"algo": parse_algorithm, "proto": parse_protocol}


@dataclass
class MeasuredTable:
    """One measured table: its description and per-size arrays."""

    table: str
    system: str
    nccl_version: str
    coll: str
    func: int
    algo: int             # forced algorithm, -1 = NCCL's choice
    proto: int
    gpus_per_node: int
    nodes: int
    how: str
    size_bytes: np.ndarray
    time_us: np.ndarray
    busbw_gbytes_per_s: np.ndarray
    channels: int = 0     # forced channel count, 0 = NCCL's own
    chunk_bytes: int = 0  # forced chunk size (bytes), 0 = NCCL's own

    @property
    def nranks(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def launch_gpus(self) -> int:
        """GPUs driven by one process (nccl-tests ``-g k`` in ``how`` or ``system``); 1 for one rank per GPU."""
        match = re.search(r"(?<![\w-])-g\s*(\d+)", f"{self.how} {self.system}")
        return int(match.group(1)) if match else 1


def calibration_dir() -> Path:
    """The shipped calibration set's directory (:data:`CALIBRATION_DIR`, ``dynamiccl/data/calibration``)."""
    return CALIBRATION_DIR


def default_measurement_paths() -> list[Path]:
    """The calibration set's CSVs (:data:`DEFAULT_MEASUREMENT_FILES` in :func:`calibration_dir`).

    Raises:
        InputError: naming the file, when one of them is missing (a broken installation: they are
            package data, and a partial set would silently calibrate on fewer tables).
    """
    paths = [calibration_dir() / name for name in DEFAULT_MEASUREMENT_FILES]
    for path in paths:
        if not path.is_file():
            raise InputError(os.fspath(path), None, "missing from the installed package's calibration set "
                                                    "(reinstall dynamiccl, or give --measurements FILE)")
    return paths


def load_measurement_files(paths: list[str | os.PathLike]) -> list[MeasuredTable]:
    """Read several measurements CSVs into one list of tables (file order, then row order).

    Raises:
        InputError: a bad file (see :func:`load_measurements`), or a table id that two files use.
    """
    tables: list[MeasuredTable] = []
    seen: dict[str, str] = {}
    for path in paths:
        for table in load_measurements(path):
            if table.table in seen:
                raise InputError(os.fspath(path), f"table {table.table}", f"table id already used in {seen[table.table]}")
            seen[table.table] = os.fspath(path)
            tables.append(table)
    return tables


# The numeric columns of a row, declared once (dynamiccl.schema checks each cell as it checks TOML values):
# finite, in range, integers where NCCL counts. busbw may be empty (torch.distributed timings have none).
_CELLS = {
    "gpus_per_node": schema.integer("gpus_per_node", low=1, high=MAX_GPUS_PER_NODE),
    "nodes": schema.integer("nodes", low=1, high=MAX_NODES),
    "size_bytes": schema.integer("size_bytes", low=1, high=schema.INT_MAX),
    "time_us": schema.number("time_us", low=0, low_inclusive=False, high=1e12),
    "busbw_gbytes_per_s": schema.number("busbw_gbytes_per_s", 0.0, low=0, high=1e6),
    "channels": schema.integer("channels", 0, low=0, high=MAX_CHANNELS),
    "chunk_bytes": schema.integer("chunk_bytes", 0, low=0, high=MAX_CHUNK_BYTES),
}
# nccl_version: a version NCCL's model covers (OLDEST_NCCL..NEWEST_NCCL), or empty / "unknown ..." for a
# table that did not log one (it runs with its spec's version).
_VERSION_EXPECTED = (f"an NCCL version between {'.'.join(map(str, OLDEST_NCCL[:2]))} and "
                     f"{'.'.join(map(str, NEWEST_NCCL[:2]))} (e.g. 2.23.4), or empty / \"unknown\" when not logged")


def load_measurements(path: str | os.PathLike) -> list[MeasuredTable]:
    """Read a measurements CSV into tables (in file order).

    Raises:
        InputError: naming the file, the line and the column of a missing or bad value: a row cut
            short, a number that is not finite or out of range, an NCCL version outside the
            modelled range, an unknown collective, algorithm or protocol.
    """
    source = os.fspath(path)
    columns, rows = schema.read_csv(source, "measurements", renamed=RENAMED_COLUMNS)
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise InputError(source, None, f"missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    groups: dict[str, dict] = {}
    for line, row in rows:
        where = f"line {line}"

        def number(column: str):
            return schema.parse_cell(_CELLS[column], row.get(column), source, f"{where}, column {column}")

        key = row["table"]
        algo, proto = _forced(row, "algo", source, where), _forced(row, "proto", source, where)
        func = parse_func(row["coll"], source, f"{where}, column coll", allowed=COSTED_FUNCS)
        version = _nccl_version(row["nccl_version"], source, f"{where}, column nccl_version")
        constants = {"channels": number("channels"), "chunk_bytes": _chunk_bytes(number("chunk_bytes"), source, where)}
        table = groups.setdefault(key, dict(
            table=key, system=row["system"], nccl_version=version, coll=row["coll"].strip().lower(),
            func=int(func), algo=algo, proto=proto, gpus_per_node=number("gpus_per_node"),
            nodes=number("nodes"), how=row["how"], size_bytes=[], time_us=[], busbw_gbytes_per_s=[], **constants))
        for column in _TABLE_CONSTANTS:
            if constants[column] != table[column]:
                raise InputError(source, f"{where}, column {column}",
                                 f"table {key} has {column} {table[column]} on its first row and {constants[column]} "
                                 "here; one table is one configuration (give each its own table id)")
        table["size_bytes"].append(float(number("size_bytes")))
        table["time_us"].append(number("time_us"))
        table["busbw_gbytes_per_s"].append(number("busbw_gbytes_per_s"))
    if not groups:
        raise InputError(source, None, "no measurement rows")
    tables = [MeasuredTable(**{**g, "size_bytes": np.array(g["size_bytes"]), "time_us": np.array(g["time_us"]),
                               "busbw_gbytes_per_s": np.array(g["busbw_gbytes_per_s"])}) for g in groups.values()]
    for table in tables:  # NCCL's nBytes: per-rank inputs times the ranks
        if per_rank_input_sizes(table):
            table.size_bytes = table.size_bytes * table.nranks
    return tables


def write_measurements(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write measurement rows as a measurements CSV, atomically: the :data:`COLUMNS` and the
    :data:`OPTIONAL_COLUMNS`, in that order. Each row is a dict with every one of those columns
    (``channels`` and ``chunk_bytes`` may be left out: NCCL's own count and chunk); what :func:`load_measurements` reads back is
    what was written.

    Raises:
        ValueError: a row without a column, or with one this format does not have (a bug in the
            writer's caller, not bad input).
    """
    import csv

    from dynamiccl import atomic

    columns = (*COLUMNS, *OPTIONAL_COLUMNS)
    for number, row in enumerate(rows):
        missing = [c for c in COLUMNS if c not in row]
        extra = [c for c in row if c not in columns]
        if missing or extra:
            raise ValueError(f"measurement row {number}: missing {missing}, unknown {extra}")

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(columns)
            for row in rows:
                writer.writerow(["" if row.get(c) is None else row.get(c, "") for c in columns])

    atomic.write_with(path, write)


def _chunk_bytes(value: int, source: str, where: str) -> int:
    """A row's ``chunk_bytes`` cell once read as an integer: 0 (NCCL's own chunk) or a chunk size
    :func:`~dynamiccl.knobs.chunk.check_chunk_bytes` accepts.

    Raises:
        InputError: naming the file, line and column, for a size that is not a power of two in range.
    """
    if value == 0:
        return 0
    try:
        return check_chunk_bytes(value)
    except ValueError:
        raise schema.expected(source, f"{where}, column chunk_bytes",
                              "empty or 0 (NCCL's chunk) or a power of two from 4096 to 67108864 bytes",
                              value) from None


def _nccl_version(text: str, source: str, field: str) -> str:
    """A row's ``nccl_version`` as written, once checked (see :data:`_VERSION_EXPECTED`).

    Raises:
        InputError: neither empty, "unknown ..." nor a version NCCL's model covers.
    """
    if not text.strip() or text.strip().lower().startswith("unknown"):
        return text
    try:
        version = parse_version(text)
    except ValueError:
        version = None
    if version is None or not OLDEST_NCCL <= version <= NEWEST_NCCL:
        raise schema.expected(source, field, _VERSION_EXPECTED, text)
    return text


def per_rank_input_sizes(table: MeasuredTable) -> bool:
    """Whether a table's sizes are the per-rank input of an AllGather rather than nccl-tests' whole
    output buffer: a torch.distributed harness (``torch.distributed`` in its ``system`` text) sizes
    ``all_gather`` by the tensor each rank contributes."""
    return table.func == Func.ALLGATHER and "TORCH.DISTRIBUTED" in table.system.upper()


def _forced(row: dict, column: str, source: str, where: str) -> int:
    """The algorithm or protocol a row's ``column`` ("algo" / "proto") forces, KEEP for NCCL's choice.

    Raises:
        InputError: an unknown name, naming the file, line and column.
    """
    text = row[column].strip().lower()
    if text in _NCCL_CHOICE[column]:
        return KEEP
    field = f"{where}, column {column}"
    try:
        return int(_PARSERS[column](text, source, field))
    except InputError as err:
        raise InputError(source, field, f"{err.problem}, or {' / '.join(_NCCL_CHOICE[column])} for NCCL's "
                                        "own choice") from None


# ``dynamiccl measure --with-gemm`` also times each collective with a GEMM running beside it, and
# writes those times as tables of their own whose ``how`` ends "with a <GEMM> beside".
_BESIDE_COMPUTE = re.compile(r"\bwith an? .+ beside\b", re.IGNORECASE)


def measured_beside_compute(table: MeasuredTable) -> bool:
    """Whether a table was timed with compute running beside the collective (its ``how`` says
    "with a ... beside", as ``dynamiccl measure --with-gemm`` writes), not alone as nccl-tests times."""
    return bool(_BESIDE_COMPUTE.search(table.how))


def _gpu_token(name: str) -> str:
    return name.split("-")[0].upper()


def load_env_dir(env_dir: str | os.PathLike) -> list[EnvSpec]:
    """Every ``*.toml`` spec of a directory (sorted by name). Raises InputError for a bad spec."""
    specs = [load_env(p) for p in sorted(Path(env_dir).glob("*.toml"))]
    if not specs:
        raise InputError(os.fspath(env_dir), None, "no environment specs (*.toml) in this directory")
    return specs


def map_table(table: MeasuredTable, specs: list[EnvSpec] | EnvSpec) -> EnvSpec:
    """The spec a measured table runs on (see the module docstring), with the table's NCCL version.

    ``specs`` is either the specs to choose from by the table's ``system`` text, or the one spec every
    table was measured on (``calibrate``/``validate --env``: a user's own cluster, whose
    ``dynamiccl measure`` tables are communicators of any shape that fits it).

    Raises:
        InputError: no spec matches the table's GPU and GPUs per node; or, for one given spec, the
            table does not fit it (more nodes, or more ranks per node, than the spec has).
    """
    if isinstance(specs, EnvSpec):
        if table.nodes > specs.nodes or table.gpus_per_node > specs.gpus_per_node:
            raise InputError(table.table, "gpus_per_node",
                             f"{table.gpus_per_node} rank(s) per node on {table.nodes} node(s) do not fit spec "
                             f"{specs.name} ({specs.gpus_per_node} GPUs per node, {specs.nodes} nodes)")
        return _with_table_version(table, specs)
    quiet = DynamicsSpec()
    candidates = [s for s in specs
                  if re.search(rf"\b{re.escape(_gpu_token(s.cluster.gpu.name))}\b", table.system.upper())
                  and s.gpus_per_node == table.gpus_per_node and s.nodes >= table.nodes]
    if not candidates:
        raise InputError(table.table, "system", f"no environment spec with a {table.system!r} GPU and "
                                                f"{table.gpus_per_node} GPUs per node (and >= {table.nodes} nodes)")
    pcie_system = "PCIE" in table.system.upper() and "NVLINK" not in table.system.upper()
    candidates.sort(key=lambda s: ((s.intra.fabric == "pcie") != pcie_system, s.dynamics != quiet, s.nodes, s.name))
    return _with_table_version(table, candidates[0])


def _with_table_version(table: MeasuredTable, spec: EnvSpec) -> EnvSpec:
    """``spec`` with the table's NCCL version, where it logged one NCCL's model covers."""
    try:
        version = parse_version(table.nccl_version)
    except ValueError:
        return spec
    if OLDEST_NCCL <= version <= NEWEST_NCCL:
        spec = replace(spec, nccl_version=".".join(map(str, version)))
    return spec


def table_kind(table: MeasuredTable) -> str:
    """A short label: ``allreduce nvls`` or ``sendrecv``."""
    forced = f" {Algorithm(table.algo).nccl_name.lower()}" if table.algo >= 0 else ""
    return table.coll + forced + (" p2p" if table.func == Func.SEND else "")
