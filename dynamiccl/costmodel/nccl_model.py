"""NCCL's own cost model: what NCCL believes each (algorithm, protocol) costs, and what it picks.

This is the "NCCL default" baseline, pinned to the NCCL version of the environment spec (2.23.4
unless the spec says otherwise; 2.18 .. 2.30 selectable). It reproduces from NVIDIA/nccl:

- ``ncclTopoTuneModel`` (``src/graph/tuning.cc``): latency and algorithm bandwidth per (collective,
  algorithm, protocol) from the topology search results (:mod:`dynamiccl.costmodel.topology`), with
  the enablement rules for LL128, NVLS, NVLSTree, CollNet and PAT;
- ``ncclTopoGetAlgoTime`` (``tuning.cc``): the per-size Tree correction, the Ring "plateau" latency
  factor and the numPipeOps latency count;
- the arg-min over enabled pairs (``updateCollCostTable`` / ``topoGetAlgoInfo``, ``src/enqueue.cc``),
  and
- the runtime channel and thread shrinking of ``topoGetAlgoInfo``, and
- the channel pools a communicator's ``ncclConfig_t`` sets at init (:func:`comm_pool`,
  :func:`nvls_pool`; the batch's ``max_ctas``, ``min_ctas``, ``nvls_ctas``). They bound the channels a
  call runs on, never the search graphs NCCL's cost table is built from, so a cap changes NCCL's
  belief about a call only through the pool-dependent Ring plateau latency.

Everything is vectorized: per distinct (nranks, nnodes) the (latency, bandwidth) tables are built
once and cached, and a batch is evaluated with numpy indexing; per distinct (nranks, nnodes, pool
caps) a :class:`TopoIndex` entry carries the pools.
"""

from __future__ import annotations

import math

import numpy as np

from dynamiccl.costmodel.batch import CollBatch, refuse_chunks
from dynamiccl.costmodel.nccl_constants import (
    ARCH_INDEX, LL128_MAX_NTHREADS, LL_MAX_NTHREADS, MAX_DEV_WORK_BATCH_COLLS, MAX_NTHREADS, NET_HW, PCI_BW_GBYTES_PER_S,
    SIMPLE_MAX_NTHREADS, THREAD_THRESHOLD_BYTES, TREE_CORRECTION, WARP_SIZE, NcclConstants, nccl_constants,
)
from dynamiccl.costmodel.protocol import CostModelOptions, CostResult
from dynamiccl.costmodel.topology import NcclTopology, topology
from dynamiccl.envspec import EnvSpec
from dynamiccl.nccl import (
    MAX_CHANNELS, NUM_ALGORITHMS, NUM_COST_CELLS, NUM_PROTOCOLS, NUM_TUNABLE_FUNCS, Algorithm, Func, Protocol,
    parse_version,
)

_COLLNETS = (Algorithm.COLLNET_DIRECT, Algorithm.COLLNET_CHAIN)
_NVLS_ALGORITHMS = (Algorithm.NVLS, Algorithm.NVLS_TREE)
_SHARDED = (Func.ALLGATHER, Func.REDUCESCATTER)
_ALL_CELLS = np.arange(NUM_COST_CELLS)  # flat algorithm * NUM_PROTOCOLS + protocol


def _log2i(x: int) -> int:
    return x.bit_length() - 1 if x > 0 else -1


def nsteps(func: int, n: int | float) -> int | float:
    """Ring steps: 2(n-1) for AllReduce, n-1 for AllGather/ReduceScatter, n for Broadcast/Reduce."""
    if func == Func.ALLREDUCE:
        return 2 * (n - 1)
    if func in _SHARDED:
        return n - 1
    return n


def enabled(c: NcclConstants, t: NcclTopology, func: int, a: int, p: int, proto_by_env: bool = False) -> bool:
    """NCCL's enablement rules (``ncclTopoTuneModel``) for one (collective, algorithm, protocol).

    ``proto_by_env``: the protocol is listed in ``NCCL_PROTO``. NCCL applies its automatic LL128
    rules (``t.ll128_enabled``: NVLink paths, compute capability, version) only while LL128 keeps its
    default "2 = auto"; a protocol the user lists gets ``protoEnable`` 1 and skips them
    (``src/graph/tuning.cc``, ``if (pEnable == 2 && p == NCCL_PROTO_LL128)``; "you can enable it on
    non-supported platforms with NCCL_PROTO=LL,LL128,SIMPLE", NVIDIA/nccl#786). ``NCCL_ALGO`` has no
    such effect: ``tuning.cc`` disables the algorithms the system lacks (NVLSTree on one node,
    CollNet without SHARP, ...) after reading it, and PAT follows ``NCCL_PAT_ENABLE``, not it. A
    tuner sees the table after these rules and cannot revive a disabled cell.
    """
    v = c.version
    if func in (Func.BROADCAST, Func.REDUCE) and a != Algorithm.RING:
        return False
    if func in _SHARDED and a not in (Algorithm.RING, Algorithm.PAT, Algorithm.NVLS, Algorithm.COLLNET_DIRECT):
        return False
    if func == Func.ALLREDUCE and a == Algorithm.PAT:
        return False
    if a in (*_NVLS_ALGORITHMS, Algorithm.PAT, *_COLLNETS) and p != Protocol.SIMPLE:
        return False
    if p == Protocol.LL128 and not t.ll128_enabled and not proto_by_env:
        return False
    if a == Algorithm.PAT:
        return v >= (2, 23, 0) and t.pat_enabled
    if a in _NVLS_ALGORITHMS:
        if t.nvls is None or t.nvls.n_channels < 2:
            return False
        if a == Algorithm.NVLS_TREE:
            return t.nnodes > 1 and v >= (2, 18, 0)
        return t.nnodes == 1 or t.collnet is not None  # multi-node NVLS needs CollNet (SHARP)
    if a in _COLLNETS:
        if t.collnet is None:
            return False
        if a == Algorithm.COLLNET_DIRECT:
            return t.nvswitch and t.ppn <= 8
    return True


def comm_pool(pool, min_ctas, max_ctas) -> np.ndarray:
    """A communicator's channel pool (``comm->nChannels``) after its ``ncclConfig_t`` bounds:
    ``max(min(pool, maxCTAs), minCTAs)`` -- the cap first, then ``copyChannels`` duplicates channels
    up to ``minCTAs`` (NVIDIA/nccl ``src/graph/connect.cc`` ``ncclTopoPostset``, "Honor
    NCCL_MIN_NRINGS/NCCL_MAX_NRINGS"; ``src/init.cc`` caps both at MAXCHANNELS). 0 for a bound keeps
    NCCL's (minCTAs 1, maxCTAs MAXCHANNELS).

    Args:
        pool: NCCL's pool from the topology (``NcclTopology.comm_channels``); min_ctas, max_ctas: the
            bounds, 0 = unset (arrays or scalars, broadcast together).
    """
    capped = np.where(np.asarray(max_ctas) > 0, np.minimum(pool, max_ctas), pool)
    return np.maximum(capped, min_ctas)


def nvls_pool(pool, min_ctas, max_ctas, nvls_ctas, version: tuple[int, int, int]) -> np.ndarray:
    """A communicator's NVLS channel pool (``comm->nvlsChannels``): ``nvlsCTAs`` where set (NCCL
    2.27+; it replaces NCCL's 16 on sm90, 24 / 32 on sm100), then clamped to ``[minCTAs, maxCTAs]``
    (NVIDIA/nccl ``src/transport/nvls.cc`` ``ncclNvlsTuning``/``ncclNvlsInit``). An NCCL older than
    2.27 has no ``nvlsCTAs`` field, so there it is ignored. 0 = unset, as :func:`comm_pool`."""
    base = np.where(np.asarray(nvls_ctas) > 0, nvls_ctas, pool) if version >= NVLS_CTAS_VERSION else pool
    return comm_pool(base, min_ctas, max_ctas)


NVLS_CTAS_VERSION = (2, 27, 0)  # ncclConfig_t.nvlsCTAs (NVIDIA/nccl v2.27 release notes)


def _latency(c: NcclConstants, t: NcclTopology, func: int, a: int, p: int) -> float:
    """``latencies[coll][a][p]`` in µs (``ncclTopoTuneModel``)."""
    n, big_n, ppn = t.nranks, t.nnodes, t.ppn
    hw = c.hw_latency_us
    lat = float(c.base_latency_us[a][p])
    intra = float(hw[t.intra_hw][a][p])
    net_row = Algorithm.TREE if ppn == 1 and c.ppn1_tree_net_latency else a
    inter = float(hw[NET_HW][net_row][p]) + t.latency_inter_us
    if p == Protocol.SIMPLE:
        inter += t.latency_inter_us  # flush
    steps = nsteps(func, n)
    if a == Algorithm.RING:
        if func in (Func.ALLREDUCE, *_SHARDED):
            if big_n > 1:
                overhead = (2.0 if t.cpu_vendor == "amd" else 1.0) * (3 if p == Protocol.SIMPLE else 1)
                intra = max(intra, overhead)
            if big_n == 1:
                n_inter = 0
            elif func == Func.ALLREDUCE:
                n_inter = 2 * big_n if c.ring_allreduce_inter_steps_2n else 2 * (big_n - 1)
            else:
                n_inter = big_n - 1
            lat += (steps - n_inter) * intra + n_inter * inter
        else:
            # Broadcast/Reduce: one latency per step, Tree's per-hop value for Simple (the rings of
            # different channels are taken as not identical).
            if p == Protocol.SIMPLE:
                intra = float(hw[t.intra_hw][Algorithm.TREE][Protocol.SIMPLE])
            n_inter = big_n - 1 if big_n > 1 else 0
            lat += (steps - n_inter) * intra + n_inter * inter
    elif a == Algorithm.TREE:
        lat += 2 * ((ppn - 1) * intra + _log2i(big_n) * inter)
    elif a == Algorithm.COLLNET_DIRECT:
        lat += 2 * (min(1, ppn - 1) * intra + (ppn - 1) * 0.4) + inter
    elif a == Algorithm.COLLNET_CHAIN:
        lat += 2 * (ppn - 1) * intra + inter
    elif a == Algorithm.NVLS:
        # HEAD ignores the base; 2.18 kept NVLS's 23 µs in the base row (per-hop 0), so it counts.
        lat = (lat if c.version < (2, 19, 0) else 0.0) + intra + (inter if big_n > 1 else 0.0)
    elif a == Algorithm.NVLS_TREE:
        lat += intra + 2 * _log2i(big_n) * inter
    elif a == Algorithm.PAT:
        lat += _log2i(big_n) * inter / 3.5 + 2.8 * n
    return lat


def _bandwidth(c: NcclConstants, t: NcclTopology, func: int, a: int, p: int, proto_by_env: bool = False) -> float:
    """``bandwidths[coll][a][p]``: algorithm bandwidth in GB/s, 0 when NCCL cannot use it
    (``ncclTopoTuneModel``; ``proto_by_env``: as :func:`enabled`)."""
    if not enabled(c, t, func, a, p, proto_by_env):
        return 0.0
    n, big_n, ppn = t.nranks, t.nnodes, t.ppn
    idx2 = big_n - 1 if big_n <= 2 else 2
    arch = ARCH_INDEX[t.arch]
    graph = {Algorithm.TREE: t.tree, Algorithm.RING: t.ring, Algorithm.NVLS: t.nvls, Algorithm.NVLS_TREE: t.nvls,
             Algorithm.COLLNET_DIRECT: t.collnet, Algorithm.COLLNET_CHAIN: t.collnet, Algorithm.PAT: t.ring}[a]
    nch = graph.n_channels
    bw = graph.bw_intra if (big_n <= 2 or a in _COLLNETS) else graph.bw_inter
    if a in _NVLS_ALGORITHMS:
        if c.nvls_rules_2_28:
            intra_bw = graph.bw_intra * c.nvls_efficiency[arch] * (nch - 1) / nch
            intra_bw *= 2 if func == Func.ALLREDUCE else (ppn - 1) / ppn
            # A single node has no network to bound NVLS; the search's bwInter is its bwIntra.
            inter_bw = (math.inf if big_n == 1
                        else graph.bw_inter * (2 if a == Algorithm.NVLS_TREE and big_n <= 2 else 1))
            cap = c.per_ch_max_nvls_tree_bw[arch][idx2] if a == Algorithm.NVLS_TREE else math.inf
            bw = min(intra_bw, inter_bw, cap)
        elif a == Algorithm.NVLS and func == Func.ALLREDUCE:
            bw = graph.bw_intra if big_n == 1 else min(graph.bw_intra, graph.bw_inter)
        elif a == Algorithm.NVLS:
            bw = graph.bw_intra * (ppn - 1) / ppn
            if big_n > 1:
                bw = min(bw, graph.bw_inter * 0.9)
        else:
            bw = min(graph.bw_intra, graph.bw_inter if big_n <= 2 else graph.bw_inter / 2)
    bus = nch * bw
    ll_row = arch if big_n == 1 else (1 if t.cpu_vendor == "amd" else 0)
    ll_max = c.ll_max_bw[ll_row][idx2]
    if a == Algorithm.RING and p == Protocol.LL:
        if c.ring_ll_half:
            factor = 0.5
        else:
            factor = 0.25 if big_n > 1 or func in (Func.ALLREDUCE, Func.REDUCE) else 1 / 3
        bus = min(ll_max, bus * factor)
    if a == Algorithm.RING and p == Protocol.LL128:
        factor = c.ring_ll128_ppn1_factor if ppn < 2 else 0.92
        bus = min(bus * factor, nch * c.per_ch_max_ring_ll128_bw[arch][idx2])
    if a == Algorithm.TREE and func == Func.ALLREDUCE:
        bus = min(bus * 0.92, nch * c.per_ch_max_tree_bw[arch][idx2])
    if a == Algorithm.TREE and p == Protocol.LL:
        bus = min(bus / 3.8, ll_max)
    if a == Algorithm.TREE and p == Protocol.LL128:
        bus = min(bus * (7 / 9 if big_n == 1 else 120 / 128), nch * c.per_ch_max_tree_ll128_bw[arch][idx2])
    if a == Algorithm.PAT:
        bus *= c.pat_factor
    if a == Algorithm.COLLNET_DIRECT:
        if func in _SHARDED:
            bus = ppn * min(graph.bw_intra, 0.9 * graph.bw_inter)
        else:
            f = ppn / nch
            bus /= (f - (f - 1) / 2)
            if t.compute_capability >= 90:
                bus *= 0.85
    if func in _SHARDED and a in (Algorithm.NVLS, Algorithm.COLLNET_DIRECT) and big_n > 1 and t.collnet is None:
        bus = 0.0
    # Bus -> algorithm bandwidth; non-Ring AllGather/ReduceScatter are already algorithm-level.
    if func in _SHARDED and a != Algorithm.RING:
        return bus
    if a == Algorithm.RING or (a in _NVLS_ALGORITHMS and c.nvls_rules_2_28):
        return bus * n / nsteps(func, n)
    if a in _NVLS_ALGORITHMS:
        return bus * 5 / 6
    return bus * 0.5


class NcclModel:
    """NCCL's model of one cluster (an :class:`EnvSpec`), pinned to an NCCL version; a
    :class:`~dynamiccl.costmodel.protocol.CostModel`.

    Args:
        env: the environment spec.
        version: NCCL version string; default the spec's ``[nccl] version``.

    ``tables`` gives NCCL's latency (µs) and algorithm bandwidth (GB/s) per (collective, algorithm,
    protocol); ``cost_table`` the times NCCL hands a tuner plugin; ``choose`` NCCL's decisions and
    ``evaluate`` the cost-model answer, on whole batches.
    """

    name = "nccl"
    # NCCL's model has no notion of compute beside the call, background traffic or noise, and no
    # cost for send/recv or AlltoAll (its tuner is never asked about them).
    models_conditions = False
    applies_nccl_knobs = True
    costs_p2p = False
    prices_chunk = False  # NCCL's cost table has no chunk size (it picks the chunk after the cost)
    prices_communicator_config = True  # the channel pools bounded as ncclConfig_t bounds them at init

    def __init__(self, env: EnvSpec, version: str | None = None):
        self.env = env
        self.version = ".".join(map(str, parse_version(version))) if version else env.nccl_version
        self.constants = nccl_constants(parse_version(self.version))
        self._tables: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, NcclTopology]] = {}

    @classmethod
    def from_options(cls, env: EnvSpec, options: CostModelOptions) -> "NcclModel":
        """The registry's factory: NCCL's model of the spec's NCCL version (options are not used)."""
        return cls(env)

    def describe(self) -> str:
        return f"NCCL {self.version} model (tuning.cc) on {self.env.describe()}"

    def topology(self, nranks: int, nnodes: int) -> NcclTopology:
        return self._get(nranks, nnodes)[2]

    def tables(self, nranks: int, nnodes: int, proto_by_env: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(latency_us[func][algo][proto], algbw_gbytes_per_s[func][algo][proto]) for the tunable functions
        (``Func`` 0 .. ``NUM_TUNABLE_FUNCS`` - 1); bw 0 = off. ``proto_by_env``: the tables for a protocol
        listed in ``NCCL_PROTO`` (NCCL's automatic LL128 rules skipped, :func:`enabled`); else NCCL's
        default tables, which are also what a tuner sees."""
        got = self._get(nranks, nnodes)
        return (got[3], got[4]) if proto_by_env else (got[0], got[1])

    def _get(self, nranks: int, nnodes: int):
        key = (int(nranks), int(nnodes))
        if key not in self._tables:
            t = topology(self.env, *key)
            shape = (NUM_TUNABLE_FUNCS, NUM_ALGORITHMS, NUM_PROTOCOLS)
            lat, bw, lat_env, bw_env = (np.zeros(shape) for _ in range(4))
            if key[0] > 1:
                for func in range(NUM_TUNABLE_FUNCS):
                    for a in range(NUM_ALGORITHMS):
                        for p in range(NUM_PROTOCOLS):
                            bw[func, a, p] = _bandwidth(self.constants, t, func, a, p)
                            bw_env[func, a, p] = _bandwidth(self.constants, t, func, a, p, proto_by_env=True)
                            latency = _latency(self.constants, t, func, a, p) if bw_env[func, a, p] else 0.0
                            lat[func, a, p] = latency if bw[func, a, p] else 0.0
                            lat_env[func, a, p] = latency
            # NCCL's default tables (what a tuner sees), then those of a protocol NCCL_PROTO lists.
            self._tables[key] = (lat, bw, t, lat_env, bw_env)
        return self._tables[key]

    # --- evaluation -------------------------------------------------------------------------------

    def evaluate(self, batch: CollBatch) -> CostResult:
        """What NCCL believes each row costs with its (or the row's forced) algorithm and protocol:
        :meth:`choose`'s pair, channels and time (inf, with algo = proto = -1, where no pair NCCL
        can run is left). Overlap, congestion and noise are ignored (``compute_slowdown`` 1, no
        separate latency part: ``latency_us`` 0); a row with a chunk size is refused (InputError:
        NCCL's cost table has none, ``prices_chunk`` False). Send/recv and AlltoAll rows, which NCCL's model
        has no cost for (``costs_p2p`` False), get what :meth:`choose` gives them: AllReduce's.
        """
        refuse_chunks(batch, self.name)
        got = self.choose(batch)
        return CostResult(algo=got["algo"], proto=got["proto"], channels=got["channels"], time_us=got["time_us"],
                          latency_us=np.zeros(len(batch)), compute_slowdown=np.ones(len(batch)),
                          size_bytes=batch.size_bytes, nranks=batch.nranks)

    def topology_index(self, batch: CollBatch) -> "TopoIndex":
        """Per-row index into the distinct (nranks, nnodes, pool caps) of a batch, and per entry the
        tables and runtime constants, the channel pools bounded as the caps say (:func:`comm_pool`,
        :func:`nvls_pool`)."""
        import pandas as pd

        shape = batch.nranks * 65536 + batch.nnodes
        if not batch.bounds_pools():
            codes, uniques = pd.factorize(shape, sort=False)  # O(n) hashing
            got = [self._get(int(k) // 65536, int(k) % 65536) for k in uniques]
            return TopoIndex(codes.astype(np.intp), got)
        radix = MAX_CHANNELS + 1  # each cap is 0..MAX_CHANNELS
        key = ((shape * radix + batch.max_ctas) * radix + batch.min_ctas) * radix + batch.nvls_ctas
        codes, uniques = pd.factorize(key, sort=False)
        caps = []
        for k in uniques.tolist():
            k, nvls = divmod(k, radix)
            k, low = divmod(k, radix)
            k, high = divmod(k, radix)
            caps.append((k // 65536, k % 65536, high, low, nvls))
        got = [self._get(nranks, nnodes) for nranks, nnodes, *_ in caps]
        return TopoIndex(codes.astype(np.intp), got, [c[2:] for c in caps], self.constants.version)

    def cost_table(self, batch: CollBatch, index: "TopoIndex | None" = None) -> np.ndarray:
        """The ``[rows, algorithm, protocol]`` time table NCCL passes a tuner (µs; -1 where NCCL
        disabled the pair).

        Includes the per-size Tree correction, the Ring plateau factor and numPipeOps.
        """
        index = index or self.topology_index(batch)
        times = self._times(batch, index, _ALL_CELLS, per_row=False)
        return times.reshape(len(batch), NUM_ALGORITHMS, NUM_PROTOCOLS)

    def _times(self, batch: CollBatch, index: "TopoIndex", columns: np.ndarray, per_row: bool,
               proto_by_env: np.ndarray | None = None) -> np.ndarray:
        """Times of the flat (algo * NUM_PROTOCOLS + proto) ``columns``: with ``per_row`` one column
        per row ([rows]), else every listed column for every row ([rows, len(columns)]); -1 where
        disabled. ``proto_by_env`` (per row): the row's protocol is listed in ``NCCL_PROTO``, so its
        cells come from the tables without NCCL's automatic LL128 rules (:func:`enabled`)."""
        c = self.constants
        func = np.where(batch.func < NUM_TUNABLE_FUNCS, batch.func, Func.ALLREDUCE)  # p2p rows are not tuned
        row = index.codes * NUM_TUNABLE_FUNCS + func
        by_env = proto_by_env is not None and proto_by_env.any()
        if per_row:
            lat = index.lat[row, columns]
            bw = index.bw[row, columns]
            if by_env:
                lat = np.where(proto_by_env, index.lat_env[row, columns], lat)
                bw = np.where(proto_by_env, index.bw_env[row, columns], bw)
            algo, proto = columns // NUM_PROTOCOLS, columns % NUM_PROTOCOLS
        else:
            lat = index.lat[row][:, columns]
            bw = index.bw[row][:, columns]
            if by_env:
                lat = np.where(proto_by_env[:, None], index.lat_env[row][:, columns], lat)
                bw = np.where(proto_by_env[:, None], index.bw_env[row][:, columns], bw)
            algo, proto = (columns // NUM_PROTOCOLS)[None, :], (columns % NUM_PROTOCOLS)[None, :]
        size = batch.size_bytes if per_row else batch.size_bytes[:, None]
        is_ar = (batch.func == Func.ALLREDUCE) if per_row else (batch.func == Func.ALLREDUCE)[:, None]
        chunks64 = np.floor_divide(size, 64)
        idx = np.where(chunks64 >= 1, np.log2(np.maximum(chunks64, 1)).astype(np.int64), -1)
        tree = (algo == Algorithm.TREE) & is_ar & (idx >= 0) & (idx < 23)
        if tree.any():
            bw = np.where(tree, bw * TREE_CORRECTION[np.clip(proto, 0, NUM_PROTOCOLS - 1), np.clip(idx, 0, 23)], bw)
        if c.nvls_tree_correction:
            nvls_tree = ((algo == Algorithm.NVLS_TREE) & is_ar & (idx >= 0) & (idx < 24)
                         & _col(index.cc >= 100, index.codes, per_row) & _col(index.x86, index.codes, per_row))
            bw = np.where(nvls_tree, bw * TREE_CORRECTION[Protocol.SIMPLE, np.clip(idx, 0, 23)], bw)
        nranks = batch.nranks if per_row else batch.nranks[:, None]
        nnodes = batch.nnodes if per_row else batch.nnodes[:, None]
        comm_ch = _col(index.comm_channels, index.codes, per_row)
        plateau = ((algo == Algorithm.RING) & (proto == Protocol.SIMPLE) & is_ar & (nnodes > 1)
                   & (size / (comm_ch * nranks) >= 64))
        lat = np.where(plateau, lat * np.where(_col(index.cc, index.codes, per_row) < 80, 1.9, 1.4), lat)
        pipe = batch.num_pipe_ops if per_row else batch.num_pipe_ops[:, None]
        lat_count = np.where(algo == Algorithm.RING, pipe, np.ceil(pipe / MAX_DEV_WORK_BATCH_COLLS))
        with np.errstate(divide="ignore", invalid="ignore"):
            time = lat * lat_count + size / (1000.0 * bw)
        return np.where(bw > 0, time, -1.0)

    def choose(self, batch: CollBatch, index: "TopoIndex | None" = None) -> dict[str, np.ndarray]:
        """NCCL's choice per row: ``algo``, ``proto``, ``channels`` (the row's if forced, else NCCL's
        runtime count, always in ``nccl_channels``) and ``threads``, and the ``time_us`` NCCL
        believes it costs. Rows that force ``algo``/``proto`` (>= 0) are restricted
        to them, as ``NCCL_ALGO``/``NCCL_PROTO`` restrict NCCL; a forced ``channels`` (> 0) is kept.
        A protocol forced by ``NCCL_PROTO`` (``batch.forced_by_env``) runs where NCCL's automatic
        LL128 rules would not enable it; one a tuner forced does not (:func:`enabled`). Rows with
        no enabled pair (e.g. a forced pair NCCL cannot run) get algo = proto = -1 and time_us = inf.
        """
        index = index or self.topology_index(batch)
        if len(batch) > 4096:  # calls repeat (few sizes per trace): decide each distinct call once
            first, inverse = _distinct_rows(batch, index.codes)
            if len(first) < len(batch) // 2:
                got = self.choose(batch.subset(first), index.subset(first))
                got = {name: values[inverse] for name, values in got.items()}
                got["channels"] = np.where(batch.channels > 0, self.forced_channels(batch, got["algo"], index),
                                           got["nccl_channels"])
                return got
        algo = batch.algo.copy()
        proto = batch.proto.copy()
        time = np.full(len(batch), np.inf)
        forced = (algo >= 0) & (proto >= 0)
        proto_by_env = batch.forced_by_env & (proto >= 0)  # NCCL_PROTO set: LL128's automatic rules skipped
        if forced.any():  # one entry per row: no arg-min needed
            sub = batch if forced.all() else batch.subset(forced)
            sub_index = index if forced.all() else index.subset(forced)
            t = self._times(sub, sub_index, (sub.algo * NUM_PROTOCOLS + sub.proto).astype(np.intp), per_row=True,
                            proto_by_env=proto_by_env[forced])
            time[forced] = np.where(t >= 0, t, np.inf)
        free = ~forced
        if free.any():
            sub = batch.subset(free)
            table = self._times(sub, index.subset(free), _ALL_CELLS, per_row=False, proto_by_env=proto_by_env[free])
            allowed = table >= 0
            allowed &= (sub.algo[:, None] < 0) | (_ALL_CELLS[None, :] // NUM_PROTOCOLS == sub.algo[:, None])
            allowed &= (sub.proto[:, None] < 0) | (_ALL_CELLS[None, :] % NUM_PROTOCOLS == sub.proto[:, None])
            flat = np.where(allowed, table, np.inf)
            best = np.argmin(flat, axis=1)  # first minimum: NCCL's strict "<" scan, algorithm-major
            time[free] = flat[np.arange(len(sub)), best]
            algo[free] = best // NUM_PROTOCOLS
            proto[free] = best % NUM_PROTOCOLS
        ok = np.isfinite(time)
        algo = np.where(ok, algo, -1)
        proto = np.where(ok, proto, -1)
        nccl_channels, threads = self.runtime_channels(batch, algo, proto, index)
        channels = np.where(batch.channels > 0, self.forced_channels(batch, algo, index), nccl_channels)
        return {"algo": algo, "proto": proto, "channels": channels, "nccl_channels": nccl_channels,
                "threads": threads, "time_us": time}

    def forced_channels(self, batch: CollBatch, algo: np.ndarray, index: "TopoIndex") -> np.ndarray:
        """The rows' forced ``channels`` as they run: in a communicator whose pool its ``ncclConfig_t``
        bounds (``max_ctas``/``min_ctas``/``nvls_ctas`` set), no more than that pool -- the NVLS pool
        for NVLS and NVLSTree, else the collective pool -- since NCCL schedules a call on at most the
        pool's channels whatever the tuner asked (``src/enqueue.cc``, ``nMaxChannels[kind]``). Rows
        without bounds keep the forced count (0 where none is forced)."""
        if not batch.bounds_pools():
            return batch.channels
        capped = (batch.max_ctas > 0) | (batch.min_ctas > 0) | (batch.nvls_ctas > 0)
        nvls = (algo == Algorithm.NVLS) | (algo == Algorithm.NVLS_TREE)
        pool = np.where(nvls, index.nvls_channels[index.codes], index.comm_channels[index.codes])
        return np.where(capped & (batch.channels > 0), np.minimum(batch.channels, pool), batch.channels)

    def runtime_channels(self, batch: CollBatch, algo: np.ndarray, proto: np.ndarray,
                         index: "TopoIndex | None" = None):
        """``topoGetAlgoInfo``'s channel and thread counts for the chosen (algo, proto) (``src/enqueue.cc``)."""
        index = index or self.topology_index(batch)
        comm_ch = index.comm_channels[index.codes]
        nvls_ch = index.nvls_channels[index.codes]
        ring_bw = index.ring_bw_total[index.codes]
        size = batch.size_bytes
        p = np.clip(proto, 0, NUM_PROTOCOLS - 1)
        max_threads = np.select(
            [p == Protocol.LL, p == Protocol.LL128, algo == Algorithm.RING, algo == Algorithm.TREE],
            [LL_MAX_NTHREADS, LL128_MAX_NTHREADS, np.where(ring_bw <= PCI_BW_GBYTES_PER_S, 256, SIMPLE_MAX_NTHREADS),
             SIMPLE_MAX_NTHREADS], MAX_NTHREADS).astype(np.int64)
        threshold = np.array(THREAD_THRESHOLD_BYTES, dtype=np.float64)[p]
        threshold = np.where((algo == Algorithm.RING) & (p == Protocol.LL), threshold * batch.nranks, threshold)
        shrinks = (algo == Algorithm.RING) | (algo == Algorithm.TREE) | (algo == Algorithm.PAT)
        nt = max_threads
        nc = np.where(shrinks, np.clip(np.floor(size / (nt * threshold)), 1, comm_ch), comm_ch).astype(np.int64)
        for _ in range(4):  # then halve threads while still too many, keeping warps of 128
            halve = shrinks & (size < nc * nt * threshold) & (nt % 128 == 0)
            nt = np.where(halve, nt // 2, nt)
        nt = np.where((algo == Algorithm.RING) & (p == Protocol.SIMPLE), nt + WARP_SIZE, nt)
        nt = np.where((algo == Algorithm.TREE) | (algo == Algorithm.PAT), MAX_NTHREADS, nt)
        nt = np.maximum(nt, 3 * WARP_SIZE)
        nvls = (algo == Algorithm.NVLS) | (algo == Algorithm.NVLS_TREE)
        nc = np.where(nvls, nvls_ch, nc)
        nt = np.where(nvls | (algo == Algorithm.COLLNET_DIRECT) | (algo == Algorithm.COLLNET_CHAIN), MAX_NTHREADS, nt)
        nc = np.where(algo < 0, comm_ch, nc)
        return nc.astype(np.int64), nt.astype(np.int64)


def _distinct_rows(batch: CollBatch, topo_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the first row of each distinct decision input, row -> distinct index)."""
    import pandas as pd

    combined = topo_codes.astype(np.int64)
    columns = [batch.func, batch.size_bytes, batch.num_pipe_ops, batch.algo, batch.proto]
    if batch.forced_by_env.any():  # a protocol NCCL_PROTO forces may run where a tuner's may not
        columns.append(batch.forced_by_env)
    for column in columns:
        codes, uniques = pd.factorize(column, sort=False)
        combined = combined * (len(uniques) + 1) + codes
        if len(uniques) > 1 and combined.max(initial=0) > 2 ** 52:  # re-pack before the radix overflows
            combined = pd.factorize(combined, sort=False)[0].astype(np.int64)
    inverse, uniques = pd.factorize(combined, sort=False)
    first = np.full(len(uniques), len(inverse), dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(len(inverse)))
    return first, inverse


def _col(values: np.ndarray, codes: np.ndarray, per_row: bool) -> np.ndarray:
    """Per-topology ``values`` spread to rows (as a column when broadcasting against pairs)."""
    spread = values[codes]
    return spread if per_row else spread[:, None]


class TopoIndex:
    """Rows of a batch mapped to its distinct topologies, with their tables and runtime constants.

    ``caps``: per entry the communicator's (max_ctas, min_ctas, nvls_ctas) (0: NCCL's), and
    ``version`` the NCCL version (for ``nvls_ctas``); None: NCCL's pools everywhere.
    """

    def __init__(self, codes: np.ndarray, got: list, caps: list | None = None,
                 version: tuple[int, int, int] = (0, 0, 0)):
        self.codes = codes
        self._got = got
        rows = (0, NUM_COST_CELLS)  # per topology and tunable function, the flat cells
        self.lat = np.concatenate([g[0].reshape(-1, NUM_COST_CELLS) for g in got]) if got else np.zeros(rows)
        self.bw = np.concatenate([g[1].reshape(-1, NUM_COST_CELLS) for g in got]) if got else np.zeros(rows)
        # The same with a protocol NCCL_PROTO lists (NCCL's automatic LL128 rules skipped).
        self.lat_env = np.concatenate([g[3].reshape(-1, NUM_COST_CELLS) for g in got]) if got else np.zeros(rows)
        self.bw_env = np.concatenate([g[4].reshape(-1, NUM_COST_CELLS) for g in got]) if got else np.zeros(rows)
        self.topologies = [g[2] for g in got]
        t = self.topologies
        self.cc = np.array([x.compute_capability for x in t])
        self.x86 = np.array([x.cpu_vendor in ("intel", "amd") for x in t])
        self.comm_channels = np.array([x.comm_channels for x in t])
        nvls_channels = np.array([x.nvls_channels for x in t])
        if caps is not None:  # the pools the communicators' ncclConfig_t bound at init
            high, low, nvls = (np.array(column, dtype=np.int64) for column in zip(*caps))
            self.comm_channels = comm_pool(self.comm_channels, low, high)
            nvls_channels = nvls_pool(nvls_channels, low, high, nvls, version)
        # Across nodes NVLS runs on no more than the collective pool (topoGetAlgoInfo).
        multi_node = np.array([x.nnodes > 1 for x in t], dtype=bool)
        self.nvls_channels = np.where(multi_node, np.minimum(nvls_channels, self.comm_channels), nvls_channels)
        self.ring_bw_total = np.array([x.ring_bw_total for x in t])

    def subset(self, mask: np.ndarray) -> "TopoIndex":
        out = object.__new__(TopoIndex)
        out.__dict__.update(self.__dict__)
        out.codes = self.codes[mask]
        return out


__all__ = ["NcclModel", "enabled", "nsteps"]
