"""Raw nccl-tests output -> measurement rows (the calibration CSV of :mod:`dynamiccl.costmodel.measurements`).

``dynamiccl import nccl-tests LOG...`` reads what users paste from ``all_reduce_perf``,
``all_gather_perf``, ``reduce_scatter_perf``, ``broadcast_perf``, ``reduce_perf``, ``alltoall_perf`` and
``sendrecv_perf`` (NVIDIA/nccl-tests). The text may hold several runs, prose around them, NCCL's
``NCCL_DEBUG`` lines, ``mpirun --tag-output`` (``[1,0]<stdout>:``) or ``srun -l`` (``0: ``) prefixes.

What is read, per run (a run starts at nccl-tests' ``# nccl-tests version`` / ``# Collective test
starting`` / ``# nThread`` lines and ends at its ``# Avg bus bandwidth`` / ``# Collective test
concluded`` lines):

- the column header (``#  size  count  type  [redop]  [root]  time algbw busbw #wrong|error ...``),
  in every spelling nccl-tests has printed (v1.0/v2.0, 2017-2019: ``bytes N type op ... time algbw
  busbw res`` with the time in milliseconds, converted to us here; later versions before v2.13 printed
  it per test in
  ``src/*.cu``: without ``redop`` for all_gather/sendrecv, with ``root`` but no ``redop`` for
  broadcast, and an ``error`` column (max relative error); since v2.13 ``size count type redop root``
  and ``#wrong`` (wrong elements); ``N/A`` for ``-c 0``; ``cputime`` for ``-C``; a ``copybw`` column
  (2024 side-work builds); per-iteration ``i_min .. i_cv%`` columns and a trailing timestamp in
  ``src/util.cu`` of 2.17+). Columns are found by name, so any of these read the same. A table pasted
  without its header is read as the standard layout (two groups of time, algbw, busbw, #wrong after
  3-5 leading columns), with a warning.
- which column group: **out-of-place**, the first group every version prints and the one published
  tables report (this project's calibration set reads the same columns); ``in_place=True`` takes the
  in-place group instead. (nccl-tests' own "Avg bus bandwidth" averages both groups.)
- ``# nThread T nGpus G`` (``-t``, ``-g``: one process driving ``G`` GPUs is recorded as ``-g G`` in
  ``how``, which :attr:`MeasuredTable.launch_gpus` reads), warm-up and iteration counts, validation.
- ``# Using devices`` lines: the ranks, hosts and GPU name (the GPU goes into the ``system`` text when
  the given one lacks it, so :func:`measurements.map_table` finds the spec); a rank listed twice by
  different processes means the processes never joined one communicator (nccl-tests built without
  MPI run under ``mpirun``), which is refused.
- the NCCL version: NCCL's ``NCCL version 2.x.y`` line (``NCCL_DEBUG=VERSION``/``INFO``) or nccl-tests'
  ``nccl-library=NNNNN`` (``NCCL_VERSION_CODE``: major*10000 + minor*100 + patch since NCCL 2.9).
- forced choices: ``NCCL_ALGO=X`` / ``NCCL_PROTO=Y`` on a pasted command line, or NCCL's ``NCCL_ALGO set
  by environment to X`` line.
- the collective: nccl-tests' ``# Collective test starting: X_perf`` line or the binary named on a
  pasted command line (``./build/all_reduce_perf ...``), else ``coll``.

Refused rows, each with a warning naming file and line: a row cut short (a truncated paste or a run
that died: the complete rows before it are kept), rows whose data check failed (``#wrong`` > 0, or an
``error`` above nccl-tests' own tolerance: a measurement of a corrupting run is not a measurement) and
size-0 rows (nothing moves). Bad input (a number that is not one, a row wider than its header, a
collective, rank count or version that contradicts the log) raises :class:`InputError` naming the
file, line, field and what was expected.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from dynamiccl.envspec import NEWEST_NCCL, OLDEST_NCCL
from dynamiccl.errors import InputError
from dynamiccl.nccl import busbw_factor, parse_algorithm, parse_protocol, parse_version

# nccl-tests' binaries (NVIDIA/nccl-tests src/*.cu) and the collective each times, as the measurements
# CSV's ``coll`` column spells it (``sendrecv`` is costed as one send: measurements.load_measurements).
BINARY_COLLS = {"all_reduce": "allreduce", "all_gather": "allgather", "reduce_scatter": "reducescatter",
                "broadcast": "broadcast", "reduce": "reduce", "alltoall": "alltoall", "sendrecv": "sendrecv"}
# nccl-tests binaries whose collective no cost model costs (refused with a clear message).
UNCOSTED_BINARIES = ("gather", "scatter", "hypercube", "alltoallv")
# Collectives NCCL runs as point-to-point transfers: no algorithm or protocol to force.
P2P_COLLS = ("alltoall", "sendrecv")

# The old ``error`` column (max |result - expected| / expected) failed a row above DeltaMaxValue(type) *
# (nranks - 1): NVIDIA/nccl-tests src/common.cu, CheckDelta / DeltaMaxValue, until v2.13 replaced it with
# #wrong. Integer types: any error at all (1e-200).
ERROR_TOLERANCE = {"half": 1e-2, "float16": 1e-2, "bfloat16": 1e-2, "float": 1e-5, "float32": 1e-5,
                   "double": 1e-12, "float64": 1e-12}
INTEGER_ERROR_TOLERANCE = 1e-200

_PREFIX = re.compile(r"^(?:\[\d+,\d+\]<std(?:out|err)>:|\d+: )")        # mpirun --tag-output, srun -l
_RUN_START = re.compile(r"^#?\s*(?:nccl-tests version\b|Collective test starting:|nThread\s+\d+)")  # '#' lost in Markdown
_NTHREAD = re.compile(r"nThread\s+(?P<threads>\d+)\s+nGpus\s+(?P<gpus>\d+)")
_WARMUP = re.compile(r"warmup iters:\s*(?P<warmup>\d+)\s+iters:\s*(?P<iters>\d+)")
_VALIDATION = re.compile(r"validation:\s*(?P<validation>\d+)")
# "Rank R [Group G] [Pid P] on HOST device D [bus] NAME": Pid since 2019, Group since 2022 (src/common.cu)
_DEVICE = re.compile(r"Rank\s+(?P<rank>\d+)\s+(?:Group\s+\d+\s+)?(?:Pid\s+(?P<pid>\d+)\s+)?on\s+(?:(?P<host>\S+)\s+)?"
                     r"device\s+(?P<device>\d+)\s+\[[^\]]*\]\s+(?P<gpu>.+?)\s*$")
_NCCL_VERSION = re.compile(r"\bNCCL version (?P<version>\d+\.\d+\.\d+)")
_LIBRARY_CODE = re.compile(r"nccl-library=(?P<code>\d+)")
_TESTS_VERSION = re.compile(r"nccl-tests version (?P<version>\S+)")
_STARTING = re.compile(r"Collective test starting:\s*(?P<binary>\w+)")
_BINARY = re.compile(r"(?<![\w-])(?P<name>[a-z_]+)_perf(?:_mpi)?(?![\w-])")
_ENV_ASSIGN = re.compile(r"\b(?P<var>NCCL_ALGO|NCCL_PROTO)=(?P<value>[\w^,:;]+)")
_ENV_INFO = re.compile(r"\b(?P<var>NCCL_ALGO|NCCL_PROTO) set by environment to (?P<value>[\w^,:;]+)")
_FOOTER_END = re.compile(r"^#?\s*(?:Avg bus bandwidth|Collective test concluded)")
_TIME_NAMES = ("time", "cputime")
_OLD_NAMES = {"bytes": "size", "n": "count", "op": "redop", "res": "error"}
_WRONG_NAMES = ("#wrong", "error")


@dataclass(frozen=True)
class Layout:
    """The columns of one result table, by name, as its header printed them.

    ``lead``: the columns before the first group (size, count, type[, redop][, root]); ``group``: one
    group's columns (time or cputime, algbw, busbw[, copybw], #wrong or error[, per-iteration ones]);
    ``groups``: 2 (out-of-place, in-place) or 1; ``width``: the tokens of a full row.
    """

    lead: tuple[str, ...]
    group: tuple[str, ...]
    groups: int
    width: int
    header_line: int | None      # None: no header, the standard layout was assumed
    time_scale_us: float = 1.0   # us per printed time unit: 1000 for the 2017-2019 headers, which printed ms

    def index(self, group: int, name: str) -> int | None:
        """Token index of column ``name`` in group 0 (out-of-place) or 1 (in-place); None if absent."""
        if name not in self.group or group >= self.groups:
            return None
        return len(self.lead) + group * len(self.group) + self.group.index(name)

    @property
    def time_name(self) -> str:
        """The time column's name: "time", or "cputime" (``-C``)."""
        return next(n for n in self.group if n in _TIME_NAMES)

    @property
    def wrong_name(self) -> str | None:
        """The data-check column's name: "#wrong", "error" (before nccl-tests 2.13), or None."""
        return next((n for n in self.group if n in _WRONG_NAMES), None)


@dataclass(frozen=True)
class Row:
    """One complete result row: the size and the chosen group's figures (times in us, GB/s = 1e9 B/s)."""

    line: int
    size_bytes: int
    dtype: str
    redop: str
    root: str
    time_us: float
    algbw_gbytes_per_s: float
    busbw_gbytes_per_s: float
    algbw_text: str
    busbw_text: str
    wrong: tuple[str, ...]        # the #wrong / error token of each group ("N/A": not checked)


@dataclass(frozen=True)
class Device:
    """One ``# Using devices`` line."""

    line: int
    rank: int
    pid: int
    host: str
    gpu: str


@dataclass
class Run:
    """One nccl-tests run found in a log: what its preamble says and its rows."""

    source: str
    first_line: int
    threads: int | None = None
    gpus_per_process: int | None = None
    warmup_iters: int | None = None
    iters: int | None = None
    validation: int | None = None
    tests_version: str = ""
    binaries: list[tuple[str, int, bool]] = field(default_factory=list)   # (name, line, from nccl-tests' own line)
    devices: list[Device] = field(default_factory=list)
    nccl_versions: list[tuple[str, int]] = field(default_factory=list)
    env: list[tuple[str, str, int]] = field(default_factory=list)          # (NCCL_ALGO|NCCL_PROTO, value, line)
    layout: Layout | None = None
    rows: list[Row] = field(default_factory=list)
    cut_rows: list[int] = field(default_factory=list)
    elided: list[int] = field(default_factory=list)         # "..." lines: rows left out of the paste
    zero_rows: list[int] = field(default_factory=list)
    last_line: int = 0
    ended: bool = False          # nccl-tests' closing lines were seen

    def has_table(self) -> bool:
        return self.layout is not None or bool(self.rows or self.cut_rows)


# --- Reading a log ------------------------------------------------------------------------------------

def read_logs(paths: list[str | os.PathLike], in_place: bool = False) -> list[Run]:
    """Every run of every log file, in file then line order.

    Raises:
        InputError: a missing or unreadable file, or bad input in one (see :func:`parse_log`).
    """
    runs: list[Run] = []
    for path in paths:
        source = os.fspath(path)
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise InputError(source, None, f"cannot read ({exc.strerror or exc})") from None
        runs.extend(parse_log(text, source, in_place))
    return runs


def parse_log(text: str, source: str, in_place: bool = False) -> list[Run]:
    """The runs of one log's text (``source`` names it in messages); runs without any result row are
    left out. ``in_place``: read the in-place column group instead of the out-of-place one.

    Raises:
        InputError: naming ``source``, the line and the column: a number that is not one, a row wider
            than its header, a header without a time column.
    """
    runs: list[Run] = []
    run = Run(source, 1)
    # Lines after a table's rows (a pasted command line, NCCL's init lines) describe the next run: nccl-tests
    # prints everything about a run before its first row (its communicators are made before the column
    # header, or right after it with -p 1, src/common.cu). They wait here for the next run.
    pending: list[tuple[str, int]] = []

    def start(new: Run) -> Run:
        for text_line, number in pending:
            _read_preamble_line(new, text_line, number)
        pending.clear()
        return new

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _PREFIX.sub("", raw, count=1).strip()
        if not line:
            continue
        tokens = line.split()
        if _RUN_START.match(line) and run.has_table():
            runs.append(run)
            run = start(Run(source, lineno))
        if _is_column_header(tokens):
            if run.rows or run.cut_rows:      # a second table without a new preamble: keep what is known
                runs.append(run)
                run = start(replace(run, first_line=lineno, rows=[], cut_rows=[], zero_rows=[], elided=[],
                                    ended=False, binaries=list(run.binaries), devices=list(run.devices),
                                    nccl_versions=list(run.nccl_versions), env=list(run.env)))
            run.layout = parse_header(tokens, source, lineno)
            continue
        if run.layout is None and _looks_like_bare_row(tokens):
            run.layout = _assumed_layout(len(tokens))
        if run.layout is not None and _is_integer(tokens[0]) and (len(tokens) == 1 or _is_integer(tokens[1])):
            run.last_line = lineno
            _add_row(run, tokens, source, lineno, in_place)
            continue
        if run.layout is not None and line in ("...", "\u2026"):
            run.elided.append(lineno)
            continue
        if _FOOTER_END.match(line) and run.has_table():
            run.ended = True
            run.last_line = lineno
            runs.append(run)
            run = start(Run(source, lineno + 1))
        elif run.rows or run.cut_rows or run.zero_rows:
            pending.append((line, lineno))
        else:
            _read_preamble_line(run, line, lineno)
    if run.has_table():
        runs.append(run)
    return [r for r in runs if r.rows or r.cut_rows or r.zero_rows]


def _is_integer(token: str) -> bool:
    return token.isdigit()


def _is_column_header(tokens: list[str]) -> bool:
    """nccl-tests' column-name line: ``#  size  count  type ...``, or ``#  bytes  N  type ...`` before
    2019 (the ``#`` may be lost in a paste)."""
    names = [t.lower().lstrip("#") for t in tokens if t != "#"]
    return len(names) >= 5 and names[:2] in (["size", "count"], ["bytes", "n"]) and \
        any(n in _TIME_NAMES for n in names)


def parse_header(tokens: list[str], source: str, lineno: int) -> Layout:
    """The :class:`Layout` of a column-name line's tokens.

    Raises:
        InputError: no time column, or leading columns that are not nccl-tests' (size, count, type...).
    """
    names = tuple(t.lower() for t in tokens if t != "#")
    names = (names[0].lstrip("#"), *names[1:])
    # The first header (NVIDIA/nccl-tests at v1.0.0/v2.0.0, 2017-2019): "bytes N type op ... res", the time
    # printed in milliseconds (deltaSec * 1.0E3); renamed to today's names, times converted.
    time_scale_us = 1000.0 if names[0] == "bytes" else 1.0
    names = tuple(_OLD_NAMES.get(n, n) for n in names)
    times = [i for i, n in enumerate(names) if n in _TIME_NAMES]
    if not times or names[:3] != ("size", "count", "type"):
        raise InputError(source, f"line {lineno}", "expected nccl-tests' column header (size count type [redop] "
                                                   f"[root] time algbw busbw #wrong ...), got {' '.join(names)!r}")
    lead = names[:times[0]]
    group = names[times[0]:times[1]] if len(times) > 1 else names[times[0]:]
    for needed in ("algbw", "busbw"):
        if needed not in group:
            raise InputError(source, f"line {lineno}", f"column header without {needed!r} in its time group")
    groups = 2 if len(times) > 1 else 1
    trailing = names[len(lead) + groups * len(group):]
    width = len(lead) + groups * len(group) + (2 if "timestamp" in trailing else 0)  # date and time tokens
    return Layout(lead, group, groups, width, lineno, time_scale_us)


def _looks_like_bare_row(tokens: list[str]) -> bool:
    """A result row pasted without its header: size, count, a type name, then numbers, in one of the
    standard widths (3-5 leading columns and two groups of 4)."""
    return (11 <= len(tokens) <= 13 and _is_integer(tokens[0]) and _is_integer(tokens[1])
            and tokens[2].isidentifier() and _is_number(tokens[-4]))


def _assumed_layout(width: int) -> Layout:
    """The standard layout of a header-less table ``width`` tokens wide (see :func:`_looks_like_bare_row`):
    nccl-tests' leading columns (the fourth of a 12-wide row is taken as redop), then two groups."""
    lead = ("size", "count", "type", "redop", "root")[: width - 8]
    return Layout(lead, ("time", "algbw", "busbw", "#wrong"), 2, width, None)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _number(token: str, source: str, lineno: int, column: str, low: float, low_inclusive: bool) -> float:
    """A finite number >= / > ``low`` from a row token. Raises InputError naming the line and column."""
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < low or (value == low and not low_inclusive):
        bound = f">= {low:g}" if low_inclusive else f"> {low:g}"
        raise InputError(source, f"line {lineno}, column {column}", f"expected a finite number {bound}, got {token!r}")
    return value


def _add_row(run: Run, tokens: list[str], source: str, lineno: int, in_place: bool) -> None:
    """Read one result row into ``run``: a complete one into ``rows``, a cut one into ``cut_rows``.

    Raises:
        InputError: more tokens than the header has columns, or a value that is not a number.
    """
    layout = run.layout
    assert layout is not None
    if len(tokens) < layout.width:
        run.cut_rows.append(lineno)
        return
    if len(tokens) > layout.width:
        where = f"the header at line {layout.header_line}" if layout.header_line else "the first row of this table"
        raise InputError(source, f"line {lineno}", f"expected {layout.width} columns as {where} has, got "
                                                   f"{len(tokens)} (two lines run together?)")
    size = int(tokens[0])
    if size == 0:
        run.zero_rows.append(lineno)
        return
    group = 1 if in_place and layout.groups > 1 else 0
    if in_place and layout.groups == 1:
        raise InputError(source, f"line {layout.header_line}", "--in-place: this table has one column group only")

    def token(name: str, g: int = group) -> str:
        index = layout.index(g, name)
        return tokens[index] if index is not None else ""

    def lead(name: str) -> str:
        return tokens[layout.lead.index(name)] if name in layout.lead else ""

    time_name = layout.time_name
    wrong = tuple(token(layout.wrong_name, g) for g in range(layout.groups)) if layout.wrong_name else ()
    for g, text in enumerate(wrong):
        if text.upper() != "N/A":
            _number(text, source, lineno, f"{layout.wrong_name} ({'in' if g else 'out-of'}-place)", 0, True)
    run.rows.append(Row(
        line=lineno, size_bytes=size, dtype=lead("type"), redop=lead("redop"), root=lead("root"),
        time_us=round(_number(token(time_name), source, lineno, time_name, 0, False) * layout.time_scale_us, 6),
        algbw_gbytes_per_s=_number(token("algbw"), source, lineno, "algbw", 0, True),
        busbw_gbytes_per_s=_number(token("busbw"), source, lineno, "busbw", 0, True),
        algbw_text=token("algbw"), busbw_text=token("busbw"), wrong=wrong))


def _read_preamble_line(run: Run, line: str, lineno: int) -> None:
    """Record what a non-row line says about its run (see the module docstring)."""
    if m := _NTHREAD.search(line):
        run.threads, run.gpus_per_process = int(m["threads"]), int(m["gpus"])
        if w := _WARMUP.search(line):
            run.warmup_iters, run.iters = int(w["warmup"]), int(w["iters"])
        if v := _VALIDATION.search(line):
            run.validation = int(v["validation"])
        return
    if m := _DEVICE.search(line):
        run.devices.append(Device(lineno, int(m["rank"]), int(m["pid"] or 0), m["host"] or "", m["gpu"]))
        return
    if m := _TESTS_VERSION.search(line):
        run.tests_version = m["version"]
    if m := _LIBRARY_CODE.search(line):
        run.nccl_versions.append((version_from_code(int(m["code"])), lineno))
    if m := _NCCL_VERSION.search(line):
        run.nccl_versions.append((m["version"], lineno))
    if m := _STARTING.search(line):
        run.binaries.append((re.sub(r"_perf(?:_mpi)?$", "", m["binary"]), lineno, True))
    elif not line.startswith("#"):
        run.binaries.extend((m["name"], lineno, False) for m in _BINARY.finditer(line))
    for pattern in (_ENV_INFO, _ENV_ASSIGN):
        run.env.extend((m["var"], m["value"], lineno) for m in pattern.finditer(line))


def version_from_code(code: int) -> str:
    """NCCL's ``NCCL_VERSION_CODE`` -> "2.27.3": major*10000 + minor*100 + patch since NCCL 2.9,
    major*1000 + minor*100 + patch before (NVIDIA/nccl ``src/nccl.h.in``, ``NCCL_VERSION``)."""
    if code >= 20900:
        return f"{code // 10000}.{code % 10000 // 100}.{code % 100}"
    return f"{code // 1000}.{code % 1000 // 100}.{code % 100}"


def import_logs(paths: list[str | os.PathLike], options: ImportOptions) -> tuple[list[ImportedTable], list[str]]:
    """Read nccl-tests logs into measurement tables: :func:`read_logs`, then :func:`import_runs`.

    Raises:
        InputError: a log without any result row, or any error of those two.
    """
    runs = read_logs(paths, options.in_place)
    if not runs:
        raise InputError(", ".join(os.fspath(p) for p in paths), None, "no nccl-tests result rows (expected rows "
                         "under nccl-tests' '#  size  count  type ...' column header)")
    return import_runs(runs, options)


# --- From runs to measurement rows --------------------------------------------------------------------

@dataclass(frozen=True)
class ImportOptions:
    """What the user says about the logs (every field optional where the log can say it).

    ``system``: hardware text (the log's GPU name is added when it lacks it); ``gpus_per_node`` and
    ``nodes``: the layout (default: from the ``# Using devices`` lines); ``coll``: the collective
    (default: from the log); ``algo`` / ``proto``: what NCCL_ALGO / NCCL_PROTO forced (default: from
    the log, else NCCL's choice); ``nccl_version``: when the log has none; ``table``: table id prefix
    (default: the file name); ``in_place``: take the in-place columns.
    """

    system: str | None = None
    gpus_per_node: int | None = None
    nodes: int | None = None
    coll: str | None = None
    algo: str | None = None
    proto: str | None = None
    nccl_version: str | None = None
    table: str | None = None
    in_place: bool = False


@dataclass
class ImportedTable:
    """One table to write: its description (the CSV's per-table columns) and its CSV rows."""

    table: str
    coll: str
    system: str
    nccl_version: str
    algo: str
    proto: str
    gpus_per_node: int
    nodes: int
    how: str
    rows: list[dict]


def import_runs(runs: list[Run], options: ImportOptions) -> tuple[list[ImportedTable], list[str]]:
    """Measurement tables (rows in :data:`measurements.COLUMNS`) from parsed runs, and the warnings to
    show (refused rows, cut rows, runs without their closing lines, assumptions made).

    Raises:
        InputError: naming the file and line: a run whose collective, layout or NCCL version cannot be
            told or contradicts the options, a bus-bandwidth ratio that contradicts the collective and
            rank count, a forced algorithm list the format cannot hold.
    """
    tables: list[ImportedTable] = []
    warnings: list[str] = []
    used: set[str] = set()
    for run in runs:
        coll = run_collective(run, options.coll)
        gpus_per_node, nodes = run_layout(run, options)
        nranks = gpus_per_node * nodes
        version, version_note = run_nccl_version(run, options.nccl_version)
        algo, proto, forced_note = run_forced(run, coll, options)
        system = system_text(run, options.system, gpus_per_node, nodes)
        warnings.extend(_run_warnings(run, coll, version_note))
        kept: list[Row] = []
        for row in run.rows:
            problem = _data_check_failure(row, run.layout, nranks)
            if problem:
                warnings.append(f"{run.source}: line {row.line}: size {row.size_bytes}: {problem}; row not imported "
                                "(a measurement of a run that corrupts data is not a measurement)")
                continue
            check_bus_factor(row, coll, nranks, run.source)
            kept.append(row)
        groups: dict[tuple[str, str, str], list[Row]] = {}
        for row in kept:
            groups.setdefault((row.dtype, row.redop, row.root), []).append(row)
        for key, rows in groups.items():
            table_id = _table_id(options.table or Path(run.source).stem, coll, key, len(groups) > 1, used)
            how = how_text(run, coll, key, rows, options.in_place, forced_note)
            tables.append(ImportedTable(table_id, coll, system, version, algo, proto, gpus_per_node, nodes, how, [
                {"table": table_id, "system": system, "nccl_version": version, "coll": coll, "algo": algo,
                 "proto": proto, "gpus_per_node": gpus_per_node, "nodes": nodes, "size_bytes": r.size_bytes,
                 "time_us": r.time_us, "algbw_gbytes_per_s": r.algbw_gbytes_per_s,
                 "busbw_gbytes_per_s": r.busbw_gbytes_per_s, "how": how} for r in rows]))
        if not kept:
            warnings.append(f"{run.source}: lines {run.first_line}-{run.last_line}: no usable row in this run")
    if not tables:
        raise InputError(", ".join(dict.fromkeys(r.source for r in runs)), None,
                         "no usable nccl-tests result rows (see the warnings above)")
    return tables, warnings


def run_collective(run: Run, coll_option: str | None) -> str:
    """The run's collective as the CSV spells it: nccl-tests' ``Collective test starting`` line, else the
    last ``X_perf`` binary named before its table, else ``coll_option``.

    Raises:
        InputError: none of those, a binary whose collective is not costed, or ``coll_option``
            contradicting the log.
    """
    first_rows = [r.line for r in run.rows] + run.cut_rows + run.zero_rows
    header_line = (run.layout.header_line if run.layout and run.layout.header_line
                   else min(first_rows, default=run.first_line))
    named = [b for b in run.binaries if b[1] <= header_line]
    own = [b for b in named if b[2]]
    chosen = (own or named or [None])[-1]
    wanted = None
    if coll_option is not None:
        wanted = _coll_from_option(coll_option)
    if chosen is None:
        if wanted is None:
            raise InputError(run.source, f"line {header_line}", "the log names no nccl-tests binary (all_reduce_perf, "
                             "...) before this table: give --coll (" + ", ".join(BINARY_COLLS.values()) + ")")
        return wanted
    name, line, _ = chosen
    if name in UNCOSTED_BINARIES:
        raise InputError(run.source, f"line {line}", f"{name}_perf: its collective is not costed by any cost model; "
                         f"expected one of {', '.join(b + '_perf' for b in BINARY_COLLS)}")
    if name not in BINARY_COLLS:
        if wanted is None:
            raise InputError(run.source, f"line {line}", f"unknown nccl-tests binary {name}_perf; expected one of "
                             f"{', '.join(b + '_perf' for b in BINARY_COLLS)} (or give --coll)")
        return wanted
    coll = BINARY_COLLS[name]
    if wanted is not None and wanted != coll:
        raise InputError(run.source, f"line {line}", f"the log ran {name}_perf ({coll}), but --coll says {wanted}")
    return coll


def _coll_from_option(text: str) -> str:
    """``--coll`` as the CSV spells it: "allreduce", "all_reduce", "all-reduce" or "all_reduce_perf".

    Raises:
        InputError: not one of :data:`BINARY_COLLS`.
    """
    key = text.strip().lower().replace("-", "_").removesuffix("_perf")
    coll = BINARY_COLLS.get(key) or (key.replace("_", "") if key.replace("_", "") in BINARY_COLLS.values() else None)
    if coll is None:
        raise InputError("--coll", None, f"unknown collective {text!r}; expected one of {', '.join(BINARY_COLLS.values())}")
    return coll


def run_layout(run: Run, options: ImportOptions) -> tuple[int, int]:
    """(GPUs per node, nodes) of a run: the options, checked against the ``# Using devices`` lines, or
    those lines alone.

    Raises:
        InputError: ranks listed twice by different processes, a rank count that contradicts the
            options, or no way to tell the layout.
    """
    ranks: dict[int, Device] = {}
    for device in run.devices:
        earlier = ranks.get(device.rank)
        if earlier is not None and (earlier.pid, earlier.host) != (device.pid, device.host):
            raise InputError(run.source, f"line {device.line}", f"rank {device.rank} is listed again (first at line "
                             f"{earlier.line}) by another process: the processes did not join one communicator "
                             "(nccl-tests built without MPI=1 and run under mpirun time each process alone); "
                             "not a measurement of the ranks listed")
        ranks[device.rank] = device
    hosts = list(dict.fromkeys(d.host for d in ranks.values()))
    gpn, nodes = options.gpus_per_node, options.nodes
    if gpn is not None and nodes is not None:
        if ranks and len(ranks) != gpn * nodes:
            raise InputError(run.source, f"line {run.devices[0].line}", f"the log's devices list {len(ranks)} rank(s) "
                             f"on {len(hosts)} host(s), but --gpus-per-node {gpn} x --nodes {nodes} = {gpn * nodes}")
        return gpn, nodes
    if not ranks or "" in hosts:
        raise InputError(run.source, f"line {run.first_line}", "the log has no '# Using devices' lines naming the "
                         "hosts: give --gpus-per-node and --nodes")
    per_host = {h: sum(1 for d in ranks.values() if d.host == h) for h in hosts}
    derived_nodes = nodes or len(hosts)
    if len(set(per_host.values())) != 1 or len(ranks) % derived_nodes:
        raise InputError(run.source, f"line {run.devices[0].line}", f"the devices are spread unevenly over the hosts "
                         f"({per_host}): give --gpus-per-node and --nodes")
    derived_gpn = gpn or len(ranks) // derived_nodes
    if derived_gpn * derived_nodes != len(ranks):
        raise InputError(run.source, f"line {run.devices[0].line}", f"the log's devices list {len(ranks)} rank(s), "
                         f"but --gpus-per-node x --nodes = {derived_gpn * derived_nodes}")
    return derived_gpn, derived_nodes


def run_nccl_version(run: Run, option: str | None) -> tuple[str, str | None]:
    """(the CSV's ``nccl_version``, a warning or None): the log's version, else ``option``; a version
    outside the modelled range is written "unknown (...)" so the table runs with its spec's version.

    Raises:
        InputError: the log names two versions, or one that ``option`` contradicts; ``option`` not a version.
    """
    found = list(dict.fromkeys(v for v, _ in run.nccl_versions))
    if len(found) > 1:
        lines = ", ".join(str(line) for _, line in run.nccl_versions)
        raise InputError(run.source, f"lines {lines}", f"one run names several NCCL versions ({', '.join(found)})")
    if option is not None:
        try:
            parse_version(option)
        except ValueError:
            raise InputError("--nccl-version", None, f"expected a version like 2.23.4, got {option!r}") from None
        if found and parse_version(found[0]) != parse_version(option):
            raise InputError(run.source, f"line {run.nccl_versions[0][1]}", f"the log says NCCL {found[0]}, "
                             f"but --nccl-version says {option}")
    version = found[0] if found else option
    if version is None:
        return "unknown", (f"{run.source}: lines {run.first_line}-{run.last_line}: no NCCL version in the log; "
                           "the table runs with its spec's version (give --nccl-version)")
    if not OLDEST_NCCL <= parse_version(version) <= NEWEST_NCCL:
        modelled = f"{'.'.join(map(str, OLDEST_NCCL[:2]))}-{'.'.join(map(str, NEWEST_NCCL[:2]))}"
        return (f"unknown (NCCL {version} logged; the model covers {modelled})",
                f"{run.source}: NCCL {version} is outside the modelled {modelled}: the table runs with its spec's version")
    return version, None


def run_forced(run: Run, coll: str, options: ImportOptions) -> tuple[str, str, str]:
    """(algo, proto, note for ``how``): what the options or the log's NCCL_ALGO / NCCL_PROTO forced;
    "default" for NCCL's choice, "p2p" for a point-to-point collective.

    Raises:
        InputError: a forced value the log contradicts, a list of values (the format holds one forced
            choice) without an option that settles it, a forced choice for a point-to-point collective.
    """
    notes = []
    chosen = {}
    for var, column, option, parse in (("NCCL_ALGO", "algo", options.algo, parse_algorithm),
                                       ("NCCL_PROTO", "proto", options.proto, parse_protocol)):
        logged = list(dict.fromkeys((value, line) for v, value, line in run.env if v == var))
        values = list(dict.fromkeys(value for value, _ in logged))
        if coll in P2P_COLLS:
            if option is not None and option.lower() != "default":
                raise InputError(f"--{column}", None, f"{coll} runs as point-to-point transfers: NCCL_ALGO/NCCL_PROTO "
                                                      "do not choose how; leave it out")
            chosen[column] = "p2p" if column == "algo" else "default"
            if values:
                notes.append(f"{var}={values[0]} set (no effect on point-to-point transfers)")
            continue
        if len(values) > 1:
            raise InputError(run.source, f"lines {', '.join(str(line) for _, line in logged)}",
                             f"{var} is set to several values ({', '.join(values)})")
        single = values[0] if values and not re.search(r"[,^:;]", values[0]) else None
        if option is not None:
            name = "default" if option.lower() == "default" else parse(option, f"--{column}").nccl_name.lower()
            if single is not None and name != parse(single, run.source).nccl_name.lower():
                raise InputError(run.source, f"line {logged[0][1]}", f"the log sets {var}={single}, but --{column} says {option}")
            if values and single is None:
                notes.append(f"{var}={values[0]} in the log, --{column} {name}")
            chosen[column] = name
        elif single is not None:
            chosen[column] = parse(single, run.source, f"line {logged[0][1]}").nccl_name.lower()
            notes.append(f"{var}={single} (from the log, line {logged[0][1]})")
        elif values:
            raise InputError(run.source, f"line {logged[0][1]}", f"{var}={values[0]} lets NCCL choose among several; the "
                             f"measurements format records one forced {column} or NCCL's own choice: give --{column} "
                             "with the one that applies (or default)")
        else:
            chosen[column] = "default"
    return chosen["algo"], chosen["proto"], "; ".join(notes)


def system_text(run: Run, system: str | None, gpus_per_node: int, nodes: int) -> str:
    """The ``system`` column: ``system`` with the log's GPU name added when it does not name it, or
    (no ``system``) the GPU name and layout.

    Raises:
        InputError: neither ``system`` nor a GPU name in the log.
    """
    gpus = list(dict.fromkeys(d.gpu for d in run.devices))
    if system is None:
        if not gpus:
            raise InputError(run.source, f"line {run.first_line}", "the log has no '# Using devices' lines naming the "
                             "GPU: give --system (e.g. \"8x H100 SXM, NVSwitch, 2 nodes, IB\")")
        return f"{' + '.join(gpus)}, {gpus_per_node} per node, {nodes} node{'s' if nodes > 1 else ''}"
    missing = [g for g in gpus if not re.search(rf"\b{re.escape(gpu_model(g))}\b", system, re.IGNORECASE)]
    if missing:
        return f"{system} ({' + '.join(missing)} from the log's device list)"
    return system


def gpu_model(name: str) -> str:
    """The model word of a CUDA device name: "NVIDIA H100 80GB HBM3" -> "H100", "NVIDIA A100-SXM4-80GB"
    -> "A100", "Tesla V100-SXM2-32GB" -> "V100", "NVIDIA GeForce RTX 4090" -> "RTX"."""
    words = [w for w in name.split() if w.upper() not in ("NVIDIA", "TESLA", "GEFORCE", "QUADRO")]
    return (words[0] if words else name).split("-")[0]


def _data_check_failure(row: Row, layout: Layout | None, nranks: int) -> str | None:
    """Why a row's own data check failed, or None: #wrong > 0, or an old ``error`` above nccl-tests'
    tolerance (:data:`ERROR_TOLERANCE`, times nranks - 1)."""
    if layout is None or not row.wrong:
        return None
    groups = ("out-of-place", "in-place")
    bad = []
    for g, text in enumerate(row.wrong):
        if text.upper() == "N/A":
            continue
        value = float(text)
        if layout.wrong_name == "error" or (layout.header_line is None and not _is_integer(text)):
            limit = ERROR_TOLERANCE.get(row.dtype.lower(), INTEGER_ERROR_TOLERANCE) * max(nranks - 1, 1)
            if value > limit:
                bad.append(f"error {text} {groups[g]} (nccl-tests' limit {limit:g})")
        elif value > 0:
            bad.append(f"#wrong {text} {groups[g]}")
    return ", ".join(bad) or None


def check_bus_factor(row: Row, coll: str, nranks: int, source: str) -> None:
    """Check busbw / algbw against nccl-tests' bus factor of ``coll`` on ``nranks`` (its
    doc/PERFORMANCE.md; :func:`dynamiccl.nccl.busbw_factor`), within the rounding of the printed
    figures. Rows with algbw < 1 GB/s have too few digits to tell and are not checked.

    Raises:
        InputError: the ratio contradicts the collective or the rank count.
    """
    if row.algbw_gbytes_per_s < 1.0 or row.busbw_gbytes_per_s <= 0:
        return
    factor = busbw_factor(coll, nranks)
    ratio = row.busbw_gbytes_per_s / row.algbw_gbytes_per_s
    slack = (_rounding(row.busbw_text) + factor * _rounding(row.algbw_text)) / row.algbw_gbytes_per_s
    if abs(ratio - factor) > 1.01 * slack + 1e-9:
        raise InputError(source, f"line {row.line}", f"busbw/algbw = {ratio:.4f}, but {coll} on {nranks} rank(s) has "
                         f"nccl-tests' bus factor {factor:.4f}: the collective (--coll) or the ranks (--gpus-per-node x "
                         "--nodes) are not the log's")


def _rounding(text: str) -> float:
    """Half the last printed digit of a figure: its rounding error."""
    decimals = len(text.split(".")[1]) if "." in text and "e" not in text.lower() else 0
    return 0.5 * 10.0 ** -decimals


def _run_warnings(run: Run, coll: str, version_note: str | None) -> list[str]:
    """What a run's reader should know: assumed columns, cut rows, a missing end, skipped rows."""
    notes = []
    lines = sorted([r.line for r in run.rows] + run.cut_rows + run.zero_rows)
    if run.layout is not None and run.layout.header_line is None:
        notes.append(f"{run.source}: lines {lines[0]}-{lines[-1]}: no column header before these rows; read as "
                     f"nccl-tests' standard columns ({' '.join(run.layout.lead)}, then time algbw busbw #wrong "
                     "out-of-place and in-place)")
    if run.elided:
        notes.append(f"{run.source}: line {', '.join(map(str, run.elided))}: '...': rows left out of the paste")
    last_cut = run.cut_rows[-1] if run.cut_rows and run.cut_rows[-1] == lines[-1] else None
    for line in run.cut_rows:
        if line != last_cut:
            notes.append(f"{run.source}: line {line}: row cut short in the middle of the {coll} table; skipped")
    closing = "without nccl-tests' closing lines ('# Avg bus bandwidth')"
    if not run.ended and last_cut:
        notes.append(f"{run.source}: line {last_cut}: the {coll} table ends in a row cut short, {closing}: a truncated "
                     f"paste, or the run died at this size; kept the {len(run.rows)} complete row(s) before it")
    elif not run.ended:
        notes.append(f"{run.source}: the {coll} run from line {run.first_line} ends at line {run.last_line} {closing}: "
                     f"a truncated paste, or the run died; kept its {len(run.rows)} complete row(s)")
    elif last_cut:
        notes.append(f"{run.source}: line {last_cut}: the last row of the {coll} table is cut short; skipped")
    if run.zero_rows:
        notes.append(f"{run.source}: lines {', '.join(map(str, run.zero_rows))}: size 0 rows skipped (nothing is sent)")
    if version_note:
        notes.append(version_note)
    return notes


def _table_id(prefix: str, coll: str, key: tuple[str, str, str], several: bool, used: set[str]) -> str:
    """A table id unique among ``used`` (which it joins): ``PREFIX-COLL[-TYPE-OP[-rROOT]][-N]``."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{prefix}-{coll}").strip("-")
    if several:
        dtype, redop, root = key
        base += "".join(f"-{part}" for part in (dtype, redop) if part) + (f"-r{root}" if root not in ("", "-1") else "")
    table_id, number = base, 2
    while table_id in used:
        table_id, number = f"{base}-{number}", number + 1
    used.add(table_id)
    return table_id


def how_text(run: Run, coll: str, key: tuple[str, str, str], rows: list[Row], in_place: bool, forced_note: str) -> str:
    """The ``how`` column: the binary and launch mode (``-g k`` read by MeasuredTable.launch_gpus), the
    columns taken, type and op, iterations, the data check, forced settings and the source lines."""
    binary = next((b[0] for b in reversed(run.binaries) if b[0] in BINARY_COLLS), None)
    parts = [f"nccl-tests {binary + '_perf' if binary else coll}"
             + (f" -g {run.gpus_per_process}" if run.gpus_per_process else "")
             + (f" (one process, {run.gpus_per_process} GPUs)" if (run.gpus_per_process or 1) > 1 else "")
             + (f" -t {run.threads}" if (run.threads or 1) > 1 else "")]
    parts.append(f"{'in-place' if in_place else 'out-of-place'} columns"
                 + (f" ({run.layout.time_name})" if run.layout and run.layout.time_name != "time" else ""))
    dtype, redop, root = key
    parts.append(" ".join(p for p in (dtype, redop, f"root {root}" if root not in ("", "-1") else "") if p))
    if run.iters is not None:
        parts.append(f"warmup {run.warmup_iters}, iters {run.iters}")
    unchecked = all(w.upper() == "N/A" for r in rows for w in r.wrong) if rows and rows[0].wrong else True
    parts.append("data not checked (-c 0)" if unchecked or run.validation == 0 else "data checked")
    if forced_note:
        parts.append(forced_note)
    if run.tests_version:
        parts.append(f"nccl-tests {run.tests_version}")
    span = f"line {rows[0].line}" if rows[0].line == rows[-1].line else f"lines {rows[0].line}-{rows[-1].line}"
    parts.append(f"imported from {Path(run.source).name} {span}")
    return "; ".join(parts)
