"""Import NCCL Inspector JSON (NVIDIA/nccl ``plugins/profiler/inspector``).

The plugin writes one file per process, ``<hostname>-pid<pid>.log``: a stream of JSON objects.

- v4.3: each communicator dump starts with a marker ``{"header", "metadata", "dump_stats"}``
  followed by ``dump_stats.coll_records + p2p_records + proxy_records`` bare records
  ``{"coll_perf": ...}`` / ``{"p2p_perf": ...}`` / ``{"proxy_trace": ...}``.
- v4.0-v4.2: every record carries its own ``header`` and ``metadata``.

``header``: ``id`` (communicator hash), ``rank`` / ``n_ranks`` (in the communicator), ``nnodes``,
``comm_name``; ``metadata``: ``hostname``, ``pid``, ... ``coll_perf``: ``coll`` (AllReduce,
AllGather, ReduceScatter, Broadcast, Reduce, All2All, AllGatherV), ``coll_sn``,
``coll_msg_size_bytes``, ``coll_exec_time_us``, ``coll_algo``/``coll_proto`` (what NCCL ran),
optional verbose ``event_trace_ts`` (µs; per-channel ``kernel_events``). ``p2p_perf``: ``p2p``
(Send/Recv), ``p2p_sn``, ``p2p_peer`` (communicator rank), ``p2p_msg_size_bytes``,
``p2p_exec_time_us``.

Sizes: ``coll_msg_size_bytes`` is NCCL's count × element size — per rank for AllGather and
ReduceScatter (the plugin's bandwidth multiplies it by nranks) and, likewise, AlltoAll; the
buffer otherwise. Inspector records no datatype: ops are stored as ``uint8`` (bytes are exact) and
no broadcast/reduce root: group rank 0 is assumed. Both are noted.

Timing: with ``event_trace_ts`` an op starts at its first kernel's start (else the collective's
start) and ends ``exec_time`` later, the channels used are the kernel events, and dependencies
follow the timestamps. Without it, the measured execution time goes to the op's ``duration_us``
(no timestamps), ops are ordered communicator by communicator (the order between communicators
is unknown) and have no dependencies between communicators. Global ranks come from each
process's rank in the world communicator (``_comms.resolve``). Everything is step 0, phase ``other``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

from dynamiccl import nccl
from dynamiccl.errors import InputError
from dynamiccl.profiler.importers._common import (
    CommRecord, Notes, assemble, expand_paths, is_type, nccl_op, need, read_text,
)
from dynamiccl.profiler.importers._comms import CommView, resolve
from dynamiccl.trace.store import Trace

# Inspector's spellings that are not NCCL's, as NCCL names the function; the rest are NCCL's names.
_INSPECTOR_NAMES = {"All2All": "AlltoAll", "AllGatherV": "AllGather"}
_COLL_FUNCS = tuple(nccl.OP_FUNC[op] for op in nccl.COLLECTIVE_OPS)  # what a coll_perf record may name
_P2P_FUNCS = tuple(nccl.OP_FUNC[op] for op in nccl.P2P_OPS)  # and a p2p_perf record


def _objects(path: str):
    """Yield (line number, object) for each JSON value in the file."""
    text = read_text(path)
    decoder = json.JSONDecoder()
    pos, line = 0, 1
    n = len(text)
    while True:
        start = pos
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        line += text.count("\n", start, pos)
        if pos >= n:
            return
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"line {exc.lineno} column {exc.colno}",
                             f"not valid JSON ({exc.msg}); is the file truncated?") from None
        yield line, obj
        line += text.count("\n", pos, end)
        pos = end


def _algo(value, path: str, where: str, key: str) -> str:
    if value is None or str(value).strip().lower() in ("", "unknown", "undef", "none"):
        return ""
    if key.endswith("algo"):
        return nccl.parse_algorithm(str(value), path, f"{where} field '{key}'").name_lower
    return nccl.parse_protocol(str(value), path, f"{where} field '{key}'").name_lower


def read_inspector(paths: list[str], *, gpus_per_node: int = 8) -> Trace:
    """Import NCCL Inspector JSON dumps (one file per process, v4.0-v4.3).

    Raises:
        InputError: naming the file, the line of the record and the field: truncated JSON, a
            record outside a dump (v4.3 payload without its marker), a missing or mistyped field,
            an unknown collective or algorithm name.
    """
    files = expand_paths(paths)
    notes = Notes()
    views: dict[tuple, dict[str, CommView]] = defaultdict(dict)
    ops: dict[tuple, dict[tuple, dict]] = defaultdict(dict)
    timing_sources: dict[str, int] = defaultdict(int)
    dropped = 0
    skipped: dict[str, int] = defaultdict(int)
    for path in files:
        context = None
        remaining = 0
        for line, obj in _objects(path):
            where = f"line {line}"
            if not isinstance(obj, dict):
                raise InputError(path, where, f"expected a JSON object, got {type(obj).__name__}")
            if "dump_stats" in obj:
                stats = need(obj, "dump_stats", dict, path, where)
                context = (need(obj, "header", dict, path, where), need(obj, "metadata", dict, path, where))
                remaining = sum(v for k, v in stats.items() if k.endswith("_records") and is_type(v, int))
                dropped += sum(v for k, v in stats.items() if k.endswith("_dropped_since_last_dump") and is_type(v, int))
                continue
            if "proxy_trace" in obj:
                remaining -= 1
                continue
            if "coll_perf" not in obj and "p2p_perf" not in obj:
                raise InputError(path, where, "unknown record: expected coll_perf, p2p_perf, proxy_trace or dump_stats")
            if "header" in obj:
                header, meta = need(obj, "header", dict, path, where), need(obj, "metadata", dict, path, where)
            elif context is not None and remaining > 0:
                header, meta = context
                remaining -= 1
            else:
                raise InputError(path, where, "an operation record without its dump's header (a v4.3 file needs the "
                                              "dump_stats marker before its records; is the file cut?)")
            comm_id = str(need(header, "id", (str, int), path, f"{where} header"))
            rank = need(header, "rank", int, path, f"{where} header")
            nranks = need(header, "n_ranks", int, path, f"{where} header")
            nnodes = header.get("nnodes") if is_type(header.get("nnodes"), int) else None
            host = str(meta.get("hostname", ""))
            pid = meta.get("pid")
            proc = (host, pid) if host and is_type(pid, int) else (path,)
            view = CommView(key=comm_id, group_id=comm_id, rank=rank, nranks=nranks, where=f"{path}: {where}",
                            host=host, nnodes=nnodes, name=_comm_name(header.get("comm_name")))
            old = views[proc].setdefault(comm_id, view)
            if (old.rank, old.nranks) != (rank, nranks):
                raise InputError(path, f"{where} header", f"communicator {comm_id} reported as rank {rank}/{nranks} "
                                                          f"here but {old.rank}/{old.nranks} earlier in this process")
            if "coll_perf" in obj:
                body = need(obj, "coll_perf", dict, path, where)
                w = f"{where} coll_perf"
                name = need(body, "coll", str, path, w)
                op = nccl_op(_INSPECTOR_NAMES.get(name, name), _COLL_FUNCS)
                if op is None:
                    skipped[name] += 1
                    continue
                rec = {"op": op, "name": name, "sn": need(body, "coll_sn", int, path, w),
                       "bytes": need(body, "coll_msg_size_bytes", int, path, w),
                       "exec": need(body, "coll_exec_time_us", float, path, w),
                       "algo": _algo(body.get("coll_algo"), path, w, "coll_algo"),
                       "proto": _algo(body.get("coll_proto"), path, w, "coll_proto"),
                       "peer": -1, "source": body.get("coll_timing_source", "")}
                prefix, family = "coll", "c"
            else:
                body = need(obj, "p2p_perf", dict, path, where)
                w = f"{where} p2p_perf"
                name = need(body, "p2p", str, path, w)
                op = nccl_op(name, _P2P_FUNCS)
                if op is None:
                    skipped[name] += 1
                    continue
                rec = {"op": op, "name": name, "sn": need(body, "p2p_sn", int, path, w),
                       "bytes": need(body, "p2p_msg_size_bytes", int, path, w),
                       "exec": need(body, "p2p_exec_time_us", float, path, w), "algo": "", "proto": "",
                       "peer": need(body, "p2p_peer", int, path, w), "source": body.get("p2p_timing_source", "")}
                prefix, family = "p2p", "p"
                if not 0 <= rec["peer"] < nranks or rec["peer"] == rank:
                    raise InputError(path, f"{w} field 'p2p_peer'",
                                     f"expected another rank of the {nranks}-rank communicator, got {rec['peer']}")
            if rec["bytes"] < 0 or rec["exec"] < 0:
                raise InputError(path, w, "message size and execution time must be >= 0")
            rec.update(comm=comm_id, where=f"{path}: {w}", start=math.nan, channels=-1)
            trace_ts = body.get("event_trace_ts")
            if isinstance(trace_ts, dict):
                kernels = [k for k in trace_ts.get("kernel_events") or [] if isinstance(k, dict)]
                starts = [k["kernel_start_ts"] for k in kernels if is_type(k.get("kernel_start_ts"), float)
                          and k["kernel_start_ts"] > 0]
                first = trace_ts.get(f"{prefix}_start_ts")
                if starts:
                    rec["start"] = float(min(starts))
                elif is_type(first, float) and first > 0:
                    rec["start"] = float(first)
                if kernels:
                    rec["channels"] = min(len(kernels), nccl.MAX_CHANNELS)
            timing_sources[str(rec["source"]) or "unstated"] += 1
            ops[proc][(comm_id, family, rec["sn"])] = rec
    if not ops:
        raise InputError(files[0], None, "no coll_perf or p2p_perf records found")
    world, global_rank, groups = resolve({p: list(v.values()) for p, v in views.items()}, files[0], notes)
    timed = all(math.isfinite(r["start"]) for recs in ops.values() for r in recs.values())
    records: dict[int, list] = {}
    roots = 0
    for proc, recs in ops.items():
        rank = global_rank[proc]
        if timed:
            ordered = sorted(recs.values(), key=lambda r: (r["start"], r["comm"], r["sn"]))
        else:
            ordered = [recs[k] for k in sorted(recs, key=lambda k: (groups[k[0]].group_id, k[1], k[2]))]
        out = records.setdefault(rank, [])
        for r in ordered:
            group = groups[r["comm"]]
            n = len(group.ranks)
            total = r["bytes"] * (n if r["op"] in nccl.SHARDED_OPS else 1)
            peer = -1
            if r["op"] in nccl.P2P_OPS:
                peer = group.ranks[r["peer"]]
            elif r["op"] in nccl.ROOTED_OPS:
                peer = group.ranks[0]
                roots += 1
            start = r["start"]
            out.append(CommRecord(
                kind="p2p" if r["op"] in nccl.P2P_OPS else "coll", op=r["op"], group_id=group.group_id,
                bytes_total=total, dtype="uint8", peer=peer, label=f"{r['name']} sn {r['sn']}",
                start_us=start, end_us=start + r["exec"] if math.isfinite(start) else math.nan,
                duration_us=math.nan if timed else float(r["exec"]), nccl_algo=r["algo"], nccl_proto=r["proto"],
                nccl_channels=r["channels"]))
    notes.add("Inspector records no datatype: ops are stored as uint8 (byte counts are exact)")
    if roots:
        notes.add(f"{roots} broadcast/reduce call(s): Inspector does not record the root; group rank 0 assumed")
    if not timed:
        notes.add("no event_trace_ts (NCCL_INSPECTOR_DUMP_VERBOSE=1): measured execution times are in duration_us, "
                  "ops are ordered communicator by communicator, without dependencies between communicators")
    if dropped:
        notes.add(f"the plugin reports {dropped} records dropped from its rings (raise "
                  "NCCL_INSPECTOR_DUMP_COLL_RING_SIZE / _P2P_RING_SIZE)")
    if set(timing_sources) - {"kernel_gpu", "unstated"}:
        notes.add("timing sources: " + ", ".join(f"{k} {v}" for k, v in sorted(timing_sources.items())))
    for name, count in sorted(skipped.items()):
        notes.add(f"{count} '{name}' record(s) skipped: not an operation the trace format has")
    notes.add("Inspector only records ops of at least NCCL_INSPECTOR_DUMP_MIN_SIZE_BYTES (default 8192)")
    return assemble(fmt="inspector", paths=files, world_size=world, gpus_per_node=gpus_per_node,
                    groups={g.group_id: g for g in groups.values()}, records=records, timed=timed, notes=notes)


def _comm_name(value) -> str:
    text = str(value or "").strip()
    return "" if text == "unknown" else text
