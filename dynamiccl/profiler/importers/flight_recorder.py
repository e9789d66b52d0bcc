"""Import PyTorch Flight Recorder dumps, one file per rank.

Format: pytorch/pytorch ``torch/csrc/distributed/c10d/FlightRecorder.hpp`` and its analyzer
``torch/distributed/flight_recorder/``.

Accepted: the JSON dump (``_dump_fr_trace_json`` / ``_dump_nccl_trace_json``, the
``TORCH_NCCL_DEBUG_INFO_*`` files when written as JSON) and — only with ``trust_pickle=True``
(``--trust-pickle``) — the pickle dump (``_dump_nccl_trace`` / ``_dump_fr_trace``, the default file
format). Even when trusted, the unpickler refuses every class or function reference: a dump holds
only dicts, lists, tuples, strings, numbers and None.

The file's rank is the dump's ``rank`` key when present, else the last number in the file name
(``nccl_trace_rank_3``, ``rank3.json``).

Per entry (fields checked: ``record_id``, ``process_group`` [name, desc], ``profiling_name``
``"<backend>:<op>[ meta]"``, ``input_sizes``/``output_sizes`` (lists of shapes),
``input_dtypes``/``output_dtypes``; optional ``duration_ms``, ``time_created_ns``):

- sizes are local tensor shapes: AllReduce/Broadcast/Reduce/AlltoAll/ReduceScatter count the
  input, AllGather the output (gloo records it as ``[n, k]``, NCCL flat), Send the input and Recv
  the output; Gather/Scatter n × the per-rank tensor;
- p2p names carry group-local ranks, ``send 1->2`` / ``recv 3<-0`` (me, peer);
- ``barrier`` becomes a 1-element fp32 all-reduce (what ProcessGroupNCCL issues);
- group ranks come from ``pg_config`` when it lists them, else from which ranks' dumps use the
  group (so every member's dump must be given; gloo writes an empty ``pg_config``);
- entries of the DETAIL-debug wrapper's helper group (``process_group ['', '']``) and mixed
  ``coalesced`` entries are skipped and counted in the notes.

Flight Recorder says nothing of steps or compute and, without ``TORCH_NCCL_ENABLE_TIMING``, of
durations: all entries are step 0, phase ``other``; with ``duration_ms`` the op gets start =
enqueue time (``time_created_ns``) and end = start + duration. Broadcast/reduce roots are not
recorded: group rank 0 is assumed (noted). Dependencies: none between groups.
"""

from __future__ import annotations

import io
import math
import pickle
import re

from dynamiccl import nccl
from dynamiccl.errors import InputError
from dynamiccl.profiler.importers._common import (
    CommRecord, GroupInfo, Notes, assemble, dtype_name, expand_paths, is_type, load_json, need, parse_rank_list,
    rank_from_name, read_bytes,
)
from dynamiccl.trace.store import Trace

# FR op names (torch/distributed/flight_recorder/components/types.py COLLECTIVES) -> trace op
OPS = {
    "all_reduce": "allreduce", "allreduce": "allreduce", "allreduce_coalesced": "allreduce",
    "all_reduce_coalesced": "allreduce", "all_reduce_barrier": "allreduce",
    "broadcast": "broadcast", "_broadcast_oop": "broadcast", "reduce": "reduce", "_reduce_oop": "reduce",
    "all_gather": "allgather", "_all_gather_base": "allgather", "all_gather_single": "allgather",
    "_allgather_base": "allgather", "allgather": "allgather", "all_to_allv": "alltoall",
    "all_gather_into_tensor_coalesced": "allgather", "allgather_coalesced": "allgather",
    "allgather_into_tensor_coalesced": "allgather", "ALLGATHER_coalesced": "allgather", "all_gather_v": "allgather",
    "reduce_scatter": "reducescatter", "_reduce_scatter_base": "reducescatter", "reduce_scatter_single": "reducescatter",
    "reduce_scatter_tensor_coalesced": "reducescatter", "REDUCE_SCATTER_coalesced": "reducescatter",
    "reduce_scatter_v": "reducescatter",
    "all_to_all": "alltoall", "all_to_all_single": "alltoall", "all_to_all_v_single": "alltoall",
    "alltoall": "alltoall", "alltoall_base": "alltoall",
    "gather": "gather", "scatter": "scatter", "barrier": "barrier", "send": "send", "recv": "recv",
}
_SKIP = {"coalesced"}
_P2P_NAME = re.compile(r"^(?P<op>send|recv) (?P<me>\d+)(?:->|<-)(?P<peer>\d+)$")


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles only built-in containers and scalars: any global reference is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a Flight Recorder dump holds only plain data")


def _load(path: str, trust_pickle: bool) -> dict:
    data = read_bytes(path)
    head = data.lstrip()[:1]
    if head in (b"{", b"["):
        obj = load_json(path, data)
    elif data[:1] == b"\x80":
        if not trust_pickle:
            raise InputError(path, None, "this is a pickled Flight Recorder dump; unpickling untrusted data can run "
                                         "code, so it is refused. Pass --trust-pickle (trust_pickle=True) if you "
                                         "trust the file, or dump JSON with _dump_fr_trace_json")
        try:
            obj = _PlainDataUnpickler(io.BytesIO(data)).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
            raise InputError(path, None, f"not a readable Flight Recorder pickle ({exc})") from None
    else:
        raise InputError(path, None, "neither a JSON nor a pickle Flight Recorder dump")
    if not isinstance(obj, dict):
        raise InputError(path, None, f"expected a dump object at the top level, got {type(obj).__name__}")
    need(obj, "entries", list, path, "dump")
    return obj


def _numel(shapes, path: str, where: str, key: str) -> int:
    if not isinstance(shapes, list) or not all(isinstance(s, list) and all(is_type(d, int) and d >= 0 for d in s)
                                               for s in shapes):
        raise InputError(path, f"{where} field '{key}'", f"expected a list of shapes (lists of sizes), got {shapes!r}"[:300])
    total = 0
    for shape in shapes:
        total += math.prod(shape)
    return total


def read_flight_recorder(paths: list[str], *, gpus_per_node: int = 8, trust_pickle: bool = False) -> Trace:
    """Import Flight Recorder dumps, one per rank.

    Raises:
        InputError: naming the file, the entry (``entries[i]``, record_id) and the field: a pickle
            without ``trust_pickle``, truncated JSON, a missing or mistyped field, an unknown op or
            dtype, two dumps of one rank, or a group whose members' dumps are missing.
    """
    files = expand_paths(paths)
    notes = Notes()
    parsed: dict[int, tuple[str, list]] = {}
    config_ranks: dict[str, list[int]] = {}
    config_desc: dict[str, str] = {}
    users: dict[str, set[int]] = {}
    sizes_seen: dict[str, tuple[int, str]] = {}
    skipped_helper = skipped_coalesced = 0
    any_duration = False
    for path in files:
        obj = _load(path, trust_pickle)
        rank = obj.get("rank") if is_type(obj.get("rank"), int) else rank_from_name(path)
        if rank is None:
            raise InputError(path, None, "cannot tell which rank this dump is from: the dump has no 'rank' and "
                                         "the file name no number (name files like nccl_trace_rank_<rank>)")
        if rank in parsed:
            raise InputError(path, None, f"a second dump of rank {rank} (first: {parsed[rank][0]})")
        for name, cfg in (obj.get("pg_config") or {}).items() if isinstance(obj.get("pg_config"), dict) else ():
            ranks = parse_rank_list(cfg.get("ranks")) if isinstance(cfg, dict) else None
            if name and ranks:
                config_ranks.setdefault(str(name), ranks)
            if name and isinstance(cfg, dict) and cfg.get("desc"):
                config_desc.setdefault(str(name), str(cfg["desc"]))
        entries = []
        for i, entry in enumerate(obj["entries"]):
            where = f"entries[{i}]"
            if not isinstance(entry, dict):
                raise InputError(path, where, f"expected an object, got {type(entry).__name__}")
            record_id = need(entry, "record_id", int, path, where)
            where = f"entries[{i}] (record_id {record_id})"
            pg = need(entry, "process_group", (list, tuple), path, where)
            if len(pg) != 2 or not all(isinstance(x, str) for x in pg):
                raise InputError(path, f"{where} field 'process_group'", f"expected [name, desc], got {pg!r}")
            name = need(entry, "profiling_name", str, path, where)
            if pg[0] == "":
                skipped_helper += 1
                continue
            backend, _, rest = name.partition(":")
            opname = rest.strip()
            p2p = _P2P_NAME.match(opname)
            base = p2p["op"] if p2p else opname.split(" ")[0]
            if base in _SKIP:
                skipped_coalesced += 1
                continue
            if base not in OPS or not rest:
                raise InputError(path, f"{where} field 'profiling_name'",
                                 f"unknown operation {name!r}; expected '<backend>:<op>' with op one of "
                                 f"{', '.join(sorted(OPS))}")
            op = OPS[base]
            n_in = _numel(need(entry, "input_sizes", list, path, where), path, where, "input_sizes")
            n_out = _numel(need(entry, "output_sizes", list, path, where), path, where, "output_sizes")
            in_dt = need(entry, "input_dtypes", list, path, where)
            out_dt = need(entry, "output_dtypes", list, path, where)
            if op == "barrier":
                dtype = "fp32"
            else:
                dts = in_dt or out_dt
                if not dts:
                    raise InputError(path, f"{where} field 'input_dtypes'", "empty: the op's dtype is unknown")
                key = "input_dtypes" if in_dt else "output_dtypes"
                if not isinstance(dts[0], str):
                    raise InputError(path, f"{where} field '{key}'", f"expected dtype names, got {dts!r}")
                dtype = dtype_name(dts[0], path, f"{where} field '{key}'")
            start = end = math.nan
            duration = entry.get("duration_ms")
            if duration is not None:
                if not is_type(duration, float) or duration < 0:
                    raise InputError(path, f"{where} field 'duration_ms'", f"expected a number >= 0, got {duration!r}")
                created = need(entry, "time_created_ns", int, path, where)
                start = created / 1000.0
                end = start + duration * 1000.0
                any_duration = True
            peer_local = int(p2p["peer"]) if p2p else -1
            entries.append((record_id, op, pg[0], pg[1], n_in, n_out, dtype, peer_local, start, end, where, name))
            users.setdefault(pg[0], set()).add(rank)
            config_desc.setdefault(pg[0], pg[1])
            if op == "allgather" and n_in:
                sizes_seen.setdefault(pg[0], (n_out // n_in, where))
        entries.sort(key=lambda e: e[0])
        parsed[rank] = (path, entries)
    # Groups: pg_config when it lists the ranks, else the ranks whose dumps use the group.
    groups: dict[str, GroupInfo] = {}
    inferred: list[str] = []
    for gid in users:
        ranks = config_ranks.get(gid) or sorted(users[gid])
        size, where = sizes_seen.get(gid, (len(ranks), ""))
        if gid not in config_ranks and size != len(ranks):
            path = next(parsed[r][0] for r in sorted(users[gid]))
            raise InputError(path, where or f"process group {gid!r}",
                             f"group {gid!r} ({config_desc.get(gid, '')}) has {size} ranks but only the dumps of ranks "
                             f"{sorted(users[gid])} use it; give the dumps of all its ranks")
        groups[gid] = GroupInfo(group_id=gid, ranks=tuple(ranks), desc=config_desc.get(gid, ""))
        if gid not in config_ranks:
            inferred.append(gid)
    if inferred:
        notes.add(f"groups {', '.join(sorted(inferred))}: pg_config does not list their ranks; members are the ranks "
                  "whose dumps use them")
    world = max([r + 1 for r in parsed] + [max(g.ranks) + 1 for g in groups.values()])
    records: dict[int, list] = {}
    roots_assumed = 0
    for rank, (path, entries) in sorted(parsed.items()):
        out = records.setdefault(rank, [])
        for record_id, op, gid, desc, n_in, n_out, dtype, peer_local, start, end, where, name in entries:
            group = groups[gid]
            n = len(group.ranks)
            if rank not in group.ranks:
                raise InputError(path, f"{where} field 'process_group'",
                                 f"rank {rank} is not a member of group {gid!r} (ranks {list(group.ranks)})")
            esize = nccl.parse_dtype(dtype).size_bytes
            if op == "barrier":
                total, op_ = 4, "allreduce"
            else:
                op_ = op
                numel = {"allgather": n_out, "recv": n_out or n_in}.get(op, n_in or n_out)
                if op in ("gather", "scatter"):
                    numel = (n_in if op == "gather" else n_out) * n
                total = numel * esize
            peer = -1
            if op in nccl.P2P_OPS:
                if not 0 <= peer_local < n or group.ranks[peer_local] == rank:
                    raise InputError(path, f"{where} field 'profiling_name'",
                                     f"{name!r}: peer {peer_local} is not another rank of group {gid!r} "
                                     f"(size {n})")
                peer = group.ranks[peer_local]
            elif op in nccl.ROOTED_OPS:
                peer = group.ranks[0]
                roots_assumed += 1
            out.append(CommRecord(kind="p2p" if op in nccl.P2P_OPS else "coll", op=op_, group_id=gid,
                                  bytes_total=total, dtype=dtype, peer=peer, label=name, start_us=start, end_us=end))
    if roots_assumed:
        notes.add(f"{roots_assumed} broadcast/reduce/gather/scatter call(s): Flight Recorder does not record the "
                  "root; group rank 0 assumed")
    if skipped_helper:
        notes.add(f"{skipped_helper} entries of the TORCH_DISTRIBUTED_DEBUG=DETAIL helper group skipped")
    if skipped_coalesced:
        notes.add(f"{skipped_coalesced} 'coalesced' entries skipped (their member ops are not listed)")
    notes.add("Flight Recorder has no step boundaries or compute: one step of communication only, no "
              "dependencies between groups" + ("" if any_duration else ", no measured times (enable "
                                                                      "TORCH_NCCL_ENABLE_TIMING for durations)"))
    return assemble(fmt="flight-recorder", paths=files, world_size=world, gpus_per_node=gpus_per_node,
                    groups=groups, records=records, timed=False, notes=notes)
