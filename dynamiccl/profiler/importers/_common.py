"""What every importer shares: located errors, JSON loading, group kinds, and trace assembly.

An importer turns its source into per-rank lists of ``CommRecord`` / ``ComputeRecord`` in issue
order plus a table of ``GroupInfo``; ``assemble`` hands them to ``TraceBuilder`` so that op_index,
streams, group_seq and per-rank bytes are filled exactly as for generated traces.

Dependencies (``assemble``):

- timed sources (records with measured ``start_us``/``end_us``): an op depends on the latest op
  of every *other* stream that had finished when it started. This reproduces the measured overlap:
  what ran concurrently stays independent, what ran after waits.
- untimed sources: no dependencies beyond each stream's FIFO order. The source gives each
  communicator's order, not the order between communicators, and inventing one could deadlock a
  replay (a rank's send/recv pairs are an example).
- a run of consecutive point-to-point records on one group (nothing else between them) becomes one
  ``nccl_group`` (launched together, as ``batch_isend_irecv`` does); grouping never adds waiting.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Hashable, Iterable

from dynamiccl import nccl
from dynamiccl.errors import InputError
from dynamiccl.group_kinds import group_kind
from dynamiccl.trace.builder import TraceBuilder
from dynamiccl.trace.schema import COMPUTE_STREAM, GROUP_KINDS, comm_stream
from dynamiccl.trace.store import Trace

MIN_GAP_US = 1.0  # host gaps shorter than this are bookkeeping, not compute (as the live profiler)
_EPS_US = 1e-3


@dataclass
class CommRecord:
    """One collective or p2p op of one rank, before it becomes a trace row.

    ``bytes_total`` is nccl-tests' size (the full buffer; AllGather/ReduceScatter: n × per-rank
    count); the builder derives ``bytes_per_rank``. ``peer`` is a global rank: the p2p peer, or
    the root of broadcast/reduce/gather/scatter. ``start_us``/``end_us`` are the measured
    execution interval; ``issue_start_us``/``issue_end_us`` the host call that issued it (for
    compute gaps), ``blocking`` whether the host waited for it to finish.
    """

    kind: str
    op: str
    group_id: str
    bytes_total: int
    dtype: str
    peer: int = -1
    step: int = 0
    phase: str = "other"
    label: str = ""
    start_us: float = math.nan
    end_us: float = math.nan
    issue_start_us: float = math.nan
    issue_end_us: float = math.nan
    blocking: bool = False
    duration_us: float = math.nan
    nccl_algo: str = ""
    nccl_proto: str = ""
    nccl_channels: int = -1
    nccl_group_key: Hashable | None = None


@dataclass
class ComputeRecord:
    """A measured compute segment (µs): ``duration_us`` may be busy time shorter than end - start."""

    step: int
    phase: str
    start_us: float
    end_us: float
    duration_us: float
    label: str = "compute"


@dataclass
class GroupInfo:
    """A process group / communicator: global ranks in group-rank order."""

    group_id: str
    ranks: tuple[int, ...]
    desc: str = ""
    kind: str | None = None
    nnodes: int | None = None


@dataclass
class Notes:
    """Things the user should know about an import (kept in the trace's ``workload`` metadata)."""

    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        if text not in self.items:
            self.items.append(text)


# --- inputs ----------------------------------------------------------------------------------------


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[str]:
    """The input files: each path as given, a directory as its (non-hidden) files in name order.

    Raises:
        InputError: no paths, a path that does not exist, or an empty directory.
    """
    out: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                raise InputError(str(path), None, "the directory holds no files to import")
            out.extend(files)
        elif path.is_file():
            out.append(str(path))
        else:
            raise InputError(str(path), None, "no such file")
    if not out:
        raise InputError(None, "files", "no input files given")
    return out


def read_bytes(path: str) -> bytes:
    """The file's bytes, gunzipped when it is gzip (``.json.gz`` traces).

    Raises:
        InputError: unreadable file or broken gzip stream.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(path, None, f"cannot read ({exc.strerror})") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise InputError(path, None, f"broken gzip file ({exc})") from None
    return data


def read_text(path: str) -> str:
    """The file as text (UTF-8, undecodable bytes replaced)."""
    return read_bytes(path).decode("utf-8", errors="replace")


def load_json(path: str, data: bytes | None = None) -> Any:
    """Parse a whole-file JSON document.

    Raises:
        InputError: naming the file, the line and column of a syntax error (a truncated file
            reports its last line).
    """
    text = (data if data is not None else read_bytes(path)).decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"line {exc.lineno} column {exc.colno}",
                         f"not valid JSON ({exc.msg}); is the file truncated?") from None


def rank_from_name(path: str) -> int | None:
    """The rank a per-rank file's name carries (``rank3.json``, ``nccl_trace_rank_3``), or None."""
    found = re.findall(r"(\d+)", Path(path).name.split(".")[0])
    return int(found[-1]) if found else None


def need(obj: Any, key: str, typ: type | tuple[type, ...], source: str, where: str) -> Any:
    """``obj[key]`` checked against ``typ`` (ints exclude bools; floats accept ints).

    Raises:
        InputError: ``source``, ``where`` + field ``key``: missing or of the wrong type.
    """
    if not isinstance(obj, dict) or key not in obj:
        raise InputError(source, f"{where} field '{key}'", "missing")
    value = obj[key]
    if not is_type(value, typ):
        names = "/".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
        raise InputError(source, f"{where} field '{key}'", f"expected {names}, got {value!r}"[:300])
    return value


def is_type(value: Any, typ: type | tuple[type, ...]) -> bool:
    types = typ if isinstance(typ, tuple) else (typ,)
    for t in types:
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return True
        if t not in (int, float) and isinstance(value, t):
            return True
    return False


def dtype_name(value: Any, source: str, where: str) -> str:
    """NCCL dtype name for a PyTorch / NCCL spelling ("BFloat16", "Float", 9, "ncclFloat16").

    Raises:
        InputError: an unknown spelling, naming ``source`` and ``where``.
    """
    return nccl.parse_dtype(value, source, where).name_lower


def nccl_op(name: str, allowed: Collection[nccl.Func] | None = None) -> str | None:
    """The trace op of a function as NCCL names it ("AllReduce", "AlltoAll", "Send"; any spelling
    :func:`dynamiccl.nccl.parse_func` reads), or None when ``name`` is none of ``allowed`` (default:
    every function a trace has an op for): a call the importer skips and counts."""
    try:
        func = nccl.parse_func(name, allowed=allowed)
    except InputError:
        return None
    return nccl.FUNC_OP[func]


# --- groups ----------------------------------------------------------------------------------------



def parse_rank_list(value: Any) -> list[int] | None:
    """A rank list given as a list or as PyTorch's string ``"[0, 1, 2]"``; None when absent, empty,
    truncated (``"[0, 1, ..., 63]"``) or malformed."""
    if isinstance(value, str):
        if "..." in value:
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, (list, tuple)) and value and all(is_type(r, int) and r >= 0 for r in value):
        return [int(r) for r in value]
    return None


# --- assembly --------------------------------------------------------------------------------------


def _timed_deps(items: list, streams: list[str]) -> list[list[int]]:
    """For each item, the latest item of every other stream that had ended when it started."""
    history: dict[str, list[int]] = {}
    deps: list[list[int]] = []
    for i, item in enumerate(items):
        found: list[int] = []
        start = item.start_us
        if math.isfinite(start):
            for stream, indices in history.items():
                if stream == streams[i]:
                    continue
                for j in reversed(indices):
                    end = items[j].end_us
                    if math.isfinite(end) and end <= start + _EPS_US:
                        found.append(j)
                        break
        deps.append(found)
        history.setdefault(streams[i], []).append(i)
    return deps


def _group_keys(items: list) -> list[Hashable | None]:
    """Explicit ``nccl_group_key`` values, plus one key per run of consecutive p2p ops on one group."""
    keys: list[Hashable | None] = [getattr(it, "nccl_group_key", None) for it in items]
    i = 0
    while i < len(items):
        it = items[i]
        if isinstance(it, CommRecord) and it.kind == "p2p" and keys[i] is None:
            j = i
            while (j + 1 < len(items) and isinstance(items[j + 1], CommRecord) and items[j + 1].kind == "p2p"
                   and items[j + 1].group_id == it.group_id and keys[j + 1] is None):
                j += 1
            if j > i:
                for k in range(i, j + 1):
                    keys[k] = ("p2p-run", i)
            i = j + 1
        else:
            i += 1
    return keys


def assemble(*, fmt: str, paths: list[str], world_size: int, gpus_per_node: int,
             groups: dict[str, GroupInfo], records: dict[int, list], timed: bool, notes: Notes,
             extra: dict | None = None) -> Trace:
    """Build and validate the trace from per-rank records in issue order.

    Args:
        fmt: the importer's name ("kineto", ...), recorded as source ``import:<fmt>``.
        paths: the input files (named in the description and in errors).
        world_size, gpus_per_node: trace metadata (``gpus_per_node`` counts the nodes of groups
            whose ``GroupInfo.nnodes`` is None).
        groups: every group the records use.
        records: rank -> list of ``CommRecord`` / ``ComputeRecord`` in issue order.
        timed: derive dependencies from the measured timestamps (see the module docstring).
        notes: warnings and assumptions, stored in the metadata ``workload.notes``.

    Raises:
        InputError: nothing to import, or the result does not validate (naming the first file).
    """
    if gpus_per_node < 1:
        raise InputError("--gpus-per-node", None, f"expected a positive integer, got {gpus_per_node}")
    if not any(isinstance(r, CommRecord) for recs in records.values() for r in recs):
        raise InputError(paths[0], None, f"no collective or point-to-point operations found in the {fmt} input")
    shown = ", ".join(Path(p).name for p in paths[:4]) + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")
    builder = TraceBuilder(source=f"import:{fmt}", world_size=world_size, gpus_per_node=gpus_per_node,
                           description=f"imported from {fmt}: {shown}")
    built = {}
    for gid, info in sorted(groups.items()):
        kind = info.kind or group_kind(info.desc, len(info.ranks), world_size)
        if kind not in GROUP_KINDS:
            kind = "unknown"
        nnodes = info.nnodes if info.nnodes and 1 <= info.nnodes <= len(info.ranks) else None
        built[gid] = builder.add_group(gid, kind, info.ranks, desc=info.desc, nnodes=nnodes)
    for rank in sorted(records):
        by_step: dict[int, list] = {}
        for item in records[rank]:
            by_step.setdefault(item.step, []).append(item)
        for step in sorted(by_step):
            items = by_step[step]
            rec = builder.rank(rank, step=step)
            streams = [COMPUTE_STREAM if isinstance(it, ComputeRecord) else comm_stream(it.group_id) for it in items]
            deps = _timed_deps(items, streams) if timed else [[] for _ in items]
            keys = _group_keys(items)
            open_key: Hashable | None = None
            ctx = None
            for item, dep, key in zip(items, deps, keys):
                if key != open_key:
                    if ctx is not None:
                        ctx.__exit__(None, None, None)
                        ctx = None
                    if key is not None:
                        ctx = rec.nccl_group()
                        ctx.__enter__()
                    open_key = key
                _record(rec, item, dep, built)
            if ctx is not None:
                ctx.__exit__(None, None, None)
    workload = {"imported_from": fmt, "files": [str(p) for p in paths], "notes": list(notes.items)}
    if extra:
        workload.update(extra)
    trace = builder.build(workload=workload)
    trace.ops = trace.ops.sort_values(["step", "rank", "op_index"], kind="stable").reset_index(drop=True)
    trace.validate(source=f"{paths[0]} (imported as {fmt})")
    return trace


def _record(rec, item, deps: list[int], groups: dict) -> int:
    if isinstance(item, ComputeRecord):
        return rec.compute(item.label, phase=item.phase, duration_us=max(item.duration_us, 0.0), deps=deps,
                           start_us=item.start_us, end_us=item.end_us)
    measured: dict = {"nccl_algo": item.nccl_algo, "nccl_proto": item.nccl_proto,
                      "nccl_channels": item.nccl_channels}
    if math.isfinite(item.start_us) and math.isfinite(item.end_us):
        measured.update(start_us=item.start_us, end_us=max(item.end_us, item.start_us))
    if math.isfinite(item.duration_us):  # a measured execution time without timestamps (Inspector)
        measured["duration_us"] = float(item.duration_us)
    group = groups[item.group_id]
    if item.kind == "p2p":
        method = rec.send if item.op == "send" else rec.recv
        return method(item.peer, group, item.bytes_total, item.dtype, phase=item.phase, label=item.label,
                      deps=deps, **measured)
    return rec.collective(item.op, group, item.bytes_total, item.dtype, phase=item.phase, label=item.label,
                          deps=deps, root=item.peer, **measured)


def compute_gaps(comms: list[CommRecord], windows: dict[int, tuple[float, float]] | None = None,
                 label: str = "compute") -> list:
    """Interleave host-timeline compute gaps with one rank's comm records (in issue order).

    The gap after a record runs from its issue end (its execution end when the host waited for
    it) to the next record's issue start, within one step; gaps shorter than ``MIN_GAP_US`` are
    dropped, and so are gaps inside a run of p2p ops on one group (they launch together).
    ``windows`` maps a step to its (start, end) µs: the compute from the step's start to its
    first op and from its last op to the step's end is added too.
    """
    out: list = []
    prev: CommRecord | None = None
    for rec in comms:
        if prev is None or prev.step != rec.step:
            if prev is not None and windows and prev.step in windows:
                _gap(out, prev.step, "step", _after(prev), windows[prev.step][1], label)
            if windows and rec.step in windows:
                _gap(out, rec.step, rec.phase, windows[rec.step][0], rec.issue_start_us, label)
        elif not (prev.kind == rec.kind == "p2p" and prev.group_id == rec.group_id):
            _gap(out, rec.step, rec.phase, _after(prev), rec.issue_start_us, label)
        out.append(rec)
        prev = rec
    if prev is not None and windows and prev.step in windows:
        _gap(out, prev.step, "step", _after(prev), windows[prev.step][1], label)
    return out


def _after(rec: CommRecord) -> float:
    end = rec.issue_end_us
    if rec.blocking and math.isfinite(rec.end_us):
        end = max(end, rec.end_us)
    return end


def _gap(out: list, step: int, phase: str, start: float, end: float, label: str) -> None:
    if math.isfinite(start) and math.isfinite(end) and end - start >= MIN_GAP_US:
        out.append(ComputeRecord(step=step, phase=phase, start_us=start, end_us=end, duration_us=end - start,
                                 label=label))
