"""Tests of ``dynamiccl report`` (dynamiccl.report) on a small real evaluation: the shipped reference
trace on dgx-h100, one dynamics state, NCCL's default, random, a decision table and a UCB bandit."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import struct
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dynamiccl.cli import main
from dynamiccl.errors import InputError
from dynamiccl.nccl import Algorithm, Func, Protocol
from dynamiccl.table import MAX_BYTES, DecisionTable, Rule, save
from dynamiccl.tuning.agents import NcclDefaultAgent, OnlineAgent, RandomAgent, TableAgent
from dynamiccl.tuning.env import TuningEnv
from dynamiccl.tuning.evaluate import Results, calls_path, evaluate
from dynamiccl.tuning.online import UCBBandit

ROOT = Path(__file__).resolve().parent.parent
CASES = [("traces/ref-pp2-dp2.parquet", "dgx-h100")]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
HEADINGS = ("Overview", "Headroom per case", "Decision maps per collective", "Step-time speedup per case",
            "Where the time goes", "Gap to the search reference", "Provenance")


@pytest.fixture(scope="module")
def results_file(tmp_path_factory) -> Path:
    env = TuningEnv(cases=CASES, states=1)
    table = DecisionTable((Rule(coll=Func.ALLREDUCE, min_bytes=0, max_bytes=MAX_BYTES,
                                algorithm=Algorithm.RING, protocol=Protocol.SIMPLE),))
    agents = [NcclDefaultAgent(), RandomAgent(0), TableAgent(table, name="table"), OnlineAgent(UCBBandit())]
    results = evaluate(agents, env, [0], online_steps=2, progress=False)
    path = tmp_path_factory.mktemp("results") / "results.parquet"
    results.write(path, command="dynamiccl evaluate (test)")
    save(table, path.with_name("table.json"))
    return path


@pytest.fixture(scope="module")
def report_dir(results_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(results_file), "-o", str(out), "--table",
                 str(results_file.with_name("table.json"))]) == 0
    return out


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(data) for data in DATA_URI.findall(html)]


def test_html_is_self_contained_with_sections_and_plots(report_dir):
    html = (report_dir / "report.html").read_text(encoding="utf-8")
    for heading in HEADINGS + ("Decision table", "Knobs beyond the per-call choice"):  # the last two: --table
        assert f"<h2>{heading}</h2>" in html
    pngs = embedded_pngs(html)
    # headroom, decision map(s), speedup, time by parallelism and by collective, gap to search, online learners
    assert len(pngs) >= 7
    assert all(png.startswith(PNG_MAGIC) for png in pngs)
    for forbidden in ("http://", "https://", 'src="/', "<script", "<link"):
        assert forbidden not in html
    assert sorted(p.name for p in (report_dir / "plots").glob("*.png"))
    assert len(list((report_dir / "plots").glob("*.png"))) == len(pngs)


def test_summary_headline_matches_results(results_file, report_dir):
    results = Results.read(results_file)
    summary = results.summary().set_index("agent")
    text = (report_dir / "summary.md").read_text(encoding="utf-8")
    steps = results.steps[results.steps["agent"] == "table"]
    geomean = math.exp(np.log(steps["speedup"]).mean())
    assert math.isclose(geomean, summary.loc["table", "geomean_speedup"])
    assert f"table: geomean step-time speedup {geomean:.4f}x over NCCL's default" in text
    assert f"worst episode {steps['speedup'].min():.4f}x" in text
    search = summary.loc["table"]
    assert (f"search (the best decision table per case): geomean {search.search_geomean_speedup:.4f}x; line-rate "
            f"bound {search.line_rate_bound_geomean_speedup:.4f}x; no-communication ceiling "
            f"{search.no_comm_geomean_speedup:.4f}x") in text
    for agent in ("search", "nccl-default", "random", "table", "ucb-bandit"):
        row = summary.loc[agent]
        assert f"| {agent} | {int(row.episodes)} | {row.geomean_speedup:.4f} | {row.min_speedup:.4f} |" in text
    # The headroom table: per case (named by its layout) default, agent, search, line-rate bound, ceiling,
    # gain share, the time saved per step and per day of training, and a verdict.
    gain = search.search_geomean_speedup - 1
    verdict = "nothing to gain" if gain < 0.005 else f"search gains {100 * gain:.2f}%"
    default_ms, table_ms = steps["default_step_time_us"].mean() / 1e3, steps["step_time_us"].mean() / 1e3
    saved_ms = default_ms - table_ms
    assert re.search(rf"\| ref-pp2-dp2 \(4 GPUs\) on dgx-h100 \| {default_ms:.3f} \| "
                     rf"{summary.loc['table', 'geomean_speedup']:.4f} \| "
                     rf"{search.search_geomean_speedup:.4f} \| {search.line_rate_bound_geomean_speedup:.4f} \| "
                     rf"{search.no_comm_geomean_speedup:.4f} \| (—|[0-9.]+|<0 \(slower\)) \| {saved_ms:+.3f} \| "
                     rf"{1440 * saved_ms / default_ms:+.1f} \| {verdict} \|", text)
    assert "table saves per step" in text and f"{saved_ms:+.3f} ms ({1440 * saved_ms / default_ms:+.1f} min per day)" \
        in text


def test_headline_says_the_results_are_simulated_and_by_what(results_file, report_dir):
    """A reader of summary.md or of the page's headline learns that nothing was measured, which cost
    model predicted the step times and which NCCL version's choices are the baseline."""
    results = Results.read(results_file)
    version = results.steps["nccl_version"].iloc[0]
    calibration = results.steps["cost_model"].iloc[0].split(" on dgx-h100:")[0]
    expected = (f"Simulated, not measured: every step time is predicted by the 'world' cost model, {calibration}, "
                f"on 1 cluster (dgx-h100); the baseline is NCCL {version}'s own choice")
    text = (report_dir / "summary.md").read_text(encoding="utf-8")
    assert text.split("## Headline\n\n- ")[1].startswith(expected)
    html = (report_dir / "report.html").read_text(encoding="utf-8")
    headline = html.split('<div class="headline"><ul><li>')[1]
    assert headline.startswith(escape(expected))


def test_step_time_change_bars_say_what_happens_to_the_step():
    """A 10% slower step (speedup 1/1.1) is a +10% bar, a 1.25x speedup a -20% bar (a 20% shorter
    step), and the axis says which sign is faster."""
    from dynamiccl.report.plots import STEP_TIME_CHANGE_LABEL, grouped_bars_figure

    table = pd.DataFrame({"agent": [1 / 1.1, 1.25]}, index=["slower", "faster"])
    fig = grouped_bars_figure(table, STEP_TIME_CHANGE_LABEL, "t")
    ax = fig.axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    assert heights == pytest.approx([10.0, -20.0])
    assert "negative = shorter step" in ax.get_ylabel()
    gap = grouped_bars_figure(pd.DataFrame({"agent": [0.05]}, index=["c"]), "gap", "t", quantity="fraction")
    assert [p.get_height() for p in gap.axes[0].patches] == pytest.approx([5.0])


def _steps_with(results_file, search_gain: float, random_slowdown: float) -> Path:
    """The fixture's results with the search gaining ``search_gain`` on every episode and random's step
    ``random_slowdown`` times NCCL default's."""
    results = Results.read(results_file)
    steps = results.steps.copy()
    steps["search_step_time_us"] = steps["default_step_time_us"] / (1 + search_gain)
    random = steps["agent"] == "random"
    steps.loc[random, "step_time_us"] = steps.loc[random, "default_step_time_us"] * random_slowdown
    steps["speedup"] = steps["default_step_time_us"] / steps["step_time_us"]
    steps["search_speedup"] = 1 + search_gain
    steps["gap_to_search"] = steps["step_time_us"] / steps["search_step_time_us"] - 1
    steps["gain_share"] = [(s - 1) / search_gain if search_gain >= 0.005 else math.nan for s in steps["speedup"]]
    path = results_file.parent / f"gain-{search_gain}-{random_slowdown}" / "results.parquet"
    Results(steps, results.calls, results.meta).write(path)
    return path


def test_gain_share_is_printed_only_where_it_means_something(results_file, tmp_path):
    """Where the search gains 0.6% and random doubles the step, the mean of per-episode shares is
    (0.5 - 1) / 0.006 = -83.3: the report says "slower" instead; where the search gains 0.2% (inside
    the noise) there is no share at all, and the page says why."""
    meaningful = _steps_with(results_file, 0.006, 2.0)
    assert main(["report", str(meaningful), "-o", str(tmp_path / "a")]) == 0
    text = (tmp_path / "a" / "summary.md").read_text(encoding="utf-8")
    assert "-83" not in text
    assert re.search(r"\| random \| 1 \| 0\.5000 \| 0\.5000 \| <0 \(slower\) \|", text)
    table_speedup = Results.read(meaningful).steps.query("agent == 'table'")["speedup"].iloc[0]
    table_share = "<0 (slower)" if table_speedup < 1 else f"{(table_speedup - 1) / 0.006:.3f}"
    assert f"| table | 1 | {table_speedup:.4f} | {table_speedup:.4f} | {table_share} |" in text
    assert "over the 1 of 1 case(s) where the search gains at least 0.5%" in text
    noise = _steps_with(results_file, 0.002, 2.0)
    assert main(["report", str(noise), "-o", str(tmp_path / "b")]) == 0
    text = (tmp_path / "b" / "summary.md").read_text(encoding="utf-8")
    assert re.search(r"\| random \| 1 \| 0\.5000 \| 0\.5000 \| — \|", text)
    assert "share of search gain: — on every case: the search gains less than 0.5% everywhere" in text
    html = (tmp_path / "b" / "report.html").read_text(encoding="utf-8")
    assert "share of search gain: — on every case" in html


def test_decision_maps_are_readable_at_their_natural_size():
    """A collective over 1 B .. 1 GiB on eight communicator shapes: the map is no wider than the
    report's page (1300 px), so the browser shows its 9-point text unscaled."""
    from dynamiccl.report.plots import decision_map

    rows = [{"coll": "allreduce", "nranks": 2 ** k, "nnodes": max(1, 2 ** k // 8), "bucket": bucket, "calls": 3,
             "nccl": "ring/simple/16", "choice": "tree/ll/2" if bucket % 3 else "ring/simple/16",
             "changed": float(bool(bucket % 3))}
            for k in range(1, 9) for bucket in range(0, 31)]
    png = decision_map(pd.DataFrame(rows), "allreduce", "policy")
    width, height = struct.unpack(">II", png[16:24])
    assert width <= 1300, width
    assert height <= 1400, height


def test_missing_calls_file_still_reports(results_file, tmp_path, capsys):
    lone = tmp_path / "lone.parquet"
    shutil.copy(results_file, lone)
    out = tmp_path / "report"
    assert main(["report", str(lone), "-o", str(out)]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert f"{calls_path(lone)} is absent" in html and "Step-time speedup per case" in html
    assert "per-call sections" in (out / "summary.md").read_text(encoding="utf-8")
    assert "open this first" in capsys.readouterr().out


def test_bad_inputs_exit_2_naming_the_file(results_file, tmp_path, capsys):
    missing = tmp_path / "nope.parquet"
    assert main(["report", str(missing), "-o", str(tmp_path / "r")]) == 2
    assert str(missing) in capsys.readouterr().err
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not parquet")
    assert main(["report", str(garbage), "-o", str(tmp_path / "r")]) == 2
    assert f"{garbage}: not a readable Parquet file" in capsys.readouterr().err
    curve = tmp_path / "curve.csv"
    curve.write_text("episode,case\n1,x\n")
    assert main(["report", str(results_file), "-o", str(tmp_path / "r"), "--training-curve", str(curve)]) == 2
    assert f"{curve}: timesteps: missing column" in capsys.readouterr().err
    assert main(["report", str(results_file), "-o", str(tmp_path / "r"), "--agent", "nobody"]) == 2
    assert "'nobody' is not an agent" in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.html").exists()


RECORDED = ROOT / "experiments" / "default" / "results.parquet"
CURVE = ROOT / "experiments" / "default" / "run" / "training_curve.csv"
CALIBRATION = ROOT / "experiments" / "calibration" / "validation.json"


@pytest.mark.skipif(not (RECORDED.exists() and CURVE.exists() and CALIBRATION.exists()),
                    reason="the recorded default experiment is not in this checkout")
def test_recorded_experiment(tmp_path):
    # The calls companion is gitignored: without it the report covers the steps table only (fast).
    lone = tmp_path / "results.parquet"
    shutil.copy(RECORDED, lone)
    out = tmp_path / "report"
    assert main(["report", str(lone), "-o", str(out), "--training-curve", str(CURVE),
                 "--calibration", str(CALIBRATION)]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    for heading in ("Training curve", "Simulator calibration", "Step-time speedup per case", "Headroom per case",
                    "Provenance"):
        assert f"<h2>{heading}</h2>" in html
    assert "azure-ndv5-h100" in html and "NCCL version" in html and "2.23.4" in html
    assert (out / "plots" / "calibration-scatter.png").is_file()  # the recorded JSON has per-row points
    text = (out / "summary.md").read_text(encoding="utf-8")
    summary = Results(pd.read_parquet(RECORDED), pd.DataFrame(), {}).summary().set_index("agent")
    assert f"policy: geomean step-time speedup {summary.loc['policy', 'geomean_speedup']:.4f}x" in text
    assert f"search (the best decision table per case): geomean {summary.loc['search', 'geomean_speedup']:.4f}x" in text
    assert "| greedy-per-call |" in text and "| oracle |" not in text


def test_results_written_before_the_search_reference_still_report(tmp_path):
    # experiments/default/results.parquet as recorded on 2026-12-02 (before issue 14): its per-call
    # greedy "oracle" reads as greedy-per-call, and no search number is made up for it.
    legacy = tmp_path / "results.parquet"
    shutil.copy(ROOT / "tests" / "fixtures" / "results" / "before-search-2026-12-02.parquet", legacy)
    out = tmp_path / "report"
    assert main(["report", str(legacy), "-o", str(out)]) == 0
    text = (out / "summary.md").read_text(encoding="utf-8")
    assert "search reference: not in these results" in text and "| greedy-per-call |" in text
    assert "| oracle |" not in text


def test_provenance_names_the_compute_of_every_case(tmp_path):
    """A case is replayed with the compute of its own cluster: the report says which, for the
    evaluated cases (a generated workload on an A100 node: A100 compute) and a captured trace
    (measured durations)."""
    from dynamiccl.envspec import resolve_env
    from dynamiccl.report import load
    from dynamiccl.report.data import provenance
    from dynamiccl.workload.spec import WorkloadSpec

    workload = WorkloadSpec.from_dict({"model": "llama3-8b", "tp": 2, "dp": 4, "global_batch": 8}, "test")
    generated = workload.cached_trace(tmp_path, resolve_env("dgx-a100").cluster)
    results = tmp_path / "results.parquet"
    assert main(["evaluate", "--traces", str(generated), "traces/ref-pp2-dp2.parquet", "--envs", "dgx-a100",
                 "--states", "1", "--agents", "nccl-default", "-o", str(results)]) == 0
    rows = dict(provenance(load(results)))
    assert rows[f"compute of {generated.stem}@dgx-a100"].startswith("A100-SXM: 312 TFLOPS dense BF16 x 0.45")
    assert rows["compute of ref-pp2-dp2@dgx-a100"].startswith("not recorded")

    # Cases are named by their layout (the label's digest tells a reader nothing); the label stays in
    # the provenance table, beside the name.
    layout = "llama3-8b TP2 PP1 DP4 (8 GPUs, dp-mode distopt) on dgx-a100"
    assert rows[f"case {generated.stem}@dgx-a100"] == layout
    assert load(results).name("ref-pp2-dp2@dgx-a100") == "ref-pp2-dp2 (4 GPUs) on dgx-a100"
    assert main(["report", str(results), "-o", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")
    assert f"| {layout} |" in text and f"| {generated.stem}@dgx-a100 |" not in text
    # Results written before evaluate recorded the layout: named from the trace while it is there.
    older = Results.read(results)
    del older.meta["case_layout"]
    older.write(tmp_path / "older.parquet")
    assert load(tmp_path / "older.parquet").name(f"{generated.stem}@dgx-a100") == layout
    generated.unlink()
    assert load(tmp_path / "older.parquet").name(f"{generated.stem}@dgx-a100") == f"{generated.stem}@dgx-a100"


def test_calibration_summaries_of_dynamiccl_0_1_are_still_read(tmp_path):
    """Before the *_gbps keys were renamed, `validate --json` wrote them, and NaN for a size class
    without rows; both still read (renamed keys, NaN kept as a float)."""
    from dynamiccl.report.data import load_calibration

    errors = {"all": 0.05, "small": float("nan"), "large": 0.04, "mid": float("nan"), "rows": 3}
    old = {"tables": {"t": {"env": "dgx-h100", "nccl_version": "2.23.4", "kind": "allreduce ring",
                            "world": errors, "nccl_model": errors}},
           "overall": {"world": errors, "nccl_model": errors},
           "points": {"t": {"size_bytes": [1, 2], "measured_busbw_gbps": [1.0, 2.0],
                            "predicted_busbw_gbps": [1.1, 2.1], "nccl_model_busbw_gbps": [0.9, 1.9]}}}
    path = tmp_path / "validation.json"
    path.write_text(json.dumps(old), encoding="utf-8")  # json.dumps writes NaN, as 0.1 did
    loaded = load_calibration(path)
    assert loaded["points"]["t"]["predicted_busbw_gbytes_per_s"] == [1.1, 2.1]
    assert math.isnan(loaded["tables"]["t"]["world"]["small"])
    with pytest.raises(InputError) as info:
        load_calibration(_write(tmp_path / "bad.json", {"tables": {}, "overall": {"world": {}}}))
    assert info.value.field == "overall.nccl_model"


def _write(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_a_live_evaluation_is_called_measured(results_file):
    """Results priced by a model that runs real collectives are not called simulated."""
    from dynamiccl.report.data import ReportData, simulation_line

    results = Results.read(results_file)
    live = ReportData(results_file, results.steps, None, {**results.meta, "cost_model": "live"}, "table")
    assert simulation_line(live).startswith("Measured, not simulated: step times from real collectives")
    assert simulation_line(ReportData(results_file, results.steps, None, results.meta, "table")).startswith(
        "Simulated, not measured")


def test_knobs_section_shows_cta_settings_their_sms_and_compute_and_the_chunk_sizes(results_file, tmp_path):
    """A table with communicator settings and chunk sizes (built through the table's API): per group
    of the case, the CTA settings, the SMs its calls hold under NCCL's default and under the settings
    and the compute given back, from the world; per size band the chunk sizes; and the knob registry."""
    from dynamiccl import report
    from dynamiccl.costmodel.batch import make_batch
    from dynamiccl.costmodel.registry import COST_MODELS
    from dynamiccl.envspec import resolve_env
    from dynamiccl.knobs import KNOBS
    from dynamiccl.knobs.comm_config import CommConfig, batch_columns
    from dynamiccl.report.knobs import COMM_HEADER, CHUNK_HEADER, KNOB_HEADER, blocks, group_knobs
    from dynamiccl.table import CommunicatorRule

    table = DecisionTable((Rule(coll=Func.ALLREDUCE, min_bytes=0, max_bytes=65535, chunk_bytes=65536),
                           Rule(coll=Func.ALLREDUCE, min_bytes=65536, max_bytes=MAX_BYTES, algorithm=Algorithm.RING,
                                protocol=Protocol.SIMPLE, chunk_bytes=1 << 20)),
                          communicators=(CommunicatorRule("dp", 2, 1, CommConfig(max_ctas=2)),
                                         CommunicatorRule("tp", -1, -1, CommConfig(min_ctas=32)),
                                         CommunicatorRule("pp", -1, -1, CommConfig(cta_policy="zero"))))
    save(table, tmp_path / "knobs.json")
    data = report.load(results_file, table=tmp_path / "knobs.json")
    groups, notes = group_knobs(data)
    assert [(g.kind, g.nranks, g.nnodes, g.config.describe()) for g in groups] == \
        [("dp", 2, 1, "max_ctas=2"), ("pp", 2, 1, "cta_policy=zero")]  # no tp group in this trace
    dp, pp = groups
    assert dp.effect == "applied"
    # dgx-h100's NCCL 2.23.4 has no CTA policy (2.28.3+): ignored, nothing given back
    assert pp.effect == "cta_policy ignored: NCCL 2.23.4 has it only from 2.28.3"
    assert pp.sms_config == pp.sms_default and pp.given_back_us == 0.0
    assert dp.sms_config[1] <= 2 < dp.sms_default[1]  # NCCL's pool capped at 2 CTAs: 2 SMs at most per call
    assert dp.given_back_us > 0 and dp.time_config_us >= dp.time_default_us  # SMs back, the calls no faster
    # the figures are the world's for the group's calls beside compute, per GPU of the step
    env = resolve_env("dgx-h100")
    world = COST_MODELS["world"].create(env)
    sizes = sorted({int(c) for c in
                    pd.read_parquet(calls_path(results_file)).query("agent == 'nccl-default' and nranks == 2")["nbytes"]})
    capped = world.evaluate(make_batch(int(Func.ALLREDUCE), np.array(sizes, dtype=float), 2, 1, overlap=1.0,
                                       compute_hbm_share=env.dynamics.compute_hbm_share,
                                       **batch_columns(CommConfig(max_ctas=2), env.symmetric_memory)))
    assert dp.sms_config == (int(capped.channels.min()), int(capped.channels.max()))
    assert any("simulated by the world model" in n and f"NCCL {env.nccl_version}" in n for n in notes)
    text = blocks(data)
    tables = {tuple(header): rows for kind, payload in text if kind == "table" for header, rows in [payload]}
    assert tables[COMM_HEADER][0][:4] == [dp.case, "dp", "2 x 1", "max_ctas=2"]
    assert tables[CHUNK_HEADER] == [["allreduce", "any", "0 .. 64K-1", "64K"], ["allreduce", "any", "64K .. max", "1M"]]
    assert [row[0] for row in tables[KNOB_HEADER]] == list(KNOBS)
    chunk = next(row for row in tables[KNOB_HEADER] if row[0] == "chunk_size")
    assert chunk[4].startswith("masked: no public measurement")
    assert "Simulated, not measured" in " ".join(str(p) for kind, p in text if kind == "p")
    # without chunk sizes or communicators: said in words; the page carries the section
    plain = tmp_path / "plain.json"
    save(DecisionTable((Rule(coll=Func.ALLREDUCE, min_bytes=0, max_bytes=MAX_BYTES),)), plain)
    words = " ".join(str(p) for kind, p in blocks(report.load(results_file, table=plain)) if kind == "p")
    assert "NCCL's chunk everywhere" in words and "every communicator keeps NCCL's CTA settings" in words
