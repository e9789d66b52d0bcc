"""The world simulator: how long a collective really takes for any (algorithm, protocol, channels).

NCCL's model (:mod:`dynamiccl.costmodel.nccl_model`) is what NCCL believes. The world keeps NCCL's
structure (ring/tree/NVLS step counts, latency + bytes / bandwidth) but takes its bandwidth from
the datasheet (``[intra]``, ``[inter]`` of the env spec) and adds what NCCL's model leaves out.
Each effect names its evidence:

1. **Bytes on the busiest link.** Per GPU (NVLink/PCIe) and per node (NICs), by algorithm: Ring
   AllReduce moves 2(n-1)/n x S, Ring AllGather/ReduceScatter (n-1)/n x S, Broadcast/Reduce S; a
   Tree AllReduce moves 2S along the intra-node chain and S per node on the network on 2 nodes but
   2S beyond (the 2-node Tree effect: "on 2 nodes Tree puts 2x less traffic on the network",
   NVIDIA/nccl#946); NVLS AllReduce moves S(n+1)/n per GPU each way (algbw = wire x n/(n+1),
   NVIDIA/nccl-tests#239), NVLS AllGather/ReduceScatter S (the larger direction, NVIDIA/nccl#1083).
2. **Link efficiency per hardware class** (fitted): NVLink4 carries ~370 of 450 GB/s for NCCL's
   Simple protocol ("protocol overhead ~20%", NVIDIA/nccl-tests#212); NVLS runs at NCCL's
   ``nvlsEfficiency`` of that (0.85 Hopper, 0.74 Blackwell, ``src/graph/tuning.cc`` 2.28+).
3. **Protocol efficiency.** LL carries 8 data bytes per 16-byte line: never above 50% of the link
   (NVIDIA/nccl#281, ``device.h``); LL128 120 of 128 bytes (93.75%).
4. **Channel saturation.** Bus bandwidth is the soft minimum of what the links carry and
   channels x per-channel throughput: channels beyond what the links carry add nothing, too few
   cannot fill them. Per-channel throughput per architecture comes from NCCL's own per-channel caps
   (``perChMaxTreeBw`` for Simple, ``perChMaxRingLL128Bw`` for LL128, ``llMaxBws``/16 for LL);
   NVLSTree and NVLS reach peak with 16 SMs (NVIDIA/nccl#1649). With channels left to NCCL, its
   runtime count steps up with the size (``topoGetAlgoInfo``), so a channel-bound call just above
   a step can finish sooner than one just below it: NCCL's thresholds, not the links, decide
   that, and it is one of the things a tuner that sets channels fixes.
5. **Latency.** Per-hop latency per protocol (fitted; "LL ~1 µs per hop, LL128 ~2, Simple highest",
   Demystifying NCCL, arXiv:2507.04786, §3) over NCCL's step structure; NVLS a fixed intra-node
   latency; network hops add the transport's latency plus the spec's ``nic_latency_us``; one process
   driving k GPUs (nccl-tests ``-g k``) adds a host-side launch gap per extra GPU (NVIDIA/nccl-tests
   ``doc/PERFORMANCE.md``).
6. **Network.** Per node: NICs x line rate x the transport's efficiency, times (1 - congestion);
   congestion also stretches network hop latency by 1/(1 - congestion) (queueing).
7. **Compute interference.** NCCL CTAs never share an SM with compute (NVIDIA/nccl#689), so each
   channel takes one SM from overlapped compute; overlapped kernels contend for HBM ("slow down up
   to 2x through memory bandwidth", NVIDIA/nccl#1433): collective and compute share HBM
   proportionally to their demand (a reduction step reads its input and the peer's data and writes
   one result: ~3 HBM bytes per link byte; copies 2).
8. **Noise**: a multiplicative run-to-run factor supplied with the batch (:mod:`.dynamics`).

Fitted parameters live in ``world_params.json`` keyed by hardware class (architecture/fabric,
transport), never by system; ``dynamiccl calibrate`` refits them from measured tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dynamiccl.costmodel.batch import CollBatch, is_p2p
from dynamiccl.costmodel.nccl_constants import ARCH_INDEX, nccl_constants
from dynamiccl.costmodel.nccl_model import NcclModel
from dynamiccl.costmodel.protocol import CostModelOptions, CostResult
from dynamiccl.envspec import EnvSpec
from dynamiccl.errors import InputError
from dynamiccl.nccl import NUM_ALGORITHMS, NUM_PROTOCOLS, NUM_TUNABLE_FUNCS, Algorithm, Func, Protocol

PARAMS_PATH = Path(__file__).with_name("world_params.json")

# Per-channel throughput (bus GB/s) per architecture (volta, ampere, hopper, blackwell) from NCCL's
# own caps (NVIDIA/nccl ``src/graph/tuning.cc``, v2.30): Simple = perChMaxTreeBw[N1], LL128 =
# perChMaxRingLL128Bw, LL = llMaxBws[N1] / 16.
_CH_SIMPLE = np.array([26.5, 24.0, 38.7, 70.0])
_CH_LL128 = np.array([20.0, 20.0, 36.7, 40.0])
_CH_LL = np.array([39.0, 87.7, 141.0, 282.0]) / 16
_PROTO_DATA = np.array([0.5, 120 / 128, 1.0])  # LL, LL128, Simple payload per wire byte
_HBM_BYTES_PER_LINK_BYTE = {True: 3.0, False: 2.0}  # reduction / copy
# Per-topology tables have a slot per tunable collective, then send/recv, then AlltoAll.
_SEND_SLOT, _ALLTOALL_SLOT = NUM_TUNABLE_FUNCS, NUM_TUNABLE_FUNCS + 1
_NUM_SLOTS = NUM_TUNABLE_FUNCS + 2


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
    pci_hop_factor: float = 1.6           # PCIe hops vs NVLink hops
    cpu_link_gbps: dict[str, float] = field(default_factory=lambda: {"intel": 40.0, "amd": 64.0, "arm": 100.0})
    softmin_k: float = 4.0
    provenance: str = ""

    @classmethod
    def load(cls, path: str | Path = PARAMS_PATH) -> "WorldParams":
        """Read parameters from JSON (never pickle). Raises InputError naming the file and key."""
        source = str(path)
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(source, None, f"cannot read world parameters ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise InputError(source, None, f"not valid JSON ({exc})") from None
        known = set(cls.__dataclass_fields__)
        for key in obj:
            if key not in known:
                raise InputError(source, key, f"unknown parameter; expected some of {', '.join(sorted(known))}")
        try:
            return cls(**obj)
        except TypeError as exc:
            raise InputError(source, None, f"missing parameters ({exc})") from None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"

    def link_eff(self, arch: str, fabric: str) -> float:
        for key in (f"{arch}/{fabric}", fabric if fabric == "pcie" else arch, "default"):
            if key in self.link_efficiency:
                return self.link_efficiency[key]
        raise InputError("world_params.json", "link_efficiency", f"no entry for {arch}/{fabric} and no default")


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
        slot = np.where(batch.func < NUM_TUNABLE_FUNCS, batch.func,
                        np.where(batch.func == Func.ALLTOALL, _ALLTOALL_SLOT, _SEND_SLOT))
        k = (((index.codes * _NUM_SLOTS + slot) * NUM_ALGORITHMS + np.clip(algo, 0, NUM_ALGORITHMS - 1))
             * NUM_PROTOCOLS + np.clip(proto, 0, NUM_PROTOCOLS - 1))
        runnable = keys["enabled"][k] & (algo >= 0)

        size = batch.size_bytes
        congestion = batch.congestion
        ch = channels.astype(np.float64)
        chan_cap = ch * keys["per_channel"][k]
        link_cap = keys["link_cap"][k]
        softmin_k = self.params.softmin_k
        if softmin_k == 4.0:  # x**-4 by squaring: an order of magnitude faster than pow
            inv_link, inv_chan = 1.0 / link_cap, 1.0 / chan_cap
            inv_link *= inv_link
            inv_chan *= inv_chan
            bus = 1.0 / np.sqrt(np.sqrt(inv_link * inv_link + inv_chan * inv_chan))
        else:
            bus = (link_cap ** -softmin_k + chan_cap ** -softmin_k) ** (-1.0 / softmin_k)
        t_intra = size * keys["intra_volume"][k] / (1000.0 * bus)
        net_cap = np.minimum(keys["net_cap"][k] * (1.0 - congestion), chan_cap * keys["net_channel_factor"][k])
        t_net = size * keys["net_volume"][k] / (1000.0 * net_cap)
        # HBM shared with overlapped compute, in proportion to demand (NVIDIA/nccl#1433); only the
        # overlapped share of the call runs at the contended rate.
        hbm = self.env.cluster.gpu.hbm_gbytes_per_s
        comm_demand = np.minimum(bus, keys["intra_raw"][k]) * keys["hbm_per_byte"][k]
        compute_demand = batch.compute_hbm_share * hbm  # while the compute runs
        contention = 1.0 + batch.overlap * (np.maximum(1.0, (compute_demand + comm_demand) / hbm) - 1.0)
        t_bw = np.maximum(t_intra, t_net) * contention
        net_hop = self._net_hop_us / (1.0 - congestion)
        t_lat = keys["latency"][k] + keys["net_hops"][k] * net_hop + self.params.launch_gap_us * (launch_gpus - 1)
        time = np.where(runnable, (t_lat + t_bw) * batch.noise, np.inf)
        latency = np.where(runnable, t_lat * batch.noise, np.inf)

        # Compute beside the call loses one SM per channel (nccl#689) and shares HBM (nccl#1433).
        sm = self.env.cluster.gpu.sm_count
        sm_slow = sm / np.maximum(sm - ch, 1.0)
        mem_slow = np.maximum(1.0, (batch.compute_hbm_share * hbm + comm_demand) / hbm)
        share = batch.compute_hbm_share
        compute_slowdown = np.where(batch.overlap > 0, (1 - share) * sm_slow + share * mem_slow, 1.0)
        shown = runnable & ~p2p  # send/recv and AlltoAll have no algorithm or protocol to report
        return CostResult(algo=np.where(shown, algo, -1), proto=np.where(shown, proto, -1),
                          channels=channels.astype(np.int64), time_us=time, latency_us=latency,
                          compute_slowdown=compute_slowdown, size_bytes=size, nranks=batch.nranks)

    @property
    def _net_hop_us(self) -> float:
        return self.params.net_hop_us[self.env.inter.transport] + self.env.inter.nic_latency_us

    def _keys(self, index) -> dict[str, np.ndarray]:
        """Per (topology, collective slot, algorithm, protocol) constants, flattened; cached."""
        keys = tuple((topo.nranks, topo.nnodes) for topo in index.topologies)
        if keys not in self._batch_keys:  # batches repeat the same topologies: join them once
            for key, topo in zip(keys, index.topologies):
                if key not in self._key_cache:
                    self._key_cache[key] = self._topology_keys(topo)
            tables = [self._key_cache[key] for key in keys]
            self._batch_keys[keys] = {name: np.concatenate([t[name] for t in tables]) for name in tables[0]}
        return self._batch_keys[keys]

    def _topology_keys(self, topo) -> dict[str, np.ndarray]:
        """Everything about a (slot, algorithm, protocol) on one topology that does not depend on the
        call's size, channels or conditions. Slots 0 .. NUM_TUNABLE_FUNCS - 1 are NCCL's tuned
        functions, then send/recv and AlltoAll."""
        env, prm = self.env, self.params
        n, big_n = float(topo.nranks), float(topo.nnodes)
        ppn = n / big_n
        arch = ARCH_INDEX[env.arch]
        _, nccl_bw = self.nccl.tables(topo.nranks, topo.nnodes)
        if env.intra.fabric == "pcie":
            intra_raw = env.intra.pcie_gbytes_per_s
            if ppn > 4:  # more than 4 GPUs span two sockets: the ring crosses the CPU link
                intra_raw = min(intra_raw, prm.cpu_link_gbps[env.cpu_vendor])
        else:
            intra_raw = env.intra.nvlink_gbytes_per_s
        link_eff = prm.link_eff(env.arch, env.intra.fabric)
        nvls_eff = nccl_constants((2, 28, 0)).nvls_efficiency[arch]
        nics = max(1, min(env.inter.nics_per_node, ppn * max(1, env.inter.nics_per_node // env.gpus_per_node)))
        nic_path = min(env.inter.nic_gbytes_per_s, env.intra.pcie_gbytes_per_s)
        if not env.inter.gpudirect:
            nic_path = min(nic_path, prm.cpu_link_gbps[env.cpu_vendor])
        net_eff = prm.net_efficiency[env.inter.transport]
        net_node = nics * nic_path * net_eff
        hop = prm.hop_us
        hop_factor = prm.pci_hop_factor if env.intra.fabric == "pcie" else 1.0
        log_n = float(np.floor(np.log2(big_n)))
        names = ("enabled", "latency", "net_hops", "intra_volume", "net_volume", "link_cap", "per_channel",
                 "net_cap", "net_channel_factor", "hbm_per_byte", "intra_raw")
        size = _NUM_SLOTS * NUM_ALGORITHMS * NUM_PROTOCOLS
        out = {name: np.zeros(size) for name in names}
        out["enabled"] = np.zeros(size, dtype=bool)
        for slot in range(_NUM_SLOTS):
            func = slot if slot < NUM_TUNABLE_FUNCS else (Func.SEND if slot == _SEND_SLOT else Func.ALLTOALL)
            steps = 2 * (n - 1) if func == Func.ALLREDUCE else (n - 1 if func in (Func.ALLGATHER, Func.REDUCESCATTER) else n)
            n_inter = 0.0 if big_n == 1 else (2 * (big_n - 1) if func == Func.ALLREDUCE else big_n - 1)
            ring_volume = (2 * (n - 1) / n if func == Func.ALLREDUCE
                           else (n - 1) / n if func in (Func.ALLGATHER, Func.REDUCESCATTER) else 1.0)
            for a in range(NUM_ALGORITHMS):
                for p in range(NUM_PROTOCOLS):
                    i = (slot * NUM_ALGORITHMS + a) * NUM_PROTOCOLS + p
                    proto_eff = _PROTO_DATA[p] * (prm.ll_efficiency if p == Protocol.LL else
                                                  prm.ll128_efficiency if p == Protocol.LL128 else 1.0)
                    per_channel = (_CH_LL if p == Protocol.LL else _CH_LL128 if p == Protocol.LL128 else _CH_SIMPLE)[arch]
                    nvls = a in (Algorithm.NVLS, Algorithm.NVLS_TREE)
                    intra_bw = intra_raw * link_eff * (nvls_eff if nvls else 1.0)
                    if nvls:
                        per_channel = intra_bw / 8.0  # NVLS peaks with 16 SMs (NVIDIA/nccl#1649)
                    base, h = prm.base_us[p], hop[p] * hop_factor
                    # Bytes per GPU on its intra-node links, and per node on the network (effect 1 above).
                    if slot >= NUM_TUNABLE_FUNCS:
                        enabled = a == Algorithm.RING and p == Protocol.SIMPLE
                        if slot == _SEND_SLOT:  # send/recv between two GPUs
                            vi, vn = (0.0, 1.0) if big_n > 1 else (1.0, 0.0)
                            link = intra_raw * prm.p2p_efficiency.get(env.arch, prm.p2p_efficiency.get("default"))
                            net = nic_path * net_eff
                        else:  # AlltoAll: (ppn-1)/n of the buffer inside the node, (n-ppn)/n out of it
                            vi, vn = (ppn - 1) / n, (n - ppn) / n
                            link, net = intra_raw * link_eff, net_node / ppn
                        latency, net_hops = prm.p2p_us + (h if big_n == 1 else 0.0), (1.0 if big_n > 1 else 0.0)
                    else:
                        enabled = nccl_bw[slot, a, p] > 0
                        link, net = intra_bw * proto_eff, net_node * proto_eff
                        if a == Algorithm.RING:
                            vi, vn = ring_volume, ring_volume
                            latency, net_hops = base + (steps - n_inter) * h, n_inter
                        elif a == Algorithm.TREE:
                            vi, vn = (2.0 if ppn > 1 else 0.0), (1.0 if big_n <= 2 else 2.0)  # NVIDIA/nccl#946
                            latency, net_hops = base + 2 * (ppn - 1) * h, 2 * log_n
                        elif nvls:
                            vi = (ppn + 1) / ppn if func == Func.ALLREDUCE else 1.0  # nccl-tests#239, nccl#1083
                            vn = 1.0 if a == Algorithm.NVLS else (1.0 if big_n <= 2 else 2.0)
                            latency = prm.nvls_us
                            net_hops = (1.0 if big_n > 1 else 0.0) if a == Algorithm.NVLS else 2 * log_n
                        elif a == Algorithm.PAT:
                            vi, vn = 0.0, ring_volume
                            latency, net_hops = base + 0.5 * n * h, log_n
                        else:  # CollNet: SHARP reduces in the network, S per node each way
                            vi, vn = 1.0, 1.0
                            latency, net_hops = base + 2 * h, 1.0
                    if ppn <= 1:
                        vi, link = 0.0, np.inf
                    if big_n <= 1:
                        vn, net = 0.0, np.inf
                    out["enabled"][i] = enabled
                    out["latency"][i] = latency
                    out["net_hops"][i] = net_hops
                    out["intra_volume"][i] = vi
                    out["net_volume"][i] = vn
                    out["link_cap"][i] = link
                    out["per_channel"][i] = per_channel
                    out["net_cap"][i] = net
                    out["net_channel_factor"][i] = proto_eff / _PROTO_DATA[p]
                    out["hbm_per_byte"][i] = _HBM_BYTES_PER_LINK_BYTE[func in (Func.ALLREDUCE, Func.REDUCESCATTER,
                                                                               Func.REDUCE)]
                    out["intra_raw"][i] = intra_raw
        return out


def default_params() -> WorldParams:
    """The shipped parameters (``world_params.json``)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = WorldParams.load(PARAMS_PATH)
    return replace(_DEFAULT)


_DEFAULT: WorldParams | None = None
