"""Import ``NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,COLL[,TUNING]`` logs.

Format: NVIDIA/nccl ``src/enqueue.cc`` (COLL and TUNING lines), ``src/init.cc`` (INIT lines),
``src/debug.cc`` (the line prefix).

Lines used (any prefix before NCCL's own ``host:pid:tid [dev] NCCL INFO`` is ignored, so torchrun's
``[rank0]:`` and ``NCCL_DEBUG_TIMESTAMP_*`` stamps are fine):

- INIT: ``<fn> comm 0x.. rank R nranks N cudaDev D nvmlDev X busId B commId 0x.. - Init COMPLETE``;
  split communicators print ``parent 0x.. splitCount|childCount K color C key K`` instead of a
  commId and are identified by (parent's commId, split count, color).
- COLL: ``<Op>: opCount <hex> sendbuff .. recvbuff .. count N datatype T op O root R comm 0x..
  [nranks=N] stream ..``. ``count`` follows NCCL's API: per rank for AllGather (send count),
  ReduceScatter (receive count) and AlltoAll/Gather/Scatter (per peer), the buffer otherwise;
  ``root`` is the communicator-local root, or the peer for Send/Recv. Ops of one communicator with
  the same opCount in a row were launched in one ncclGroupStart/End.
- TUNING (printed by each communicator's rank 0 only): ``<Op>: <bytes> Bytes -> Algo <name> proto
  <name> channel{Lo..Hi}={a..b}`` (NCCL >= 2.24, channels = b-a+1), ``<Op>: <bytes> Bytes -> Algo
  <int> proto <int> time <us>`` (2.23), ``<bytes> Bytes -> Algo <int> proto <int> time <us>`` (<= 2.21).
  A TUNING line belongs to the oldest collective of that process still waiting for one (same op,
  and same comm when the line names it); the choice is copied to the same call on every member
  (NCCL picks identically on all ranks of a communicator).

The log has no timestamps per operation and no step boundaries: every op is in step 0, phase
``other``, without measured times or cross-communicator dependencies. Global ranks come from
each process's rank in the world communicator (``_comms.resolve``).
"""

from __future__ import annotations

import re
from collections import defaultdict, deque
from dataclasses import dataclass

from dynamiccl import nccl
from dynamiccl.errors import InputError
from dynamiccl.profiler.importers._common import (
    CommRecord, Notes, assemble, expand_paths, nccl_op, read_text,
)
from dynamiccl.profiler.importers._comms import CommView, resolve
from dynamiccl.trace.store import Trace

_PREFIX = re.compile(r"(?P<host>[^\s:\[\]]+):(?P<pid>\d+):(?P<tid>\d+) \[(?P<dev>[^\]]*)\] NCCL INFO (?P<msg>.*)$")
_COLL_START = re.compile(r"^(?P<op>\w+): opCount ")
_COLL = re.compile(r"^(?P<op>\w+): opCount (?P<opcount>\S+) sendbuff (?P<sendbuff>\S+) recvbuff (?P<recvbuff>\S+) "
                   r"count (?P<count>\S+) datatype (?P<datatype>\S+) op (?P<redop>\S+) root (?P<root>\S+) "
                   r"comm (?P<comm>\S+) \[nranks=(?P<nranks>[^\]]*)\] stream (?P<stream>\S+)")
_INIT = re.compile(r"\bcomm (?P<comm>0x[0-9a-fA-F]+|\(nil\)) (?P<fields>.*?) - Init COMPLETE")
_TUNING = re.compile(r"^(?:(?P<op>\w+): )?(?P<bytes>\S+) Bytes -> Algo (?P<algo>\S+) proto (?P<proto>\S+)"
                     r"(?: channel\{Lo\.\.Hi\}=\{(?P<lo>\d+)\.\.(?P<hi>\d+)\})?(?: time (?P<time>\S+))?"
                     r"(?: comm (?P<comm>\S+))?")

@dataclass
class _Comm:
    view: CommView
    ptr: str


@dataclass
class _Op:
    proc: tuple
    comm: _Comm
    op: str
    name: str
    count: int
    dtype: nccl.DataType
    root: int
    opcount: str
    where: str
    algo: str = ""
    proto: str = ""
    channels: int = -1


def _int(text: str, path: str, lineno: int, field: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(path, f"line {lineno} field '{field}'", f"expected an integer, got {text!r}") from None


def read_nccl_log(paths: list[str], *, gpus_per_node: int = 8) -> Trace:
    """Import NCCL debug logs: one file per rank, or merged files with host:pid:tid prefixes.

    Args:
        paths: log files (or directories of them).
        gpus_per_node: for groups whose hosts are not all in the logs.

    Raises:
        InputError: naming the file and line of a malformed COLL/INIT/TUNING line (bad integer,
            unknown datatype number, unknown algorithm), a COLL line on a communicator whose
            ``Init COMPLETE`` line is missing, or logs without any collective.
    """
    files = expand_paths(paths)
    notes = Notes()
    comms: dict[tuple, dict[str, _Comm]] = defaultdict(dict)  # proc -> ptr -> current communicator
    views: dict[tuple, list[CommView]] = defaultdict(list)
    hosts: dict[tuple, str] = {}
    ops: dict[tuple, list[_Op]] = defaultdict(list)
    awaiting: dict[tuple, deque] = defaultdict(deque)  # proc -> collectives awaiting a TUNING line
    commid_of: dict[tuple[tuple, str], str] = {}  # (proc, ptr) -> global key text of that comm
    skipped: dict[str, int] = defaultdict(int)
    unmatched_tuning = 0
    versions: set[str] = set()
    for path in files:
        for lineno, line in enumerate(read_text(path).splitlines(), 1):
            if "NCCL INFO" not in line:
                continue
            m = _PREFIX.search(line)
            if not m:
                continue
            where = f"{path}: line {lineno}"
            proc = (m["host"], int(m["pid"]))
            hosts[proc] = m["host"]
            msg = m["msg"].strip()
            if msg.startswith("NCCL version "):
                versions.add(msg.split()[2])
                continue
            init = _INIT.search(msg) if "Init COMPLETE" in msg else None
            if init:
                comm = _parse_init(proc, init, where, commid_of)
                comms[proc][comm.ptr] = comm
                views[proc].append(comm.view)
                continue
            if _COLL_START.match(msg):
                c = _COLL.match(msg)
                if not c:
                    raise InputError(path, f"line {lineno}", "malformed COLL line (expected '<Op>: opCount .. "
                                                             "sendbuff .. recvbuff .. count N datatype T op O root R "
                                                             "comm 0x.. [nranks=N] stream ..')")
                name = c["op"]
                op = nccl_op(name)
                if op is None:
                    skipped[name] += 1
                    continue
                comm = comms[proc].get(c["comm"])
                if comm is None:
                    raise InputError(path, f"line {lineno} field 'comm'",
                                     f"communicator {c['comm']} has no 'Init COMPLETE' line before this call; log "
                                     "with NCCL_DEBUG_SUBSYS=INIT,COLL (plus TUNING for algorithms) from job start")
                nranks = _int(c["nranks"], path, lineno, "nranks")
                if nranks != comm.view.nranks:
                    raise InputError(path, f"line {lineno} field 'nranks'",
                                     f"{nranks} but the communicator was initialised with {comm.view.nranks} ranks")
                count = _int(c["count"], path, lineno, "count")
                datatype = _int(c["datatype"], path, lineno, "datatype")
                dtype = nccl.parse_dtype(datatype, path, f"line {lineno} field 'datatype'")
                root = _int(c["root"], path, lineno, "root")
                if count < 0:
                    raise InputError(path, f"line {lineno} field 'count'", f"expected >= 0, got {count}")
                if (op in nccl.ROOTED_OPS or op in nccl.P2P_OPS) and not 0 <= root < nranks:
                    raise InputError(path, f"line {lineno} field 'root'", f"expected 0..{nranks - 1}, got {root}")
                record = _Op(proc, comm, op, name, count, dtype, root, c["opcount"], where)
                ops[proc].append(record)
                if comm.view.rank == 0 and op not in nccl.P2P_OPS:
                    awaiting[proc].append(record)
                continue
            t = _TUNING.match(msg)
            if t and " Bytes -> Algo " in msg:
                if t["op"] in ("Send", "Recv", "SendRecv"):
                    continue
                if not _apply_tuning(proc, t, awaiting[proc], comms[proc], path, lineno):
                    unmatched_tuning += 1
    if not ops:
        raise InputError(files[0], None, "no NCCL COLL lines found; log with NCCL_DEBUG=INFO "
                                         "NCCL_DEBUG_SUBSYS=INIT,COLL (add TUNING for the algorithms NCCL chose)")
    for name, n in sorted(skipped.items()):
        notes.add(f"{n} '{name}' call(s) skipped: not an operation the trace format has")
    if unmatched_tuning:
        notes.add(f"{unmatched_tuning} TUNING line(s) matched no collective")
    world, global_rank, groups = resolve(views, files[0], notes)
    _share_tuning(ops, notes)
    records: dict[int, list] = {}
    for proc, proc_ops in ops.items():
        rank = global_rank[proc]
        out = records.setdefault(rank, [])
        for o in proc_ops:
            group = groups[o.comm.view.key]
            n = len(group.ranks)
            size = o.dtype.size_bytes
            total = o.count * size * (n if o.op in nccl.SHARDED_OPS else 1)
            peer = group.ranks[o.root] if (o.op in nccl.ROOTED_OPS or o.op in nccl.P2P_OPS) else -1
            if o.op in nccl.P2P_OPS and peer == rank:
                raise InputError(o.where, "field 'root'", f"{o.name} to itself (peer {o.root} is this rank)")
            out.append(CommRecord(
                kind="p2p" if o.op in nccl.P2P_OPS else "coll", op=o.op, group_id=group.group_id,
                bytes_total=total, dtype=o.dtype.name_lower, peer=peer, label=f"{o.name} opCount {o.opcount}",
                nccl_algo=o.algo, nccl_proto=o.proto, nccl_channels=o.channels,
                nccl_group_key=("opcount", group.group_id, o.opcount)))
        _drop_singleton_keys(out)
    if not any(o.algo for os_ in ops.values() for o in os_):
        notes.add("no TUNING lines: the algorithm/protocol NCCL chose is unknown (log with NCCL_DEBUG_SUBSYS=TUNING)")
    notes.add("NCCL logs carry no per-operation times and no step boundaries: one step, no measured timestamps, "
              "no dependencies between communicators")
    return assemble(fmt="nccl-log", paths=files, world_size=world, gpus_per_node=gpus_per_node,
                    groups={g.group_id: g for g in groups.values()}, records=records, timed=False, notes=notes,
                    extra={"nccl_version": sorted(versions)} if versions else None)


def _parse_init(proc: tuple, m: re.Match, where: str, commid_of: dict) -> _Comm:
    tokens = m["fields"].split()
    fields = dict(zip(tokens[0::2], tokens[1::2]))
    path, _, line = where.rpartition(": ")
    lineno = int(line.split()[-1])
    for key in ("rank", "nranks"):
        if key not in fields:
            raise InputError(path, f"{line} field '{key}'", "missing from the Init COMPLETE line")
    rank = _int(fields["rank"], path, lineno, "rank")
    nranks = _int(fields["nranks"], path, lineno, "nranks")
    ptr = m["comm"]
    if "commId" in fields:
        key = ("id", fields["commId"].lower())
        gid = fields["commId"].lower()
    elif "parent" in fields and "color" in fields:
        parent = commid_of.get((proc, fields["parent"]))
        if parent is None:
            raise InputError(path, f"{line} field 'parent'",
                             f"split of communicator {fields['parent']}, whose Init COMPLETE line is not in the log")
        split = fields.get("splitCount", fields.get("childCount", "?"))
        key = ("split", parent, split, fields["color"])
        gid = f"{parent}/split{split}/color{fields['color']}"
    else:  # NCCL too old to print commId: this communicator cannot be matched across processes
        key = ("local", proc, ptr)
        gid = f"{proc[0]}:{proc[1]}:{ptr}"
    commid_of[(proc, ptr)] = gid
    view = CommView(key=key, group_id=gid, rank=rank, nranks=nranks, where=where, host=proc[0])
    return _Comm(view=view, ptr=ptr)


def _apply_tuning(proc, t: re.Match, awaiting: deque, comms: dict, path: str, lineno: int) -> bool:
    where = f"line {lineno}"
    algo_text, proto_text = t["algo"], t["proto"]
    try:
        algo = nccl.Algorithm(int(algo_text)) if algo_text.isdigit() else nccl.parse_algorithm(
            algo_text, path, f"{where} field 'Algo'")
        proto = nccl.Protocol(int(proto_text)) if proto_text.isdigit() else nccl.parse_protocol(
            proto_text, path, f"{where} field 'proto'")
    except ValueError:
        raise InputError(path, f"{where} field 'Algo'/'proto'",
                         f"unknown algorithm/protocol number {algo_text}/{proto_text}") from None
    op = nccl_op(t["op"]) if t["op"] else None
    ptr_comm = comms.get(t["comm"]) if t["comm"] else None
    for i, record in enumerate(awaiting):
        if (op is None or record.op == op) and (ptr_comm is None or record.comm is ptr_comm):
            del awaiting[i]
            record.algo, record.proto = algo.name_lower, proto.name_lower
            if t["lo"] is not None:
                record.channels = int(t["hi"]) - int(t["lo"]) + 1
            return True
    return False


def _share_tuning(ops: dict[tuple, list[_Op]], notes: Notes) -> None:
    """Copy each communicator rank 0's choices to the same call (k-th collective) on the others."""
    seqs: dict = defaultdict(dict)  # comm key -> comm rank -> list of collectives in order
    for proc_ops in ops.values():
        for o in proc_ops:
            if o.op not in nccl.P2P_OPS:
                seqs[o.comm.view.key].setdefault(o.comm.view.rank, []).append(o)
    for key, by_rank in seqs.items():
        source = by_rank.get(0)
        if not source:
            continue
        for rank, seq in by_rank.items():
            if rank == 0:
                continue
            for k, o in enumerate(seq):
                if k < len(source) and source[k].op == o.op:
                    o.algo, o.proto, o.channels = source[k].algo, source[k].proto, source[k].channels
                elif k < len(source):
                    notes.add(f"communicator {o.comm.view.group_id}: call #{k} is {source[k].name} on its rank 0 "
                              f"but {o.name} on rank {rank}; algorithm not copied")


def _drop_singleton_keys(records: list[CommRecord]) -> None:
    """Keep an opCount group key only on runs of two or more consecutive ops sharing it."""
    i = 0
    while i < len(records):
        j = i
        while j + 1 < len(records) and records[j + 1].nccl_group_key == records[i].nccl_group_key:
            j += 1
        if j == i:
            records[i].nccl_group_key = None
        i = j + 1
