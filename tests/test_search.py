"""Tests of dynamiccl.tuning.search: the searched decision table (the reference of every gain share)
and the two bounds beside it, on small real cases (shipped traces, a generated two-node step)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from dynamiccl.callkey import CallKey
from dynamiccl.cli import main
from dynamiccl.costmodel.world import WorldModel
from dynamiccl.envspec import resolve_env
from dynamiccl.nccl import Algorithm, Func
from dynamiccl.table import load, save
from dynamiccl.tuning.actions import DEFAULT_ACTION
from dynamiccl.tuning.agents import TableAgent
from dynamiccl.tuning.cases import Case, load_case
from dynamiccl.tuning.env import TuningEnv
from dynamiccl.tuning.evaluate import run_episode
from dynamiccl.tuning.search import (
    RuleKey, StepScorer, band_bytes, line_rate_times_us, search_case, step_bounds,
)
from dynamiccl.workload.spec import WorkloadSpec

CASE = Case("traces/ref-pp2-dp2.parquet", "dgx-h100")
STATES = [0, 1]


@pytest.fixture(scope="module")
def loaded():
    return load_case(CASE, "world")


@pytest.fixture(scope="module")
def result(loaded):
    return search_case(loaded, STATES)


@pytest.fixture(scope="module")
def two_node_case(tmp_path_factory) -> Case:
    """Llama-3 8B TP2 x DP8 on two H100 nodes: collectives inside the node and across the network."""
    env = "h100-ib-2x8"
    workload = WorkloadSpec.from_dict({"model": "llama3-8b", "tp": 2, "dp": 8, "sp": True, "global_batch": 16},
                                      "test")
    trace = workload.cached_trace(tmp_path_factory.mktemp("workloads"), resolve_env(env).cluster)
    return Case(str(trace), env)


# --- rule keys -------------------------------------------------------------------------------------


def test_size_bands_tile_every_size():
    assert band_bytes(0) == (0, 1) and band_bytes(1) == (2, 3) and band_bytes(10) == (1024, 2047)
    assert band_bytes(63) == (2**63, 2**64 - 1)
    for nbytes in (0, 1, 2, 3, 4, 1000, 1024, 2**40 + 5):
        key = RuleKey.of(CallKey(coll=Func.ALLREDUCE, nbytes=nbytes, nranks=8, nnodes=1))
        low, high = band_bytes(key.band)
        assert low <= nbytes <= high
    for band in (-1, 64):
        with pytest.raises(ValueError, match="size band"):
            band_bytes(band)


# --- the search ------------------------------------------------------------------------------------


def test_search_is_never_worse_than_nccl_default_or_the_greedy_start(loaded, result):
    scorer = StepScorer(loaded, STATES)
    default = scorer.step_times_us(np.zeros(len(scorer.keys), dtype=np.int64))
    greedy = scorer.step_times_us(scorer.greedy_table())
    assert np.mean(result.step_time_us) <= min(default.mean(), greedy.mean())
    np.testing.assert_allclose(result.default_step_time_us, default)
    assert result.start in ("nccl-default", "greedy") and result.replays > 0 and result.sweeps >= 1
    # One rule per (collective, shape, size band) of the step, no more.
    assert [RuleKey(int(r.coll), r.nranks, r.nnodes, r.num_pipe_ops, r.reg_buff, r.min_bytes.bit_length() - 1
                    if r.min_bytes else 0) for r in result.table.rules] == scorer.keys


def test_searched_table_runs_as_the_plugin_applies_it(result, tmp_path):
    # The table written to disk and applied by TableAgent (the plugin's semantics) gives the searched step times.
    path = tmp_path / "search.json"
    save(result.table, path)
    table = load(path)
    assert table.provenance["method"] == "dynamiccl.tuning.search.search_case"
    env = TuningEnv(cases=[CASE], states=len(STATES))
    for state, searched in zip(STATES, result.step_time_us):
        out = run_episode(env, TableAgent(table, name="search"), 0, state)
        assert out["step"]["step_time_us"] == pytest.approx(searched, rel=1e-12)


def test_search_finds_a_planted_better_table(loaded):
    """Make one action of the busiest rule key much cheaper than everything else (a quarter of the
    time, in every condition); the descent from NCCL's default (no greedy start) must find it."""
    scorer = StepScorer(loaded, STATES)
    key = int(np.argmax(scorer.key_weight_us()))
    calls = scorer.call_key_index == key
    shared = np.flatnonzero(scorer.masks[calls].all(axis=0))
    planted_action = int(shared[shared != DEFAULT_ACTION][-1])  # valid on every call of the key
    costs = loaded.costs
    rows = np.unique(np.asarray(costs.call_row)[scorer.calls[calls]])
    time_us, latency_us = costs.time_us.copy(), costs.latency_us.copy()
    cheapest = np.where(np.isfinite(time_us[rows]), time_us[rows], np.inf).min(axis=1)  # [rows, congestion, overlap]
    time_us[rows, planted_action] = 0.25 * cheapest
    latency_us[rows, planted_action] = 0.0
    planted = dataclasses.replace(loaded, costs=dataclasses.replace(costs, time_us=time_us, latency_us=latency_us))

    found = search_case(planted, STATES, greedy_start=False)
    assert found.start == "nccl-default"
    assert found.actions[scorer.keys[key]] == planted_action
    assert np.mean(found.step_time_us) < np.mean(found.default_step_time_us)


def test_search_rejects_bad_arguments(loaded):
    with pytest.raises(ValueError, match="at least one dynamics state"):
        search_case(loaded, [])
    with pytest.raises(ValueError, match="max_sweeps"):
        search_case(loaded, STATES, max_sweeps=-1)
    with pytest.raises(ValueError, match="one action per rule key"):
        search_case(loaded, STATES, start=np.zeros(1, dtype=np.int64))


# --- the bounds ------------------------------------------------------------------------------------


def test_line_rate_time_known_answers():
    env = resolve_env("dgx-h100")
    world = WorldModel(env)
    nvlink_mbytes_per_us = env.intra.nvlink_gbytes_per_s * 1e3  # 18 x 25 GB/s per direction
    # Ring AllReduce moves 2(n-1)/n of the buffer per GPU: 1 GB x 14/8 at NVLink's line rate.
    assert world.line_rate_time_us(Func.ALLREDUCE, 1e9, 8, 1, [Algorithm.RING]) == \
        pytest.approx(1e9 * 14 / 8 / nvlink_mbytes_per_us)
    # NVLS moves (n+1)/n: the cheaper of the two is the bound.
    assert world.line_rate_time_us(Func.ALLREDUCE, 1e9, 8, 1, [Algorithm.RING, Algorithm.NVLS]) == \
        pytest.approx(1e9 * 9 / 8 / nvlink_mbytes_per_us)
    # One GPU per node on two nodes: no intra-node link; the ring volume (1 x S) crosses the one NIC
    # near the GPU at its datasheet rate (400 Gb/s), not at what the transport achieves of it.
    nic_mbytes_per_us = env.nics_near(1) * min(env.inter.nic_gbytes_per_s, env.intra.pcie_gbytes_per_s) * 1e3
    assert world.line_rate_time_us(Func.ALLREDUCE, 1e9, 2, 2, [Algorithm.RING]) == pytest.approx(1e9 / nic_mbytes_per_us)
    slow = dataclasses.replace(world.params, net_efficiency={k: 0.5 for k in world.params.net_efficiency})
    assert WorldModel(env, slow).line_rate_time_us(Func.ALLREDUCE, 1e9, 2, 2, [Algorithm.RING]) == \
        world.line_rate_time_us(Func.ALLREDUCE, 1e9, 2, 2, [Algorithm.RING])
    # Send/recv runs as one transfer whatever the algorithms: S over the NIC.
    assert world.line_rate_time_us(Func.SEND, 1e9, 2, 2, []) == pytest.approx(1e9 / nic_mbytes_per_us)
    assert world.line_rate_time_us(Func.ALLREDUCE, 0, 2, 2, [Algorithm.RING]) == 0.0
    assert math.isinf(world.line_rate_time_us(Func.ALLREDUCE, 1e9, 2, 2, []))
    with pytest.raises(ValueError, match="costs no GATHER"):
        world.line_rate_time_us(Func.GATHER, 1e9, 2, 2, [Algorithm.RING])


@pytest.mark.parametrize("which", ["one-node", "two-node"])
def test_line_rate_is_below_the_world_for_every_action(which, two_node_case):
    case = CASE if which == "one-node" else two_node_case
    loaded = load_case(case, "world")
    costs = loaded.costs
    line = line_rate_times_us(costs, loaded.env)
    assert (line >= 0).all() and (line > 0).any()
    for row in range(len(costs.keys)):
        valid = costs.time_us[row][costs.mask[row]]  # every valid action, in every condition
        assert np.isfinite(valid).all() and (line[row] <= valid * (1 + 1e-12)).all(), costs.keys[row]


@pytest.mark.parametrize("which", ["one-node", "two-node"])
def test_bounds_are_ordered(which, two_node_case, loaded, result):
    """ceiling <= line-rate bound <= search <= NCCL's default, in step time."""
    if which == "one-node":
        case_loaded, searched = loaded, result
    else:
        case_loaded = load_case(two_node_case, "world")
        searched = search_case(case_loaded, STATES, max_sweeps=1)
    assert np.mean(searched.step_time_us) <= np.mean(searched.default_step_time_us)
    for state, search_time in zip(STATES, searched.step_time_us):
        bounds = step_bounds(case_loaded, state)
        assert 0 < bounds.no_comm_step_time_us <= bounds.line_rate_step_time_us <= search_time
    # Compute alone, with its dependencies: the busiest rank's compute is a floor of the ceiling.
    program = case_loaded.program
    busiest = max(sum(program.op_base_us[g] for g in chain) for chain in program.compute_chain)
    assert step_bounds(case_loaded, STATES[0]).no_comm_step_time_us >= busiest * (1 - 1e-9)


# --- the command ------------------------------------------------------------------------------------


def test_search_command_writes_a_table_and_the_figures(tmp_path, capsys):
    table, figures = tmp_path / "t.json", tmp_path / "s.json"
    assert main(["search", "--trace", CASE.trace, "--env", CASE.env, "--states", "1", "--max-sweeps", "1",
                 "-o", str(table), "--json", str(figures)]) == 0
    out = capsys.readouterr().out
    assert CASE.label in out and "line-rate" in out and "no-comm" in out and f"wrote {table}" in out
    written = json.loads(figures.read_text())
    row = written["cases"][0]
    assert row["case"] == CASE.label and row["states"] == [1000] and row["table"] == str(table)
    assert row["no_comm_step_time_us"][0] <= row["line_rate_bound_step_time_us"][0] <= row["search_step_time_us"][0]
    assert row["search_step_time_us"][0] <= row["default_step_time_us"][0]
    assert len(load(table).rules) == row["rules"]
    assert main(["search", "--trace", CASE.trace, "-o", str(table)]) == 2
    assert "give --trace and --env together" in capsys.readouterr().err


def test_incremental_scoring_is_exact(loaded):
    """A replay continued from a fork of the common prefix gives the step time of a replay from the
    start, bit for bit, and forking leaves the original untouched."""
    scorer = StepScorer(loaded, STATES)
    rng = np.random.default_rng(0)
    for trial in range(4):
        table = np.array([rng.choice(scorer.candidates(k)) for k in range(len(scorer.keys))], dtype=np.int64)
        key = int(rng.integers(len(scorer.keys)))
        prefix = scorer.prefix(table, STATES[trial % 2], key)
        assert prefix is not None and scorer._key_of_call[prefix.next_decision()] == key
        pending = prefix.next_decision()
        fresh = StepScorer(loaded, STATES)  # no memo shared with the incremental one
        assert scorer.step_time_us(table, STATES[trial % 2], lambda: prefix) == \
            fresh.step_time_us(table, STATES[trial % 2])
        assert prefix.next_decision() == pending and math.isnan(prefix.call_start_us[pending])  # not advanced


def test_incremental_search_finds_what_the_full_replays_find(loaded, result):
    full = search_case(loaded, STATES, incremental=False)
    assert full.actions == result.actions and full.step_time_us == result.step_time_us


def test_a_fork_runs_on_without_touching_the_original(loaded):
    from dynamiccl.tuning.cases import new_replay

    replay = new_replay(loaded, 0)
    for _ in range(len(loaded.program.tunable_calls) // 2):
        replay.decide(replay.next_decision(), DEFAULT_ACTION)
    pending = replay.next_decision()
    before = {name: (list(map(list, value)) if name in ("_rank_calls", "_rank_domain") else
                     list(value) if isinstance(value, list) else value)
              for name, value in vars(replay).items() if name != "_events"}
    fork = replay.fork()
    valid = np.flatnonzero(loaded.costs.mask[loaded.costs.call_row[pending]])
    fork.run(lambda call: int(valid[-1]) if call == pending else DEFAULT_ACTION)
    after = {name: (list(map(list, value)) if name in ("_rank_calls", "_rank_domain") else
                    list(value) if isinstance(value, list) else value)
             for name, value in vars(replay).items() if name != "_events"}
    assert after.keys() == before.keys()
    for name in before:
        assert after[name] is before[name] or after[name] == before[name] or (
            # NaN != NaN: compare lists of floats position by position
            isinstance(before[name], list) and all(a == b or (a != a and b != b)
                                                   for a, b in zip(after[name], before[name]))), name
    # and the original finishes as a replay that never forked
    fresh = new_replay(loaded, 0)
    assert replay.run() == fresh.run()


def test_search_fans_out_per_case_with_the_same_tables_and_figures_and_names_a_failed_case(tmp_path, monkeypatch,
                                                                                        capsys):
    import dynamiccl.tuning.search as search_module
    from sweep_cases import search_argv, search_config, search_written

    config = search_config(tmp_path)
    here = (tmp_path / "here", tmp_path / "here.json")
    assert main(search_argv(config, *here, "--workers", "1")) == 0
    assert "searched 2 of 2 case(s) in this process" in capsys.readouterr().out
    tables, rows, failures = search_written(*here)
    assert len(tables) == 2 and [row["case"] for row in rows] == ["ref-pp2-dp2@dgx-h100", "ref-dp2-tp2@dgx-h100"]
    assert failures == []

    # On a pool of 2: the tables byte for byte those of the run in this process, the rows equal.
    pool = (tmp_path / "pool", tmp_path / "pool.json")
    assert main(search_argv(config, *pool, "--workers", "2")) == 0
    assert "searched 2 of 2 case(s) on 2 local worker processes" in capsys.readouterr().out
    assert search_written(*pool) == (tables, rows, [])

    # A case whose search breaks (made to, in this process) is retried, then named; the other is written.
    search_once = search_module.search_one

    def breaks_on_the_first_case(loaded, states, **kwargs):
        if loaded.case.label == "ref-pp2-dp2@dgx-h100":
            raise RuntimeError("the search broke")
        return search_once(loaded, states, **kwargs)

    monkeypatch.setattr(search_module, "search_one", breaks_on_the_first_case)
    broken = (tmp_path / "broken", tmp_path / "broken.json")
    assert main(search_argv(config, *broken, "--workers", "1")) == 1
    captured = capsys.readouterr()
    assert "searched 1 of 2 case(s) in this process" in captured.out and "ref-dp2-tp2@dgx-h100" in captured.out
    assert "ref-pp2-dp2@dgx-h100 failed (attempt 1 of 2: RuntimeError: the search broke" in captured.err
    assert "ref-pp2-dp2@dgx-h100: failed 2 times; last error: RuntimeError: the search broke" in captured.err
    broken_tables, broken_rows, [failure] = search_written(*broken)
    assert broken_tables == {name: data for name, data in tables.items() if "ref-dp2-tp2" in name}
    assert broken_rows == rows[1:] and (failure["case"], failure["attempts"]) == ("ref-pp2-dp2@dgx-h100", 2)


def test_search_refuses_a_bad_case_before_searching_any(tmp_path, capsys):
    from sweep_cases import CASES, search_argv, search_config

    broken = tmp_path / "broken.parquet"
    broken.write_text("not a trace")
    for bad, why in (((str(broken), "dgx-h100"), f"{broken}: not a readable Parquet file"),
                     # 8 GPUs a node on nodes of 4: found without costing the case
                     (("traces/llama3-8b_tp1-pp1-dp8.parquet", "gh200-4x4"), "needs 8 GPUs per node")):
        config = search_config(tmp_path, (CASES[0], bad))
        out = tmp_path / "out"
        assert main(search_argv(config, out, tmp_path / "s.json", "--workers", "2")) == 2
        err = capsys.readouterr().err
        assert err.startswith("dynamiccl: error: ") and why in err and "search:" not in err
        assert not out.exists() and not (tmp_path / "s.json").exists()
