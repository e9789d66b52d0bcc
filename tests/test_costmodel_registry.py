"""The cost-model registry and interface: every consumer (``simulate``, its command line, the tuning
cost tables, the tuning environment) takes its models from ``COST_MODELS``, so a new model is one
class and one registry entry; what the registered models answer through ``evaluate``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dynamiccl.cli import main
from dynamiccl.costmodel import (
    COST_MODELS, CostModelEntry, CostModelOptions, CostResult, NcclModel, WorldModel, make_batch,
)
from dynamiccl.costmodel.simulate import SweepRequest, run_sweep
from dynamiccl.envspec import resolve_env
from dynamiccl.errors import InputError
from dynamiccl.nccl import Algorithm, Func, Protocol
from dynamiccl.tuning.actions import ACTION_ALGO, DEFAULT_ACTION
from dynamiccl.tuning.cases import Case, load_case
from dynamiccl.tuning.costs import CostTable
from dynamiccl.tuning.observation import key_columns
from dynamiccl.tuning.env import TuningEnv
from dynamiccl.tuning.program import StepProgram
from dynamiccl.trace.store import Trace

TRACE = "traces/ref-pp2-dp2.parquet"
ALPHA_US, BETA_GBYTES_PER_S = 7.0, 50.0


class AlphaBeta:
    """A made-up fourth model: alpha + size / beta for every call, whatever the pair."""

    models_conditions = False
    applies_nccl_knobs = True
    costs_p2p = True

    def __init__(self, env):
        self.env = env

    @classmethod
    def from_options(cls, env, options: CostModelOptions) -> "AlphaBeta":
        return cls(env)

    def describe(self) -> str:
        return f"alpha-beta ({ALPHA_US} us, {BETA_GBYTES_PER_S} GB/s) on {self.env.name}"

    def evaluate(self, batch) -> CostResult:
        time = ALPHA_US + batch.size_bytes / (1000.0 * BETA_GBYTES_PER_S)
        return CostResult(algo=batch.algo.copy(), proto=batch.proto.copy(), channels=batch.channels.copy(),
                          time_us=time, latency_us=np.full(len(batch), ALPHA_US), compute_slowdown=np.ones(len(batch)),
                          size_bytes=batch.size_bytes, nranks=batch.nranks, notes=("made up for a test",))


@pytest.fixture
def alpha_beta(monkeypatch):
    monkeypatch.setitem(COST_MODELS, "alpha-beta", CostModelEntry(AlphaBeta.from_options, "a test's model"))
    return "alpha-beta"


def test_registry_names_help_and_what_consumers_must_know():
    assert list(COST_MODELS) == ["world", "nccl", "live", "measured"]
    assert all(entry.help for entry in COST_MODELS.values())
    assert [name for name, entry in COST_MODELS.items() if entry.runs_collectives] == ["live"]
    env = resolve_env("dgx-h100")
    world, nccl = COST_MODELS["world"].create(env), COST_MODELS["nccl"].create(env)
    assert isinstance(world, WorldModel) and isinstance(nccl, NcclModel)
    assert world.models_conditions and not nccl.models_conditions
    assert world.applies_nccl_knobs and nccl.applies_nccl_knobs


def test_unknown_model_is_refused_everywhere_with_the_registered_names():
    env = resolve_env("dgx-h100")
    with pytest.raises(InputError, match="unknown cost model 'nope'; expected one of world, nccl, live, measured"):
        run_sweep(env, SweepRequest("allreduce", [1024], model="nope"))
    program = StepProgram.from_trace(Trace.read(TRACE))
    with pytest.raises(InputError, match="unknown cost model 'nope'"):
        CostTable.build(program, env, "nope")


def test_a_registered_model_reaches_simulate_and_its_command_line(alpha_beta, capsys):
    env = resolve_env("dgx-h100")
    sizes = [1024, 1 << 20, 1 << 30]
    rows, header = run_sweep(env, SweepRequest("allreduce", sizes, model=alpha_beta))
    assert [r.time_us for r in rows] == pytest.approx([ALPHA_US + s / (1000 * BETA_GBYTES_PER_S) for s in sizes])
    assert any("alpha-beta (7.0 us" in line for line in header) and header[-1] == "made up for a test"
    assert main(["simulate", "--env", "dgx-h100", "--coll", "allgather", "--model", alpha_beta, "-b", "1M", "-e", "1M",
                 "--json"]) == 0
    row, = json.loads(capsys.readouterr().out)
    assert row["time_us"] == pytest.approx(ALPHA_US + (1 << 20) / (1000 * BETA_GBYTES_PER_S))
    for command in (["evaluate", "--traces", TRACE], ["replay", TRACE]):  # the choice lists list it
        with pytest.raises(SystemExit):
            main([*command, "--model", "not-registered"])
        assert alpha_beta in capsys.readouterr().err


def test_a_registered_model_fills_cost_tables_and_runs_episodes(alpha_beta):
    env = resolve_env("dgx-h100")
    program = StepProgram.from_trace(Trace.read(TRACE))
    costs = CostTable.build(program, env, alpha_beta)
    assert costs.description == AlphaBeta(env).describe() and costs.model == alpha_beta
    key, action = np.nonzero(costs.mask)
    nbytes = np.array([costs.keys[k].nbytes for k in key], dtype=np.float64)
    expected = ALPHA_US + nbytes / (1000.0 * BETA_GBYTES_PER_S)
    for state in (0, 1):  # a model without conditions answers once for every condition
        for overlap in (0, 1):
            np.testing.assert_array_equal(costs.time_us[key, action, state, overlap], expected)
        np.testing.assert_array_equal(costs.latency_us[key, action, state], np.minimum(ALPHA_US, expected))
    np.testing.assert_array_equal(costs.algo[key, action], ACTION_ALGO[action])
    assert (costs.slowdown[key, action] == 1).all()
    env_ = TuningEnv([Case(TRACE, "dgx-h100")], model=alpha_beta)
    env_.reset(options={"case": 0, "state": 0})
    while True:
        _, reward, terminated, _, _ = env_.step(DEFAULT_ACTION)
        assert np.isfinite(reward)
        if terminated:
            break


def test_cost_tables_take_point_to_point_times_from_the_world_for_nccls_model():
    """NCCL's model has no send/recv or AlltoAll cost (``costs_p2p`` False): the cost tables take the
    world's, quiet and alone (as they always did), whatever the network state or overlap."""
    loaded = load_case(Case("traces/mixtral-8x7b_tp1-pp4-ep8-dp8.parquet", "h100-ib-4x8"), "nccl")
    costs, world = loaded.costs, WorldModel(loaded.env)
    assert not COST_MODELS["nccl"].create(loaded.env).costs_p2p
    p2p = [key for key, call in enumerate(costs.keys) if call.coll in (Func.SEND, Func.ALLTOALL)]
    assert {costs.keys[key].coll for key in p2p} == {Func.SEND, Func.ALLTOALL}
    k = key_columns([costs.keys[key] for key in p2p])
    quiet = world.evaluate(make_batch(k["coll"], k["nbytes"], k["nranks"], k["nnodes"],
                                      num_pipe_ops=k["num_pipe_ops"])).time_us
    for state in (0, 1):
        for overlap in (0, 1):
            np.testing.assert_array_equal(costs.time_us[p2p, DEFAULT_ACTION, state, overlap], quiet)
    assert (costs.latency_us[p2p, DEFAULT_ACTION] == 0).all() and (costs.slowdown[p2p, DEFAULT_ACTION] == 1).all()


def test_nccl_model_answers_what_choose_decides_and_ignores_conditions():
    env = resolve_env("h100-ib-2x8")
    nccl = COST_MODELS["nccl"].create(env)
    batch = make_batch(Func.ALLREDUCE, [1024.0, 1 << 30], 16, 2, overlap=1.0, congestion=0.5, noise=1.3)
    got, choice = nccl.evaluate(batch), nccl.choose(batch)
    for name in ("algo", "proto", "channels", "time_us"):
        np.testing.assert_array_equal(getattr(got, name), choice[name])
    quiet = nccl.evaluate(make_batch(Func.ALLREDUCE, [1024.0, 1 << 30], 16, 2))
    np.testing.assert_array_equal(got.time_us, quiet.time_us)
    assert (got.latency_us == 0).all() and (got.compute_slowdown == 1).all()


def test_world_latency_is_its_time_at_zero_bytes_for_a_forced_pair():
    world = WorldModel(resolve_env("h100-ib-4x8"))
    forced = dict(algo=[Algorithm.RING, Algorithm.TREE, Algorithm.RING], proto=[Protocol.SIMPLE, Protocol.LL,
                                                                                 Protocol.LL128], congestion=0.3)
    big = world.evaluate(make_batch(Func.ALLREDUCE, 1 << 28, 32, 4, **forced))
    zero = world.evaluate(make_batch(Func.ALLREDUCE, 0, 32, 4, **forced))
    np.testing.assert_array_equal(big.latency_us, zero.time_us)
    assert (big.latency_us < big.time_us).all()


def test_default_action_latency_is_taken_at_zero_bytes():
    """Kept from the first cost tables: NCCL's default action's latency part is that of NCCL's
    choice for a 0-byte call, not of the pair it picks at the call's size."""
    loaded = load_case(Case("traces/llama3-70b_tp4-pp4-cp2-dp2-sp.parquet", "h100-ib-16x8"))
    costs, world = loaded.costs, WorldModel(loaded.env)
    k = key_columns(costs.keys)
    zero = world.evaluate(make_batch(k["coll"], 0, k["nranks"], k["nnodes"], num_pipe_ops=k["num_pipe_ops"])).time_us
    at_size = world.evaluate(make_batch(k["coll"], k["nbytes"], k["nranks"], k["nnodes"],
                                        num_pipe_ops=k["num_pipe_ops"]))
    np.testing.assert_array_equal(costs.latency_us[:, DEFAULT_ACTION, 0], np.minimum(zero, at_size.time_us))
    assert (costs.latency_us[:, DEFAULT_ACTION, 0] != at_size.latency_us).any()  # the two differ somewhere
