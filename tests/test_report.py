"""Tests of ``dynamiccl report`` (dynamiccl.report) on a small real evaluation: the shipped reference
trace on dgx-h100, one dynamics state, NCCL's default, random, a decision table and a UCB bandit."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
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
    for heading in HEADINGS + ("Decision table",):
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
    # The headroom table: per case default, agent, search, line-rate bound, ceiling, and a verdict.
    case = results.steps["case"].iloc[0]
    gain = search.search_geomean_speedup - 1
    verdict = "nothing to gain" if gain < 0.005 else f"search gains {100 * gain:.2f}%"
    assert re.search(rf"\| {re.escape(case)} \| [0-9.]+ \| {summary.loc['table', 'geomean_speedup']:.4f} \| "
                     rf"{search.search_geomean_speedup:.4f} \| {search.line_rate_bound_geomean_speedup:.4f} \| "
                     rf"{search.no_comm_geomean_speedup:.4f} \| [-0-9.]+ \| {verdict} \|", text)


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
