"""The world simulator: how long a collective really takes for any (algorithm, protocol, channels).

NCCL's model (:mod:`dynamiccl.costmodel.nccl_model`) is what NCCL believes. The world keeps NCCL's
structure (ring/tree/NVLS step counts, latency + bytes / bandwidth) but takes its bandwidth from
the datasheet (``[intra]``, ``[inter]`` of the env spec) and adds what NCCL's model leaves out.
Each effect names its evidence and has one place in this module:

1. **Bytes on the busiest link** (one function per algorithm, :data:`ALGORITHM_TRAFFIC`, and per
   point-to-point function, :data:`P2P_TRAFFIC`). Per GPU (NVLink/PCIe) and per node (NICs): Ring
   AllReduce moves 2(n-1)/n x S, Ring AllGather/ReduceScatter (n-1)/n x S, Broadcast/Reduce S; a
   Tree AllReduce moves 2S along the intra-node chain (S at its ends, so S with 2 GPUs per node)
   and, per node on the network, S/2 per edge
   its node has in NCCL's double binary tree (:func:`double_binary_tree_load`): S on 2 nodes ("on 2
   nodes Tree puts 2x less traffic on the network", NVIDIA/nccl#946), 1.5S on 3 (why forced Tree
   beats Ring by 23% on three GB200 NVL8 partitions over IB, NVIDIA/nccl#1801), 2S from 4 on;
   NVLS AllReduce moves S(n+1)/n per GPU each way (algbw = wire x n/(n+1),
   NVIDIA/nccl-tests#239), NVLS AllGather/ReduceScatter S (the larger direction, NVIDIA/nccl#1083).
2. **Link efficiency per hardware class** (fitted; :class:`Links`): NVLink4 carries ~370 of
   450 GB/s for NCCL's Simple protocol ("protocol overhead ~20%", NVIDIA/nccl-tests#212); NVLS runs
   at NCCL's ``nvlsEfficiency`` of that (0.85 Hopper, 0.74 Blackwell, ``src/graph/tuning.cc``
   2.28+).
3. **Protocol efficiency** (:func:`protocol_efficiency`). LL carries 8 data bytes per 16-byte line:
   never above 50% of the link (NVIDIA/nccl#281, ``device.h``); LL128 120 of 128 bytes (93.75%).
4. **Channel saturation** (:func:`channel_gbytes_per_s`, and the soft minimum in ``evaluate``). Bus
   bandwidth is the soft minimum of what the links carry and channels x per-channel throughput:
   channels beyond what the links carry add nothing, too few cannot fill them. Per-channel
   throughput per architecture comes from NCCL's own per-channel caps (``perChMaxTreeBw`` for
   Simple, ``perChMaxRingLL128Bw`` for LL128, ``llMaxBws``/16 for LL); NVLSTree and NVLS reach peak
   with 16 SMs (NVIDIA/nccl#1649). With channels left to NCCL, its runtime count steps up with the
   size (``topoGetAlgoInfo``), so a channel-bound call just above a step can finish sooner than one
   just below it: NCCL's thresholds, not the links, decide that, and it is one of the things a
   tuner that sets channels fixes.
5. **Latency** (the algorithm functions, with :class:`HopLatency`). Per-hop latency per protocol
   (fitted; "LL ~1 µs per hop, LL128 ~2, Simple highest", Demystifying NCCL, arXiv:2507.04786, §3)
   over NCCL's step structure; NVLS a fixed intra-node latency; network hops add the transport's
   latency for the protocol plus the spec's ``nic_latency_us``; one process driving k GPUs (nccl-tests ``-g k``)
   adds a host-side launch gap per extra GPU (NVIDIA/nccl-tests ``doc/PERFORMANCE.md``). A Tree
   AllReduce also waits for its pipeline to fill (:func:`tree_pipeline_factor`, from NCCL's tree
   chunking): with few chunks per channel its reduce and broadcast barely overlap, which is why
   forced Tree trails Ring from 256 KiB to 16 MiB on two PCIe L40S though both move S per GPU
   (yumibyte/CS244C-Research phase1-baseline).
6. **Network** (:class:`Links`, and congestion in ``evaluate``). Per node: NICs x line rate x the
   transport's efficiency, times (1 - congestion); congestion also stretches network hop latency
   by 1/(1 - congestion) (queueing). Where an algorithm makes several peers send into one node at
   once (a tree's interior node hears its two children and its parent: ``Traffic.net_fan_in``),
   the NICs keep the transport's incast share of that (``net_incast_efficiency``): lossless IB's
   credit flow control loses little, RoCE's ECN/PFC congestion control more -- which is why Tree
   trails Ring by ~21% on 5 nodes of H100 over RoCE (NVIDIA/nccl#1368) while Ring's one-peer flows
   run near line rate. Over the network a protocol gets its payload ceiling times what it achieves
   on the transport (``net_protocol_efficiency``: LL over TCP sockets gets ~0.36 of its 50%, AWS
   g5 tables), and each network hop costs the transport's latency for that protocol
   (``net_hop_us``).
7. **Compute interference** (``evaluate``, one function per effect in
   :mod:`dynamiccl.costmodel.interference`). NCCL CTAs never share an SM with compute
   (NVIDIA/nccl#689), so each channel takes one SM from overlapped compute, with the wave tail of a
   kernel whose grid fills the GPU (a one-wave GEMM beside a 24-CTA AllGather takes two waves);
   collective and compute share HBM in proportion to their traffic, a link byte costing 2 HBM bytes
   (copy) or 3 (reduction) (NVIDIA/nccl#1428); the kernel runs at the scarcer of its SMs and its HBM
   share. The launch delay of a collective launched while compute fills every SM is the replay's
   (:mod:`dynamiccl.tuning.timeline`), which knows the kernel beside the call.
   A communicator's ``ncclConfig_t`` (the batch's ``max_ctas``, ``min_ctas``, ``nvls_ctas``) bounds
   its channel pools as NCCL does at init (NVIDIA/nccl ``src/graph/connect.cc``,
   ``src/transport/nvls.cc``; :func:`~dynamiccl.costmodel.nccl_model.comm_pool`): fewer channels
   hold fewer SMs, so compute gets them back (#689, the wave tail), and carry less (section 4:
   NVLSTree peaks with 16 SMs, NVIDIA/nccl#1649) -- no number is fitted for the knobs. A zero-CTA
   row (``zero_cta``: ``NCCL_CTA_POLICY_ZERO`` on symmetric-registered buffers) runs its AllGather
   and AlltoAll on the copy engines when all its ranks share NVLink (one node of an NVLink fabric;
   NVIDIA/nccl ``src/ce_coll.cc``): they hold no SMs, their HBM traffic is still shared with compute
   (#1428), and they keep the time of the same call on CTAs, as no public measurement of copy-engine
   collective bandwidth exists (:func:`interference.sms_held`). Reductions keep their CTAs.
8. **Noise**: a multiplicative run-to-run factor supplied with the batch (:mod:`.dynamics`).

Everything that does not depend on a call's size, channels or conditions is computed once per
topology and (function slot, algorithm, protocol) in :meth:`WorldModel._topology_keys`; ``evaluate``
is vectorized over the batch. Fitted parameters live in ``world_params.json`` keyed by hardware
class (architecture/fabric, transport), never by system; ``dynamiccl calibrate -o FILE`` refits them
from measured tables into FILE (the shipped file is package data: no command writes it), and
``DYNAMICCL_WORLD_PARAMS=FILE`` makes every command use that fit (:func:`default_params`).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dynamiccl import schema
from dynamiccl.costmodel import interference
from dynamiccl.costmodel.batch import COSTED_FUNCS, CollBatch, is_p2p, refuse_chunks
from dynamiccl.costmodel.nccl_constants import ARCH_INDEX, NVLINK_HW, nccl_constants
from dynamiccl.costmodel.nccl_model import NcclModel, nsteps
from dynamiccl.costmodel.protocol import CostModelOptions, CostResult
from dynamiccl.costmodel.topology import NcclTopology
from dynamiccl.envspec import EnvSpec
from dynamiccl.errors import InputError
from dynamiccl.knobs.comm_config import ZERO_CTA_FUNCS
from dynamiccl.nccl import NUM_ALGORITHMS, NUM_PROTOCOLS, REDUCING_FUNCS, TUNABLE_FUNCS, Algorithm, Func, Protocol

PARAMS_PATH = Path(__file__).with_name("world_params.json")
# A user's own fit (`dynamiccl calibrate -o FILE`), used by every command in place of PARAMS_PATH.
PARAMS_ENV = "DYNAMICCL_WORLD_PARAMS"

# Per-channel throughput (bus GB/s) per architecture (volta, ampere, hopper, blackwell) from NCCL's
# own caps (NVIDIA/nccl ``src/graph/tuning.cc``, v2.30): Simple = perChMaxTreeBw[N1], LL128 =
# perChMaxRingLL128Bw, LL = llMaxBws[N1] / 16.
_CHANNEL_GBYTES_PER_S = {Protocol.LL: np.array([39.0, 87.7, 141.0, 282.0]) / 16,
                         Protocol.LL128: np.array([20.0, 20.0, 36.7, 40.0]),
                         Protocol.SIMPLE: np.array([26.5, 24.0, 38.7, 70.0])}
# Data bytes per wire byte of each protocol: LL 8 of 16, LL128 120 of 128 (NVIDIA/nccl#281).
_PROTOCOL_PAYLOAD = {Protocol.LL: 0.5, Protocol.LL128: 120 / 128, Protocol.SIMPLE: 1.0}
# Channels at which NVLS and NVLSTree fill the link ("NVLSTree reaches peak bandwidth with 16 SMs",
# NVIDIA/nccl#1649).
_NVLS_PEAK_CHANNELS = 8.0

# Collectives NCCL can run on the copy engines of a zero-CTA communicator (knobs.comm_config).
_ZERO_CTA_FUNCS = np.array([int(Func[name.upper()]) for name in ZERO_CTA_FUNCS])

# The per-topology tables have one slot per function the world tells apart: NCCL's tunable
# collectives, then send/recv (SendRecv, Send and Recv are each one transfer) and AlltoAll.
_SLOT_FUNCS = (*TUNABLE_FUNCS, Func.SEND, Func.ALLTOALL)
_NUM_SLOTS = len(_SLOT_FUNCS)
_SLOT_OF_FUNC = np.array([_SLOT_FUNCS.index(Func.SEND if f in (Func.SENDRECV, Func.RECV) else f)
                          for f in map(Func, range(max(COSTED_FUNCS) + 1))])


_SHARE = schema.number("share", low=0, low_inclusive=False, high=1.0)
_MICROSECONDS = schema.number("us", low=0)
_PER_PROTOCOL = dict(length=3, low=0)  # LL, LL128, Simple
# The unfitted starting point of every fit (``dynamiccl calibrate`` and each fold of
# ``dynamiccl validate --leave-one-out`` start here, never from a previous fit), and what a
# parameter keeps where no table informs it. Sources:
# - Latency of the collectives inside a node: NCCL's own model of Ring (NVIDIA/nccl
#   ``src/graph/tuning.cc``, unchanged 2.18 .. 2.30): base latency ``baseLat`` 6.6 / 14 / 8.4 µs and
#   NVLink hop latency ``hwLat[NVLINK]`` 0.6 / 1.9 / 3.4 µs (LL / LL128 / Simple); NVLS
#   ``hwLat[NVLINK][NVLS]`` 25 µs (2.21+). A PCIe hop costs ~1.6 NVLink hops (``hwLat[PCI]`` /
#   ``hwLat[NVLINK]`` for Ring: 1.0 / 0.6 LL, 5.7 / 3.4 Simple).
# - One process driving k GPUs (``-g k``): NCCL's model has no launch gap (0).
# - Link efficiency: NVLink4 carries ~370 of 450 GB/s for NCCL's Simple protocol ("protocol
#   overhead ~20%", NVIDIA/nccl-tests#212): 0.8 for every class until a table fits it.
# - LL / LL128: no loss beyond their payload ceilings (50%, 93.75%; NVIDIA/nccl#281) until a table
#   fits it (1.0), as over the network below.
# - Send/recv: 0.65 of the datasheet link (a send/recv runs on fewer channels than a collective;
#   an assumption, fitted where a send/recv table exists) and 8 µs per transfer, of the order of
#   NCCL's Simple base latency (8.4 µs); no table informs it (the send/recv tables start at 128 MiB).
# Network priors per transport, where no calibration table measures them (``dynamiccl calibrate``
# refits those a table covers):
# - RoCE: Ring AllReduce busbw 190 GB/s on 5 nodes x 8 H100 with 4 x 400G RoCE NICs (200 GB/s line
#   rate per node): 0.95 of line rate; forced Tree 150 GB/s on the same nodes, where the busiest
#   node carries 2S against Ring's 1.95S and the tree's pipeline fill costs ~1% more at 1 GiB:
#   Tree keeps ~0.82 of it while three peers send into a node at once (NVIDIA/nccl#1368, NCCL 2.20).
# - IB: lossless credit-based flow control; the GB200 NVL partition tables of NVIDIA/nccl#1801
#   (Ring 393.7 GB/s busbw of 8 x 400G per partition, Tree 485.7 on 3 partitions) fit it.
# - EFA: 4 x 100G EFA per p4dn node (50 GB/s): 1 GiB AllReduce busbw 31.8 / 29.6 GB/s on 3 / 4
#   nodes and 57.2 on 2 (the 2-node Tree effect, 1.875x Ring's reach): 0.6 of line rate (NVIDIA/nccl#527,
#   NCCL 2.9.9 with aws-ofi-nccl of 2022; newer stacks may do better).
# - LL / LL128 over the network: no loss beyond their payload ceilings (50%, 93.75%) assumed where
#   no table measures a forced protocol across nodes; fitted where one does (AWS g5, TCP).
# - EFA (SRD spreads each flow over many paths), Slingshot (hardware congestion control that
#   isolates incast) and TCP: no incast measurement; no penalty assumed (1.0).
# - Hop latency per protocol (LL, LL128, Simple): on RDMA fabrics NCCL's own network hop latencies
#   for Ring (hwLatencies[NET], NVIDIA/nccl src/graph/tuning.cc: 2.7 / 4.0 / 14 µs); ~15 µs on EFA
#   and tens of µs on TCP sockets (nccl-tests#214 measures ~31-34 µs for a small cross-node
#   sendrecv on A40 including software).
_NCCL_RING = nccl_constants((2, 30, 0))  # the newest NCCL reproduced (Ring's latencies are those of 2.18 on)
PRIORS = {
    "link_efficiency": {"default": 0.8, "pcie": 0.8, "volta": 0.8},
    "p2p_efficiency": {"default": 0.65},
    "hop_us": [float(v) for v in _NCCL_RING.hw_latency_us[NVLINK_HW][Algorithm.RING]],
    "base_us": [float(v) for v in _NCCL_RING.base_latency_us[Algorithm.RING]],
    "nvls_us": float(_NCCL_RING.hw_latency_us[NVLINK_HW][Algorithm.NVLS][Protocol.SIMPLE]),
    "p2p_us": 8.0,
    "launch_gap_us": 0.0,
    "ll_efficiency": 1.0,
    "ll128_efficiency": 1.0,
    "pci_hop_factor": 1.6,
    "net_efficiency": {"ib": 0.92, "roce": 0.95, "slingshot": 0.85, "efa": 0.6, "tcp": 0.5},
    "net_hop_us": {"ib": [2.7, 4.0, 14.0], "roce": [2.7, 4.0, 14.0], "slingshot": [2.7, 4.0, 14.0],
                   "efa": [15.0, 15.0, 15.0], "tcp": [30.0, 30.0, 30.0]},
    "net_incast_efficiency": {"ib": 0.97, "roce": 0.82, "efa": 1.0, "slingshot": 1.0, "tcp": 1.0},
    "net_protocol_efficiency": {t: [1.0, 1.0, 1.0] for t in ("ib", "roce", "slingshot", "efa", "tcp")},
}
"""Literature priors of every fitted parameter (sources above): where every fit starts
(:func:`prior_params`), and what a parameter keeps where no table of the fit informs it."""
# The parameters file (``world_params.json``, or one ``dynamiccl calibrate -o`` wrote), declared once.
WORLD_PARAMS = schema.Schema(
    schema.mapping("link_efficiency", _SHARE, help='"arch/fabric", "arch" or "pcie": share of datasheet link bw'),
    schema.mapping("p2p_efficiency", _SHARE, help="send/recv share of datasheet link bw, by arch"),
    schema.mapping("net_efficiency", _SHARE, help="share of NIC line rate, by transport"),
    schema.mapping("net_protocol_efficiency", schema.number_list("share", length=3, low=0, high=1.0),
                   PRIORS["net_protocol_efficiency"],
                   help="LL / LL128 / Simple: share of its payload ceiling a protocol gets over the network, by transport"),
    schema.mapping("net_hop_us", schema.number_list("us", **_PER_PROTOCOL),
                   help="one network hop, LL / LL128 / Simple, by transport"),
    schema.mapping("net_incast_efficiency", _SHARE, PRIORS["net_incast_efficiency"],
                   help="share of net_efficiency a node keeps while several peers send into it, by transport"),
    schema.number_list("hop_us", **_PER_PROTOCOL, help="one intra-node hop, LL / LL128 / Simple"),
    schema.number_list("base_us", **_PER_PROTOCOL, help="fixed cost of one collective, LL / LL128 / Simple"),
    schema.number("nvls_us", low=0, help="NVLS intra-node latency"),
    schema.number("p2p_us", low=0, help="one send/recv"),
    schema.number("launch_gap_us", low=0, help="per extra GPU when one process drives several (-g k)"),
    schema.number("ll_efficiency", low=0, low_inclusive=False, high=1.0, help="LL's share of its 50% ceiling"),
    schema.number("ll128_efficiency", low=0, low_inclusive=False, high=1.0,
                  help="LL128's share of its 93.75% ceiling"),
    schema.number("pci_hop_factor", PRIORS["pci_hop_factor"], low=0, low_inclusive=False, help="PCIe hops vs NVLink hops"),
    schema.formerly(schema.mapping("cpu_link_gbytes_per_s", schema.number("bw", low=0, low_inclusive=False),
                                   {"intel": 28.0, "amd": 15.6, "arm": 100.0},
                                   help="what GPU P2P achieves across CPU sockets, by vendor (see WorldModel._links)"),
                    "cpu_link_gbps"),
    schema.number("softmin_k", 4.0, low=0, low_inclusive=False, help="sharpness of min(links, channels)"),
    schema.string("provenance", ""),
)


@dataclass
class WorldParams:
    """Fitted and prior parameters of the world, by hardware class. See ``world_params.json``.

    ``dynamiccl calibrate`` fits link and p2p efficiency per class present in the measured tables,
    the per-protocol latencies, NVLS latency, the ``-g k`` launch gap and the protocol efficiencies.
    The rest are priors no table informs: what GPU traffic achieves across CPU sockets (AMD and
    Intel measured, see ``_links``; Arm 100 is an unmeasured prior), and per network transport its
    share of line rate, incast share, per-protocol share and hop latency where no multi-node table
    measures them (``dynamiccl calibrate`` fits those a table covers); the comment above
    :data:`WORLD_PARAMS` gives the source of each prior.
    """

    link_efficiency: dict[str, float]     # "arch/fabric" (or "arch", "pcie"): share of datasheet link bw
    p2p_efficiency: dict[str, float]      # send/recv share of datasheet link bw, by arch
    net_efficiency: dict[str, float]      # share of NIC line rate, by transport
    net_hop_us: dict[str, list[float]]    # one network hop, LL / LL128 / Simple, by transport
    net_incast_efficiency: dict[str, float]  # share of net_efficiency kept under incast, by transport
    net_protocol_efficiency: dict[str, list[float]]  # LL / LL128 / Simple share of payload ceiling, by transport
    hop_us: list[float]                   # one intra-node hop, LL / LL128 / Simple
    base_us: list[float]                  # fixed cost of one collective, LL / LL128 / Simple
    nvls_us: float                        # NVLS intra-node latency
    p2p_us: float                         # one send/recv
    launch_gap_us: float                  # per extra GPU when one process drives several (-g k)
    ll_efficiency: float                  # LL's achieved share of its 50% ceiling
    ll128_efficiency: float               # LL128's achieved share of its 93.75% ceiling
    pci_hop_factor: float                 # PCIe hops vs NVLink hops
    cpu_link_gbytes_per_s: dict[str, float]  # achieved GPU P2P across CPU sockets, by vendor
    softmin_k: float                      # sharpness of the soft minimum of link and channel bandwidth
    provenance: str                       # what the parameters were fitted on (defaults: WORLD_PARAMS)

    @classmethod
    def load(cls, path: str | Path = PARAMS_PATH) -> "WorldParams":
        """Read parameters from JSON (:data:`WORLD_PARAMS`; never pickle).

        Raises:
            InputError: naming the file and the parameter that is unknown, missing or out of range.
        """
        return cls(**WORLD_PARAMS.parse(schema.read_json(path, "world parameters"), os.fspath(path)))

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"

    def link_eff(self, arch: str, fabric: str) -> float:
        for key in (f"{arch}/{fabric}", fabric if fabric == "pcie" else arch, "default"):
            if key in self.link_efficiency:
                return self.link_efficiency[key]
        raise InputError("world_params.json", "link_efficiency", f"no entry for {arch}/{fabric} and no default")


# --- 1 and 5: what each algorithm puts on the busiest links, and its latency ---------------------

@dataclass(frozen=True)
class Communicator:
    """The shape of a communicator as the algorithm functions read it (ranks spread evenly)."""

    nranks: float
    nnodes: float
    ranks_per_node: float
    log2_nnodes: float  # floor(log2(nnodes)): PAT's network steps (a tree's levels are tree_depth(nnodes))

    @classmethod
    def of(cls, nranks: float, nnodes: float) -> "Communicator":
        """``nranks`` ranks spread evenly over ``nnodes`` nodes (both >= 1)."""
        nranks, nnodes = float(nranks), float(nnodes)
        return cls(nranks=nranks, nnodes=nnodes, ranks_per_node=nranks / nnodes,
                   log2_nnodes=float(np.floor(np.log2(nnodes))))


@dataclass(frozen=True)
class HopLatency:
    """Latencies of one protocol on one topology, µs (fitted, ``world_params.json``)."""

    base_us: float       # fixed cost of one collective
    intra_hop_us: float  # one intra-node hop (a PCIe hop costs ``pci_hop_factor`` NVLink hops)
    nvls_us: float       # NVLS's fixed intra-node latency
    p2p_us: float        # one send/recv


@dataclass(frozen=True)
class Traffic:
    """What one algorithm does for one collective, per byte of the call (``size_bytes``)."""

    intra_volume_per_byte: float  # bytes on each GPU's busiest intra-node link
    net_volume_per_byte: float    # bytes on each node's network links
    latency_us: float             # fixed and intra-node hop latency
    net_hops: float               # network hops; each costs the transport's hop latency
    net_fan_in: float = 1.0       # peers sending into one node at once (> 1: incast on its NICs)


TrafficFunction = Callable[[Func, Communicator, HopLatency], Traffic]


def ring_net_steps(func: Func, nnodes: float) -> float:
    """Ring steps that cross the network: 2(N-1) for AllReduce, N-1 otherwise, none on one node."""
    if nnodes == 1:
        return 0.0
    return 2 * (nnodes - 1) if func == Func.ALLREDUCE else nnodes - 1


def ring_volume_per_byte(func: Func, nranks: float) -> float:
    """Bytes each GPU sends per byte of a ring collective: S/n per step (2(n-1)/n AllReduce, (n-1)/n
    AllGather/ReduceScatter, 1 Broadcast/Reduce: the nccl-tests bus-bandwidth factors)."""
    return nsteps(func, nranks) / nranks


def ring(func: Func, comm: Communicator, hop: HopLatency) -> Traffic:
    """Ring: the ring volume on every GPU's links and every node's NICs; one hop per step, the
    steps between nodes on the network."""
    volume = ring_volume_per_byte(func, comm.nranks)
    net_steps = ring_net_steps(func, comm.nnodes)
    return Traffic(volume, volume, hop.base_us + (nsteps(func, comm.nranks) - net_steps) * hop.intra_hop_us,
                   net_steps)


def _btree(nnodes: int, rank: int) -> tuple[int, list[int]]:
    """(parent or -1, children) of ``rank`` in NCCL's binary tree over ``nnodes`` nodes, rooted at 0
    (the bit-pattern tree of ``ncclGetBtree``, NVIDIA/nccl ``src/graph/trees.cc``)."""
    bit = 1
    while bit < nnodes and not bit & rank:
        bit <<= 1
    if rank == 0:
        return -1, ([bit >> 1] if nnodes > 1 else [])
    parent = (rank ^ bit) | (bit << 1)
    if parent >= nnodes:
        parent = rank ^ bit
    low = bit >> 1
    children = [rank - low] if low else []
    right = rank + low if low else -1
    while right >= nnodes:  # the right child, moved down a level until it exists
        low >>= 1
        right = rank + low if low else -1
    return parent, children + ([right] if right >= 0 else [])


@functools.lru_cache(maxsize=None)
def tree_depth(nnodes: int) -> int:
    """Levels of NCCL's binary tree over ``nnodes`` nodes: the most network hops from a node up to
    the root in the bit-pattern tree of ``ncclGetBtree`` (:func:`_btree`); ``ncclGetDtree``'s second
    tree, used by Tree and NVLSTree alike (NVIDIA/nccl ``src/graph/connect.cc``), mirrors or shifts
    the first, so it has the same depth. That is ceil(log2 N): 1 on 2 nodes, 2 on 3-4, 3 on 5-8; 0 on
    one node. (NCCL's own estimate, ``connectTrees``' "not an exact value", and its cost model use
    floor(log2 N), one level short where N is not a power of two.)

    Raises:
        ValueError: ``nnodes`` < 1.
    """
    nnodes = int(nnodes)
    if nnodes < 1:
        raise ValueError(f"a tree needs at least one node, got {nnodes}")
    depth = 0
    for rank in range(1, nnodes):
        hops = 0
        while rank != 0:  # up to the root, node 0
            rank, _ = _btree(nnodes, rank)
            hops += 1
        depth = max(depth, hops)
    return depth


@functools.lru_cache(maxsize=None)
def double_binary_tree_load(nnodes: int) -> tuple[float, int]:
    """(network bytes per byte, peers) of the busiest node of NCCL's double binary tree.

    NCCL splits a Tree AllReduce over two binary trees (``ncclGetDtree``: the second mirrors the
    first for an even node count, shifts it by one for an odd one) and pipelines reduce (up) and
    broadcast (down), so every tree edge carries S/2 each way: a node sends and receives S/2 per
    edge it has in either tree. The load is the largest edge count / 2 (1 on 2 nodes, 1.5 on 3, 2
    from 4 on); peers is the largest number of distinct nodes that send into one node at once.
    """
    nnodes = int(nnodes)
    if nnodes <= 1:
        return 0.0, 0
    worst_edges, worst_peers = 0, 0
    for rank in range(nnodes):
        neighbours = []
        for tree_rank, unmap in ((rank, lambda r: r),
                                 ((rank - 1) % nnodes, lambda r: (r + 1) % nnodes) if nnodes % 2 else
                                 (nnodes - 1 - rank, lambda r: nnodes - 1 - r)):
            parent, children = _btree(nnodes, tree_rank)
            neighbours += [unmap(r) for r in ([parent] if parent >= 0 else []) + children]
        worst_edges = max(worst_edges, len(neighbours))
        worst_peers = max(worst_peers, len(set(neighbours)))
    return worst_edges / 2.0, worst_peers


def tree_net_traffic(comm: Communicator) -> tuple[float, float]:
    """(network bytes per byte, fan-in) of a tree across ``comm``'s nodes (:func:`double_binary_tree_load`)."""
    load, peers = double_binary_tree_load(int(comm.nnodes))
    return load, float(max(peers, 1))


def tree_chain_volume_per_byte(ranks_per_node: float) -> float:
    """Bytes each GPU of the intra-node chain sends per byte of a Tree AllReduce: S up (reduce) and
    S down (broadcast) for a GPU inside the chain, S for its two ends -- so S with 2 GPUs per node,
    where both are ends, and 2S beyond."""
    if ranks_per_node <= 1:
        return 0.0
    return 1.0 if ranks_per_node <= 2 else 2.0


def tree_pipeline_depth(comm: Communicator) -> float:
    """Hops on the slowest link from the deepest GPU of a tree to its root, each costing one chunk
    time while the pipeline fills: the levels of the tree across nodes (:func:`tree_depth`; the
    network is the slow link, the intra-node chain's hops are much faster), or the hops of the
    chain on one node."""
    if comm.nnodes > 1:
        return float(tree_depth(int(comm.nnodes)))
    return comm.ranks_per_node - 1


# Tree chunk per channel, bytes of payload (NVIDIA/nccl ``src/enqueue.cc`` ``calcCollChunking``):
# Simple starts at one 512 KiB step of its 4 MiB buffer; LL128 at one step of 576,000 payload bytes;
# LL at one 64 KiB step, half of it payload.
_TREE_CHUNK_BYTES = np.array([32768.0, 576000.0, 524288.0])  # LL, LL128, Simple


def tree_pipeline_factor(bytes_per_channel: np.ndarray, proto: np.ndarray, depth: np.ndarray,
                         ranks_per_node: np.ndarray, nnodes: np.ndarray) -> np.ndarray:
    """How much longer than its bandwidth term a Tree AllReduce takes while its pipeline fills.

    A chunk climbs ``depth`` hops (reduce) and comes back down ``depth`` (broadcast); the last one
    leaves 2 x depth - 1 chunk times after the first, so the bandwidth term stretches by
    (2 x depth - 1) x chunk / bytes per channel. NCCL shrinks the chunk to keep enough of them
    in flight (``calcCollChunking``: Simple halves from 512 KiB while there are fewer than 8 x depth
    chunks down to 128 KiB, 4 x depth down to 64 KiB, depth down to 32 KiB; LL128 halves while
    fewer than 64 (then 16) x (1 + log2 N + 0.1 ppn) / ppn, down to 128 KiB (then 32 KiB)). Rows
    with ``depth`` 0 (other algorithms) get 1.
    """
    factor = np.ones(np.shape(bytes_per_channel))
    rows = np.flatnonzero(depth > 0)  # only Tree rows pipeline; the rest keep 1
    if not len(rows):
        return factor
    bytes_per_channel, proto, depth = bytes_per_channel[rows], proto[rows], depth[rows]
    ranks_per_node, nnodes = ranks_per_node[rows], nnodes[rows]
    chunk = _TREE_CHUNK_BYTES[np.clip(proto, 0, len(_TREE_CHUNK_BYTES) - 1)]
    simple, ll128 = proto == Protocol.SIMPLE, proto == Protocol.LL128
    # NCCL's own step estimate, with its log2i (floor), as calcCollChunking computes it (not the tree's depth).
    ll128_steps = 1 + np.floor(np.log2(np.maximum(nnodes, 1))) + 0.1 * ranks_per_node
    for is_proto, needed, floor in ((simple, 8 * depth, 131072), (simple, 4 * depth, 65536), (simple, depth, 32768),
                                    (ll128, ll128_steps * 64 / ranks_per_node, 131072),
                                    (ll128, ll128_steps * 16 / ranks_per_node, 32768)):
        for _ in range(6):  # at most 512 KiB -> 32 KiB: a few halvings
            shrink = is_proto & (np.floor(bytes_per_channel / chunk) < needed) & (chunk > floor)
            chunk = np.where(shrink, chunk / 2, chunk)
    # The fill costs 2 x depth - 1 chunk times (a partial last chunk still costs the rest), so time
    # never falls as bytes grow: the chunk only grows with the bytes.
    fill = np.maximum(2 * depth - 1, 0.0) * np.minimum(chunk, bytes_per_channel) / np.maximum(bytes_per_channel, 1.0)
    factor[rows] = 1.0 + fill
    return factor


def tree(func: Func, comm: Communicator, hop: HopLatency) -> Traffic:
    """Tree AllReduce: along the intra-node chain :func:`tree_chain_volume_per_byte`; on the network
    the busiest node's share of NCCL's double binary tree (:func:`double_binary_tree_load`), its
    peers sending into it at once. Hops: up and down the chain, and each level of the tree across
    nodes (:func:`tree_depth`) both ways."""
    net_volume, fan_in = tree_net_traffic(comm)
    return Traffic(tree_chain_volume_per_byte(comm.ranks_per_node), net_volume,
                   hop.base_us + 2 * (comm.ranks_per_node - 1) * hop.intra_hop_us,
                   2.0 * tree_depth(int(comm.nnodes)), fan_in)


def nvls_intra_volume_per_byte(func: Func, comm: Communicator) -> float:
    """NVLS on NVSwitch with p GPUs per node: AllReduce moves S(p+1)/p per GPU each way (algbw =
    wire x p/(p+1), NVIDIA/nccl-tests#239); AllGather/ReduceScatter S, the larger direction
    (NVIDIA/nccl#1083)."""
    if func == Func.ALLREDUCE:
        return (comm.ranks_per_node + 1) / comm.ranks_per_node
    return 1.0


def nvls(func: Func, comm: Communicator, hop: HopLatency) -> Traffic:
    """NVLS: the switch reduces; across nodes (with CollNet) S per node, one network hop."""
    return Traffic(nvls_intra_volume_per_byte(func, comm), 1.0, hop.nvls_us, 1.0 if comm.nnodes > 1 else 0.0)


def nvls_tree(func: Func, comm: Communicator, hop: HopLatency) -> Traffic:
    """NVLSTree: NVLS inside the node, NCCL's double binary tree across nodes (network traffic and
    hops as :func:`tree`)."""
    net_volume, fan_in = tree_net_traffic(comm)
    return Traffic(nvls_intra_volume_per_byte(func, comm), net_volume, hop.nvls_us,
                   2.0 * tree_depth(int(comm.nnodes)), fan_in)


def pat(func: Func, comm: Communicator, hop: HopLatency) -> Traffic:
    """PAT (one GPU per node, so nothing inside the node): the ring volume on the network in
    log2(N) network steps."""
    return Traffic(0.0, ring_volume_per_byte(func, comm.nranks), hop.base_us + 0.5 * comm.nranks * hop.intra_hop_us,
                   comm.log2_nnodes)


def collnet(func: Func, comm: Communicator, hop: HopLatency) -> Traffic:
    """CollNet (Direct and Chain): SHARP reduces in the network, S per node each way."""
    return Traffic(1.0, 1.0, hop.base_us + 2 * hop.intra_hop_us, 1.0)


def send_recv(func: Func, comm: Communicator, hop: HopLatency) -> Traffic:
    """One transfer of S to a peer: across the network when the communicator spans nodes, else over
    one intra-node hop."""
    if comm.nnodes > 1:
        return Traffic(0.0, 1.0, hop.p2p_us, 1.0)
    return Traffic(1.0, 0.0, hop.p2p_us + hop.intra_hop_us, 0.0)


def alltoall(func: Func, comm: Communicator, hop: HopLatency) -> Traffic:
    """AlltoAll: (p-1)/n of the buffer to the node's other GPUs, (n-p)/n out of the node, latency as
    one send/recv. NCCL schedules the transfers in rounds, one peer to receive from per round, so
    there is no incast (fan-in 1)."""
    transfer = send_recv(func, comm, hop)
    return Traffic((comm.ranks_per_node - 1) / comm.nranks, (comm.nranks - comm.ranks_per_node) / comm.nranks,
                   transfer.latency_us, transfer.net_hops)


ALGORITHM_TRAFFIC: dict[Algorithm, TrafficFunction] = {
    Algorithm.TREE: tree, Algorithm.RING: ring, Algorithm.COLLNET_DIRECT: collnet,
    Algorithm.COLLNET_CHAIN: collnet, Algorithm.NVLS: nvls, Algorithm.NVLS_TREE: nvls_tree, Algorithm.PAT: pat,
}
# NCCL runs these as point-to-point transfers whatever the algorithm (the world costs them as Ring/Simple).
P2P_TRAFFIC: dict[Func, TrafficFunction] = {Func.SEND: send_recv, Func.ALLTOALL: alltoall}


# --- 2, 3, 4, 6: what the links and channels carry -------------------------------------------------

@dataclass(frozen=True)
class Links:
    """Bandwidths of one topology's links, GB/s."""

    intra_datasheet_gbytes_per_s: float  # per GPU: NVLink, or PCIe capped by the CPU link a ring crosses
    intra_gbytes_per_s: float            # what NCCL's Simple protocol gets of it (link efficiency)
    nvls_gbytes_per_s: float             # what NVLS gets (x NCCL's nvlsEfficiency)
    p2p_gbytes_per_s: float              # what one send/recv gets
    nic_gbytes_per_s: float              # one NIC as the GPU reaches it, x the transport's efficiency
    net_per_node_gbytes_per_s: float     # the NICs a node's ranks use, x the transport's efficiency
    nic_datasheet_gbytes_per_s: float    # nic_gbytes_per_s before the transport's efficiency
    net_per_node_datasheet_gbytes_per_s: float  # net_per_node_gbytes_per_s before it


def protocol_efficiency(proto: Protocol, params: WorldParams) -> float:
    """Share of the link a protocol's payload gets: its ceiling (LL 50%, LL128 93.75%) times the
    fitted share of that ceiling it achieves."""
    achieved = {Protocol.LL: params.ll_efficiency, Protocol.LL128: params.ll128_efficiency}.get(proto, 1.0)
    return _PROTOCOL_PAYLOAD[proto] * achieved


def channel_gbytes_per_s(proto: Protocol, arch: int, algo: Algorithm, links: Links) -> float:
    """What one channel carries (bus GB/s): NCCL's per-channel cap of the protocol, or for NVLS and
    NVLSTree the share that lets 8 channels reach the link (NVIDIA/nccl#1649)."""
    if algo in (Algorithm.NVLS, Algorithm.NVLS_TREE):
        return links.nvls_gbytes_per_s / _NVLS_PEAK_CHANNELS
    return _CHANNEL_GBYTES_PER_S[proto][arch]


class WorldModel:
    """What a collective really costs on a described cluster (the simulator the policy trains on);
    a :class:`~dynamiccl.costmodel.protocol.CostModel`.

    Args:
        env: the environment spec (hardware, NCCL version for the default choice).
        params: fitted parameters; default the shipped ``world_params.json``.
        nccl: NCCL's model of ``env`` to take default choices from (default: a new one).

    ``evaluate(batch)`` returns per row the algorithm, protocol and channels used (NCCL's choice
    where the row says -1/0), ``time_us`` and its latency part, and ``compute_slowdown``: the factor
    by which compute overlapped with the call runs slower (SMs held by channels, HBM shared).
    """

    name = "world"
    models_conditions = True
    applies_nccl_knobs = True
    costs_p2p = True
    prices_chunk = False  # no public measurement of collective time against chunk size (knobs.chunk)
    prices_communicator_config = True  # NCCL's pools, the SMs they hold, copy-engine collectives

    def __init__(self, env: EnvSpec, params: WorldParams | None = None, nccl: NcclModel | None = None):
        self.env = env
        self.params = params or default_params()
        self.nccl = nccl or NcclModel(env)  # NCCL's choices do not depend on params: a fit shares one
        self._key_cache: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self._batch_keys: dict[tuple, dict[str, np.ndarray]] = {}

    @classmethod
    def from_options(cls, env: EnvSpec, options: CostModelOptions) -> "WorldModel":
        """The registry's factory: the world with ``options.world_params``."""
        return cls(env, options.world_params)

    def describe(self) -> str:
        return f"world simulator ({self.params.provenance or 'world_params.json'}) on {self.env.describe()}"

    def evaluate(self, batch: CollBatch, launch_gpus: int = 1) -> CostResult:
        """Simulate every row. ``launch_gpus`` > 1 models one process driving that many GPUs.

        ``algo`` and ``proto`` are -1 for send/recv and AlltoAll (which NCCL runs as point-to-point
        transfers) and where the forced pair cannot run (``time_us`` inf there); ``latency_us`` is
        the latency part of ``time_us`` (the same noise factor applied).

        Raises:
            InputError: a row with ``chunk_bytes`` > 0 (the world has no measurement of chunk size).
        """
        refuse_chunks(batch, self.name)
        index = self.nccl.topology_index(batch)
        algo, proto, channels = batch.algo.copy(), batch.proto.copy(), batch.channels.copy()
        p2p = is_p2p(batch.func)
        algo[p2p], proto[p2p] = Algorithm.RING, Protocol.SIMPLE
        # NCCL's own choice where the row leaves it open, and its runtime channel count where the
        # row forces a pair but not channels (NCCL_ALGO/NCCL_PROTO leave channels to NCCL).
        if (((algo < 0) | (proto < 0) | (channels == 0)) & ~p2p).any():
            got = self.nccl.choose(batch, index)
            algo = np.where(p2p, algo, got["algo"])
            proto = np.where(p2p, proto, got["proto"])
            channels = np.where(p2p, channels, got["channels"])
        bounded = batch.bounds_pools()
        if bounded:  # a forced count runs on no more channels than a communicator's bounded pool holds
            channels = np.where(p2p | (batch.channels == 0), channels, self.nccl.forced_channels(batch, algo, index))
        # Send/recv and AlltoAll run on NCCL's p2p channels (half the collective channels per peer;
        # at least one where a communicator's pool is capped to one channel).
        p2p_channels = index.comm_channels[index.codes] // 2
        channels = np.where(p2p & (channels == 0), np.maximum(p2p_channels, 1) if bounded else p2p_channels, channels)
        keys = self._keys(index)
        k = (((index.codes * _NUM_SLOTS + _SLOT_OF_FUNC[batch.func]) * NUM_ALGORITHMS
              + np.clip(algo, 0, NUM_ALGORITHMS - 1)) * NUM_PROTOCOLS + np.clip(proto, 0, NUM_PROTOCOLS - 1))
        # A protocol NCCL_PROTO lists runs where NCCL's automatic LL128 rules would not enable it
        # (nccl_model.enabled); one a tuner forced does not.
        by_env = batch.forced_by_env & (batch.proto >= 0)
        enabled = np.where(by_env, keys["enabled_by_env"][k], keys["enabled"][k]) if by_env.any() else keys["enabled"][k]
        runnable = enabled & (algo >= 0)

        size = batch.size_bytes
        congestion = batch.congestion
        ch = channels.astype(np.float64)
        # 4. Bus bandwidth: the soft minimum of what the links carry and what the channels carry.
        chan_cap = ch * keys["channel_gbytes_per_s"][k]
        link_cap = keys["intra_gbytes_per_s"][k]
        softmin_k = self.params.softmin_k
        if softmin_k == 4.0:  # x**-4 by squaring: an order of magnitude faster than pow
            inv_link, inv_chan = 1.0 / link_cap, 1.0 / chan_cap
            inv_link *= inv_link
            inv_chan *= inv_chan
            bus = 1.0 / np.sqrt(np.sqrt(inv_link * inv_link + inv_chan * inv_chan))
        else:
            bus = (link_cap ** -softmin_k + chan_cap ** -softmin_k) ** (-1.0 / softmin_k)
        t_intra = size * keys["intra_volume_per_byte"][k] / (1000.0 * bus)
        # 5. A tree's pipeline fills: its bandwidth term stretches with few chunks per channel.
        depth = keys["pipeline_depth"][k]
        pipeline = tree_pipeline_factor(size / np.maximum(ch, 1.0), proto, depth, keys["ranks_per_node"][k],
                                        keys["nnodes"][k])
        # 6. The network: what congestion leaves of the NICs, and no more than the channels carry.
        net_cap = np.minimum(keys["net_gbytes_per_s"][k] * (1.0 - congestion),
                             chan_cap * keys["channel_net_factor"][k])
        t_net = size * keys["net_volume_per_byte"][k] / (1000.0 * net_cap)
        # 7. HBM shared with overlapped compute in proportion to traffic (NVIDIA/nccl#1428); only the
        # overlapped share of the call runs at the contended rate.
        hbm = self.env.cluster.gpu.hbm_gbytes_per_s
        comm_demand = interference.comm_hbm_gbytes_per_s(np.minimum(bus, keys["intra_datasheet_gbytes_per_s"][k]),
                                                         keys["hbm_bytes_per_link_byte"][k])
        hbm_slow = interference.hbm_slowdown(batch.compute_hbm_share * hbm, comm_demand, hbm)
        t_bw = np.maximum(t_intra, t_net) * pipeline * interference.collective_hbm_slowdown(batch.overlap, hbm_slow)
        # 5. Latency: the algorithm's, network hops stretched by congestion (queueing), -g k launches.
        net_hop = keys["net_hop_us"][k] / (1.0 - congestion)
        t_lat = keys["latency_us"][k] + keys["net_hops"][k] * net_hop + self.params.launch_gap_us * (launch_gpus - 1)
        # 8. Noise.
        time = np.where(runnable, (t_lat + t_bw) * batch.noise, np.inf)
        latency = np.where(runnable, t_lat * batch.noise, np.inf)

        # 7. Compute beside the call loses one SM per channel (NVIDIA/nccl#689), none beside a copy-engine
        # collective, with the wave tail of its grid, and shares HBM (NVIDIA/nccl#1428); the scarcer
        # resource decides.
        copy_engines = self.on_copy_engines(batch)
        held = interference.sms_held(ch, copy_engines) if copy_engines.any() else ch
        sm_slow = interference.sm_slowdown(held, self.env.cluster.gpu.sm_count, batch.compute_waves)
        compute_slowdown = np.where(batch.overlap > 0, interference.compute_slowdown(sm_slow, hbm_slow), 1.0)
        shown = runnable & ~p2p  # send/recv and AlltoAll have no algorithm or protocol to report
        return CostResult(algo=np.where(shown, algo, -1), proto=np.where(shown, proto, -1),
                          channels=channels.astype(np.int64), time_us=time, latency_us=latency,
                          compute_slowdown=compute_slowdown, size_bytes=size, nranks=batch.nranks)

    def on_copy_engines(self, batch: CollBatch) -> np.ndarray:
        """Per row, whether NCCL runs the call on the copy engines, holding no SMs: a zero-CTA row
        (``zero_cta``) of a copy collective (AllGather, AlltoAll) whose ranks all share NVLink -- one
        node of an NVLink or NVSwitch fabric (NVIDIA/nccl ``src/ce_coll.cc`` ``ncclCeAvailable``: "not
        all ranks have NVLink connectivity" falls back to CTAs; this spec describes no NVLink domain
        across nodes)."""
        if not batch.zero_cta.any() or self.env.intra.fabric == "pcie":
            return np.zeros(len(batch), dtype=bool)
        return batch.zero_cta & np.isin(batch.func, _ZERO_CTA_FUNCS) & (batch.nnodes == 1) & (batch.nranks > 1)

    def line_rate_time_us(self, func: Func, size_bytes: float, nranks: int, nnodes: int,
                          algorithms: Sequence[Algorithm]) -> float:
        """The fastest any NCCL setting could run one call on this cluster (µs): the bytes on the
        busiest link at that link's datasheet line rate, nothing else.

        For each of ``algorithms`` (ignored for send/recv and AlltoAll, which run as point-to-point
        transfers) the traffic function (:data:`ALGORITHM_TRAFFIC`, :data:`P2P_TRAFFIC`) gives the
        bytes per call byte on each GPU's intra-node link and on each node's network links; the
        time is the larger of (bytes / line rate) over the two, and the result the least over the
        algorithms. The line rates are the links of :meth:`evaluate` before any efficiency
        (``Links.*_datasheet_gbytes_per_s``): NVLink or PCIe (capped where a ring crosses CPU
        sockets), the NICs near the communicator's GPUs as the GPU reaches them. No latency, no
        protocol, link or transport efficiency, no congestion, no interference: a lower bound on
        :meth:`evaluate`'s time for every action of the call.

        Args:
            func: the function (``Func``); size_bytes: NCCL's nBytes; nranks, nnodes: the
                communicator (ranks spread evenly over nodes, nnodes >= 1); algorithms: the
                algorithms NCCL enables for the call.

        Returns:
            Time in µs (0 for 0 bytes; inf for a collective when ``algorithms`` is empty).

        Raises:
            ValueError: a function the world does not cost (``COSTED_FUNCS``: Gather and Scatter).
        """
        if func not in COSTED_FUNCS:
            raise ValueError(f"the world costs no {Func(func).name}; expected one of {[f.name for f in COSTED_FUNCS]}")
        comm = Communicator.of(nranks, nnodes)
        links = self._links(comm.ranks_per_node)
        no_latency = HopLatency(base_us=0.0, intra_hop_us=0.0, nvls_us=0.0, p2p_us=0.0)
        if is_p2p(func):
            p2p = Func.ALLTOALL if func == Func.ALLTOALL else Func.SEND
            traffics = [P2P_TRAFFIC[p2p](p2p, comm, no_latency)]
            net_rate = (links.nic_datasheet_gbytes_per_s if p2p == Func.SEND
                        else links.net_per_node_datasheet_gbytes_per_s / max(comm.ranks_per_node, 1.0))
        else:
            traffics = [ALGORITHM_TRAFFIC[Algorithm(a)](func, comm, no_latency) for a in algorithms]
            net_rate = links.net_per_node_datasheet_gbytes_per_s
        best = np.inf
        for traffic in traffics:
            # A communicator with no peer inside the node loads no intra-node link, one on a single node no network.
            intra = (size_bytes * traffic.intra_volume_per_byte / (1000.0 * links.intra_datasheet_gbytes_per_s)
                     if comm.ranks_per_node > 1 else 0.0)
            net = size_bytes * traffic.net_volume_per_byte / (1000.0 * net_rate) if comm.nnodes > 1 else 0.0
            best = min(best, max(intra, net))
        return best

    def _keys(self, index) -> dict[str, np.ndarray]:
        """Per (topology, function slot, algorithm, protocol) constants, flattened; cached."""
        keys = tuple((topo.nranks, topo.nnodes) for topo in index.topologies)
        if keys not in self._batch_keys:  # batches repeat the same topologies: join them once
            for key, topo in zip(keys, index.topologies):
                if key not in self._key_cache:
                    self._key_cache[key] = self._topology_keys(topo)
            tables = [self._key_cache[key] for key in keys]
            self._batch_keys[keys] = {name: np.concatenate([t[name] for t in tables]) for name in tables[0]}
        return self._batch_keys[keys]

    def _links(self, ranks_per_node: float) -> Links:
        """2 and 6: what this cluster's links carry for a communicator with ``ranks_per_node``.

        Inside a node: NVLink, or PCIe. On a PCIe node with NVLink bridge pairs (A40, H100 NVL) only a
        2-GPU communicator on one bridge runs on NVLink; a ring over more GPUs must also cross PCIe
        between pairs, and that slowest hop sets its speed. A ring that spans CPU sockets gets no more
        than GPU traffic achieves across the CPU interconnect (``cpu_link_gbytes_per_s``, by vendor; AMD:
        15.6 GB/s busbw for 2 L40S one per socket and 14.7 GB/s for 4 L40S two per socket, NCCL 2.29.2,
        yumibyte/CS244C-Research phase1-baseline; NCCL's own model has AMD_BW = 16, topo.h. Intel: 28
        GB/s busbw for 8 PCIe Gen5 GPUs on two Xeon 8480+ sockets, NVIDIA/nccl#1639, where the
        maintainer notes that on PCIe systems the CPU and memory decide; Arm: an unmeasured prior). Between
        nodes: the NICs near the communicator's GPUs (:meth:`EnvSpec.nics_near`), each as the GPU
        reaches it over PCIe.
        """
        env, prm = self.env, self.params
        ppn = int(round(ranks_per_node))
        if env.intra.fabric != "pcie":
            intra, link_eff = env.intra.nvlink_gbytes_per_s, prm.link_eff(env.arch, env.intra.fabric)
        elif env.intra.nvlink_bridges and ppn == 2:  # one bridged pair
            intra, link_eff = env.intra.nvlink_links * env.intra.nvlink_link_gbytes_per_s, prm.link_eff(env.arch, "nvlink")
        else:
            intra, link_eff = env.intra.pcie_gbytes_per_s, prm.link_eff(env.arch, "pcie")
        crosses = (env.intra.fabric == "pcie" and not (env.intra.nvlink_bridges and ppn == 2)
                   and env.crosses_sockets(ppn))
        cap = prm.cpu_link_gbytes_per_s[env.cpu_vendor] if crosses else np.inf  # achieved, not raw
        p2p_eff = prm.p2p_efficiency.get(env.arch, prm.p2p_efficiency.get("default"))
        nvls_eff = nccl_constants((2, 28, 0)).nvls_efficiency[ARCH_INDEX[env.arch]]
        nics = env.nics_near(ppn)
        nic = min(env.inter.nic_gbytes_per_s, env.intra.pcie_gbytes_per_s)  # the GPU reaches its NIC over PCIe
        if not env.inter.gpudirect:
            nic = min(nic, prm.cpu_link_gbytes_per_s[env.cpu_vendor])
        net_eff = prm.net_efficiency[env.inter.transport]
        return Links(intra_datasheet_gbytes_per_s=min(intra, cap), intra_gbytes_per_s=min(intra * link_eff, cap),
                     nvls_gbytes_per_s=intra * link_eff * nvls_eff, p2p_gbytes_per_s=min(intra * p2p_eff, cap),
                     nic_gbytes_per_s=nic * net_eff, net_per_node_gbytes_per_s=nics * nic * net_eff,
                     nic_datasheet_gbytes_per_s=nic, net_per_node_datasheet_gbytes_per_s=nics * nic)

    def _hop_latency(self, proto: Protocol) -> HopLatency:
        """5: the fitted latencies of ``proto`` on this cluster's intra-node fabric."""
        prm = self.params
        hop_factor = prm.pci_hop_factor if self.env.intra.fabric == "pcie" else 1.0
        return HopLatency(base_us=prm.base_us[proto], intra_hop_us=prm.hop_us[proto] * hop_factor,
                          nvls_us=prm.nvls_us, p2p_us=prm.p2p_us)

    def _topology_keys(self, topo: NcclTopology) -> dict[str, np.ndarray]:
        """Everything about a (function slot, algorithm, protocol) on one topology that does not
        depend on the call's size, channels or conditions, flattened in that order."""
        comm = Communicator.of(topo.nranks, topo.nnodes)
        nnodes = comm.nnodes
        links = self._links(comm.ranks_per_node)
        arch = ARCH_INDEX[self.env.arch]
        _, nccl_bw = self.nccl.tables(topo.nranks, topo.nnodes)
        _, nccl_bw_env = self.nccl.tables(topo.nranks, topo.nnodes, proto_by_env=True)
        hops = {proto: self._hop_latency(proto) for proto in Protocol}
        # One network hop per protocol: the transport's, plus the spec's extra NIC latency.
        net_hop_us = [self.params.net_hop_us[self.env.inter.transport][proto] + self.env.inter.nic_latency_us
                      for proto in Protocol]
        size = _NUM_SLOTS * NUM_ALGORITHMS * NUM_PROTOCOLS
        out = {name: np.zeros(size) for name in (
            "latency_us", "net_hops", "intra_volume_per_byte", "net_volume_per_byte", "intra_gbytes_per_s",
            "channel_gbytes_per_s", "net_gbytes_per_s", "channel_net_factor", "hbm_bytes_per_link_byte", "net_hop_us",
            "pipeline_depth", "ranks_per_node", "nnodes",
            "intra_datasheet_gbytes_per_s")}
        out["enabled"] = np.zeros(size, dtype=bool)
        out["enabled_by_env"] = np.zeros(size, dtype=bool)  # the protocol listed in NCCL_PROTO
        for slot, func in enumerate(_SLOT_FUNCS):
            for algo in Algorithm:
                for proto in Protocol:
                    i = (slot * NUM_ALGORITHMS + algo) * NUM_PROTOCOLS + proto
                    hop = hops[proto]
                    proto_eff = protocol_efficiency(proto, self.params)
                    if func in P2P_TRAFFIC:  # run as Ring/Simple transfers, on their own link shares
                        traffic = P2P_TRAFFIC[func](func, comm, hop)
                        enabled = enabled_by_env = algo == Algorithm.RING and proto == Protocol.SIMPLE
                        if func == Func.SEND:
                            link, net = links.p2p_gbytes_per_s, links.nic_gbytes_per_s
                        else:  # AlltoAll: every rank of the node shares the node's NICs
                            link = links.intra_gbytes_per_s
                            net = links.net_per_node_gbytes_per_s / comm.ranks_per_node
                    else:
                        traffic = ALGORITHM_TRAFFIC[algo](func, comm, hop)
                        enabled = nccl_bw[slot, algo, proto] > 0
                        enabled_by_env = nccl_bw_env[slot, algo, proto] > 0
                        nvls = algo in (Algorithm.NVLS, Algorithm.NVLS_TREE)
                        link = (links.nvls_gbytes_per_s if nvls else links.intra_gbytes_per_s) * proto_eff
                        # Over the network a protocol gets its payload ceiling times what it
                        # achieves on this transport (the NICs' share of line rate is in Links).
                        net = (links.net_per_node_gbytes_per_s * _PROTOCOL_PAYLOAD[proto]
                               * self.params.net_protocol_efficiency[self.env.inter.transport][proto])
                        if traffic.net_fan_in > 1:  # several peers into one node: the transport's incast share
                            net *= self.params.net_incast_efficiency[self.env.inter.transport]
                    intra_volume, net_volume = traffic.intra_volume_per_byte, traffic.net_volume_per_byte
                    if comm.ranks_per_node <= 1:  # no peer inside the node: no intra-node link to load
                        intra_volume, link = 0.0, np.inf
                    if nnodes <= 1:  # no network
                        net_volume, net = 0.0, np.inf
                    out["enabled"][i] = enabled
                    out["enabled_by_env"][i] = enabled_by_env
                    out["latency_us"][i] = traffic.latency_us
                    out["net_hops"][i] = traffic.net_hops
                    out["net_hop_us"][i] = net_hop_us[proto]
                    # Only Tree AllReduce pipelines up and down a tree (tree_pipeline_factor).
                    is_tree = algo == Algorithm.TREE and func not in P2P_TRAFFIC
                    out["pipeline_depth"][i] = tree_pipeline_depth(comm) if is_tree else 0.0
                    out["ranks_per_node"][i] = comm.ranks_per_node
                    out["nnodes"][i] = nnodes
                    out["intra_volume_per_byte"][i] = intra_volume
                    out["net_volume_per_byte"][i] = net_volume
                    out["intra_gbytes_per_s"][i] = link
                    out["channel_gbytes_per_s"][i] = channel_gbytes_per_s(proto, arch, algo, links)
                    out["net_gbytes_per_s"][i] = net
                    # A channel's network share scales with what the protocol achieves of its ceiling.
                    out["channel_net_factor"][i] = proto_eff / _PROTOCOL_PAYLOAD[proto]
                    out["hbm_bytes_per_link_byte"][i] = interference.hbm_bytes_per_link_byte(func in REDUCING_FUNCS)
                    out["intra_datasheet_gbytes_per_s"][i] = links.intra_datasheet_gbytes_per_s
        return out


def prior_params() -> WorldParams:
    """The unfitted world: :data:`PRIORS` for every fitted parameter, the schema's defaults for the
    rest (measured constants no fit moves). Where every fit starts; it never reads the shipped
    ``world_params.json``, so a fit cannot inherit what an earlier fit learnt."""
    return WorldParams(**WORLD_PARAMS.parse({**copy.deepcopy(PRIORS), "provenance": "unfitted priors (world.PRIORS)"},
                                            "world.PRIORS"))


def default_params() -> WorldParams:
    """The parameters every command costs with unless given others: the file named by
    :data:`PARAMS_ENV` when it is set (a user's own ``dynamiccl calibrate -o FILE``; its provenance
    then names the file, so every report says which parameters it used), else the shipped
    ``world_params.json`` (package data: no command writes it).

    Raises:
        InputError: the file :data:`PARAMS_ENV` names is missing or invalid (naming the variable).
    """
    global _DEFAULT
    path = os.environ.get(PARAMS_ENV)
    if path:
        if path not in _FROM_ENV:
            if not Path(path).is_file():
                raise InputError(path, None, f"no such world parameters file (named by {PARAMS_ENV}; "
                                             "write one with `dynamiccl calibrate -o FILE`, or unset the variable)")
            params = WorldParams.load(path)
            _FROM_ENV[path] = replace(params, provenance=f"{params.provenance} [{PARAMS_ENV}={path}]")
        return replace(_FROM_ENV[path])
    if _DEFAULT is None:
        _DEFAULT = WorldParams.load(PARAMS_PATH)
    return replace(_DEFAULT)


_DEFAULT: WorldParams | None = None  # the shipped parameters, once read
_FROM_ENV: dict[str, WorldParams] = {}  # a user's, by the PARAMS_ENV value they were read from
