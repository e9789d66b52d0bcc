"""The world simulator (``WorldModel``) and its dynamics: monotonicity and physical limits that must
hold whatever the fitted parameters are, the effects it claims to model (2-node Tree, congestion,
compute overlap, noise, launch gap), the seeded background-traffic process and the noise factors,
and the batch's input checks.

Only the public API is used: ``WorldModel(env, params=None).evaluate(batch, launch_gpus=1)``,
``WorldParams.load()``, ``make_batch`` and ``dynamics``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dynamiccl.costmodel import WorldModel, WorldParams, make_batch
from dynamiccl.costmodel.dynamics import CongestionProcess, noise_factors
from dynamiccl.envspec import DynamicsSpec, env_from_dict, resolve_env
from dynamiccl.errors import InputError
from dynamiccl.nccl import busbw_factor

BROADCAST, REDUCE, ALLGATHER, REDUCESCATTER, ALLREDUCE, SEND, RECV = 0, 1, 2, 3, 4, 6, 7  # dynamiccl.nccl.Func
ALLTOALL = 8
TREE, RING, CN_DIRECT, CN_CHAIN, NVLS, NVLS_TREE, PAT = range(7)
LL, LL128, SIMPLE = range(3)
OP = {BROADCAST: "broadcast", REDUCE: "reduce", ALLGATHER: "allgather", REDUCESCATTER: "reducescatter",
      ALLREDUCE: "allreduce", SEND: "sendrecv", ALLTOALL: "alltoall"}

GiB = 2.0 ** 30
SPECS = ["dgx-h100", "h100-ib-2x8", "h100-ib-4x8", "pcie-h100-1x8", "dgx-a100", "a100-hdr-2x8", "gh200-4x4",
         "gb200-nvl4"]
FUNCS = [ALLREDUCE, ALLGATHER, REDUCESCATTER, BROADCAST, REDUCE, SEND, ALLTOALL]
# Powers of two, 1.5x steps between them, and both sides of NCCL's runtime channel thresholds.
SIZES = np.unique(np.concatenate([2.0 ** np.arange(0, 35), 1.5 * 2.0 ** np.arange(0, 34),
                                  np.arange(1, 65) * 16384.0 - 1, np.arange(1, 65) * 16384.0]))

_MODELS: dict[str, WorldModel] = {}


def world(spec: str) -> WorldModel:
    if spec not in _MODELS:
        _MODELS[spec] = WorldModel(resolve_env(spec))
    return _MODELS[spec]


def h100(nodes: int, nic_gbits: float = 400, **extra):
    obj = {"cluster": {"gpu": "H100-SXM", "gpus_per_node": 8, "nodes": nodes},
           "inter": {"nics_per_node": 8, "nic_gbits_per_s": nic_gbits}}
    obj.update(extra)
    return env_from_dict(obj, f"mem-h100-{nodes}.toml", f"h100-{nodes}")


def everything(spec: str):
    env = resolve_env(spec)
    return env, env.nodes * env.gpus_per_node, env.nodes


def runnable_pairs(model: WorldModel, func: int, n: int, nodes: int):
    """(algo, proto) pairs the world can run for func on this communicator."""
    if func in (SEND, ALLTOALL):
        return [(RING, SIMPLE)]
    pairs = [(a, p) for a in range(7) for p in range(3)] * 2  # 42 rows: see test_nccl_model's 21-row test
    out = model.evaluate(make_batch(func, 1 << 20, n, nodes, algo=[a for a, _ in pairs], proto=[p for _, p in pairs]))
    return [pair for pair, t in zip(pairs[:21], out.time_us[:21]) if np.isfinite(t)]


# --- monotonicity in bytes -----------------------------------------------------------------------

@pytest.mark.parametrize("spec", SPECS)
def test_more_bytes_never_faster_with_fixed_channels(spec):
    model = world(spec)
    env, n, nodes = everything(spec)
    for func in FUNCS:
        pairs = runnable_pairs(model, func, n, nodes)
        assert pairs, (spec, func)
        for algo, proto in pairs:
            for channels in (1, 4, 16, 64):
                t = model.evaluate(make_batch(func, SIZES, n, nodes, algo=algo, proto=proto,
                                              channels=channels)).time_us
                assert np.isfinite(t).all()
                worst = int(np.argmin(np.diff(t)))
                assert np.diff(t)[worst] >= -1e-9 * t[worst], (
                    f"{spec} {OP[func]} algo {algo} proto {proto} channels {channels}: "
                    f"{SIZES[worst]:.0f} B takes {t[worst]:.3f} us but {SIZES[worst + 1]:.0f} B {t[worst + 1]:.3f} us")


@pytest.mark.parametrize("spec", ["dgx-h100", "h100-ib-2x8", "pcie-h100-1x8", "gh200-4x4"])
def test_with_nccls_channels_more_bytes_are_faster_only_at_a_channel_step(spec):
    """Each (algo, proto) forced as NCCL_ALGO/NCCL_PROTO would, channels left to NCCL's runtime choice:
    a larger call may finish sooner only where NCCL gave it more channels (its thresholds step with
    the size; see the world's docstring). At equal channel counts more bytes are never faster."""
    model = world(spec)
    env, n, nodes = everything(spec)
    failures = []
    for func in (ALLREDUCE, ALLGATHER, BROADCAST):
        for algo, proto in runnable_pairs(model, func, n, nodes):
            out = model.evaluate(make_batch(func, SIZES, n, nodes, algo=algo, proto=proto))
            t, ch = out.time_us, out.channels
            faster = np.flatnonzero((np.diff(t) < -1e-9) & (np.diff(ch) <= 0))
            for i in faster[:1]:
                failures.append(f"{OP[func]} algo {algo} proto {proto}: {SIZES[i]:.0f} B -> {t[i]:.2f} us "
                                f"({ch[i]} ch), {SIZES[i + 1]:.0f} B -> {t[i + 1]:.2f} us ({ch[i + 1]} ch)")
    assert not failures, f"{spec}: larger sizes ran faster without more channels:\n" + "\n".join(failures)


def test_nccl_channel_step_gives_the_larger_call_more_channels():
    """Just past NCCL's Ring/LL threshold (64 B/thread x 512 threads per channel) a call gets a second
    channel; channel-bound, it then beats the call one byte smaller. Fixed channels remove the step."""
    model = world("dgx-h100")
    below, above = 2 * 32768.0 - 1, 2 * 32768.0
    out = model.evaluate(make_batch(ALLREDUCE, [below, above], 8, 1, algo=RING, proto=LL))
    assert list(out.channels) == [1, 2]
    assert out.time_us[1] < out.time_us[0]
    fixed = model.evaluate(make_batch(ALLREDUCE, [below, above], 8, 1, algo=RING, proto=LL, channels=2))
    assert fixed.time_us[0] <= fixed.time_us[1]


def test_algbw_is_size_over_time_and_unrunnable_pairs_are_inf():
    model = world("dgx-a100")
    out = model.evaluate(make_batch(ALLREDUCE, [1024.0, GiB], 8, 1, algo=[RING, NVLS], proto=[SIMPLE, SIMPLE]))
    assert out.algbw_gbytes_per_s[0] == pytest.approx(1024 / (1000 * out.time_us[0]))
    assert out.algo[1] == -1 and np.isinf(out.time_us[1]) and out.algbw_gbytes_per_s[1] == 0
    for key in ("algo", "proto", "channels", "time_us", "algbw_gbytes_per_s", "compute_slowdown"):
        assert len(getattr(out, key)) == 2, key


# --- channels ------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,n,nodes", [("dgx-h100", 8, 1), ("h100-ib-4x8", 32, 4), ("dgx-a100", 8, 1)])
@pytest.mark.parametrize("proto", [LL, LL128, SIMPLE])
def test_channels_saturate(spec, n, nodes, proto):
    model = world(spec)
    channels = np.arange(1, 65)
    t = model.evaluate(make_batch(ALLREDUCE, GiB, n, nodes, algo=RING, proto=proto, channels=channels)).time_us
    assert (np.diff(t) <= 1e-9 * t[1:]).all(), "more channels never slower"
    assert (np.diff(t[:8]) < 0).all(), "too few channels: each added channel helps"
    assert t[0] > 3 * t[-1], "one channel cannot fill the links"
    # Beyond the links' capacity extra channels add (almost) nothing: within 2% of 64 channels from 48.
    assert t[47] / t[-1] <= 1.02
    if proto == SIMPLE:
        # Simple: ~39 GB/s per channel (perChMaxTreeBw) fills 450 GB/s NVLink with 12; twice that is flat.
        assert t[23] / t[-1] <= 1.02


def ideal_params() -> WorldParams:
    """Parameters at their most generous: links, protocols and NICs at 100% of what they could carry."""
    prm = WorldParams.load()  # the shipped parameters
    return replace(prm, link_efficiency={"default": 1.0}, ll_efficiency=1.0, ll128_efficiency=1.0,
                   net_efficiency={k: 1.0 for k in prm.net_efficiency},
                   p2p_efficiency={"default": 1.0})


@pytest.mark.parametrize("params", ["shipped", "ideal"])
@pytest.mark.parametrize("spec", SPECS)
def test_protocol_ceilings_ll_half_ll128_120_of_128(spec, params):
    model = world(spec) if params == "shipped" else WorldModel(resolve_env(spec), ideal_params())
    env, n, nodes = everything(spec)
    link = env.intra.nvlink_gbytes_per_s if env.intra.fabric != "pcie" else env.intra.pcie_gbytes_per_s
    net_node = env.inter.nics_per_node * env.inter.nic_gbytes_per_s
    sizes = 2.0 ** np.arange(10, 35)
    for func in (ALLREDUCE, ALLGATHER, REDUCESCATTER, BROADCAST):
        for algo, proto in runnable_pairs(model, func, n, nodes):
            if proto == SIMPLE:
                continue
            ceiling = 0.5 if proto == LL else 120 / 128
            for channels in (0, 64):
                out = model.evaluate(make_batch(func, sizes, n, nodes, algo=algo, proto=proto, channels=channels))
                busbw = out.algbw_gbytes_per_s * busbw_factor(OP[func], n)
                assert busbw.max() <= ceiling * link * (1 + 1e-9), (spec, OP[func], algo, proto, busbw.max())
                if algo == RING and nodes > 1:  # a ring's bus bandwidth also crosses every node's NICs
                    assert busbw.max() <= ceiling * net_node * (1 + 1e-9), (spec, OP[func], proto, busbw.max())


# --- the 2-node Tree effect (NVIDIA/nccl#946) ---------------------------------------------------------

@pytest.mark.parametrize("env_of", [lambda nodes: h100(nodes, nic_gbits=200),
                                    lambda nodes: resolve_env("a100-hdr-2x8") if nodes == 2 else
                                    env_from_dict({"cluster": {"gpu": "A100-SXM", "gpus_per_node": 8, "nodes": nodes},
                                                   "inter": {"nic_gbits_per_s": 200}, "host": {"cpu_vendor": "amd"}},
                                                  "a100-4.toml")], ids=["h100-8x200G", "a100-hdr"])
def test_tree_beats_ring_for_large_allreduce_on_two_nodes_only(env_of):
    sizes = np.array([GiB, 4 * GiB])
    two = WorldModel(env_of(2))
    t2 = two.evaluate(make_batch(ALLREDUCE, np.repeat(sizes, 2), 16, 2, algo=[TREE, RING] * 2, proto=SIMPLE)).time_us
    # Tree wins by ~2x the network where the network binds (8 x 200G on H100), by a few % where the
    # NVLink chain's 2S binds first (A100 over 8 x 200G HDR at ~0.96-0.99 of line rate: 192 GB/s Ring
    # busbw on DGX A100, NVIDIA/nccl#812).
    assert (t2[0::2] < t2[1::2]).all(), f"2 nodes: Tree {t2[0::2]} vs Ring {t2[1::2]}"
    four = WorldModel(env_of(4))
    t4 = four.evaluate(make_batch(ALLREDUCE, np.repeat(sizes, 2), 32, 4, algo=[TREE, RING] * 2, proto=SIMPLE)).time_us
    assert (t4[1::2] < t4[0::2]).all(), f"4 nodes: Tree {t4[0::2]} vs Ring {t4[1::2]}"


# --- congestion --------------------------------------------------------------------------------------

def test_congestion_slows_multi_node_collectives_only():
    shares = np.array([0.0, 0.3, 0.6, 0.9])
    sizes = np.array([1024.0, 1 << 20, GiB])
    size_col, share_col = np.repeat(sizes, len(shares)), np.tile(shares, len(sizes))
    multi = world("h100-ib-4x8")
    for algo, proto in ((RING, LL), (RING, SIMPLE), (TREE, SIMPLE), (-1, -1)):
        for func in (ALLREDUCE, ALLGATHER) if algo != TREE else (ALLREDUCE,):
            t = multi.evaluate(make_batch(func, size_col, 32, 4, algo=algo, proto=proto,
                                          congestion=share_col)).time_us.reshape(len(sizes), len(shares))
            assert (np.diff(t, axis=1) > 0).all(), (OP[func], algo, proto, t)
    t = multi.evaluate(make_batch(SEND, size_col, 32, 4, congestion=share_col)).time_us.reshape(len(sizes), -1)
    assert (np.diff(t, axis=1) > 0).all()
    # the same communicator shape inside one node does not touch the network
    for spec, n in (("h100-ib-4x8", 8), ("dgx-h100", 8), ("pcie-h100-1x8", 8)):
        model = world(spec)
        for func in (ALLREDUCE, ALLGATHER, SEND):
            t = model.evaluate(make_batch(func, size_col, n, 1, congestion=share_col)).time_us
            t = t.reshape(len(sizes), len(shares))
            np.testing.assert_allclose(t, t[:, :1].repeat(len(shares), axis=1), rtol=1e-12)


# --- compute overlap -------------------------------------------------------------------------------

def test_overlap_with_hbm_hungry_compute_slows_the_collective():
    model = world("h100-ib-2x8")
    sizes = np.array([256 << 20, GiB])
    plain = model.evaluate(make_batch(ALLREDUCE, sizes, 8, 1, algo=RING, proto=SIMPLE)).time_us
    heavy = model.evaluate(make_batch(ALLREDUCE, sizes, 8, 1, algo=RING, proto=SIMPLE, overlap=1.0,
                                      compute_hbm_share=0.9)).time_us
    assert (heavy > 1.05 * plain).all()
    # no overlap: the HBM share of compute that is not running changes nothing
    idle = model.evaluate(make_batch(ALLREDUCE, sizes, 8, 1, algo=RING, proto=SIMPLE, overlap=0.0,
                                     compute_hbm_share=0.9)).time_us
    np.testing.assert_allclose(idle, plain, rtol=1e-12)
    # more overlap and a larger HBM share never speed the collective up
    overlap = np.repeat([0.0, 0.25, 0.5, 1.0], 4)
    share = np.tile([0.0, 0.3, 0.6, 0.9], 4)
    t = model.evaluate(make_batch(ALLREDUCE, GiB, 8, 1, algo=RING, proto=SIMPLE, overlap=overlap,
                                  compute_hbm_share=share)).time_us.reshape(4, 4)
    assert (np.diff(t, axis=0) >= -1e-9 * t[1:]).all() and (np.diff(t, axis=1) >= -1e-9 * t[:, 1:]).all()
    assert t[-1, -1] > t[0, 0]


def test_compute_slowdown_grows_with_channels_and_is_one_without_overlap():
    model = world("dgx-h100")
    channels = np.arange(1, 65)
    on = model.evaluate(make_batch(ALLREDUCE, GiB, 8, 1, algo=RING, proto=SIMPLE, channels=channels, overlap=0.5,
                                   compute_hbm_share=0.3)).compute_slowdown
    assert (on > 1).all()
    assert (np.diff(on) >= 0).all() and on[-1] > on[0]
    off = model.evaluate(make_batch(ALLREDUCE, GiB, 8, 1, algo=RING, proto=SIMPLE, channels=channels, overlap=0.0,
                                    compute_hbm_share=0.3)).compute_slowdown
    np.testing.assert_array_equal(off, np.ones_like(off))
    default = model.evaluate(make_batch([ALLREDUCE, ALLGATHER, SEND], [8.0, 1 << 20, GiB], 8, 1)).compute_slowdown
    np.testing.assert_array_equal(default, [1.0, 1.0, 1.0])


# --- noise and launch mode ---------------------------------------------------------------------------

def test_noise_multiplies_time():
    model = world("h100-ib-2x8")
    sizes = np.array([8.0, 4096.0, 1 << 20, GiB])
    for func in (ALLREDUCE, ALLGATHER, SEND):
        base = model.evaluate(make_batch(func, sizes, 16, 2)).time_us
        for factor in (0.9, 1.0, 1.37):
            t = model.evaluate(make_batch(func, sizes, 16, 2, noise=factor)).time_us
            np.testing.assert_allclose(t, factor * base, rtol=1e-12)
    per_row = np.array([0.95, 1.0, 1.05, 1.2])
    t = model.evaluate(make_batch(ALLREDUCE, sizes, 16, 2, noise=per_row)).time_us
    np.testing.assert_allclose(t, per_row * model.evaluate(make_batch(ALLREDUCE, sizes, 16, 2)).time_us, rtol=1e-12)


def test_launch_gpus_adds_a_constant_latency():
    model = world("dgx-h100")
    batch = make_batch([ALLREDUCE, ALLREDUCE, ALLGATHER, REDUCESCATTER, ALLREDUCE], [8.0, GiB, 1 << 20, 1 << 26, 4096.0],
                       8, 1, algo=[-1, RING, RING, NVLS, TREE], proto=[-1, SIMPLE, LL, SIMPLE, LL128])
    t1 = model.evaluate(batch).time_us
    np.testing.assert_array_equal(model.evaluate(batch, launch_gpus=1).time_us, t1)
    deltas = []
    for k in (2, 4, 8):
        d = model.evaluate(batch, launch_gpus=k).time_us - t1
        assert (d > 0).all()
        np.testing.assert_allclose(d, d[0], rtol=1e-9, atol=1e-9)  # the same for every row: a latency
        deltas.append(d[0])
    assert deltas[0] < deltas[1] < deltas[2]


# --- dynamics: background traffic ------------------------------------------------------------------

CONGESTED = resolve_env("h100-ib-4x8-congested").dynamics


def test_congestion_process_is_reproducible_by_seed():
    times = np.linspace(0, 5e6, 20001)
    a = CongestionProcess(CONGESTED, seed=7).share_at(times)
    b = CongestionProcess(CONGESTED, seed=7).share_at(times)
    c = CongestionProcess(CONGESTED, seed=8).share_at(times)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    # times in any order
    perm = np.random.default_rng(0).permutation(len(times))
    np.testing.assert_array_equal(CongestionProcess(CONGESTED, seed=7).share_at(times[perm]), a[perm])


def test_congestion_timeline_does_not_depend_on_how_it_is_queried():
    """A replay with the same seed must see the same timeline whether the caller asks for it all at
    once or step by step (as an environment advancing its clock does)."""
    times = np.linspace(0, 5e6, 20001)
    whole = CongestionProcess(CONGESTED, seed=7).share_at(times)
    stepwise = CongestionProcess(CONGESTED, seed=7)
    parts = [stepwise.share_at(chunk) for chunk in np.array_split(times, 50)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_congestion_process_values_and_long_run_fraction():
    times = np.linspace(0, 2e8, 400001)  # 200 s, ~10,000 periods of 10 ms each way
    share = CongestionProcess(CONGESTED, seed=1).share_at(times)
    assert set(np.unique(share).tolist()) == {0.0, CONGESTED.congested_share}
    assert abs((share > 0).mean() - CONGESTED.congested_fraction) < 0.05
    other = DynamicsSpec(congestion="markov", congested_share=0.25, congested_fraction=0.1, mean_period_ms=5.0)
    share = CongestionProcess(other, seed=2).share_at(np.linspace(0, 1e8, 200001))
    assert set(np.unique(share).tolist()) == {0.0, 0.25}
    assert abs((share > 0).mean() - 0.1) < 0.05


def test_no_congestion_process_is_all_zeros():
    times = np.linspace(0, 1e8, 1001)
    quiet = resolve_env("h100-ib-4x8").dynamics
    assert quiet.congestion == "none"
    assert (CongestionProcess(quiet, seed=3).share_at(times) == 0).all()
    never = DynamicsSpec(congestion="markov", congested_fraction=0.0)
    assert (CongestionProcess(never, seed=3).share_at(times) == 0).all()


# --- dynamics: run-to-run noise ---------------------------------------------------------------------

@pytest.mark.parametrize("cv", [0.02, 0.1, 0.3])
def test_noise_factors_mean_one_and_cv(cv):
    draws = noise_factors(DynamicsSpec(noise_cv=cv), 200_000, np.random.default_rng(11))
    assert draws.shape == (200_000,) and (draws > 0).all()
    assert draws.mean() == pytest.approx(1.0, abs=max(5 * cv / np.sqrt(len(draws)), 1e-4))
    assert draws.std() / draws.mean() == pytest.approx(cv, rel=0.05)


def test_noise_factors_zero_cv_and_seeding():
    np.testing.assert_array_equal(noise_factors(DynamicsSpec(noise_cv=0.0), 5, np.random.default_rng(0)), np.ones(5))
    a = noise_factors(DynamicsSpec(), 100, np.random.default_rng(4))
    b = noise_factors(DynamicsSpec(), 100, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)


# --- batch checks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("column,kwargs", [
    ("size_bytes", dict(size_bytes=[1024.0, -1.0])),
    ("size_bytes", dict(size_bytes=float("nan"))),
    ("nranks", dict(nranks=0, nnodes=1)),
    ("nnodes", dict(nranks=8, nnodes=3)),
    ("nnodes", dict(nranks=8, nnodes=16)),
    ("nnodes", dict(nranks=8, nnodes=0)),
    ("algo", dict(algo=7)),
    ("algo", dict(algo=-2)),
    ("proto", dict(proto=3)),
    ("channels", dict(channels=65)),
    ("channels", dict(channels=-1)),
    ("num_pipe_ops", dict(num_pipe_ops=0)),
    ("overlap", dict(overlap=1.5)),
    ("overlap", dict(overlap=float("nan"))),
    ("compute_hbm_share", dict(compute_hbm_share=-0.1)),
    ("congestion", dict(congestion=0.96)),
    ("noise", dict(noise=0.0)),
])
def test_make_batch_rejects_bad_values_naming_the_column(column, kwargs):
    args = dict(func=ALLREDUCE, size_bytes=1024.0, nranks=8, nnodes=1) | kwargs
    with pytest.raises(InputError) as err:
        make_batch(**args)
    assert err.value.field is not None and err.value.field.startswith(column + "["), err.value
    assert column in str(err.value)


def test_make_batch_broadcasts_and_accepts_good_values():
    b = make_batch(ALLREDUCE, [8.0, 1024.0, GiB], 16, 2, algo=RING, proto=[LL, LL128, SIMPLE], channels=64,
                   overlap=1.0, compute_hbm_share=1.0, congestion=0.95, noise=2.0)
    assert len(b) == 3 and (b.nranks == 16).all() and list(b.proto) == [LL, LL128, SIMPLE]


@pytest.mark.parametrize("func", [-1, 9, 99])
def test_make_batch_rejects_an_unknown_collective(func):
    """func must be a collective the models cost (dynamiccl.nccl.Func); anything else comes back from
    the models as an unexplained inf time unless make_batch rejects it, naming the column."""
    with pytest.raises(InputError) as err:
        make_batch(func, 1024.0, 8, 1)
    assert err.value.field is not None and err.value.field.startswith("func[")
