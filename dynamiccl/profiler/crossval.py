"""Compare a captured trace with the generator's prediction, communicator by communicator.

A communicator is (group kind, its global ranks); on each rank and communicator the ordered list of
operations (op, bytes_total, dtype, peer) of one step must be the same in both traces. Compute
segments, timestamps, labels and phases are not compared (the capture measures them, the generator
models them). Group kinds are normalised where the two sides only name the same group differently:
the generator's ``fsdp`` group is Megatron's ``DATA_PARALLEL_GROUP_WITH_CP``, which a capture
classifies as ``dp``.

Used by ``tests/test_profiler_crossvalidation.py`` against runs of
:mod:`dynamiccl.profiler.reference_job`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dynamiccl.trace.store import Trace

_SAME_KIND = {"fsdp": "dp"}

Key = tuple[int, str, tuple[int, ...]]  # (rank, group kind, group ranks)
Op = tuple[str, int, str, int]          # (op, bytes_total, dtype, peer or root)


def comm_sequences(trace: Trace, step: int) -> dict[Key, list[Op]]:
    """Per (rank, group kind, group ranks): the ordered communication of ``step``."""
    ops = trace.ops
    ops = ops[(ops["step"] == step) & (ops["kind"] != "compute")].sort_values(["rank", "op_index"])
    groups = trace.meta.groups
    out: dict[Key, list[Op]] = {}
    for row in ops.itertuples(index=False):
        group = groups[row.group_id]
        key = (int(row.rank), _SAME_KIND.get(group.kind, group.kind), tuple(group.ranks))
        out.setdefault(key, []).append((row.op, int(row.bytes_total), row.dtype, int(row.peer)))
    return out


@dataclass
class Comparison:
    """Differences between two traces' communication; empty ``problems`` means they match."""

    problems: list[str] = field(default_factory=list)
    compared_ops: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def compare(captured: dict[Key, list[Op]], generated: dict[Key, list[Op]], limit: int = 20) -> Comparison:
    """Compare two ``comm_sequences`` results; problems name the rank, group and position."""
    result = Comparison()
    for key in sorted(set(captured) | set(generated)):
        got, want = captured.get(key, []), generated.get(key, [])
        rank, kind, ranks = key
        where = f"rank {rank} {kind}{list(ranks)}"
        result.compared_ops += min(len(got), len(want))
        if not got:
            result.problems.append(f"{where}: generated {len(want)} ops, captured none (first {want[0]})")
            continue
        if not want:
            result.problems.append(f"{where}: captured {len(got)} ops, generated none (first {got[0]})")
            continue
        for i, (a, b) in enumerate(zip(got, want)):
            if a != b:
                result.problems.append(f"{where} op {i}: captured {a}, generated {b}")
                break
        if len(got) != len(want):
            result.problems.append(f"{where}: captured {len(got)} ops, generated {len(want)}")
    if len(result.problems) > limit:
        result.problems = result.problems[:limit] + [f"... {len(result.problems) - limit} more"]
    return result
