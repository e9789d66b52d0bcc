"""What NCCL's topology detection and search conclude for a communicator on a described cluster.

NCCL's tuning model (``tuning.cc``) does not see datasheets: it sees the graphs its search found
(``search.cc``): per algorithm a channel count and a per-channel bandwidth inside the node
(``bwIntra``) and across nodes (``bwInter``), plus which paths allow LL128, NVLS, CollNet and PAT.
This module derives those from an :class:`~dynamiccl.envspec.EnvSpec` for a communicator of
``nranks`` GPUs on ``nnodes`` nodes (ranks spread evenly).

The search is emulated, not run (NVIDIA/nccl ``src/graph/topo.h``, ``topo.cc``, ``search.cc``,
``connect.cc``):

- per-GPU bandwidth as NCCL models it: NVLinks x NCCL's per-link constant (20.6 GB/s on sm90, not
  the datasheet's 25), PCIe ``width x GT/s / 80`` capped by the CPU link when a ring crosses sockets,
  NICs ``Mb/s / 8000`` capped by the GPU's PCIe path;
- the search tries the speed array from high to low and keeps the first graph with the highest
  ``nChannels x speed`` that the links carry (one channel per NIC per ``speed`` it fits);
- ``ncclTopoDupChannels``: ``bwIntra >= 25`` doubles channels and halves per-channel bandwidth,
  except on cc > 80 with ``bwIntra < 50`` and more than 4 channels;
- the NVLS graph has one channel per local GPU (its heads);
- at init, channels double again (``nChannels = min(64, 2 x search)``), and once more on sm90+
  multi-node rings with ``bwIntra > 45`` and fewer than 16 channels; this runtime count is what
  ``topoGetAlgoInfo`` starts shrinking from.

Emulation limits, stated once: the search's time budget, PXN, cross-NIC rings and the unbalanced
tree pattern are not modelled (the tree graph is the ring graph, as NCCL limits it to the ring's
channels).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from dynamiccl.costmodel.nccl_constants import (
    CPU_LINK_GBYTES_PER_S, SEARCH_SPEEDS_INTER, SEARCH_SPEEDS_INTRA, nvlink_model_gbytes_per_s,
)
from dynamiccl.envspec import EnvSpec
from dynamiccl.errors import InputError

RING_MAX_CHANNELS = 32  # MAXCHANNELS / 2 for the ring graph search
NVLS_MAX_ARITY = 32     # NCCL_MAX_NVLS_ARITY


@dataclass(frozen=True)
class Graph:
    """One search result: ``n_channels`` channels at ``bw_intra`` / ``bw_inter`` GB/s each."""

    n_channels: int
    bw_intra: float
    bw_inter: float


@dataclass(frozen=True)
class NcclTopology:
    """NCCL's view of one communicator: the inputs of ``ncclTopoTuneModel``."""

    nranks: int
    nnodes: int
    ppn: int
    compute_capability: int
    arch: str
    cpu_vendor: str
    intra_hw: int             # NVLINK_HW or PCI_HW: the hardware-latency row of intra-node hops
    nvswitch: bool
    ring: Graph
    tree: Graph
    nvls: Graph | None        # None: NVLS/NVLSTree unavailable
    collnet: Graph | None     # None: CollNet unavailable
    comm_channels: int        # comm->nChannels at run time (after the init-time doubling)
    nvls_channels: int        # runtime NVLS channels (NCCL_NVLS_NCHANNELS default)
    ll128_enabled: bool
    pat_enabled: bool
    latency_inter_us: float   # NIC latency from the topology (0 unless given)
    ring_bw_total: float      # ring nChannels x bwIntra (sets Ring/Simple's 256 or 512 threads)


def _search(total_gbytes_per_s: float, speeds, max_channels: int, nic_count: int = 0, nic_gbytes_per_s: float = 0.0,
            ) -> tuple[int, float]:
    """Best (channels, speed): highest channels x speed, first (fastest) speed on ties."""
    best = (0, 0.0)
    for speed in speeds:
        channels = min(max_channels, int(total_gbytes_per_s // speed + 1e-9))
        if nic_count:
            channels = min(channels, nic_count * int(nic_gbytes_per_s // speed + 1e-9))
        if channels >= 1 and channels * speed > best[0] * best[1] + 1e-9:
            best = (channels, float(speed))
    if best[0] == 0:  # slower than the slowest speed: one channel at what the links give
        best = (1, float(min(total_gbytes_per_s, nic_gbytes_per_s) if nic_count else total_gbytes_per_s))
    return best


def _dup_channels(channels: int, bw: float, cc: int) -> tuple[int, float]:
    if bw >= 25 and not (cc > 80 and bw < 50 and channels > 4):
        return min(2 * channels, RING_MAX_CHANNELS * 2), bw / 2
    return channels, bw


def intra_model_gbytes_per_s(env: EnvSpec, ppn: int) -> tuple[float, int]:
    """Per-GPU intra-node bandwidth NCCL's topology assumes for a ring over ``ppn`` local GPUs, GB/s,
    and the hardware row (NVLink or PCI) of its hops.

    - NVSwitch / direct NVLink: links x NCCL's per-link constant (``ncclTopoNVLinkBw``).
    - NVLink bridge pairs (A40, H100 NVL): NCCL's topology has NVLinks only inside each pair, so a
      2-GPU communicator on one bridge runs on NVLink; a ring over more GPUs must take a PCIe path
      between pairs, and its slowest hop sets the graph's speed (``search.cc``).
    - PCIe: ``width x GT/s-code / 80``; a ring that crosses CPU sockets is capped by NCCL's inter-CPU
      bandwidth (``topo.h`` AMD_BW 16, SRP_QPI_BW 22, ARM_BW 6); on Intel a GPU-to-GPU path through the
      CPU root complex (PHB: GPUs below different switches of one socket) costs 6/5 of its bytes in PCI
      bandwidth (``INTEL_P2P_OVERHEAD``, applied in ``search.cc`` followPath).
    """
    from dynamiccl.costmodel.nccl_constants import NVLINK_HW, PCI_HW

    cc = env.compute_capability
    if env.intra.fabric in ("nvswitch", "nvlink"):
        return env.intra.nvlink_links * nvlink_model_gbytes_per_s(cc), NVLINK_HW
    if env.intra.nvlink_bridges and ppn == 2:  # the communicator is one bridged pair
        return env.intra.nvlink_links * nvlink_model_gbytes_per_s(cc), NVLINK_HW
    pci = pci_model_gbytes_per_s(env)
    if env.crosses_sockets(ppn):
        pci = min(pci, CPU_LINK_GBYTES_PER_S[env.cpu_vendor])
    elif env.crosses_pcie_switches(ppn) and env.cpu_vendor == "intel":
        pci = pci * 5 / 6
    return pci, PCI_HW


def ll128_default_enabled(cc: int, version: tuple[int, int, int]) -> bool:
    """Whether NCCL enables LL128 by default for GPUs of compute capability ``cc`` (the topology
    conditions aside): up to 2.24 only on sm70, sm80 and sm90; 2.25 and 2.26 add sm100 and sm120; from
    2.27 every sm70+ (NVIDIA/nccl src/graph/tuning.cc, "Enable LL128 by default only on ..."). So the
    GA10x (8.6) and Ada (8.9) parts never get LL128 by default before 2.27."""
    if version >= (2, 27, 0):
        return cc >= 70
    allowed = (70, 80, 90, 100, 120) if version >= (2, 25, 0) else (70, 80, 90)
    return cc in allowed


def pci_model_gbytes_per_s(env: EnvSpec) -> float:
    """NCCL's PCI bandwidth: width x GT/s-code / 80 (gen3 x16 = 12, gen4 24, gen5 48 GB/s)."""
    gts_code = {2: 30, 3: 60, 4: 120, 5: 240, 6: 480}[env.intra.pcie_gen]
    return env.intra.pcie_lanes * gts_code / 80


def nic_model_gbytes_per_s(env: EnvSpec) -> float:
    """NCCL's NIC bandwidth (Mb/s / 8000), capped by the GPU-NIC path (PCIe, or host memory)."""
    nic = env.inter.nic_gbits_per_s * 1000 / 8000
    path = pci_model_gbytes_per_s(env) if env.inter.gpudirect else min(pci_model_gbytes_per_s(env), CPU_LINK_GBYTES_PER_S[env.cpu_vendor])
    return min(nic, path)


def _cc_key(cc: int, table: dict) -> int:
    return 100 if cc >= 100 and 100 in table else (90 if cc >= 90 else 0)


def topology(env: EnvSpec, nranks: int, nnodes: int) -> NcclTopology:
    """NCCL's view of a communicator of ``nranks`` GPUs over ``nnodes`` nodes of ``env``.

    Raises:
        InputError: ``nranks``/``nnodes`` do not fit the cluster (uneven spread, too many GPUs per node).
    """
    return _topology(env, int(nranks), int(nnodes))


@lru_cache(maxsize=4096)
def _topology(env: EnvSpec, nranks: int, nnodes: int) -> NcclTopology:
    if nranks < 1 or nnodes < 1 or nranks % nnodes:
        raise InputError(env.source, None, f"a communicator of {nranks} ranks cannot spread evenly over "
                                           f"{nnodes} nodes")
    ppn = nranks // nnodes
    if ppn > env.gpus_per_node:
        raise InputError(env.source, "cluster.gpus_per_node",
                         f"a communicator with {ppn} ranks per node needs that many GPUs per node, "
                         f"the spec has {env.gpus_per_node}")
    cc = env.compute_capability
    intra_total, intra_hw = intra_model_gbytes_per_s(env, ppn)
    nic_gbytes_per_s = nic_model_gbytes_per_s(env)
    # Each node's NICs serve the GPUs near them; a communicator with fewer local ranks uses only the
    # NICs near its GPUs (EnvSpec.nics_near).
    nics = env.nics_near(ppn)
    if nnodes == 1:
        speeds = SEARCH_SPEEDS_INTRA[_cc_key(cc, SEARCH_SPEEDS_INTRA)]
        channels, speed = _search(intra_total if ppn > 1 else 5000.0, speeds, RING_MAX_CHANNELS)
    else:
        speeds = SEARCH_SPEEDS_INTER[_cc_key(cc, SEARCH_SPEEDS_INTER)]
        channels, speed = _search(intra_total if ppn > 1 else 5000.0, speeds, RING_MAX_CHANNELS,
                                  nic_count=nics, nic_gbytes_per_s=nic_gbytes_per_s)
    channels, speed = _dup_channels(channels, speed, cc)
    ring = Graph(channels, speed, speed)
    comm_channels = min(64, 2 * channels)
    if cc >= 90 and nnodes > 1 and speed > 45 and comm_channels < 16:
        comm_channels = min(64, 2 * comm_channels)

    nvls = None
    nvls_capable = (env.intra.nvls and env.intra.fabric == "nvswitch" and cc >= 90 and 2 <= ppn <= NVLS_MAX_ARITY)
    if nvls_capable:
        # One NVLS channel per local GPU (its heads), at the fastest speed all of them fit.
        nvls_speed = next((s for s in SEARCH_SPEEDS_INTRA[_cc_key(cc, SEARCH_SPEEDS_INTRA)]
                           if s * ppn <= intra_total + 1e-9), intra_total / ppn)
        inter = (min(nvls_speed, nic_gbytes_per_s * nics / ppn) if nnodes > 1 else nvls_speed)
        nvls = Graph(ppn, float(nvls_speed), float(inter))
    collnet = None
    if env.collnet and nnodes > 1:
        collnet = Graph(channels, speed, min(speed, nic_gbytes_per_s))

    ll128 = (cc >= 70 and intra_hw == 0 or ppn == 1) and ll128_default_enabled(cc, env.nccl_version_tuple)
    if nnodes > 1 and not (env.inter.gpudirect and env.inter.transport != "tcp"):
        ll128 = False  # sm90+ needs the GPU-NIC path within PXN: no GPUDirect/sockets put it behind the CPU
    nvls_channels = 16 if cc < 100 else (24 if nnodes == 1 else 32)
    return NcclTopology(
        nranks=nranks, nnodes=nnodes, ppn=ppn, compute_capability=cc, arch=env.arch,
        cpu_vendor=env.cpu_vendor, intra_hw=intra_hw, nvswitch=env.intra.fabric == "nvswitch",
        ring=ring, tree=ring, nvls=nvls, collnet=collnet, comm_channels=comm_channels,
        nvls_channels=nvls_channels, ll128_enabled=ll128,
        pat_enabled=ppn == 1 and env.nccl_version_tuple >= (2, 23, 0),
        latency_inter_us=env.inter.nic_latency_us, ring_bw_total=ring.n_channels * ring.bw_intra)
