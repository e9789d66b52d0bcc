"""From NCCL communicators seen by processes to global ranks and process groups.

NCCL's own outputs (debug logs, Inspector dumps) know processes (host, pid) and, per process, the
communicators it belongs to with its rank in each — but not PyTorch's global ranks. A process's
global rank is its rank in the *world communicator*: the largest communicator, the one seen by
the most processes. A communicator's global ranks follow from the processes that report it; when
some members' files are missing, they are inferred (a consecutive or evenly strided block that
fits the members present) and the inference is noted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

from dynamiccl.errors import InputError
from dynamiccl.profiler.importers._common import GroupInfo, Notes


@dataclass
class CommView:
    """One process's view of one communicator. ``key`` identifies the communicator globally."""

    key: Hashable
    group_id: str
    rank: int
    nranks: int
    where: str  # "file: line N" — for errors
    host: str = ""
    nnodes: int | None = None
    name: str = ""


def resolve(views: dict[Hashable, list[CommView]], source: str, notes: Notes
            ) -> tuple[int, dict[Hashable, int], dict[Hashable, GroupInfo]]:
    """Global ranks of processes and the groups of communicators.

    Args:
        views: process id -> the communicators that process reported.
        source: the first input file (for errors that concern all files).

    Returns:
        (world size, process -> global rank, communicator key -> ``GroupInfo``).

    Raises:
        InputError: no communicator at all, inconsistent reports (one communicator with two sizes,
            two processes claiming one rank), or a process outside the world communicator.
    """
    every = [v for vs in views.values() for v in vs]
    if not every:
        raise InputError(source, None, "no communicator initialisations found")
    sizes: dict[Hashable, int] = {}
    seen_by: dict[Hashable, set] = {}
    first: dict[Hashable, int] = {}
    for proc, vs in views.items():
        for v in vs:
            if v.nranks < 1 or not 0 <= v.rank < v.nranks:
                raise InputError(v.where, "rank/nranks", f"rank {v.rank} is not within 0..{v.nranks - 1}")
            if sizes.setdefault(v.key, v.nranks) != v.nranks:
                raise InputError(v.where, "nranks", f"communicator {v.group_id} has {v.nranks} ranks here but "
                                                    f"{sizes[v.key]} elsewhere")
            seen_by.setdefault(v.key, set()).add(proc)
            first.setdefault(v.key, len(first))
    world = max(sizes.values())
    world_key = max((k for k in sizes if sizes[k] == world), key=lambda k: (len(seen_by[k]), -first[k]))
    global_rank: dict[Hashable, int] = {}
    owner: dict[int, Hashable] = {}
    for proc, vs in views.items():
        mine = [v for v in vs if v.key == world_key]
        if not mine:
            where = vs[0].where if vs else source
            raise InputError(where, None, f"this process never joined the {world}-rank world communicator "
                                          f"{_gid(views, world_key)}, so its global "
                                          "rank is unknown; give the logs of every rank from job start")
        g = mine[0].rank
        if g in owner and owner[g] != proc:
            raise InputError(mine[0].where, "rank", f"two processes report rank {g} in the world communicator")
        owner[g] = proc
        global_rank[proc] = g
    groups: dict[Hashable, GroupInfo] = {}
    for key, n in sizes.items():
        members: dict[int, int] = {}
        hosts: dict[int, str] = {}
        nnodes = None
        name = ""
        gid = ""
        for proc, vs in views.items():
            for v in vs:
                if v.key == key:
                    members[v.rank] = global_rank[proc]
                    hosts[v.rank] = v.host
                    nnodes = v.nnodes if v.nnodes else nnodes
                    name = name or v.name
                    gid = v.group_id
        if key == world_key:
            ranks = list(range(n))
        elif len(members) == n:
            ranks = [members[r] for r in range(n)]
        else:
            ranks = _infer(members, n, world)
            if ranks is None:
                raise InputError(source, f"communicator {gid}",
                                 f"only ranks {sorted(members.values())} of its {n} members are in the input and "
                                 "the others cannot be inferred; give the files of every rank")
            notes.add(f"communicator {gid}: files of {n - len(members)} of its {n} members are missing; "
                      f"its global ranks {ranks} are inferred")
        if len(set(ranks)) != n:
            raise InputError(source, f"communicator {gid}", f"members map to repeated global ranks {ranks}")
        if nnodes is None and len(members) == n and all(hosts.values()):
            nnodes = len(set(hosts.values()))
        groups[key] = GroupInfo(group_id=gid, ranks=tuple(ranks), desc=name, nnodes=nnodes,
                                kind="world" if key == world_key and not name else None)
    return world, global_rank, groups


def _gid(views: dict, key: Hashable) -> str:
    for vs in views.values():
        for v in vs:
            if v.key == key:
                return v.group_id
    return str(key)


def _infer(members: dict[int, int], n: int, world: int) -> list[int] | None:
    """Global ranks of an n-member communicator from some members: a consecutive block, else an
    evenly strided one, consistent with every member present and within the world."""
    items = sorted(members.items())
    r0, g0 = items[0]
    strides = [1]
    if len(items) > 1:
        (r1, g1) = items[1]
        if (g1 - g0) % (r1 - r0) == 0:
            strides = [(g1 - g0) // (r1 - r0)]
    elif n > 1 and world % n == 0:
        strides.append(world // n)
    for stride in strides:
        if stride == 0:
            continue
        ranks = [g0 + (r - r0) * stride for r in range(n)]
        if all(0 <= g < world for g in ranks) and all(ranks[r] == g for r, g in items):
            return ranks
    return None
