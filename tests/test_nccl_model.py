"""NCCL's own cost model (``dynamiccl.costmodel.NcclModel``) against values computed by hand from
NVIDIA/nccl ``src/graph/tuning.cc`` (``ncclTopoTuneModel``, ``ncclTopoGetAlgoTime``; older constants
from the same file at each release tag) and ``src/enqueue.cc`` (``topoGetAlgoInfo``): the
small-message latency table, the 8-GPU Hopper example and its crossovers, the time formula (Tree
correction, Ring plateau, numPipeOps), the runtime channel choice, the version history and the
enablement rules. ``docs/nccl-model-worked-examples.md`` shows how the hand-computed numbers are
derived.

Expected numbers are written out here (not read from ``nccl_constants``), so a wrong constant or a
wrong rule in the model fails a test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dynamiccl.costmodel import NcclModel, make_batch
from dynamiccl.envspec import env_from_dict, resolve_env

BROADCAST, REDUCE, ALLGATHER, REDUCESCATTER, ALLREDUCE = 0, 1, 2, 3, 4
TREE, RING, CN_DIRECT, CN_CHAIN, NVLS, NVLS_TREE, PAT = range(7)
LL, LL128, SIMPLE = range(3)


def h100(gpus_per_node: int = 8, nodes: int = 1, cpu: str = "intel", version: str = "2.23.4", **sections):
    """An H100-SXM (Hopper, NVSwitch) spec built in memory."""
    obj = {"cluster": {"gpu": "H100-SXM", "arch": "hopper", "gpus_per_node": gpus_per_node, "nodes": nodes},
           "intra": {"fabric": "nvswitch"}, "host": {"cpu_vendor": cpu}, "nccl": {"version": version}}
    for name, table in sections.items():
        obj.setdefault(name, {}).update(table)
    return env_from_dict(obj, f"mem-{gpus_per_node}x{nodes}.toml", "mem")


# --- small-message latencies (HEAD constants, latencyInter = 0; docs/nccl-model-worked-examples.md §2) ---

# (nodes, GPUs per node, CPU): (Ring AR LL/LL128/Simple), (Tree AR ...), (Ring AG ...)
LATENCY_TABLE = {
    (1, 2, "intel"): ((7.8, 17.8, 15.2), (8.0, 16.5, 16.4), (7.2, 15.9, 11.8)),
    (1, 4, "intel"): ((10.2, 25.4, 28.8), (10.4, 21.5, 32.4), (8.4, 19.7, 18.6)),
    (1, 8, "intel"): ((15.0, 40.6, 56.0), (15.2, 31.5, 64.4), (10.8, 27.3, 32.2)),
    (2, 1, "amd"): ((16.6, 31.0, 36.4), (16.8, 31.0, 36.4), (11.6, 22.5, 22.4)),
    (2, 4, "intel"): ((24.0, 44.8, 77.2), (20.4, 38.5, 60.4), (15.3, 29.4, 42.8)),
    (2, 4, "arm"): ((24.0, 44.8, 77.2), (20.4, 38.5, 60.4), (15.3, 29.4, 42.8)),
    (2, 8, "intel"): ((40.0, 75.2, 131.6), (25.2, 48.5, 92.4), (23.3, 44.6, 70.0)),
    (2, 8, "amd"): ((68.0, 78.0, 204.4), (25.2, 48.5, 92.4), (37.3, 46.0, 106.4)),
    (8, 4, "intel"): ((92.4, 161.2, 367.6), (40.4, 72.5, 116.4), (49.5, 87.6, 188.0)),
    (8, 8, "intel"): ((156.4, 282.8, 585.2), (45.2, 82.5, 148.4), (81.5, 148.4, 296.8)),
    (16, 4, "intel"): ((183.6, 316.4, 754.8), (50.4, 89.5, 144.4), (95.1, 165.2, 381.6)),
}
CELLS = [(cfg, column, proto) for cfg in LATENCY_TABLE for column in range(3) for proto in range(3)]
COLUMN = {0: ("Ring AR", ALLREDUCE, RING), 1: ("Tree AR", ALLREDUCE, TREE), 2: ("Ring AG", ALLGATHER, RING)}


@pytest.mark.parametrize("cfg,column,proto", CELLS,
                         ids=[f"{c[0]}x{c[1]}-{c[2]}-{COLUMN[col][0].replace(' ', '')}-{['LL', 'LL128', 'Simple'][p]}"
                              for c, col, p in CELLS])
def test_latency_table_cell(cfg, column, proto):
    nodes, ppn, cpu = cfg
    model = NcclModel(h100(gpus_per_node=8, nodes=nodes, cpu=cpu))
    lat, bw = model.tables(nodes * ppn, nodes)
    _, func, algo = COLUMN[column]
    assert bw[func][algo][proto] > 0, "the pair must be enabled for its latency to count"
    assert lat[func][algo][proto] == pytest.approx(LATENCY_TABLE[cfg][column][proto], abs=0.05)


def test_nvls_latency_is_25us_single_node_plus_18_net():
    lat, _ = NcclModel(h100()).tables(8, 1)
    assert lat[ALLREDUCE][NVLS][SIMPLE] == pytest.approx(25.0)
    # NVLSTree on 2 nodes: base 0 + NVLink 25 + 2·log2(2)·NET 14 (v2.19 .. v2.28.3).
    lat2, _ = NcclModel(h100(nodes=2)).tables(16, 2)
    assert lat2[ALLREDUCE][NVLS_TREE][SIMPLE] == pytest.approx(25.0 + 2 * 14.0)


def test_nic_latency_from_the_spec_is_added_per_network_hop():
    # latencyInter = 3 µs: Ring AR LL on 2x8 adds nInter·3 = 2·3; Simple adds it twice per hop (flush).
    base, _ = NcclModel(h100(nodes=2)).tables(16, 2)
    slow, _ = NcclModel(h100(nodes=2, inter={"nic_latency_us": 3.0})).tables(16, 2)
    assert slow[ALLREDUCE][RING][LL] - base[ALLREDUCE][RING][LL] == pytest.approx(2 * 3.0)
    assert slow[ALLREDUCE][RING][SIMPLE] - base[ALLREDUCE][RING][SIMPLE] == pytest.approx(2 * 6.0)
    assert slow[ALLREDUCE][TREE][LL] - base[ALLREDUCE][TREE][LL] == pytest.approx(2 * 1 * 3.0)


# --- 8 GPUs, one Hopper node, Ring AllReduce (docs/nccl-model-worked-examples.md §3) ---------------

def _crossover(lat1, bw1, lat2, bw2) -> float:
    return (lat2 - lat1) / (1 / (1000 * bw1) - 1 / (1000 * bw2))


def test_ring_allreduce_bandwidths_8gpu_hopper():
    model = NcclModel(h100())
    lat, bw = model.tables(8, 1)
    ring = bw[ALLREDUCE][RING]
    assert ring[SIMPLE] == pytest.approx(205.7, abs=0.05)   # busBw 360 · 8/14
    assert ring[LL128] == pytest.approx(189.3, abs=0.05)    # min(0.92·360, nCh·36.7) · 8/14
    assert ring[LL] == pytest.approx(80.6, abs=0.05)        # min(141, 180) · 8/14
    # busbw and algbw are exactly the nccl-tests factor apart
    assert ring[SIMPLE] * 2 * 7 / 8 == pytest.approx(360.0)


def test_ring_protocol_crossovers_8gpu_hopper():
    model = NcclModel(h100())
    lat, bw = model.tables(8, 1)
    l, b = lat[ALLREDUCE][RING], bw[ALLREDUCE][RING]
    ll_to_ll128 = _crossover(l[LL], b[LL], l[LL128], b[LL128])
    ll128_to_simple = _crossover(l[LL128], b[LL128], l[SIMPLE], b[SIMPLE])
    assert ll_to_ll128 == pytest.approx(3.6e6, rel=0.10)
    assert ll128_to_simple == pytest.approx(37e6, rel=0.10)
    # The cost table agrees: LL cheaper just below its crossover, LL128 just above, and so on.
    sizes = np.array([0.8 * ll_to_ll128, 1.2 * ll_to_ll128, 0.8 * ll128_to_simple, 1.2 * ll128_to_simple])
    table = model.cost_table(make_batch(ALLREDUCE, sizes, 8, 1))
    ring = table[:, RING, :]
    assert ring[0, LL] < ring[0, LL128] and ring[1, LL128] < ring[1, LL]
    assert ring[2, LL128] < ring[2, SIMPLE] and ring[3, SIMPLE] < ring[3, LL128]


# --- time formula through the cost table (tuning.cc ncclTopoGetAlgoTime) -----------------------------

# treeCorrectionFactor[proto][log2(nBytes/64)], idx 0..22 (tuning.cc)
TREE_CORRECTION = {
    LL: [1, 1, 1, 1, .9, .8, .7, .7, .7, .7, .6, .5, .4, .4, .5, .6, .7, .8, .9, 1, 1, 1, 1],
    LL128: [1, 1, 1, 1, 1, .9, .8, .8, .8, .7, .6, .6, .6, .6, .6, .6, .8, .9, .9, .9, .9, 1, 1],
    SIMPLE: [.9, .9, .9, .9, .9, .9, .9, .8, .7, .6, .6, .5, .5, .5, .5, .6, .7, .8, .7, .7, .8, .9, .9],
}


@pytest.mark.parametrize("proto", [LL, LL128, SIMPLE])
def test_tree_correction_factor_is_applied_per_size(proto):
    model = NcclModel(h100())
    lat, bw = model.tables(8, 1)
    idx = np.arange(0, 27)
    sizes = np.concatenate([64.0 * 2.0 ** idx, 64.0 * 2.0 ** idx * 1.5, [1.0, 63.0]])
    index = np.concatenate([idx, idx, [-1, -1]])
    table = model.cost_table(make_batch(ALLREDUCE, sizes, 8, 1))
    factor = np.array([TREE_CORRECTION[proto][i] if 0 <= i <= 22 else 1.0 for i in index])
    expected = lat[ALLREDUCE][TREE][proto] + sizes / (1000.0 * bw[ALLREDUCE][TREE][proto] * factor)
    np.testing.assert_allclose(table[:, TREE, proto], expected, rtol=1e-9)
    # Ring is never corrected
    ring = lat[ALLREDUCE][RING][proto] + sizes / (1000.0 * bw[ALLREDUCE][RING][proto])
    np.testing.assert_allclose(table[:, RING, proto], ring, rtol=1e-9)


def test_cost_table_marks_disabled_pairs_minus_one():
    table = NcclModel(h100()).cost_table(make_batch(ALLREDUCE, [1024.0, 2.0 ** 30], 8, 1))
    assert (table[:, PAT, :] == -1).all()               # PAT never runs AllReduce
    assert (table[:, NVLS, LL] == -1).all() and (table[:, NVLS, LL128] == -1).all()
    assert (table[:, NVLS_TREE, :] == -1).all()         # single node
    assert (table[:, RING, :] > 0).all() and (table[:, NVLS, SIMPLE] > 0).all()


def test_ring_plateau_latency_multi_node_ring_simple_allreduce():
    model = NcclModel(h100(nodes=2))
    lat, bw = model.tables(16, 2)
    ring_simple_lat = lat[ALLREDUCE][RING][SIMPLE]
    assert ring_simple_lat == pytest.approx(131.6, abs=0.05)
    channels = model.topology(16, 2).comm_channels
    threshold = 64 * channels * 16  # nBytes / (nChannels · nRanks) >= 64
    sizes = np.array([1024.0, threshold - 16.0, float(threshold), 2.0 ** 30])
    table = model.cost_table(make_batch(ALLREDUCE, sizes, 16, 2))
    factor = np.array([1.0, 1.0, 1.4, 1.4])
    np.testing.assert_allclose(table[:, RING, SIMPLE],
                               ring_simple_lat * factor + sizes / (1000 * bw[ALLREDUCE][RING][SIMPLE]), rtol=1e-9)
    # LL128 and AllGather are not affected; neither is a single node
    np.testing.assert_allclose(table[:, RING, LL128],
                               lat[ALLREDUCE][RING][LL128] + sizes / (1000 * bw[ALLREDUCE][RING][LL128]), rtol=1e-9)
    ag = model.cost_table(make_batch(ALLGATHER, sizes, 16, 2))
    np.testing.assert_allclose(ag[:, RING, SIMPLE],
                               lat[ALLGATHER][RING][SIMPLE] + sizes / (1000 * bw[ALLGATHER][RING][SIMPLE]), rtol=1e-9)
    one = NcclModel(h100())
    lat1, bw1 = one.tables(8, 1)
    t1 = one.cost_table(make_batch(ALLREDUCE, [2.0 ** 30], 8, 1))
    assert t1[0, RING, SIMPLE] == pytest.approx(lat1[ALLREDUCE][RING][SIMPLE] + 2 ** 30 / (1000 * bw1[ALLREDUCE][RING][SIMPLE]))


def test_ring_plateau_factor_is_1_4_from_ampere_on():
    # minCompCap < 80 gives 1.9; A100 (cc 80) is not below 80.
    model = NcclModel(resolve_env("a100-hdr-2x8"))
    lat, bw = model.tables(16, 2)
    t = model.cost_table(make_batch(ALLREDUCE, [2.0 ** 30], 16, 2))
    assert t[0, RING, SIMPLE] == pytest.approx(1.4 * lat[ALLREDUCE][RING][SIMPLE] + 2 ** 30 / (1000 * bw[ALLREDUCE][RING][SIMPLE]))


def test_num_pipe_ops_counts_ring_latency_per_op_and_others_per_batch_of_8():
    model = NcclModel(h100())
    lat, bw = model.tables(8, 1)
    size = 4096.0
    for ops, ring_count, tree_count in ((1, 1, 1), (3, 3, 1), (8, 8, 1), (9, 9, 2)):
        t = model.cost_table(make_batch(ALLREDUCE, size, 8, 1, num_pipe_ops=ops))[0]
        assert t[RING, LL] == pytest.approx(ring_count * lat[ALLREDUCE][RING][LL] + size / (1000 * bw[ALLREDUCE][RING][LL]))
        tree_bw = bw[ALLREDUCE][TREE][LL] * TREE_CORRECTION[LL][6]  # 4096/64 = 2^6
        assert t[TREE, LL] == pytest.approx(tree_count * lat[ALLREDUCE][TREE][LL] + size / (1000 * tree_bw))
        assert t[NVLS, SIMPLE] == pytest.approx(tree_count * 25.0 + size / (1000 * bw[ALLREDUCE][NVLS][SIMPLE]))


# --- choice: arg-min, forcing, runtime channels ------------------------------------------------------

@pytest.mark.parametrize("spec,nranks,nnodes", [("dgx-h100", 8, 1), ("h100-ib-2x8", 16, 2), ("h100-ib-4x8", 32, 4),
                                                ("dgx-a100", 8, 1), ("pcie-h100-1x8", 8, 1), ("gh200-4x4", 16, 4)])
@pytest.mark.parametrize("func", [ALLREDUCE, ALLGATHER, REDUCESCATTER, BROADCAST])
def test_choice_is_the_argmin_of_the_cost_table(spec, nranks, nnodes, func):
    model = NcclModel(resolve_env(spec))
    sizes = np.unique(np.round(2.0 ** np.linspace(0, 34, 120)))
    batch = make_batch(func, sizes, nranks, nnodes)
    table = model.cost_table(batch).reshape(len(sizes), 21)
    got = model.choose(batch)
    flat = np.where(table >= 0, table, np.inf)
    best = np.argmin(flat, axis=1)
    np.testing.assert_array_equal(got["algo"], best // 3)
    np.testing.assert_array_equal(got["proto"], best % 3)
    np.testing.assert_allclose(got["time_us"], flat.min(axis=1), rtol=1e-12)
    assert np.isfinite(got["time_us"]).all()


def test_choice_by_hand_8gpu_hopper():
    model = NcclModel(h100())
    got = model.choose(make_batch(ALLREDUCE, [1024.0, 2.0 ** 30], 8, 1))
    assert (got["algo"][0], got["proto"][0]) == (RING, LL)
    assert got["time_us"][0] == pytest.approx(15.0 + 1024 / (1000 * 80.5714), rel=1e-4)
    # NVLS (pre-2.28 rule): busBw = heads · bwIntra (8 · 40 = 320), ×5/6 -> 266.7 GB/s, 25 µs
    nvls = model.topology(8, 1).nvls
    assert (got["algo"][1], got["proto"][1]) == (NVLS, SIMPLE)
    assert got["time_us"][1] == pytest.approx(25.0 + 2 ** 30 / (1000 * nvls.n_channels * nvls.bw_intra * 5 / 6),
                                              rel=1e-6)


def test_forced_algo_or_proto_restricts_the_choice():
    model = NcclModel(h100())
    sizes = 2.0 ** np.arange(0, 34, 3)
    ring = model.choose(make_batch(ALLREDUCE, sizes, 8, 1, algo=RING))
    assert (ring["algo"] == RING).all()
    table = model.cost_table(make_batch(ALLREDUCE, sizes, 8, 1))
    np.testing.assert_array_equal(ring["proto"], np.argmin(table[:, RING, :], axis=1))
    assert {LL, SIMPLE} <= set(ring["proto"].tolist())
    simple = model.choose(make_batch(ALLREDUCE, sizes, 8, 1, proto=SIMPLE))
    assert (simple["proto"] == SIMPLE).all()
    both = model.choose(make_batch(ALLREDUCE, sizes, 8, 1, algo=TREE, proto=LL128))
    assert (both["algo"] == TREE).all() and (both["proto"] == LL128).all()
    np.testing.assert_allclose(both["time_us"], table[:, TREE, LL128], rtol=1e-12)
    forced_channels = model.choose(make_batch(ALLREDUCE, sizes, 8, 1, channels=5))
    assert (forced_channels["channels"] == 5).all()


@pytest.mark.parametrize("spec,func,algo,proto", [
    ("dgx-h100", ALLREDUCE, NVLS, LL),          # NVLS is Simple only
    ("dgx-h100", ALLREDUCE, PAT, SIMPLE),       # PAT never runs AllReduce
    ("dgx-h100", ALLGATHER, TREE, SIMPLE),      # AllGather has no Tree
    ("dgx-h100", BROADCAST, TREE, LL),          # Broadcast: Ring only
    ("dgx-a100", ALLREDUCE, NVLS, SIMPLE),      # no NVLS on Ampere
    ("pcie-h100-1x8", ALLREDUCE, RING, LL128),  # no LL128 over PCIe
    ("dgx-h100", ALLREDUCE, NVLS_TREE, SIMPLE),  # NVLSTree needs several nodes
])
def test_forced_pair_nccl_cannot_run(spec, func, algo, proto):
    env = resolve_env(spec)
    got = NcclModel(env).choose(make_batch(func, [1024.0, 2.0 ** 28], env.gpus_per_node, 1, algo=algo, proto=proto))
    assert (got["algo"] == -1).all() and (got["proto"] == -1).all()
    assert np.isinf(got["time_us"]).all()


@pytest.mark.parametrize("rows", [1, 20, 21, 22, 42])
def test_choose_with_every_row_forced_any_batch_length(rows):
    """A batch whose rows all force (algo, proto) is costed row by row, whatever its length (21 rows is
    also the number of (algo, proto) pairs, and must not be mistaken for a cost-table request)."""
    model = NcclModel(h100())
    sizes = 2.0 ** (np.arange(rows) % 31)
    got = model.choose(make_batch(ALLREDUCE, sizes, 8, 1, algo=RING, proto=LL))
    lat, bw = model.tables(8, 1)
    np.testing.assert_allclose(got["time_us"], lat[ALLREDUCE][RING][LL] + sizes / (1000 * bw[ALLREDUCE][RING][LL]),
                               rtol=1e-12)
    assert got["algo"].shape == (rows,) and (got["algo"] == RING).all()


def test_forced_algo_without_any_enabled_protocol_gives_no_choice():
    got = NcclModel(resolve_env("dgx-a100")).choose(make_batch(ALLREDUCE, 4096.0, 8, 1, algo=NVLS))
    assert got["algo"][0] == -1 and math.isinf(got["time_us"][0])


def test_runtime_channels_shrink_at_small_sizes_ring_ll():
    # Ring/LL threshold: 8·nRanks bytes/thread, 512 threads -> 64·512 B per channel on 8 ranks,
    # 32·512 on 4 ranks; the count never exceeds the communicator's channels.
    model = NcclModel(h100())
    for nranks in (8, 4):
        comm = model.topology(nranks, 1).comm_channels
        per_channel = 8 * nranks * 512
        sizes = np.array([1, 1000, per_channel - 1, per_channel, 2 * per_channel - 1, 2 * per_channel,
                          5 * per_channel + 7, 100 * per_channel, 2 ** 30], dtype=np.float64)
        got = model.choose(make_batch(ALLREDUCE, sizes, nranks, 1, algo=RING, proto=LL))
        expected = np.clip(sizes // per_channel, 1, comm)
        np.testing.assert_array_equal(got["channels"], expected)
        assert got["channels"][-1] == comm and comm >= 2
    # threads: 512 for a full LL ring, halved (in warps of 128) down to the 3-warp minimum when tiny
    got = model.choose(make_batch(ALLREDUCE, [1.0, 2.0 ** 30], 8, 1, algo=RING, proto=LL))
    assert got["threads"][1] == 512
    assert got["threads"][0] == 3 * 32


def test_runtime_channels_ring_simple_and_ll128_thresholds():
    model = NcclModel(h100())
    comm = model.topology(8, 1).comm_channels
    simple = 64 * 512          # Simple 64 B/thread, 512 threads (ring bw 360 > PCI_BW)
    ll128 = 8 * 640            # LL128 8 B/thread, 640 threads, not scaled by nRanks
    sizes = np.array([3 * simple, 3 * simple - 1, 2.0 ** 30])
    got = model.choose(make_batch(ALLREDUCE, sizes, 8, 1, algo=RING, proto=SIMPLE))
    np.testing.assert_array_equal(got["channels"], [3, 2, comm])
    assert got["threads"][2] == 512 + 32  # Ring Simple adds a warp
    sizes = np.array([3 * ll128, 3 * ll128 - 1, 2.0 ** 30])
    got = model.choose(make_batch(ALLREDUCE, sizes, 8, 1, algo=RING, proto=LL128))
    np.testing.assert_array_equal(got["channels"], [3, 2, comm])
    assert got["threads"][2] == 640


def test_tree_uses_640_threads():
    got = NcclModel(h100()).choose(make_batch(ALLREDUCE, [2.0 ** 30], 8, 1, algo=TREE, proto=SIMPLE))
    assert got["threads"][0] == 640


def test_nvls_gets_16_channels_on_sm90_whatever_the_size():
    got = NcclModel(h100()).choose(make_batch(ALLREDUCE, [8.0, 1024.0, 2.0 ** 20, 2.0 ** 33], 8, 1,
                                              algo=NVLS, proto=SIMPLE))
    assert (got["algo"] == NVLS).all()
    assert (got["channels"] == 16).all()
    assert (got["threads"] == 640).all()


def test_nvls_channels_on_blackwell_single_node_is_24():
    got = NcclModel(resolve_env("gb200-nvl4")).choose(make_batch(ALLREDUCE, 2.0 ** 30, 4, 1, algo=NVLS, proto=SIMPLE))
    assert got["algo"][0] == NVLS and got["channels"][0] == 24


# --- versions (tuning.cc at the tags v2.18.5 .. v2.30.7) -------------------------------------------

@pytest.mark.parametrize("version,expected", [("2.18.5", 2 * 7 * 4.0), ("2.19.3", 2 * 7 * 28.0),
                                              ("2.21.5", 2 * 7 * 28.0), ("2.22.3", 2 * 7 * 28.0),
                                              ("2.23.4", 8.4 + 2 * 7 * 4.0), ("2.30.7", 64.4)])
def test_tree_simple_latency_by_version(version, expected):
    lat, _ = NcclModel(h100(version=version)).tables(8, 1)
    assert lat[ALLREDUCE][TREE][SIMPLE] == pytest.approx(expected)


def test_tree_simple_is_effectively_disabled_at_small_sizes_in_2_19_to_2_22():
    sizes = 2.0 ** np.arange(10, 21)
    old = NcclModel(h100(version="2.21.5")).choose(make_batch(ALLREDUCE, sizes, 8, 1, algo=TREE))
    assert (old["proto"] != SIMPLE).all()
    # the version argument of NcclModel overrides the spec's
    same = NcclModel(h100(), version="2.21.5")
    assert same.version == "2.21.5"
    assert same.tables(8, 1)[0][ALLREDUCE][TREE][SIMPLE] == pytest.approx(392.0)


def test_hopper_ll_max_bw_2_18_vs_2_21():
    # 2.18-2.20: llMaxBw 87.7 and Ring/LL factor 1/3 on one node -> busBw min(87.7, 120) = 87.7
    # 2.21+:     llMaxBw 141 and factor 1/2                    -> busBw min(141, 180)  = 141
    old = NcclModel(h100(version="2.18.5")).tables(8, 1)[1][ALLREDUCE][RING][LL]
    new = NcclModel(h100(version="2.21.5")).tables(8, 1)[1][ALLREDUCE][RING][LL]
    assert old == pytest.approx(87.7 * 8 / 14)
    assert new == pytest.approx(141.0 * 8 / 14)
    # multi-node: the row is the CPU type (0 = Intel -> 39.0 at N2, 1 = AMD -> 22.5 at N2), whatever the GPU;
    # 2.18 multiplies a multi-node AllReduce ring's busBw by 1/4, 2.21 by 1/2
    for cpu, cap in (("intel", 39.0), ("amd", 22.5)):
        model = NcclModel(h100(nodes=2, cpu=cpu, version="2.18.5"))
        ring = model.topology(16, 2).ring
        bus = ring.n_channels * ring.bw_intra
        assert model.tables(16, 2)[1][ALLREDUCE][RING][LL] == pytest.approx(min(cap, bus / 4) * 16 / 30)
        new2 = NcclModel(h100(nodes=2, cpu=cpu, version="2.21.5")).tables(16, 2)[1]
        assert new2[ALLREDUCE][RING][LL] == pytest.approx(min(cap, bus / 2) * 16 / 30)


def test_nvls_bandwidth_rules_before_and_from_2_28():
    env = h100()
    old_model, new_model = NcclModel(env, "2.23.4"), NcclModel(env, "2.28.9")
    nvls = old_model.topology(8, 1).nvls
    heads, bw_intra = nvls.n_channels, nvls.bw_intra
    old, new = old_model.tables(8, 1)[1], new_model.tables(8, 1)[1]
    # before 2.28: AllReduce busBw = heads·bwIntra, ×5/6; AllGather heads·bwIntra·(ppn-1)/ppn (algorithm-level)
    assert old[ALLREDUCE][NVLS][SIMPLE] == pytest.approx(heads * bw_intra * 5 / 6)
    assert old[ALLGATHER][NVLS][SIMPLE] == pytest.approx(heads * bw_intra * 7 / 8)
    # 2.28+: bwIntra·nvlsEfficiency(0.85)·(nCh-1)/nCh, ×2 for AllReduce, ×n/nsteps
    intra = bw_intra * 0.85 * (heads - 1) / heads
    assert new[ALLREDUCE][NVLS][SIMPLE] == pytest.approx(heads * intra * 2 * 8 / 14)
    assert new[ALLGATHER][NVLS][SIMPLE] == pytest.approx(heads * intra * 7 / 8)
    # sjeaugey (nccl-tests#212): ~480 GB/s NVLS busBw on 8 GPUs
    assert new[ALLREDUCE][NVLS][SIMPLE] * 14 / 8 == pytest.approx(480, abs=15)


def test_nvls_tree_rules_before_and_from_2_28():
    env = h100(nodes=4)
    for nnodes, cap in ((2, 57.7), (4, 45.5)):
        nranks = 8 * nnodes
        nsteps = 2 * (nranks - 1)
        old_model, new_model = NcclModel(env, "2.23.4"), NcclModel(env, "2.28.9")
        g = old_model.topology(nranks, nnodes).nvls
        old = old_model.tables(nranks, nnodes)[1][ALLREDUCE][NVLS_TREE][SIMPLE]
        new = new_model.tables(nranks, nnodes)[1][ALLREDUCE][NVLS_TREE][SIMPLE]
        before = min(g.bw_intra, g.bw_inter if nnodes <= 2 else g.bw_inter / 2)
        assert old == pytest.approx(g.n_channels * before * 5 / 6)
        intra = g.bw_intra * 0.85 * (g.n_channels - 1) / g.n_channels * 2
        inter = g.bw_inter * (2 if nnodes <= 2 else 1)
        assert new == pytest.approx(g.n_channels * min(intra, inter, cap) * nranks / nsteps)
    # NET NVLSTree hop: 14 µs up to 2.28.3, 20.9 from 2.28.9
    assert NcclModel(env, "2.28.9").tables(16, 2)[0][ALLREDUCE][NVLS_TREE][SIMPLE] == pytest.approx(25 + 2 * 20.9)


def test_ring_ll_factor_before_2_21_is_a_quarter_when_multi_node_or_allreduce():
    # 2.18-2.20 tuning.cc: busBw * ((nNodes > 1 || coll == AllReduce || coll == Reduce) ? 1/4 : 1/3)
    # A100 (llMaxBw 87.7 on one node, not binding here): one node AllReduce 1/4, AllGather 1/3.
    a100 = env_from_dict({"cluster": {"gpu": "A100-SXM", "arch": "ampere", "gpus_per_node": 8, "nodes": 2},
                          "intra": {"fabric": "nvswitch"}, "host": {"cpu_vendor": "amd"},
                          "nccl": {"version": "2.18.5"}}, "mem-a100.toml", "mem")
    model = NcclModel(a100)
    ring = model.topology(8, 1).ring
    bus = ring.n_channels * ring.bw_intra
    assert bus / 4 < 87.7
    bw = model.tables(8, 1)[1]
    assert bw[ALLREDUCE][RING][LL] == pytest.approx(bus / 4 * 8 / 14)
    assert bw[ALLGATHER][RING][LL] == pytest.approx(bus / 3 * 8 / 7)
    # two nodes: AllGather gets 1/4 too (the AMD row's 22.5 cap binds only above 90 GB/s of bus)
    ring2 = model.topology(16, 2).ring
    bus2 = ring2.n_channels * min(ring2.bw_intra, ring2.bw_inter)
    assert model.tables(16, 2)[1][ALLGATHER][RING][LL] == pytest.approx(min(22.5, bus2 / 4) * 16 / 15)
    assert bus2 / 4 != pytest.approx(bus2 / 3)


@pytest.mark.parametrize("version,ring_ll,ring_simple", [("2.18.5", 6.6 + 2.7, 8.4 + 14.0),
                                                          ("2.21.5", 6.6 + 2.7, 8.4 + 14.0),
                                                          ("2.23.4", 6.6 + 5.0, 8.4 + 14.0)])
def test_one_gpu_per_node_takes_tree_net_latency_only_from_2_23(version, ring_ll, ring_simple):
    # tuning.cc from v2.23.4-1: "With ppn=1 latencies are fully exposed, use the Tree network latency"
    # (NET Tree LL 5.0 vs Ring LL 2.7; Tree Simple 28 in 2.19-2.22 would give 36.4). Before 2.23 every
    # algorithm keeps its own NET row. 2 nodes x 1 GPU AllGather: one network step, latencyInter 0.
    lat, _ = NcclModel(h100(gpus_per_node=1, nodes=2, cpu="amd", version=version)).tables(2, 2)
    assert lat[ALLGATHER][RING][LL] == pytest.approx(ring_ll)
    assert lat[ALLGATHER][RING][SIMPLE] == pytest.approx(ring_simple)


def test_pat_factor_and_latency():
    # 2 nodes x 1 GPU: PAT AllGather, latency 8 + log2(2)·14/3.5 + 2.8·2; busBw ×0.85 (2.23) / ×0.75 (2.24+)
    env = h100(nodes=2)
    lat23, bw23 = NcclModel(env, "2.23.4").tables(2, 2)
    _, bw25 = NcclModel(env, "2.25.1").tables(2, 2)
    assert lat23[ALLGATHER][PAT][SIMPLE] == pytest.approx(8.0 + 14.0 / 3.5 + 2.8 * 2)
    assert bw23[ALLGATHER][PAT][SIMPLE] / bw25[ALLGATHER][PAT][SIMPLE] == pytest.approx(0.85 / 0.75)


# --- enablement (tuning.cc ncclTopoTuneModel, protocol and algorithm enablement) -----------------

def test_no_nvls_on_a100_or_pcie():
    for spec in ("dgx-a100", "pcie-h100-1x8"):
        _, bw = NcclModel(resolve_env(spec)).tables(8, 1)
        assert (bw[:, NVLS, :] == 0).all() and (bw[:, NVLS_TREE, :] == 0).all(), spec
    _, bw = NcclModel(resolve_env("a100-hdr-2x8")).tables(16, 2)
    assert (bw[:, NVLS_TREE, :] == 0).all()
    # with the NVLS switch off in the spec
    _, bw = NcclModel(h100(intra={"nvls": False})).tables(8, 1)
    assert (bw[:, NVLS, :] == 0).all()


def test_nvls_tree_only_multi_node():
    _, one = NcclModel(h100(nodes=2)).tables(8, 1)
    _, two = NcclModel(h100(nodes=2)).tables(16, 2)
    assert one[ALLREDUCE][NVLS_TREE][SIMPLE] == 0
    assert two[ALLREDUCE][NVLS_TREE][SIMPLE] > 0
    assert one[ALLREDUCE][NVLS][SIMPLE] > 0
    assert two[ALLREDUCE][NVLS][SIMPLE] == 0  # multi-node NVLS needs CollNet (SHARP)
    assert (two[:, NVLS_TREE, LL] == 0).all() and (two[:, NVLS_TREE, LL128] == 0).all()
    assert (two[:4, NVLS_TREE, :] == 0).all()  # AllReduce only


def test_pat_only_one_gpu_per_node_and_from_2_23():
    env = h100(nodes=4)
    _, bw = NcclModel(env, "2.23.4").tables(4, 4)
    assert bw[ALLGATHER][PAT][SIMPLE] > 0 and bw[REDUCESCATTER][PAT][SIMPLE] > 0
    assert bw[ALLGATHER][PAT][LL] == 0 and bw[ALLGATHER][PAT][LL128] == 0
    assert (bw[ALLREDUCE][PAT] == 0).all() and (bw[BROADCAST][PAT] == 0).all()
    _, old = NcclModel(env, "2.22.3").tables(4, 4)
    assert (old[:, PAT, :] == 0).all()
    _, two_per_node = NcclModel(env, "2.23.4").tables(8, 4)
    assert (two_per_node[:, PAT, :] == 0).all()


def test_ll128_disabled_on_a_pcie_only_node():
    _, bw = NcclModel(resolve_env("pcie-h100-1x8")).tables(8, 1)
    assert (bw[:, :, LL128] == 0).all()
    assert bw[ALLREDUCE][RING][LL] > 0 and bw[ALLREDUCE][RING][SIMPLE] > 0 and bw[ALLREDUCE][TREE][SIMPLE] > 0
    _, nvl = NcclModel(h100()).tables(8, 1)
    assert nvl[ALLREDUCE][RING][LL128] > 0 and nvl[ALLREDUCE][TREE][LL128] > 0


@pytest.mark.parametrize("func", [BROADCAST, REDUCE])
def test_broadcast_and_reduce_ring_only(func):
    _, bw = NcclModel(h100(nodes=2)).tables(16, 2)
    assert (bw[func][RING] > 0).all()
    others = [a for a in range(7) if a != RING]
    assert (bw[func][others] == 0).all()


def test_allgather_reducescatter_algorithms():
    _, bw = NcclModel(h100()).tables(8, 1)
    for func in (ALLGATHER, REDUCESCATTER):
        assert (bw[func][TREE] == 0).all() and (bw[func][CN_CHAIN] == 0).all() and (bw[func][NVLS_TREE] == 0).all()
        assert (bw[func][RING] > 0).all() and bw[func][NVLS][SIMPLE] > 0


def test_single_rank_has_no_tables():
    lat, bw = NcclModel(h100()).tables(1, 1)
    assert (bw == 0).all() and (lat == 0).all()
