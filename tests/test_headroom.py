"""``dynamiccl headroom`` (dynamiccl.tuning.headroom) and its report section: where a step's
communication goes, the four step times and the verdict, on a hand-built step whose timeline is read
off the replay, and end to end on a generated, a profiled and an imported trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynamiccl.cli import main
from dynamiccl.costmodel.world import PARAMS_PATH
from dynamiccl.envspec import resolve_env
from dynamiccl.table import load as load_table
from dynamiccl.trace.store import Trace
from dynamiccl.tuning.costs import CostTable
from dynamiccl.report import load
from dynamiccl.report.comm_breakdown import case_headrooms
from dynamiccl.tuning.evaluate import Results
from dynamiccl.tuning.headroom import comm_breakdown, verdict
from dynamiccl.tuning.timeline import Replay
from test_interference import MiB, step_program
from test_report import results_file  # noqa: F401  (fixture: a real evaluation)

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "traces" / "llama3-8b_tp1-pp1-dp8.parquet"
PROFILED = ROOT / "traces" / "ref-tp2-pp2-sp.parquet"
KINETO = ROOT / "tests" / "fixtures" / "profiler" / "kineto_nccl"
SECTION = "Where the communication goes, and is tuning worth it"


def finished(prog, spec: str = "dgx-a100") -> Replay:
    replay = Replay(prog, CostTable.build(prog, resolve_env(spec)))
    replay.run()
    return replay


def overlapped_step(beside_us: float, other_rank_us: float | None = None):
    """Rank 0 computes 100 µs, then a 64 MiB AllReduce runs beside a ``beside_us`` compute op; a
    50 µs op waits for both. With ``other_rank_us``, a second file rank only computes."""
    ops = [("c0", 0, [100.0], []), ("ar", 0, "ar", ["c0"]), ("c1", 0, [beside_us], ["c0"]),
           ("c2", 0, [50.0], ["c1", "ar"])]
    if other_rank_us is not None:
        ops.append(("d0", 1, [other_rank_us], []))
    return step_program(ops, {"ar": 64 * MiB})


@pytest.mark.parametrize("beside_us", [200.0, 20_000.0])  # the AllReduce outlasts the compute / hides behind it
def test_hidden_exposed_and_slowed_compute_are_read_off_the_timeline(beside_us):
    replay = finished(overlapped_step(beside_us))
    c1 = 2  # op ids in the order written
    start, end, c1_end = replay.call_start_us[0], replay.call_end_us[0], replay.op_end_us[c1]
    assert start == pytest.approx(100.0) and replay.call_launch_delay_us[0] == 0.0
    b = comm_breakdown(replay)
    (row,) = b.rows
    assert (row.group_kind, row.collective, row.calls) == ("tp", "allreduce", 1.0)
    assert row.total_us == pytest.approx(end - start)
    assert row.hidden_us == pytest.approx(min(end, c1_end) - start)
    assert row.exposed_us == pytest.approx(max(0.0, end - c1_end))
    assert (row.exposed_us > 0) == (beside_us == 200.0)
    # Its channels and HBM traffic stretch the compute beside it: all of c1's stretch is its doing.
    assert row.slowed_compute_us > 0
    assert row.slowed_compute_us == pytest.approx((c1_end - replay.op_start_us[c1]) - beside_us, rel=1e-9)
    assert b.compute_us == pytest.approx(100.0 + beside_us + 50.0)
    assert b.computing_us == pytest.approx(b.compute_us + row.slowed_compute_us, rel=1e-12)
    assert b.idle_us == 0.0  # one rank, always computing or communicating
    assert b.step_time_us == pytest.approx(b.computing_us + b.union.exposed_us)


def test_figures_are_per_gpu_weighted_by_the_gpus_a_file_rank_stands_for():
    prog = overlapped_step(200.0, other_rank_us=10.0)
    alone = comm_breakdown(finished(overlapped_step(200.0))).rows[0]
    prog.rank_gpus = [3, 1]  # rank 0 stands for 3 GPUs, rank 1 (no communication) for 1
    b = comm_breakdown(finished(prog))
    (row,) = b.rows
    assert row.calls == pytest.approx(0.75)
    assert row.exposed_us == pytest.approx(0.75 * alone.exposed_us)
    assert row.total_us == pytest.approx(0.75 * alone.total_us)
    # Rank 1 computes 10 µs and then idles to the end of the step.
    assert b.idle_us == pytest.approx(0.25 * (b.step_time_us - 10.0))


def test_verdict_sets_the_gains_against_the_noise():
    # default 100 ms; search 99.9 (0.1%); line rate 99 (1%); no communication 95 (5%)
    assert verdict(100e3, 99.9e3, 99e3, 95e3).startswith(
        "tuning NCCL can gain at most 1.00% of this step (every collective at line rate); the best table found "
        "gains 0.10%, below the ~0.5% run-to-run noise")
    assert "above the ~0.05% run-to-run noise: worth trying" in verdict(100e3, 99.9e3, 99e3, 95e3, noise=0.0005)
    nothing = verdict(100e3, 100e3, 99.8e3, 95e3)
    assert nothing.startswith("nothing to gain here: tuning NCCL can gain at most 0.20%")
    assert "all communication costs it 5.00%" in nothing
    with pytest.raises(ValueError):
        verdict(100e3, 100e3, 100e3, 100e3, noise=1.5)


def test_verdict_when_the_default_beats_the_specs_line_rate():
    # A measured model can price NCCL's default faster than the spec's datasheet line rate: that bound
    # then says nothing, and the verdict must not claim "at most 0%".
    text = verdict(100e3, 100e3, 100.5e3, 90e3)
    assert text.startswith("NCCL's default is 0.50% faster than every collective at the spec's line rate")
    assert "communication free would gain 10.00%" in text and "not worth a change" in text
    assert "worth trying" in verdict(100e3, 98e3, 100.5e3, 90e3)


def headroom_json(tmp_path: Path, trace, *args) -> tuple[dict, str]:
    out = tmp_path / f"{Path(trace).stem}.json"
    assert main(["headroom", str(trace), "--env", "dgx-h100", "--states", "2", "--json", str(out), *args]) == 0
    return json.loads(out.read_text()), out


def check_figures(figures: dict) -> None:
    default = figures["default_step_time_us"]
    assert figures["no_comm_step_time_us"] <= figures["line_rate_bound_step_time_us"] <= default
    assert figures["search_step_time_us"] <= default
    b = figures["breakdown"]
    assert b["step_time_us"] == pytest.approx(default)
    # The slowed compute charged to the calls is exactly the stretch the replay gave the compute.
    assert b["computing_us"] == pytest.approx(b["compute_us"] + b["all_communication"]["slowed_compute_us"], rel=1e-9)
    assert b["step_time_us"] == pytest.approx(b["computing_us"] + b["all_communication"]["exposed_us"] + b["idle_us"])
    for row in b["rows"]:
        assert row["hidden_us"] + row["exposed_us"] == pytest.approx(row["total_us"])
    assert figures["simulated"] and "world simulator" in figures["cost_model"] and figures["nccl_version"]


def test_generated_trace_end_to_end(tmp_path, capsys):
    figures, _ = headroom_json(tmp_path, GENERATED, "--table", str(tmp_path / "best.json"))
    text = capsys.readouterr().out
    check_figures(figures)
    assert figures["measured_step_time_us"] is None and "measured (trace timestamps" not in text
    kinds = {(r["group_kind"], r["collective"]) for r in figures["breakdown"]["rows"]}
    assert ("dp", "reducescatter") in kinds and ("dp", "allgather") in kinds
    assert "simulated step, not a measured one; its calls priced by world simulator" in text and "NCCL 2.23.4" in text
    assert "verdict: nothing to gain here" in text  # a well-overlapped DP step on one NVSwitch node
    assert len(load_table(tmp_path / "best.json").rules) == figures["search"]["rules"]
    # The user's own noise, far below this step's: the search's gain now counts.
    figures, _ = headroom_json(tmp_path, GENERATED, "--noise-pct", "0.01", "--params", str(PARAMS_PATH))
    assert figures["noise"] == pytest.approx(1e-4) and "worth trying" in figures["verdict"]


def test_profiled_and_imported_traces_show_the_measured_step(tmp_path, capsys):
    figures, _ = headroom_json(tmp_path, PROFILED)
    check_figures(figures)
    ops = Trace.read(PROFILED).ops
    step = ops[ops["step"] == figures["step"]]
    spans = step.groupby("rank").agg(start=("start_us", "min"), end=("end_us", "max"))
    assert figures["measured_step_time_us"] == pytest.approx(float((spans["end"] - spans["start"]).max()))
    assert "measured (trace timestamps, slowest rank)" in capsys.readouterr().out
    imported = tmp_path / "kineto.parquet"
    assert main(["import", "kineto", *map(str, sorted(KINETO.glob("*.json"))), "-o", str(imported)]) == 0
    figures, _ = headroom_json(tmp_path, imported, "--step", "2")
    check_figures(figures)
    assert figures["step"] == 2 and figures["measured_step_time_us"] > 0


def test_bad_inputs_are_refused_before_any_search(tmp_path, capsys):
    assert main(["headroom", str(GENERATED), "--env", "dgx-h100", "--table", str(tmp_path / "t.xyz")]) == 2
    assert "unknown extension" in capsys.readouterr().err
    assert main(["headroom", str(GENERATED), "--env", "dgx-h100", "--step", "7"]) == 2
    assert "step 7 is not in the trace" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["headroom", str(GENERATED), "--env", "dgx-h100", "--noise-pct", "-1"])


def test_report_section_per_case(results_file, tmp_path):  # noqa: F811 (fixture)
    out = tmp_path / "report"
    assert main(["report", str(results_file), "-o", str(out)]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert f"<h2>{SECTION}</h2>" in html
    assert "<th>exposed (ms)</th>" in html and "<th>slowed compute (ms)</th>" in html
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "## Is tuning worth it (per case)" in summary
    assert "ref-pp2-dp2 (4 GPUs) on dgx-h100" in summary and "nothing to gain here" in summary
    # The profiled trace's measured step is beside the simulated ones.
    assert "measured (trace timestamps, slowest rank)" in html
    # Its trace gone: the section says so and still gives the recorded step times and verdict.
    results = Results.read(results_file)
    results.steps["trace"] = str(tmp_path / "gone.parquet")
    moved = tmp_path / "results.parquet"
    results.write(moved)
    (case,) = case_headrooms(load(moved))
    assert case.breakdown is None and case.verdict.startswith("nothing to gain here")
    assert [what for what, _ in case.times] == ["NCCL default", "best table found (search)",
                                                "every collective at line rate", "communication free"]
    assert any("gone.parquet, which is not on this machine" in note for note in case.notes)


def test_knobs_price_each_communicator_setting_alone(tmp_path, capsys):
    from dynamiccl.knobs.comm_config import COMM_CHOICES, CommConfig
    from dynamiccl.tuning.cases import Case, default_step_time_us, load_case

    trace = "traces/ref-dp2-tp2.parquet"
    figures, _ = headroom_json(tmp_path, trace, "--knobs", "--max-sweeps", "1")
    text = capsys.readouterr().out
    check_figures(figures)
    settings = figures["communicator_settings"]
    assert settings and "# communicator settings (ncclConfig_t), one at a time" in text
    # Each row is the replay with that one setting on its shape, every call at NCCL's default.
    loaded = load_case(Case(trace, "dgx-h100"), knobs=True)
    shapes = [(s.kind, s.nranks, s.nnodes) for s in loaded.communicators.shapes]
    for row in settings:
        choice = COMM_CHOICES.index(CommConfig(**row["setting"]))
        s = shapes.index((row["kind"], row["nranks"], row["nnodes"]))
        configs = tuple(choice if i == s else 0 for i in range(len(shapes)))
        expected = sum(default_step_time_us(loaded, state, configs) for state in (1000, 1001)) / 2
        assert row["step_time_us"] == pytest.approx(expected, rel=1e-12)
    # NCCL 2.23.4 has no CTA policy flags (2.27+): zero-CTA is never offered there.
    assert all("cta_policy" not in row["setting"] for row in settings)
    # The search with the knobs is never worse than the default; without --knobs no settings are priced.
    assert figures["search_step_time_us"] <= figures["default_step_time_us"]
    plain, _ = headroom_json(tmp_path, trace, "--max-sweeps", "1")
    assert plain["communicator_settings"] is None and figures["search_step_time_us"] <= plain["search_step_time_us"] + 1e-6
