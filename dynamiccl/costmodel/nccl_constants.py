"""NCCL's tuning constants per NCCL version (2.18 .. 2.30), as ``src/graph/tuning.cc`` has them.

Every table and every version change is read from NVIDIA/nccl ``src/graph/tuning.cc`` at the
release tags v2.18 .. v2.30 (``baseLat``, ``hwLat``, ``llMaxBws``, the ``perChMax*Bws`` caps,
``nvlsEfficiency``, and the bandwidth refinements and Ring AllReduce inter-node step count of
``ncclTopoTuneModel``). Where a change is known without the exact release, the choice made here is
stated next to it.

Arrays are indexed with NCCL's own numbers: ``[algorithm][protocol]`` (Tree=0 .. PAT=6; LL=0,
LL128=1, Simple=2) and ``[hw]`` with NVLINK=0, PCI=1, NET=2 as in ``tuning.cc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

NVLINK_HW, PCI_HW, NET_HW = 0, 1, 2
# NCCL's compCapIndex (src/graph/tuning.cc): Volta below 8.0, Ampere 8.0 up to 9.0, Hopper 9.x,
# Blackwell 10.0+. Ada (compute capability 8.9) and the GA10x parts (8.6) therefore use Ampere's rows:
# NCCL has no Ada tuning tables.
ARCH_INDEX = {"volta": 0, "ampere": 1, "ada": 1, "hopper": 2, "blackwell": 3}

# treeCorrectionFactor[proto][log2(nBytes/64)] (tuning.cc), entries 0..22 unchanged 2.18 -> HEAD, 23
# added in 2.29 for NVLSTree.
TREE_CORRECTION = np.array([
    [1.0, 1.0, 1.0, 1.0, .9, .8, .7, .7, .7, .7, .6, .5, .4, .4, .5, .6, .7, .8, .9, 1.0, 1.0, 1.0, 1.0, 1.0],
    [1.0, 1.0, 1.0, 1.0, 1.0, .9, .8, .8, .8, .7, .6, .6, .6, .6, .6, .6, .8, .9, .9, .9, .9, 1.0, 1.0, 1.0],
    [.9, .9, .9, .9, .9, .9, .9, .8, .7, .6, .6, .5, .5, .5, .5, .6, .7, .8, .7, .7, .8, .9, .9, .9],
])

# Per-NVLink bandwidth NCCL's topology assumes, GB/s per link per direction, by compute capability
# (NVIDIA/nccl src/graph/topo.h ncclTopoNVLinkBw: SM70 20.0, SM80 20.0, SM86 12.0, SM90 20.6, SM100+
# 40.1; see nvlink_model_gbytes_per_s). PCI: width x GT/s-code / 80 (gen3 x16 = 12, gen4 24, gen5 48;
# topo.cc). NIC: Mb/s / 8000. CPU interconnects (topo.h): AMD_BW 16, SRP_QPI 22 (Intel), ARM_BW 6.
NVLINK_MODEL_GBYTES_PER_S = {70: 20.0, 80: 20.0, 86: 12.0, 90: 20.6, 100: 40.1}


def nvlink_model_gbytes_per_s(cc: int) -> float:
    """NCCL's per-link NVLink bandwidth for compute capability ``cc`` (x10), as ``ncclTopoNVLinkBw``:
    10.0 and later 40.1, 9.0 20.6, 8.6 12.0, other 8.x and 7.x 20.0 GB/s."""
    if cc >= 100:
        return NVLINK_MODEL_GBYTES_PER_S[100]
    if cc == 90 or cc == 86:
        return NVLINK_MODEL_GBYTES_PER_S[cc]
    return NVLINK_MODEL_GBYTES_PER_S[80 if cc >= 80 else 70]
PCI_BW_GBYTES_PER_S = 12.0  # PCI_BW (topo.h): Ring/Simple uses 256 threads at or below it (topoGetAlgoInfo)
CPU_LINK_GBYTES_PER_S = {"intel": 22.0, "amd": 16.0, "arm": 6.0}

# Per-channel speeds the topology search tries, high to low (src/graph/search.cc speed arrays).
SEARCH_SPEEDS_INTRA = {
    0: (40, 30, 20, 18, 15, 12, 10, 9, 7, 6, 5, 4, 3),
    90: (60, 50, 40, 30, 24, 20, 15, 12, 11, 6, 3),
    100: (90, 80, 70, 60, 50, 45, 40, 30, 24, 20, 19, 18),
}
SEARCH_SPEEDS_INTER = {
    0: (48, 30, 28, 24, 20, 18, 15, 12, 10, 9, 7, 6, 5, 4, 3, 2.4, 1.2, .24, .12),
    90: (48, 45, 42, 40, 30, 24, 22, 20, 17.5, 15, 12, 6, 3, 2.4, 1.2, .24, .12),
    100: (96, 86, 80, 48, 45.1, 42, 40, 30, 24, 22, 20, 17.5, 15, 12, 6, 3, 2.4, 1.2, .24, .12),
}

# Runtime constants (src/include/device.h; thread thresholds: src/include/comm.h; their use:
# topoGetAlgoInfo in src/enqueue.cc).
MAX_NTHREADS = 640
SIMPLE_MAX_NTHREADS = 512
LL_MAX_NTHREADS = 512
LL128_MAX_NTHREADS = 640
WARP_SIZE = 32
THREAD_THRESHOLD_BYTES = (8, 8, 64)  # LL, LL128, Simple bytes per thread; Ring/LL x nRanks
MAX_DEV_WORK_BATCH_COLLS = 8  # NCCL_MAX_DEV_WORK_BATCH_COLLS: Ring counts each pipelined op's latency


@dataclass(frozen=True)
class NcclConstants:
    """The version-dependent part of NCCL's model. Arrays are read-only numpy arrays."""

    version: tuple[int, int, int]
    base_latency_us: np.ndarray       # [algo][proto]
    hw_latency_us: np.ndarray         # [hw][algo][proto]
    ll_max_bw: np.ndarray             # [row][nodes index]: row = arch (1 node) or CPU (0 Intel, 1 AMD)
    per_ch_max_ring_ll128_bw: np.ndarray  # [arch][nodes index]
    per_ch_max_tree_ll128_bw: np.ndarray
    per_ch_max_tree_bw: np.ndarray
    per_ch_max_nvls_tree_bw: np.ndarray
    nvls_efficiency: np.ndarray       # [arch]
    nvls_rules_2_28: bool             # the 2.28 NVLS/NVLSTree bandwidth rules and n/nsteps conversion
    ring_ll_half: bool                # 2.21+: Ring/LL busBw x 0.5 (before: x 1/4 when multi-node or
                                      # AllReduce/Reduce, else 1/3: `nNodes > 1 || coll == AllReduce || Reduce`)
    ppn1_tree_net_latency: bool       # 2.23+: with one GPU per node every algorithm takes Tree's NET latency
    ring_ll128_ppn1_factor: float     # Ring/LL128 factor when ppn < 2 (0.7 up to 2.22, then 0.92)
    ring_allreduce_inter_steps_2n: bool  # before 2.23 Ring AllReduce counted 2N network steps, then 2(N-1)
    pat_factor: float                 # PAT busBw factor: 0.85 in 2.23, 0.75 later
    nvls_tree_correction: bool        # 2.29+: treeCorrectionFactor also applies to NVLSTree on sm100 x86


def _table(rows) -> np.ndarray:
    array = np.array(rows, dtype=np.float64)
    array.setflags(write=False)
    return array


@lru_cache(maxsize=None)
def nccl_constants(version: tuple[int, int, int]) -> NcclConstants:
    """The constants of NCCL ``version`` (a (major, minor, patch) tuple between 2.18 and 2.30)."""
    v = tuple(version)
    # baseLat: Tree/Simple base 0 up to 2.22, 8.4 from 2.23; NVLS/NVLSTree base Simple 23 in 2.18 only;
    # PAT 8.0 (PAT exists from 2.23).
    tree_simple_base = 8.4 if v >= (2, 23, 0) else 0.0
    nvls_base = 23.0 if v < (2, 19, 0) else 0.0
    base = [
        [6.8, 14.0, tree_simple_base],  # Tree
        [6.6, 14.0, 8.4],               # Ring
        [0.0, 0.0, 0.0],                # CollNetDirect
        [0.0, 0.0, 0.0],                # CollNetChain
        [0.0, 0.0, nvls_base],          # NVLS
        [0.0, 0.0, nvls_base],          # NVLSTree
        [8.0, 8.0, 8.0],                # PAT
    ]
    # hwLat with its history. Tree Simple per hop (NVLink/PCI/NET): 4/6/14 in 2.18, 28/28/28 in
    # 2.19-2.22, 4/4/14 from 2.23. NVLS NVLink: 23 in 2.19/2.20, 25 from 2.21; 2.18 keeps its 23 in
    # the base row, so its per-hop value is taken as 0 here. NET NVLSTree: 19 (2.18), 14 (2.19 ..
    # 2.28.3), 20.9 (2.28.9+; 2.28.4 .. 2.28.8 are taken as the later value). CollNet
    # NVLink/NET: Direct 8.0/10.7 and Chain 4.75/14 in 2.18, then 3.7/31 and 2.8/30.
    if v < (2, 19, 0):
        tree_simple = (4.0, 6.0, 14.0)
    elif v < (2, 23, 0):
        tree_simple = (28.0, 28.0, 28.0)
    else:
        tree_simple = (4.0, 4.0, 14.0)
    nvls_nvlink = 0.0 if v < (2, 19, 0) else (23.0 if v < (2, 21, 0) else 25.0)
    nvls_tree_net = 19.0 if v < (2, 19, 0) else (14.0 if v < (2, 28, 4) else 20.9)
    cn_direct = (8.0, 10.7) if v < (2, 19, 0) else (3.7, 31.0)
    cn_chain = (4.75, 14.0) if v < (2, 19, 0) else (2.8, 30.0)
    hw = [
        [  # NVLink
            [.6, 1.25, tree_simple[0]], [.6, 1.9, 3.4], [0, 0, cn_direct[0]], [0, 0, cn_chain[0]],
            [0, 0, nvls_nvlink], [0, 0, nvls_nvlink], [0, 0, 4.0]],
        [  # PCI
            [1.0, 1.9, tree_simple[1]], [1.0, 2.5, 5.7], [0, 0, 3.7], [0, 0, 2.8], [0, 0, 0], [0, 0, 0],
            [0, 0, 4.0]],
        [  # NET
            [5.0, 8.5, tree_simple[2]], [2.7, 4.0, 14.0], [0, 0, cn_direct[1]], [0, 0, cn_chain[1]],
            [0, 0, 18.0], [0, 0, nvls_tree_net], [0, 0, 14.0]],
    ]
    # Per-architecture caps. Hopper llMaxBws {87.7, 22.5, 19.0} in 2.18-2.20, {141, 45, 35} from 2.21. Blackwell rows
    # first appear in 2.25.1 as 2x Hopper; 2.28 gives Blackwell its own values.
    hopper_ll = [87.7, 22.5, 19.0] if v < (2, 21, 0) else [141.0, 45.0, 35.0]
    ll_max = [[39.0, 39.0, 20.4], [87.7, 22.5, 19.0], hopper_ll, [2 * x for x in hopper_ll]]
    if v < (2, 28, 0):
        bw_ring_ll128 = [36.7 * 2] * 3
        bw_tree_ll128 = [36.7 * 2, 36.7 * 2, 29.0 * 2]
        bw_tree = [38.7 * 2, 41.4 * 2, 36.0 * 2]
    else:
        # Blackwell Ring/LL128: {73.4, 34.6, 73.4} in 2.28, {34.5, 34.6, 34.5} in 2.29.0-2.29.6,
        # {40, 40, 40} from 2.29.7.
        if v < (2, 29, 0):
            bw_ring_ll128 = [73.4, 34.6, 73.4]
        elif v < (2, 29, 7):
            bw_ring_ll128 = [34.5, 34.6, 34.5]
        else:
            bw_ring_ll128 = [40.0, 40.0, 40.0]
        bw_tree_ll128 = [55.6, 31.67, 20.0]
        bw_tree = [70.0, 42.8, 24.0]
    ring_ll128 = [[20.0] * 3, [20.0] * 3, [36.7] * 3, bw_ring_ll128]
    tree_ll128 = [[20.0] * 3, [20.0] * 3, [36.7, 36.7, 29.0], bw_tree_ll128]
    tree = [[26.5, 18.5, 10.0], [24.0, 23.6, 17.8], [38.7, 41.4, 36.0], bw_tree]
    # perChMaxNVLSTreeBws and nvlsEfficiency exist from 2.28; Blackwell N4 43.1 (2.28.3), 43.8
    # (2.28.9 / 2.29), 80.0 (2.30).
    bw_nvls_tree_n4 = 43.1 if v < (2, 28, 9) else (43.8 if v < (2, 30, 0) else 80.0)
    nvls_tree = [[26.5, 18.5, 10.0], [24.0, 23.6, 17.8], [0.0, 57.7, 45.5], [0.0, 96.0, bw_nvls_tree_n4]]
    return NcclConstants(
        version=v,
        base_latency_us=_table(base),
        hw_latency_us=_table(hw),
        ll_max_bw=_table(ll_max),
        per_ch_max_ring_ll128_bw=_table(ring_ll128),
        per_ch_max_tree_ll128_bw=_table(tree_ll128),
        per_ch_max_tree_bw=_table(tree),
        per_ch_max_nvls_tree_bw=_table(nvls_tree),
        nvls_efficiency=_table([0.0, 0.0, 0.85, 0.74]),
        nvls_rules_2_28=v >= (2, 28, 0),
        ring_ll_half=v >= (2, 21, 0),
        # tuning.cc from v2.23.4-1: "With ppn=1 latencies are fully exposed, use the Tree network
        # latency"; up to 2.22 interLat is hwLat[NET][a][p] for every ppn.
        ppn1_tree_net_latency=v >= (2, 23, 0),
        ring_ll128_ppn1_factor=0.7 if v < (2, 23, 0) else 0.92,
        ring_allreduce_inter_steps_2n=v < (2, 23, 0),
        # ncclTopoTuneModel's PAT factor: x0.85 in 2.23, x0.75 later; 2.24+ is taken as 0.75.
        pat_factor=0.85 if v < (2, 24, 0) else 0.75,
        nvls_tree_correction=v >= (2, 29, 0),
    )
