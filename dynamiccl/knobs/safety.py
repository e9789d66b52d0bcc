"""Settings known to corrupt data or crash on some NCCL versions and transports: never emitted.

Every rule cites the public report it rests on. :func:`refusals` checks a job's environment
settings and a table's per-call chunk sizes against the detected NCCL and transport; the launcher
drops what it refuses (and says so), ``dynamiccl table check`` and ``doctor`` report it.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamiccl.nccl import parse_version


@dataclass(frozen=True)
class UnsafeRule:
    """``setting`` at ``min_bytes`` or more is unsafe on the NCCL versions in [first, last]
    (None: every version) over ``transports`` (empty: every transport)."""

    setting: str
    min_value: int
    first: str | None
    last: str | None
    transports: tuple[str, ...]
    why: str

    def applies(self, value: int, nccl_version: str | None, transport: str | None) -> bool:
        """Whether ``value`` of the setting is unsafe on this NCCL and transport; an unknown version or
        transport counts as affected (refuse when in doubt)."""
        if value < self.min_value:
            return False
        if nccl_version is not None:
            version = parse_version(nccl_version)
            if self.first is not None and version < parse_version(self.first):
                return False
            if self.last is not None and version > parse_version(self.last):
                return False
        return not (self.transports and transport is not None and transport not in self.transports)


PER_CALL_CHUNK = "chunk_bytes"  # a table rule's chunk size (getChunkSize), checked like a setting
RULES: tuple[UnsafeRule, ...] = (
    # Undocumented; a value above the p2p step size overruns NCCL's buffer slots: wrong sendrecv
    # results (nccl#1496), wrong results and Xid 31 MMU faults on H100 over RoCE (nccl#2408); the fix
    # proposed in PR #2410 clamps it, not yet released. Refused at any value and version.
    UnsafeRule("NCCL_CHUNK_SIZE", 0, None, None, (),
               "undocumented; above the p2p step size it overruns NCCL's buffers (nccl#1496, #2408, PR #2410)"),
    # nccl#2408: NCCL_P2P_NET_CHUNKSIZE / chunk >= 1 MiB, NCCL 2.31.2, H100 8x400G RoCE: wrong results, Xid 31.
    UnsafeRule("NCCL_P2P_NET_CHUNKSIZE", 1 << 20, "2.31.2", "2.31.2", ("roce",),
               "chunks >= 1 MiB returned wrong results with Xid 31 faults on NCCL 2.31.2 over RoCE (nccl#2408)"),
    UnsafeRule(PER_CALL_CHUNK, 1 << 20, "2.31.2", "2.31.2", ("roce",),
               "chunks >= 1 MiB returned wrong results with Xid 31 faults on NCCL 2.31.2 over RoCE (nccl#2408)"),
)


@dataclass(frozen=True)
class Refusal:
    """One setting not emitted, and why."""

    setting: str
    value: int
    why: str

    def __str__(self) -> str:
        return f"{self.setting}={self.value} refused: {self.why}"


def refusals(settings: dict[str, int], nccl_version: str | None, transport: str | None) -> list[Refusal]:
    """The settings (name -> value; a table's per-call chunk sizes under :data:`PER_CALL_CHUNK`) that
    are unsafe on this NCCL version and transport (None: unknown, so every rule for the setting applies)."""
    found = []
    for name, value in settings.items():
        for rule in RULES:
            if rule.setting == name and rule.applies(int(value), nccl_version, transport):
                found.append(Refusal(name, int(value), rule.why))
                break
    return found
