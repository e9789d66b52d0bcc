"""The knobs dynamiccl sets beyond NCCL's per-call (algorithm, protocol, channels), and their registry.

Three scopes, each applied where NCCL lets it be changed:

=============  ===========================================================  ==========================
scope          knobs                                                         applied by
=============  ===========================================================  ==========================
call           chunk size (:mod:`~dynamiccl.knobs.chunk`)                    tuner ABI v6 getChunkSize
communicator   minCTAs, maxCTAs, nvlsCTAs, CTA policy, cgaClusterSize        ``ncclConfig_t`` at init:
               (:mod:`~dynamiccl.knobs.comm_config`)                         PyTorch's
                                                                             ``ProcessGroupNCCL.Options``
                                                                             or Megatron's YAML
job            p2p chunk sizes, channels per net peer, buffer size           the environment, at launch
               (:mod:`~dynamiccl.knobs.job_env`), minus what
               :mod:`~dynamiccl.knobs.safety` refuses
=============  ===========================================================  ==========================

Each knob module adds its :class:`Knob` lines to :data:`KNOBS` (a new knob is a new file plus a
registry line). A knob the world simulator has no measurement for stays masked: ``masked_why`` says
why, and nothing learns or searches it there (a measured cost model may still price it).
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamiccl.nccl import parse_version

SCOPES = ("call", "communicator", "job")


@dataclass(frozen=True)
class Knob:
    """One knob: where it acts, how it is applied, since which NCCL, and what the world knows of it.

    ``modelled``: the world's model of its effect and the public measurement it rests on; empty when
    the world has none, and then ``masked_why`` says why it stays masked there.
    """

    name: str
    scope: str
    applied_by: str
    min_nccl: str
    modelled: str = ""
    masked_why: str = ""

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"knob {self.name}: scope {self.scope!r} is not one of {SCOPES}")
        if bool(self.modelled) == bool(self.masked_why):
            raise ValueError(f"knob {self.name}: give exactly one of modelled / masked_why")
        parse_version(self.min_nccl)

    def available(self, nccl_version: str | tuple[int, int, int]) -> bool:
        """Whether this NCCL version has the knob at all."""
        version = parse_version(nccl_version) if isinstance(nccl_version, str) else tuple(nccl_version)
        return version >= parse_version(self.min_nccl)


KNOBS: dict[str, Knob] = {}


def register(*knobs: Knob) -> None:
    """Add knobs to :data:`KNOBS` (each knob module calls it once).

    Raises:
        ValueError: a name registered twice.
    """
    for knob in knobs:
        if knob.name in KNOBS:
            raise ValueError(f"knob {knob.name!r} is registered twice")
        KNOBS[knob.name] = knob


# The knob modules register on import; importing the package gives the whole registry.
from dynamiccl.knobs import chunk, comm_config, job_env  # noqa: E402,F401

__all__ = ["KNOBS", "Knob", "SCOPES", "register"]
