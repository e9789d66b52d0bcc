"""A table acts only where it has evidence: confinement, keep-NCCL bands in every format and in the C
plugin, ``dynamiccl table check`` (trace, workload, sweep), and launch/doctor failing open on it."""

from __future__ import annotations

import json
import random
import tomllib
from pathlib import Path

import pytest
from plugin_harness import use_table
from dynamiccl.callkey import CallKey
from dynamiccl.cli import main
from dynamiccl.nccl import TUNABLE_FUNCS, Algorithm, Func, Protocol, nccl_argmin
from dynamiccl.table import DecisionTable, Rule, load, nvidia_csv, plugin_text, save
from dynamiccl.table.evidence import Evidence, catch_all_rules, confine, confine_to_evidence, won_bands
from dynamiccl.table.model import MAX_BYTES
from dynamiccl.table.policy_export import csv_compatible
from dynamiccl.workload.spec import WorkloadSpec

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
RING_SIMPLE = dict(algorithm=Algorithm.RING, protocol=Protocol.SIMPLE, channels=16)
# Llama-3 8B TP8 without SP on one DGX H100, one micro-batch: 64 MiB activation all-reduces on 8 ranks
# of one node (the 0.90x layout, small).
TP8 = {"model": "llama3-8b", "tp": 8, "pp": 1, "dp": 1, "global_batch": 1}
# Forcing ring/LL on one channel for every all-reduce: far slower than anything NCCL picks for 64 MiB.
BAD = DecisionTable((Rule(Func.ALLREDUCE, 0, MAX_BYTES, nranks=8, nnodes=1, algorithm=Algorithm.RING,
                          protocol=Protocol.LL, channels=1),), {"cases": []})


@pytest.fixture(scope="module")
def tp8_trace(tmp_path_factory) -> str:
    from dynamiccl.envspec import resolve_env

    out = tmp_path_factory.mktemp("tp8") / "llama3-8b-tp8.parquet"
    WorkloadSpec.from_dict(TP8, "test").generate(resolve_env("dgx-h100").cluster).write(out)
    return str(out)


# --- confine: bands, keep rules, catch-all ---------------------------------------------------------

def evidence(saved: dict[tuple[int, int], list[float]]) -> Evidence:
    return Evidence(saved, ())


def test_a_rule_keeps_only_its_runs_of_won_sizes_and_nccl_decides_elsewhere():
    rule = Rule(Func.ALLGATHER, 0, MAX_BYTES, nranks=8, nnodes=1, **RING_SIMPLE)
    other = Rule(Func.ALLREDUCE, 0, MAX_BYTES, nranks=16, nnodes=2, algorithm=Algorithm.TREE,
                 protocol=Protocol.LL128, channels=1)
    table = DecisionTable((rule, other))
    # Rule 0 won at 1, 2 and 8 MiB, lost at 4 MiB (in one of two replays), won at 64 MiB; rule 1 never won.
    ev = evidence({(0, MIB): [5.0, 1.0], (0, 2 * MIB): [3.0], (0, 4 * MIB): [2.0, -0.5], (0, 8 * MIB): [1.0],
                   (0, 64 * MIB): [9.0], (1, 4): [-1.0, -2.0]})
    assert won_bands(rule, ev, 0) == [(MIB, 2 * MIB), (8 * MIB, 64 * MIB)]
    confined = confine(table, ev)
    acting = [r for r in confined.rules if not r.keeps_nccl]
    assert [(r.min_bytes, r.max_bytes) for r in acting] == [(MIB, 2 * MIB), (8 * MIB, 64 * MIB)]
    assert all((r.coll, r.nranks, r.nnodes, r.algorithm) == (Func.ALLGATHER, 8, 1, Algorithm.RING) for r in acting)
    # The rest explicitly keeps NCCL's choice: every call matches a rule, one of the catch-all ones at the end.
    assert confined.rules[-len(TUNABLE_FUNCS):] == catch_all_rules()
    for nbytes, nranks, acts in ((MIB, 8, True), (4 * MIB, 8, False), (3 * MIB, 8, False), (128 * MIB, 8, False),
                                 (MIB, 16, False), (10 * MIB, 8, True)):
        found = confined.lookup(CallKey(Func.ALLGATHER, nbytes, nranks, 1))
        assert found is not None and (not found.keeps_nccl) == acts, (nbytes, nranks)
    assert confined.lookup(CallKey(Func.ALLREDUCE, 4, 16, 2)).keeps_nccl  # rule 1 lost everywhere


def test_a_keep_rule_stays_where_it_shadows_a_later_acting_rule():
    exact_keep = Rule(Func.ALLREDUCE, MIB, MIB, nranks=8, nnodes=1, position=3)  # the policy kept NCCL here
    wide = Rule(Func.ALLREDUCE, 0, MAX_BYTES, nranks=8, nnodes=1, **RING_SIMPLE)
    unrelated_keep = Rule(Func.BROADCAST, 0, 100, nranks=2, nnodes=1)
    table = DecisionTable((exact_keep, unrelated_keep, wide))
    confined = confine(table, evidence({(2, MIB): [1.0]}))
    assert confined.rules[0] == exact_keep  # shadows the band [1M, 1M] at position 3
    assert unrelated_keep not in confined.rules  # shadows nothing: the catch-all says the same
    assert confine(confined, evidence({(1, MIB): [1.0]})).rules == confined.rules  # a fixed point


def test_confining_a_harmful_table_on_a_replayed_case_removes_every_acting_rule(tp8_trace):
    from dynamiccl.tuning.env import TuningEnv

    env = TuningEnv([(tp8_trace, "dgx-h100")], states=1)
    confined, ev = confine_to_evidence(BAD, env, [(0, 0), (0, 1)])
    assert all(rule.keeps_nccl for rule in confined.rules)
    record = confined.provenance["evidence"]
    assert record["acting_rules"] == [] and record["rounds"] >= 1
    assert list(record["cases"].values())[0]["speedup"] == pytest.approx(1.0)


# --- formats and the C plugin ------------------------------------------------------------------------

def confined_table() -> DecisionTable:
    band = Rule(Func.ALLREDUCE, MIB, 8 * MIB, nranks=8, nnodes=1, **RING_SIMPLE)
    keep = Rule(Func.ALLREDUCE, 0, MAX_BYTES, nranks=8, nnodes=1)
    later = Rule(Func.ALLREDUCE, 0, MAX_BYTES, nnodes=2, algorithm=Algorithm.TREE, protocol=Protocol.LL, channels=2)
    return DecisionTable((band, keep, later) + catch_all_rules())


def test_json_and_plugin_text_keep_the_keep_nccl_bands():
    table = confined_table()
    from dynamiccl.table import json_format

    assert json_format.read(json_format.write(table)).rules == table.rules
    assert plugin_text.read(plugin_text.write(table).encode()).rules == table.rules


def _nccl_8x1():
    """NCCL's model of one DGX H100, for the all-reduces of 8 ranks on 1 node (numPipeOps 1)."""
    from dynamiccl.costmodel.batch import make_batch
    from dynamiccl.costmodel.nccl_model import NcclModel
    from dynamiccl.envspec import resolve_env

    model = NcclModel(resolve_env("dgx-h100"))

    def nccl_cell(nbytes: int, nranks: int = 8, nnodes: int = 1):
        got = model.choose(make_batch(int(Func.ALLREDUCE), float(nbytes), nranks, nnodes))
        return Algorithm(int(got["algo"][0])), Protocol(int(got["proto"][0]))

    return {(Func.ALLREDUCE, 8, 1, 1): model}, nccl_cell


def test_the_csv_cannot_say_keep_nccl_so_it_writes_nccls_choice_instead_of_acting_there():
    shapes, nccl_cell = _nccl_8x1()
    compatible = csv_compatible(confined_table(), shapes)
    back = nvidia_csv.read(nvidia_csv.write(compatible))
    # In the band: the band's choice; elsewhere on 8 ranks/1 node: NCCL's own cell, written out with
    # channels 0 (NCCL's count), never the later tree/LL rule the keep rule shadowed, and never a call
    # left to NVIDIA's plugin's default of 1 channel.
    assert back.lookup(CallKey(Func.ALLREDUCE, 2 * MIB, 8, 1)).algorithm == Algorithm.RING
    written = back.lookup(CallKey(Func.ALLREDUCE, 64 * MIB, 8, 1))
    assert (written.algorithm, written.protocol, written.channels) == (*nccl_cell(64 * MIB), -1)
    assert back.lookup(CallKey(Func.ALLREDUCE, 64 * MIB, 16, 2)).algorithm == Algorithm.TREE
    # A shape the table was not built for: NVIDIA's plugin runs it on 1 channel, and the table says so.
    assert back.lookup(CallKey(Func.ALLGATHER, MIB, 8, 1)) in nvidia_csv.example_default_rules()


def test_the_csv_cuts_a_keep_band_out_of_the_later_rules_it_shadowed():
    shapes, nccl_cell = _nccl_8x1()
    table = DecisionTable((
        Rule(Func.ALLREDUCE, MIB, 8 * MIB, nranks=8, nnodes=1, **RING_SIMPLE),
        Rule(Func.ALLREDUCE, 0, 16 * MIB, nranks=8, nnodes=1),  # keep NCCL's choice up to 16 MiB on 8/1
        Rule(Func.ALLREDUCE, 8 * MIB, 32 * MIB, algorithm=Algorithm.TREE, protocol=Protocol.LL, channels=2),
    ))
    compatible = csv_compatible(table, shapes)
    back = nvidia_csv.read(nvidia_csv.write(compatible))
    assert compatible.provenance["csv_compatible"]["keep_rules_written_as_nccl_choice"] == 1
    for nbytes, nranks in ((12 * MIB, 8), (12 * MIB, 16), (20 * MIB, 8), (2 * MIB, 8)):
        json_rule = table.lookup(CallKey(Func.ALLREDUCE, nbytes, nranks, 1))
        csv_rule = back.lookup(CallKey(Func.ALLREDUCE, nbytes, nranks, 1))
        if json_rule is None:  # no rule: NCCL's choice, written out on the table's shape
            assert (csv_rule.algorithm, csv_rule.protocol) == nccl_cell(nbytes, nranks), (nbytes, nranks)
        elif json_rule.keeps_nccl:  # NCCL's choice, never the tree rule
            assert (csv_rule.algorithm, csv_rule.protocol) == nccl_cell(nbytes), (nbytes, nranks)
        elif csv_rule.algorithm is not None:  # the CSV may keep NCCL's choice where the JSON acts, never the reverse
            assert (csv_rule.algorithm, csv_rule.protocol) == (json_rule.algorithm, json_rule.protocol)
    # It cannot say "any nranks but 8", so the tree rule loses 8..16 MiB for every communicator: a
    # shape the table was not built for then gets NVIDIA's plugin's default (1 channel), said in the table.
    assert back.lookup(CallKey(Func.ALLREDUCE, 12 * MIB, 16, 1)) == nvidia_csv.example_default_rules()[-1]
    assert back.lookup(CallKey(Func.ALLREDUCE, 20 * MIB, 8, 1)).algorithm == Algorithm.TREE


def test_the_plugin_falls_through_to_nccls_choice_in_keep_bands(tuner, tmp_path, monkeypatch):
    table = confined_table()
    use_table(tuner, table, tmp_path, monkeypatch)
    rng = random.Random(14)
    with tuner.open(6, 8, 1) as comm:
        for nbytes in (0, 4, MIB - 1, MIB, 4 * MIB, 8 * MIB, 8 * MIB + 1, 1 << 30, MAX_BYTES):
            costs = [[float(rng.randint(1, 9)) for _ in Protocol] for _ in Algorithm]
            got = comm.coll_info(Func.ALLREDUCE, nbytes, costs)
            expected = table.choose(costs, CallKey(Func.ALLREDUCE, nbytes, 8, 1))
            assert (got.algorithm, got.protocol, got.n_channels) == (expected.algorithm, expected.protocol,
                                                                     expected.channels)
            assert tuner.stats()["last"]["rule"] == expected.rule_index
            if not MIB <= nbytes <= 8 * MIB:  # keep band: NCCL's own cell and channel count
                assert (got.algorithm, got.protocol) == nccl_argmin(costs) and got.n_channels == 0
            else:
                assert (got.algorithm, got.protocol, got.n_channels) == (Algorithm.RING, Protocol.SIMPLE, 16)


def test_lookup_says_there_is_no_evidence_in_a_keep_band(tmp_path, capsys):
    path = tmp_path / "t.json"
    save(confined_table(), path)
    assert main(["table", "lookup", str(path), "--coll", "allreduce", "--bytes", str(64 * MIB), "--nranks", "8",
                 "--nnodes", "1"]) == 0
    assert "NCCL's own choice: no evidence here" in capsys.readouterr().out


# --- table check ---------------------------------------------------------------------------------------

def test_check_refuses_a_table_that_slows_the_step_and_lists_the_calls(tp8_trace, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    save(BAD, bad)
    assert main(["table", "check", str(bad), "--trace", tp8_trace, "--env", "dgx-h100", "--states", "2"]) == 1
    out = capsys.readouterr().out
    assert "REFUSED" in out and "allreduce 67,108,864 B on 8 rank(s)/1 node(s)" in out
    assert "-> table ring/ll/1ch" in out and "NCCL's default" in out and "noise" in out
    assert main(["table", "check", str(bad), "--trace", tp8_trace, "--env", "dgx-h100", "--states", "2",
                 "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert not result["passed"] and result["ratio"] < 0.995 and result["responsible"][0]["lost_us"] > 0


def test_check_of_a_keep_only_table_passes_from_workload_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    keep = tmp_path / "keep.json"
    save(DecisionTable(catch_all_rules()), keep)
    argv = ["table", "check", str(keep), "--env", "dgx-h100", "--states", "1", "--model", "llama3-8b",
            "--tp", "8", "--pp", "1", "--dp", "1", "--global-batch", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1.0000x" in out and "passes" in out and "0 call(s) per step changed" in out
    assert main(["table", "check", str(keep), "--env", "dgx-h100"]) == 2  # neither a trace nor a workload
    assert "--trace" in capsys.readouterr().err


# --- the sweep ---------------------------------------------------------------------------------------------

def test_the_shipped_sweep_is_broad_and_holds_no_case_training_saw():
    from dynamiccl.demo import DEMO_CONFIG
    from dynamiccl.table.sweep import load_sweep
    from dynamiccl.tuning.config import load_config

    sweep = load_sweep(ROOT / "experiments" / "sweep" / "layouts.toml")
    assert len(sweep.layouts) >= 30
    kinds = " ".join(layout.kind for layout in sweep.layouts)
    for kind in ("TP", "SP", "PP", "DP", "FSDP", "EP"):
        assert kind in kinds
    envs = {layout.env for layout in sweep.layouts}
    assert {"dgx-h100", "hgx-h200", "dgx-a100", "pcie-h100-1x8"} <= envs
    assert any(layout.env.startswith(("h100-ib", "a100-hdr")) for layout in sweep.layouts)
    seen = set()
    config = load_config(ROOT / "experiments" / "default.toml")
    for case in config.train.cases + config.heldout.cases:
        seen.add((json.dumps(case.workload.to_dict(), sort_keys=True), case.env))
    demo = tomllib.loads(DEMO_CONFIG.format(config="c", run="r", trace="t", env="dgx-h100", model="world",
                                            timesteps=1))
    for section in ("train", "heldout"):
        for case in demo[section]["cases"]:
            if "workload" in case:
                spec = WorkloadSpec.from_dict(case["workload"], "demo")
                seen.add((json.dumps(spec.to_dict(), sort_keys=True), case["env"]))
    for layout in sweep.layouts:
        assert (json.dumps(layout.workload.to_dict(), sort_keys=True), layout.env) not in seen, layout.name


def test_a_sweep_file_with_a_problem_names_it(tmp_path):
    from dynamiccl.errors import InputError
    from dynamiccl.table.sweep import load_sweep

    layout = '[[layouts]]\nname = "a"\nkind = "TP"\nworkload = {{ model = "llama3-8b", tp = 2, pp = 1, dp = 1 }}\n' \
             'env = "{env}"\n'
    path = tmp_path / "s.toml"
    path.write_text(layout.format(env="dgx-h100") * 2)
    with pytest.raises(InputError, match="used twice"):
        load_sweep(path)
    path.write_text(layout.format(env="no-such-cluster"))
    with pytest.raises(InputError, match="no-such-cluster"):
        load_sweep(path)


def test_a_sweep_writes_its_results_and_does_not_count_what_the_table_saw(tmp_path, monkeypatch, capsys):
    from dynamiccl.table.sweep import layout_case, load_sweep

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tmp_path / "s.toml"
    path.write_text('[sweep]\nstates = 1\n'
                    '[[layouts]]\nname = "tp8"\nkind = "TP"\nworkload = { model = "llama3-8b", tp = 8, pp = 1, '
                    'dp = 1, global_batch = 1 }\nenv = "dgx-h100"\n'
                    '[[layouts]]\nname = "dp8"\nkind = "DP"\nworkload = { model = "gpt-tiny", tp = 1, pp = 1, '
                    'dp = 8, global_batch = 8 }\nenv = "dgx-h100"\n')
    sweep = load_sweep(path)
    bad = tmp_path / "bad.json"
    save(BAD, bad)
    out = tmp_path / "results"
    assert main(["table", "check", str(bad), "--sweep", str(path), "-o", str(out), "--workers", "1"]) == 1
    record = json.loads((tmp_path / "results.json").read_text())
    assert [row["verdict"] for row in record["layouts"]] == ["FAIL", "pass"]
    assert "| tp8 | TP | dgx-h100 |" in (tmp_path / "results.md").read_text()
    capsys.readouterr()
    # The same table, its provenance naming the failing layout's case: that layout no longer counts.
    seen = DecisionTable(BAD.rules, {"cases": [layout_case(sweep.layouts[0]).label]})
    save(seen, bad)
    assert main(["table", "check", str(bad), "--sweep", str(path), "--json", "--workers", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["layouts"][0]["verdict"] == "seen in training"


def test_a_sweep_fans_out_per_layout_with_the_same_results_and_names_a_layout_that_failed(tmp_path, monkeypatch,
                                                                                          capsys):
    import dynamiccl.table.sweep as table_sweep

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tmp_path / "s.toml"
    layout = '[[layouts]]\nname = "{}"\nkind = "{}"\nworkload = {{ model = "{}", tp = {}, pp = 1, dp = {}, ' \
             'global_batch = {} }}\nenv = "dgx-h100"\n'
    path.write_text('[sweep]\nstates = 1\n' + layout.format("tp8", "TP", "llama3-8b", 8, 1, 1)
                    + layout.format("dp2", "DP", "gpt-tiny", 1, 2, 2) + layout.format("dp8", "DP", "gpt-tiny", 1, 8, 8))
    bad = tmp_path / "bad.json"
    save(BAD, bad)

    def check(workers: str, name: str) -> tuple[dict, list[str], str]:
        assert main(["table", "check", str(bad), "--sweep", str(path), "-o", str(tmp_path / name),
                     "--workers", workers]) == 1
        record = json.loads((tmp_path / f"{name}.json").read_text())
        md = (tmp_path / f"{name}.md").read_text().splitlines()
        return record, [line for line in md if line.startswith("| ")], capsys.readouterr().err

    here, here_rows, err = check("1", "here")
    assert "checked 3 of 3 layouts in this process" in err
    assert [row["verdict"] for row in here["layouts"]] == ["FAIL", "pass", "pass"] and here["failed"] == []
    pool, pool_rows, err = check("2", "pool")
    assert "checked 3 of 3 layouts on 2 local worker processes" in err
    assert pool_rows == here_rows and {**pool, "wall_s": 0} == {**here, "wall_s": 0}

    # A layout whose check fails (twice) is named, the table does not pass, the others are kept in order.
    replay = table_sweep.check_cases

    def fails_on_dp2(table, cases, **kwargs):
        if cases[0].trace == dp2_trace:
            raise RuntimeError("the replay broke")
        return replay(table, cases, **kwargs)

    dp2_trace = table_sweep.layout_case(table_sweep.load_sweep(path).layouts[1]).trace
    monkeypatch.setattr(table_sweep, "check_cases", fails_on_dp2)
    failed, failed_rows, err = check("1", "failed")
    assert "checked 2 of 3 layouts in this process" in err
    assert "dp2: failed 2 times; last error: RuntimeError: the replay broke" in err
    assert failed["layouts"] == [here["layouts"][0], here["layouts"][2]] and not failed["passed"]
    [entry] = failed["failed"]
    assert entry["error"].startswith("RuntimeError: the replay broke (table/sweep.py:")  # where in dynamiccl
    assert {**entry, "error": ""} == {"name": "dp2", "kind": "DP", "env": "dgx-h100", "attempts": 2, "error": ""}
    md = (tmp_path / "failed.md").read_text()
    assert "## Layouts that could not be checked" in md and "- **dp2** (DP, dgx-h100): failed 2 times" in md
    assert "2 layouts (2 the table never saw; 1 more could not be checked)" in md
    assert failed_rows == [row for row in here_rows if not row.startswith("| dp2 |")]


# --- launch and doctor ---------------------------------------------------------------------------------

@pytest.fixture
def plugin_cache(request, monkeypatch) -> Path:
    """$DYNAMICCL_CACHE_DIR with the session's plugin build (the ``cache`` fixture of conftest.py): no second compile."""
    root = request.getfixturevalue("cache")
    monkeypatch.setenv("DYNAMICCL_CACHE_DIR", str(root))
    return root


@pytest.mark.usefixtures("plugin_cache")
def test_launch_runs_untuned_when_the_check_refuses_and_says_so_once(tp8_trace, tmp_path):
    from dynamiccl.launcher import plan_launch

    bad = tmp_path / "bad.json"
    save(BAD, bad)
    plan = plan_launch(bad, trace=tp8_trace, env_spec="dgx-h100", base_env={"NCCL_TUNER_PLUGIN": "/x.so"})
    assert not plan.tuned and "refused" in plan.reason
    assert "NCCL_TUNER_PLUGIN" not in plan.env
    assert sum("refused" in line for line in plan.lines) == 1
    keep = tmp_path / "keep.json"
    save(DecisionTable(catch_all_rules()), keep)
    plan = plan_launch(keep, trace=tp8_trace, env_spec="dgx-h100", base_env={})
    assert plan.tuned and any("passes" in line for line in plan.lines)
    plan = plan_launch(keep, trace=tp8_trace, env_spec=None, base_env={})  # the check cannot run: fail open
    assert not plan.tuned and "--env" in plan.reason


@pytest.mark.usefixtures("plugin_cache")
def test_doctor_fails_a_table_its_check_refuses(tp8_trace, tmp_path):
    from dynamiccl.doctor import run_doctor

    bad = tmp_path / "bad.json"
    save(BAD, bad)
    report = run_doctor(table=bad, trace=tp8_trace, env_spec="dgx-h100", env={})
    checks = [c for c in report.checks if c.name == "table check"]
    assert checks[0].status == "fail" and "refused" in checks[0].detail
    assert any("allreduce 67,108,864 B" in c.detail for c in checks[1:])
    assert report.exit_status == 1 and not report.launch["tuned"]
    assert load(bad).rules == BAD.rules
