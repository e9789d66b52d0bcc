"""The world simulator: how long a collective really takes for any (algorithm, protocol, channels).

NCCL's model (:mod:`dynamiccl.costmodel.nccl_model`) is what NCCL believes. The world keeps NCCL's
structure (ring/tree/NVLS step counts, latency + bytes / bandwidth) but takes its bandwidth from
the datasheet (``[intra]``, ``[inter]`` of the env spec) and adds what NCCL's model leaves out.
Each effect names its evidence and has one place in this module:

1. **Bytes on the busiest link** (one function per algorithm, :data:`ALGORITHM_TRAFFIC`, and per
   point-to-point function, :data:`P2P_TRAFFIC`). Per GPU (NVLink/PCIe) and per node (NICs): Ring
   AllReduce moves 2(n-1)/n x S, Ring AllGather/ReduceScatter (n-1)/n x S, Broadcast/Reduce S; a
   Tree AllReduce moves 2S along the intra-node chain and S per node on the network on 2 nodes but
   2S beyond (the 2-node Tree effect: "on 2 nodes Tree puts 2x less traffic on the network",
   NVIDIA/nccl#946); NVLS AllReduce moves S(n+1)/n per GPU each way (algbw = wire x n/(n+1),
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
   latency plus the spec's ``nic_latency_us``; one process driving k GPUs (nccl-tests ``-g k``)
   adds a host-side launch gap per extra GPU (NVIDIA/nccl-tests ``doc/PERFORMANCE.md``).
6. **Network** (:class:`Links`, and congestion in ``evaluate``). Per node: NICs x line rate x the
   transport's efficiency, times (1 - congestion); congestion also stretches network hop latency
   by 1/(1 - congestion) (queueing).
7. **Compute interference** (``evaluate``, one function per effect in
   :mod:`dynamiccl.costmodel.interference`). NCCL CTAs never share an SM with compute
   (NVIDIA/nccl#689), so each channel takes one SM from overlapped compute, with the wave tail of a
   kernel whose grid fills the GPU (a one-wave GEMM beside a 24-CTA AllGather takes two waves);
   collective and compute share HBM in proportion to their traffic, a link byte costing 2 HBM bytes
   (copy) or 3 (reduction) (NVIDIA/nccl#1428); the kernel runs at the scarcer of its SMs and its HBM
   share. The launch delay of a collective launched while compute fills every SM is the replay's
   (:mod:`dynamiccl.tuning.timeline`), which knows the kernel beside the call.
8. **Noise**: a multiplicative run-to-run factor supplied with the batch (:mod:`.dynamics`).

Everything that does not depend on a call's size, channels or conditions is computed once per
topology and (function slot, algorithm, protocol) in :meth:`WorldModel._topology_keys`; ``evaluate``
is vectorized over the batch. Fitted parameters live in ``world_params.json`` keyed by hardware
class (architecture/fabric, transport), never by system; ``dynamiccl calibrate`` refits them from
measured tables.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from dynamiccl import schema
from dynamiccl.costmodel import interference
from dynamiccl.costmodel.batch import COSTED_FUNCS, CollBatch, is_p2p
from dynamiccl.costmodel.nccl_constants import ARCH_INDEX, nccl_constants
from dynamiccl.costmodel.nccl_model import NcclModel, nsteps
from dynamiccl.costmodel.protocol import CostModelOptions, CostResult
from dynamiccl.costmodel.topology import NcclTopology
from dynamiccl.envspec import EnvSpec
from dynamiccl.errors import InputError
from dynamiccl.nccl import NUM_ALGORITHMS, NUM_PROTOCOLS, REDUCING_FUNCS, TUNABLE_FUNCS, Algorithm, Func, Protocol

PARAMS_PATH = Path(__file__).with_name("world_params.json")

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

# The per-topology tables have one slot per function the world tells apart: NCCL's tunable
# collectives, then send/recv (SendRecv, Send and Recv are each one transfer) and AlltoAll.
_SLOT_FUNCS = (*TUNABLE_FUNCS, Func.SEND, Func.ALLTOALL)
_NUM_SLOTS = len(_SLOT_FUNCS)
_SLOT_OF_FUNC = np.array([_SLOT_FUNCS.index(Func.SEND if f in (Func.SENDRECV, Func.RECV) else f)
                          for f in map(Func, range(max(COSTED_FUNCS) + 1))])


_SHARE = schema.number("share", low=0, low_inclusive=False, high=1.0)
_MICROSECONDS = schema.number("us", low=0)
_PER_PROTOCOL = dict(length=3, low=0)  # LL, LL128, Simple
# The parameters file (``world_params.json``, written by ``dynamiccl calibrate``), declared once.
WORLD_PARAMS = schema.Schema(
    schema.mapping("link_efficiency", _SHARE, help='"arch/fabric", "arch" or "pcie": share of datasheet link bw'),
    schema.mapping("p2p_efficiency", _SHARE, help="send/recv share of datasheet link bw, by arch"),
    schema.mapping("net_efficiency", _SHARE, help="share of NIC line rate, by transport"),
    schema.mapping("net_hop_us", _MICROSECONDS, help="one network hop, by transport"),
    schema.number_list("hop_us", **_PER_PROTOCOL, help="one intra-node hop, LL / LL128 / Simple"),
    schema.number_list("base_us", **_PER_PROTOCOL, help="fixed cost of one collective, LL / LL128 / Simple"),
    schema.number("nvls_us", low=0, help="NVLS intra-node latency"),
    schema.number("p2p_us", low=0, help="one send/recv"),
    schema.number("launch_gap_us", low=0, help="per extra GPU when one process drives several (-g k)"),
    schema.number("ll_efficiency", low=0, low_inclusive=False, high=1.0, help="LL's share of its 50% ceiling"),
    schema.number("ll128_efficiency", low=0, low_inclusive=False, high=1.0,
                  help="LL128's share of its 93.75% ceiling"),
    schema.number("pci_hop_factor", 1.6, low=0, low_inclusive=False, help="PCIe hops vs NVLink hops"),
    schema.formerly(schema.mapping("cpu_link_gbytes_per_s", schema.number("bw", low=0, low_inclusive=False),
                                   {"intel": 40.0, "amd": 64.0, "arm": 100.0},
                                   help="CPU link for PCIe rings that cross sockets, by vendor"),
                    "cpu_link_gbps"),
    schema.number("softmin_k", 4.0, low=0, low_inclusive=False, help="sharpness of min(links, channels)"),
    schema.string("provenance", ""),
)


@dataclass
class WorldParams:
    """Fitted and prior parameters of the world, by hardware class. See ``world_params.json``.

    ``dynamiccl calibrate`` fits link and p2p efficiency per class present in the measured tables,
    the per-protocol latencies, NVLS latency, the ``-g k`` launch gap and the protocol efficiencies.
    The rest are priors the single-node measurements cannot inform: network efficiency per
    transport (IB ~0.92 of line rate, RoCE and Slingshot lower, EFA lower still, TCP sockets about
    half) and network hop latency (a few µs on RDMA fabrics, ~15 µs EFA, tens of µs TCP;
    nccl-tests#214 measures ~31-34 µs for a small cross-node sendrecv on A40 incl. software),
    CPU-link bandwidth for PCIe rings that cross sockets (UPI, xGMI, NVLink-C2C), PCIe hop cost.
    """

    link_efficiency: dict[str, float]     # "arch/fabric" (or "arch", "pcie"): share of datasheet link bw
    p2p_efficiency: dict[str, float]      # send/recv share of datasheet link bw, by arch
    net_efficiency: dict[str, float]      # share of NIC line rate, by transport
    net_hop_us: dict[str, float]          # one network hop, by transport
    hop_us: list[float]                   # one intra-node hop, LL / LL128 / Simple
    base_us: list[float]                  # fixed cost of one collective, LL / LL128 / Simple
    nvls_us: float                        # NVLS intra-node latency
    p2p_us: float                         # one send/recv
    launch_gap_us: float                  # per extra GPU when one process drives several (-g k)
    ll_efficiency: float                  # LL's achieved share of its 50% ceiling
    ll128_efficiency: float               # LL128's achieved share of its 93.75% ceiling
    pci_hop_factor: float                 # PCIe hops vs NVLink hops
    cpu_link_gbytes_per_s: dict[str, float]  # CPU link of PCIe rings that cross sockets, by vendor
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
    log2_nnodes: float  # floor(log2(nnodes)): the levels of a tree across nodes


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


def tree(func: Func, comm: Communicator, hop: HopLatency) -> Traffic:
    """Tree AllReduce: 2S along the intra-node chain (reduce up, broadcast down); per node S on the
    network on 2 nodes, where the two trees are complementary, and 2S beyond ("on 2 nodes Tree puts
    2x less traffic on the network", NVIDIA/nccl#946). Hops: up and down the chain, and each level
    of the tree across nodes both ways."""
    return Traffic(2.0 if comm.ranks_per_node > 1 else 0.0, 1.0 if comm.nnodes <= 2 else 2.0,
                   hop.base_us + 2 * (comm.ranks_per_node - 1) * hop.intra_hop_us, 2 * comm.log2_nnodes)


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
    """NVLSTree: NVLS inside the node, a tree across nodes (network volume as :func:`tree`)."""
    return Traffic(nvls_intra_volume_per_byte(func, comm), 1.0 if comm.nnodes <= 2 else 2.0, hop.nvls_us,
                   2 * comm.log2_nnodes)


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
    one send/recv."""
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

    ``evaluate(batch)`` returns per row the algorithm, protocol and channels used (NCCL's choice
    where the row says -1/0), ``time_us`` and its latency part, and ``compute_slowdown``: the factor
    by which compute overlapped with the call runs slower (SMs held by channels, HBM shared).
    """

    name = "world"
    models_conditions = True
    applies_nccl_knobs = True
    costs_p2p = True

    def __init__(self, env: EnvSpec, params: WorldParams | None = None):
        self.env = env
        self.params = params or default_params()
        self.nccl = NcclModel(env)
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
        """
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
        # Send/recv and AlltoAll run on NCCL's p2p channels (half the collective channels per peer).
        channels = np.where(p2p & (channels == 0), index.comm_channels[index.codes] // 2, channels)
        keys = self._keys(index)
        k = (((index.codes * _NUM_SLOTS + _SLOT_OF_FUNC[batch.func]) * NUM_ALGORITHMS
              + np.clip(algo, 0, NUM_ALGORITHMS - 1)) * NUM_PROTOCOLS + np.clip(proto, 0, NUM_PROTOCOLS - 1))
        runnable = keys["enabled"][k] & (algo >= 0)

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
        t_bw = np.maximum(t_intra, t_net) * interference.collective_hbm_slowdown(batch.overlap, hbm_slow)
        # 5. Latency: the algorithm's, network hops stretched by congestion (queueing), -g k launches.
        net_hop = self._net_hop_us / (1.0 - congestion)
        t_lat = keys["latency_us"][k] + keys["net_hops"][k] * net_hop + self.params.launch_gap_us * (launch_gpus - 1)
        # 8. Noise.
        time = np.where(runnable, (t_lat + t_bw) * batch.noise, np.inf)
        latency = np.where(runnable, t_lat * batch.noise, np.inf)

        # 7. Compute beside the call loses one SM per channel (NVIDIA/nccl#689), with the wave tail of
        # its grid, and shares HBM (NVIDIA/nccl#1428); the scarcer resource decides.
        sm_slow = interference.sm_slowdown(ch, self.env.cluster.gpu.sm_count, batch.compute_waves)
        compute_slowdown = np.where(batch.overlap > 0, interference.compute_slowdown(sm_slow, hbm_slow), 1.0)
        shown = runnable & ~p2p  # send/recv and AlltoAll have no algorithm or protocol to report
        return CostResult(algo=np.where(shown, algo, -1), proto=np.where(shown, proto, -1),
                          channels=channels.astype(np.int64), time_us=time, latency_us=latency,
                          compute_slowdown=compute_slowdown, size_bytes=size, nranks=batch.nranks)

    @property
    def _net_hop_us(self) -> float:
        return self.params.net_hop_us[self.env.inter.transport] + self.env.inter.nic_latency_us

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
        """2 and 6: what this cluster's links carry for a communicator with ``ranks_per_node``."""
        env, prm = self.env, self.params
        if env.intra.fabric == "pcie":
            intra = env.intra.pcie_gbytes_per_s
            if ranks_per_node > 4:  # more than 4 GPUs span two sockets: the ring crosses the CPU link
                intra = min(intra, prm.cpu_link_gbytes_per_s[env.cpu_vendor])
        else:
            intra = env.intra.nvlink_gbytes_per_s
        link_eff = prm.link_eff(env.arch, env.intra.fabric)
        nvls_eff = nccl_constants((2, 28, 0)).nvls_efficiency[ARCH_INDEX[env.arch]]
        nics = max(1, min(env.inter.nics_per_node,
                          ranks_per_node * max(1, env.inter.nics_per_node // env.gpus_per_node)))
        nic = min(env.inter.nic_gbytes_per_s, env.intra.pcie_gbytes_per_s)  # the GPU reaches its NIC over PCIe
        if not env.inter.gpudirect:
            nic = min(nic, prm.cpu_link_gbytes_per_s[env.cpu_vendor])
        net_eff = prm.net_efficiency[env.inter.transport]
        return Links(intra_datasheet_gbytes_per_s=intra, intra_gbytes_per_s=intra * link_eff * 1.0,
                     nvls_gbytes_per_s=intra * link_eff * nvls_eff,
                     p2p_gbytes_per_s=intra * prm.p2p_efficiency.get(env.arch, prm.p2p_efficiency.get("default")),
                     nic_gbytes_per_s=nic * net_eff, net_per_node_gbytes_per_s=nics * nic * net_eff)

    def _hop_latency(self, proto: Protocol) -> HopLatency:
        """5: the fitted latencies of ``proto`` on this cluster's intra-node fabric."""
        prm = self.params
        hop_factor = prm.pci_hop_factor if self.env.intra.fabric == "pcie" else 1.0
        return HopLatency(base_us=prm.base_us[proto], intra_hop_us=prm.hop_us[proto] * hop_factor,
                          nvls_us=prm.nvls_us, p2p_us=prm.p2p_us)

    def _topology_keys(self, topo: NcclTopology) -> dict[str, np.ndarray]:
        """Everything about a (function slot, algorithm, protocol) on one topology that does not
        depend on the call's size, channels or conditions, flattened in that order."""
        nranks, nnodes = float(topo.nranks), float(topo.nnodes)
        comm = Communicator(nranks=nranks, nnodes=nnodes, ranks_per_node=nranks / nnodes,
                            log2_nnodes=float(np.floor(np.log2(nnodes))))
        links = self._links(comm.ranks_per_node)
        arch = ARCH_INDEX[self.env.arch]
        _, nccl_bw = self.nccl.tables(topo.nranks, topo.nnodes)
        hops = {proto: self._hop_latency(proto) for proto in Protocol}
        size = _NUM_SLOTS * NUM_ALGORITHMS * NUM_PROTOCOLS
        out = {name: np.zeros(size) for name in (
            "latency_us", "net_hops", "intra_volume_per_byte", "net_volume_per_byte", "intra_gbytes_per_s",
            "channel_gbytes_per_s", "net_gbytes_per_s", "channel_net_factor", "hbm_bytes_per_link_byte",
            "intra_datasheet_gbytes_per_s")}
        out["enabled"] = np.zeros(size, dtype=bool)
        for slot, func in enumerate(_SLOT_FUNCS):
            for algo in Algorithm:
                for proto in Protocol:
                    i = (slot * NUM_ALGORITHMS + algo) * NUM_PROTOCOLS + proto
                    hop = hops[proto]
                    proto_eff = protocol_efficiency(proto, self.params)
                    if func in P2P_TRAFFIC:  # run as Ring/Simple transfers, on their own link shares
                        traffic = P2P_TRAFFIC[func](func, comm, hop)
                        enabled = algo == Algorithm.RING and proto == Protocol.SIMPLE
                        if func == Func.SEND:
                            link, net = links.p2p_gbytes_per_s, links.nic_gbytes_per_s
                        else:  # AlltoAll: every rank of the node shares the node's NICs
                            link = links.intra_gbytes_per_s
                            net = links.net_per_node_gbytes_per_s / comm.ranks_per_node
                    else:
                        traffic = ALGORITHM_TRAFFIC[algo](func, comm, hop)
                        enabled = nccl_bw[slot, algo, proto] > 0
                        nvls = algo in (Algorithm.NVLS, Algorithm.NVLS_TREE)
                        link = (links.nvls_gbytes_per_s if nvls else links.intra_gbytes_per_s) * proto_eff
                        net = links.net_per_node_gbytes_per_s * proto_eff
                    intra_volume, net_volume = traffic.intra_volume_per_byte, traffic.net_volume_per_byte
                    if comm.ranks_per_node <= 1:  # no peer inside the node: no intra-node link to load
                        intra_volume, link = 0.0, np.inf
                    if nnodes <= 1:  # no network
                        net_volume, net = 0.0, np.inf
                    out["enabled"][i] = enabled
                    out["latency_us"][i] = traffic.latency_us
                    out["net_hops"][i] = traffic.net_hops
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


def default_params() -> WorldParams:
    """The shipped parameters (``world_params.json``)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = WorldParams.load(PARAMS_PATH)
    return replace(_DEFAULT)


_DEFAULT: WorldParams | None = None
