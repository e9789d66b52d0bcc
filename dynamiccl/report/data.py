"""Loading and aggregating the inputs of ``dynamiccl report``.

Every number of the report comes from here: the ``steps`` / ``calls`` tables of a results file
(``dynamiccl.tuning.evaluate.Results``), and optionally a training curve CSV, a calibration
summary JSON (``dynamiccl validate --json``) and a decision table. Aggregates reuse
``Results.summary`` (per-agent headline numbers) and ``sample_efficiency`` (online learners).
"""

from __future__ import annotations

import math
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dynamiccl import __version__
from dynamiccl import schema
from dynamiccl.errors import InputError
from dynamiccl.tuning.evaluate import (
    GREEDY_AGENT, NOTHING_TO_GAIN, REFERENCE_AGENT, Results, calls_path, counted_steps, gain_share, geomean_ratio,
    sample_efficiency,
)
from dynamiccl.tuning.agent_registry import AGENTS
from dynamiccl.workload.context import describe_compute

DEFAULT_AGENT = "nccl-default"
SEARCH_AGENT = REFERENCE_AGENT  # the reference of every gain share
# Agents that are baselines, not "the policy": the report's tuned agent is another one unless --agent says.
BASELINES = tuple(name for name, entry in AGENTS.items() if entry.baseline)
CURVE_COLUMNS = ("timesteps", "speedup")


@dataclass
class ReportData:
    """What one report shows. ``calls`` is None when the results file has no calls companion."""

    results_path: Path
    steps: pd.DataFrame
    calls: pd.DataFrame | None
    meta: dict
    agent: str
    online: str = "all"
    training_curve: pd.DataFrame | None = None
    training_curve_path: Path | None = None
    calibration: dict | None = None
    calibration_path: Path | None = None
    table: object | None = None  # a DecisionTable
    table_path: Path | None = None
    verify: dict | None = None  # a `dynamiccl verify` record (report.verify.load_verify_record)
    verify_path: Path | None = None
    command: str | None = None
    notes: list[str] = field(default_factory=list)
    case_names: dict[str, str] = field(default_factory=dict)  # case label -> readable layout (see case_names)
    case_headrooms: list | None = None  # report.comm_breakdown.case_headrooms, computed once per report

    def name(self, case: str) -> str:
        """The readable name of the case labelled ``case`` (the label itself when none is known)."""
        return self.case_names.get(case, case)

    @property
    def agents(self) -> list[str]:
        """The agents in the order the results list them (meta order, then order of appearance)."""
        seen = list(self.meta.get("agents") or [])
        present = list(pd.unique(self.steps["agent"]))
        return [a for a in seen if a in present] + [a for a in present if a not in seen]

    def summary(self) -> pd.DataFrame:
        """``Results.summary`` of the steps table (per agent: geomean, min, gain share, gap...)."""
        return Results(self.steps, pd.DataFrame(), self.meta).summary(online=self.online)


# --- loading ----------------------------------------------------------------------------------------


def load_results(path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame | None, dict, str | None]:
    """``(steps, calls or None, meta, note)``: ``Results.read(path)``, except that a missing calls
    companion is tolerated (``calls`` None and ``note`` says what is missing).

    Raises:
        InputError: the results file is missing or invalid, or the calls file exists but is invalid.
    """
    results = Results.read(path, require_calls=False)
    note = None if results.calls is not None else (
        f"{calls_path(path)} is absent: the per-call sections (decision maps, where the time goes) need it; "
        f"`dynamiccl evaluate ... -o {path}` writes it")
    return results.steps, results.calls, results.meta, note


def case_names(meta: dict, steps: pd.DataFrame) -> dict[str, str]:
    """Case label -> readable layout (``dynamiccl.tuning.cases.layout_label``: model, TP/PP/DP/EP, GPUs,
    cluster), as ``evaluate`` recorded it (``meta["case_layout"]``); for files written before that, read
    from the case's trace where the file is still there; else the label itself. Two cases with the
    same layout keep their labels beside it, so every name stays unique."""
    from dynamiccl.trace.store import Trace
    from dynamiccl.tuning.cases import Case, layout_label

    recorded = meta.get("case_layout") or {}
    names = {}
    for case, group in steps.groupby("case", sort=False):
        name = recorded.get(case)
        trace, env = str(group["trace"].iloc[0]), str(group["env_spec"].iloc[0])
        if name is None and Path(trace).is_file():
            try:
                loaded = Trace.read(trace)
            except InputError:  # the trace changed or is damaged since: keep the label
                loaded = None
            if loaded is not None:
                name = layout_label(Case(trace, env), loaded.meta.workload, loaded.meta.world_size)
        names[case] = name or case
    counts = pd.Series(list(names.values())).value_counts()
    return {case: f"{name} [{case}]" if counts[name] > 1 and name != case else name for case, name in names.items()}


def load_training_curve(path: str | os.PathLike) -> pd.DataFrame:
    """A training curve CSV (``dynamiccl train``'s ``training_curve.csv``): at least ``timesteps``
    and ``speedup`` columns, optionally ``case``.

    Raises:
        InputError: unreadable, not CSV, or a needed column is missing.
    """
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise InputError(path, None, f"not a readable training-curve CSV ({exc})") from None
    for col in CURVE_COLUMNS:
        if col not in frame.columns:
            raise InputError(path, col, f"missing column; expected {', '.join(CURVE_COLUMNS)} (and optionally case)")
    return frame


_SUMMARIES = schema.Schema(  # median |error| per size class (null: no rows of that size), and row counts
    schema.json_value("world"), schema.json_value("nccl_model"))
# What ``dynamiccl validate --json`` writes, declared once; files of dynamiccl 0.1 (``*_gbps`` keys,
# NaN for undefined errors) are still read.
CALIBRATION = schema.Schema(
    schema.mapping("tables", schema.table("table", schema.Schema(
        schema.string("env"), schema.string("nccl_version"), schema.string("kind"),
        schema.string("class", "", help="hardware class (arch/fabric[+transport])"),
        schema.json_value("world"), schema.json_value("nccl_model")))),
    schema.mapping("classes", schema.table("class", schema.Schema(
        schema.json_list("tables"), schema.json_value("world"), schema.json_value("nccl_model"))), None,
        help="per hardware class, its tables and summaries"),
    schema.json_list("fastest", None, help="the fastest-configuration check per set of tables"),
    schema.table("overall", _SUMMARIES),
    schema.mapping("points", schema.table("table", schema.Schema(
        schema.json_list("size_bytes"),
        *(schema.formerly(schema.json_list(f"{who}_busbw_gbytes_per_s"), f"{who}_busbw_gbps")
          for who in ("measured", "predicted", "nccl_model")))), None,
        help="per measured table, the rows behind the summary"),
)


def load_calibration(path: str | os.PathLike) -> dict:
    """A calibration summary (``dynamiccl validate --json``, :data:`CALIBRATION`).

    Raises:
        InputError: unreadable, not JSON, or not what ``dynamiccl validate --json`` writes.
    """
    return CALIBRATION.parse(schema.read_json(path, "calibration summary", allow_nan=True), os.fspath(path))


def choose_agent(agents: list[str], wanted: str | None, source: str) -> str:
    """The tuned agent the report compares with NCCL's default: ``wanted``, else ``policy``, else the
    first agent that is not a baseline, else the first that is neither the search reference, the
    greedy baseline nor the default.

    Raises:
        InputError: ``wanted`` is not among the results' agents, or there is no such agent.
    """
    if wanted is not None:
        if wanted not in agents:
            raise InputError("--agent", None, f"{wanted!r} is not an agent of {source}; expected one of "
                             f"{', '.join(agents)}")
        return wanted
    if "policy" in agents:
        return "policy"
    for pool in ([a for a in agents if a not in BASELINES],
                 [a for a in agents if a not in (SEARCH_AGENT, GREEDY_AGENT, DEFAULT_AGENT)],
                 agents):
        if pool:
            return pool[0]
    raise InputError(source, "agent", "no steps rows: expected at least one evaluated agent")


# --- aggregation --------------------------------------------------------------------------------------


def _geomean(values: pd.Series) -> float:
    return float(np.exp(np.log(values.to_numpy(dtype=np.float64)).mean()))


def per_case(data: ReportData, column: str = "speedup", by_state: bool = True) -> pd.DataFrame:
    """Rows (case[, state]) x columns agent: the geometric mean of ``column`` (a ratio, e.g.
    ``speedup``) or, for ``gap_to_search``, the arithmetic mean, over the counted episodes."""
    steps = counted_steps(data.steps, data.online)
    keys = ["case", "state"] if by_state else ["case"]
    agg = _geomean if column != "gap_to_search" else "mean"
    table = steps.groupby(keys + ["agent"], sort=False)[column].agg(agg).unstack("agent")
    return _named(data, table[[a for a in data.agents if a in table.columns]])


def _named(data: ReportData, frame):
    """``frame`` with its ``case`` index level renamed to the cases' readable names."""
    return frame.rename(index=data.name, level="case" if frame.index.nlevels > 1 else None)


def default_step_ms(data: ReportData) -> pd.Series:
    """NCCL default's step time (ms) per (case name, state), from any agent's rows (they all carry it)."""
    return _named(data, data.steps.groupby(["case", "state"], sort=False)["default_step_time_us"].first() / 1e3)


def simulation_line(data: ReportData) -> str:
    """Where the step times come from: the cost model that predicted them (or measured them, for a
    model that runs collectives), what it is, and the NCCL version whose choices are the default."""
    from dynamiccl.costmodel.registry import COST_MODELS

    name = str(data.meta.get("cost_model") or "")
    entry = COST_MODELS.get(name)  # None: a model this version does not know (still named)
    versions = ", ".join(sorted(map(str, data.steps["nccl_version"].unique())))
    # The per-cluster descriptions end in " on <cluster>: <hardware>"; the part before names the model
    # and its calibration, the same for every cluster.
    models = list(dict.fromkeys(
        str(desc).split(f" on {env}:")[0] for desc, env in
        data.steps[["cost_model", "env_spec"]].drop_duplicates().itertuples(index=False)))
    clusters = list(dict.fromkeys(data.steps["env_spec"]))
    where = f"{len(clusters)} cluster{'s' if len(clusters) > 1 else ''} ({', '.join(clusters)})"
    if entry is not None and entry.runs_collectives:
        return (f"Measured, not simulated: step times from real collectives on the machine that ran "
                f"`dynamiccl evaluate` (cost model '{name}': {'; '.join(models)}), not on the {where} named")
    return (f"Simulated, not measured: every step time is predicted by the '{name or 'not recorded'}' cost model, "
            f"{'; '.join(models)}, on {where}; the baseline is NCCL {versions}'s own choice")


def headline(data: ReportData) -> dict:
    """The numbers at the top of the report and of summary.md."""
    summary = data.summary().set_index("agent")
    cases = per_case(data, by_state=False)
    out = {"agent": data.agent, "episodes": int(summary.loc[data.agent, "episodes"]),
           "geomean_speedup": float(summary.loc[data.agent, "geomean_speedup"]),
           "min_speedup": float(summary.loc[data.agent, "min_speedup"]),
           "slower_share": float(summary.loc[data.agent, "slower_share"]),
           "mean_gap_to_search": float(summary.loc[data.agent, "mean_gap_to_search"]),
           "cases": len(cases)}
    shares = gain_shares(data)
    out.update(gain_share=float(shares.loc[data.agent, "gain_share"]),
               gain_share_cases=int(shares.loc[data.agent, "cases"]))
    worst = cases[data.agent].idxmin()
    out.update(worst_case=worst, worst_case_speedup=float(cases[data.agent].min()))
    for name in ("search", "line_rate_bound", "no_comm"):
        out[f"{name}_geomean_speedup"] = float(summary.loc[data.agent, f"{name}_geomean_speedup"])
    if GREEDY_AGENT in summary.index:
        out["greedy_geomean_speedup"] = float(summary.loc[GREEDY_AGENT, "geomean_speedup"])
    refs = headroom(data)
    out["nothing_to_gain_cases"] = int(refs["nothing_to_gain"].sum()) if len(refs) else 0
    if len(refs):
        most, least = refs["saved_ms"].idxmax(), refs["saved_ms"].idxmin()
        out.update({f"{key}_saved_{unit}": float(refs.loc[case, f"saved_{unit}"])
                    for key, case in (("most", most), ("least", least)) for unit in ("ms", "min_per_day")})
        out.update(most_saved_case=most, least_saved_case=least)
    return out


def gain_shares(data: ReportData) -> pd.DataFrame:
    """Per agent: the share of the search reference's gain it reaches, over the cases where that gain
    means something, i.e. where the search's geometric-mean speedup (over the case's counted episodes)
    is at least 1 + ``NOTHING_TO_GAIN`` (elsewhere the gain is inside run-to-run noise): ``gain_share``
    = (the agent's geometric-mean speedup over those episodes - 1) / (the search's - 1), NaN where
    no case has that much to gain; ``cases``: how many cases count. (A mean of per-episode shares, as
    ``Results.summary``'s ``mean_gain_share``, divides by gains near the threshold and reads as
    noise: -40 for an agent at speedup 0.6 where the search gains 1%.)"""
    steps = counted_steps(data.steps, data.online)
    rows = {}
    for agent, group in steps.groupby("agent", sort=False):
        default = group["default_step_time_us"].to_numpy(dtype=np.float64)
        log_search = np.log(default / group["search_step_time_us"].to_numpy(dtype=np.float64))
        search_case = group.assign(log_search=log_search).groupby("case", sort=False)["log_search"].mean()
        counted = search_case.index[np.exp(search_case.to_numpy()) - 1.0 >= NOTHING_TO_GAIN]
        chosen = group[group["case"].isin(counted)]
        speedup = geomean_ratio(chosen["default_step_time_us"].to_numpy(dtype=np.float64),
                                chosen["step_time_us"].to_numpy(dtype=np.float64))
        search = geomean_ratio(chosen["default_step_time_us"].to_numpy(dtype=np.float64),
                               chosen["search_step_time_us"].to_numpy(dtype=np.float64))
        rows[agent] = {"gain_share": gain_share(speedup, search) if len(counted) else math.nan,
                       "cases": len(counted)}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["gain_share", "cases"])


def share_text(share: float) -> str:
    """A gain share for a table cell: ``—`` where undefined (nothing to gain), ``<0 (slower)`` for an
    agent slower than NCCL's default there (a negative share's size only restates the slowdown,
    divided by a small gain), else three decimals."""
    if share is None or math.isnan(share):
        return "—"
    return "<0 (slower)" if share < 0 else f"{share:.3f}"


HEADROOM_COLUMNS = ("default_ms", "agent_ms", "saved_ms", "saved_min_per_day", "agent_speedup", "search_speedup",
                    "line_rate_bound_speedup", "no_comm_speedup", "gain_share", "nothing_to_gain")
MINUTES_PER_DAY = 24 * 60


def headroom(data: ReportData) -> pd.DataFrame:
    """Per case (by readable name): NCCL default's and the agent's mean step time (ms), the time the
    agent saves per step (``saved_ms``, negative: it loses time) and per day of training
    (``saved_min_per_day``: minutes by which the steps of a day at NCCL default's pace finish sooner,
    ``1440 x saved_ms / default_ms``), the geometric-mean speedup over NCCL's
    default (over the case's states) of the report's agent, the search reference, the line-rate
    bound and the no-communication ceiling; the agent's share of the search's gain
    (:func:`~dynamiccl.tuning.evaluate.gain_share`: ``(agent - 1) / (search - 1)``, NaN where the
    search gains less than ``NOTHING_TO_GAIN``) and
    ``nothing_to_gain`` (True there). Empty when the results hold no search columns (files written
    before the search reference: their values are NaN)."""
    steps = counted_steps(data.steps, data.online)
    agent = steps[steps["agent"] == data.agent]
    if agent.empty:
        return pd.DataFrame(columns=list(HEADROOM_COLUMNS))
    rows = {}
    for case, group in agent.groupby("case", sort=False):
        default = group["default_step_time_us"].to_numpy(dtype=np.float64)

        def ratio(column: str) -> float:
            return geomean_ratio(default, group[column].to_numpy(dtype=np.float64))

        agent_speedup, search_speedup = ratio("step_time_us"), ratio("search_step_time_us")
        nothing = not (search_speedup - 1.0 >= NOTHING_TO_GAIN) if not math.isnan(search_speedup) else False
        default_ms = float(default.mean() / 1e3)
        agent_ms = float(group["step_time_us"].mean() / 1e3)
        rows[data.name(case)] = {
            "default_ms": default_ms, "agent_ms": agent_ms, "saved_ms": default_ms - agent_ms,
            "saved_min_per_day": MINUTES_PER_DAY * (default_ms - agent_ms) / default_ms,
            "agent_speedup": agent_speedup, "search_speedup": search_speedup,
            "line_rate_bound_speedup": ratio("line_rate_bound_step_time_us"),
            "no_comm_speedup": ratio("no_comm_step_time_us"),
            "gain_share": gain_share(agent_speedup, search_speedup), "nothing_to_gain": nothing}
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(HEADROOM_COLUMNS))


def effective_choices(calls: pd.DataFrame) -> pd.DataFrame:
    """The calls with what really ran: ``run_algo`` / ``run_proto`` (``nccl`` replaced by NCCL's
    default choice), ``run_channels``; and NCCL default's ``nccl_*``; plus ``bucket`` = floor(log2 bytes)."""
    algo = calls["algo"].where(calls["algo"] != "nccl", calls["nccl_default_algo"])
    proto = calls["proto"].where(calls["proto"] != "nccl", calls["nccl_default_proto"])
    bucket = np.floor(np.log2(calls["nbytes"].clip(lower=1).to_numpy(dtype=np.float64))).astype(np.int64)
    return calls.assign(run_algo=algo, run_proto=proto, run_channels=calls["channels"], bucket=bucket)


def _mode(values: pd.Series):
    return values.value_counts().index[0]


def decision_cells(data: ReportData, agent: str) -> pd.DataFrame:
    """One row per (coll, nranks, nnodes, bucket) of ``agent``'s calls: ``calls``, the most common
    choice that ran (``choice``: algo/proto/channels) and NCCL default's (``nccl``), ``changed``
    (the share of the cell's calls whose choice differs from NCCL's)."""
    if data.calls is None:
        return pd.DataFrame()
    calls = effective_choices(data.calls[data.calls["agent"] == agent])
    if calls.empty:
        return pd.DataFrame()
    ran = calls["run_algo"] + "/" + calls["run_proto"] + "/" + calls["run_channels"].astype(str)
    default = (calls["nccl_default_algo"] + "/" + calls["nccl_default_proto"] + "/"
               + calls["nccl_default_channels"].astype(str))
    calls = calls.assign(choice=ran, nccl=default, changed=(ran != default).astype(np.float64))
    cells = calls.groupby(["coll", "nranks", "nnodes", "bucket"]).agg(
        calls=("choice", "size"), choice=("choice", _mode), nccl=("nccl", _mode), changed=("changed", "mean"))
    return cells.reset_index()


def comm_time(data: ReportData, by: str) -> pd.DataFrame:
    """Summed call durations (ms per recorded episode) by ``by`` (``group_kind`` or ``coll``), one
    column per agent of (NCCL's default, the tuned agent) present in the calls table."""
    if data.calls is None:
        return pd.DataFrame()
    columns = {}
    for agent in dict.fromkeys((DEFAULT_AGENT, data.agent)):
        calls = data.calls[data.calls["agent"] == agent]
        if calls.empty:
            continue
        episodes = len(calls.groupby(["case", "state", "iteration"]).size())
        columns[agent] = calls.groupby(by)["duration_us"].sum() / 1e3 / episodes
    return pd.DataFrame(columns).fillna(0.0)


def online_efficiency(data: ReportData) -> pd.DataFrame:
    """``sample_efficiency`` of the online learners (empty when there are none)."""
    return sample_efficiency(data.steps)


# --- provenance --------------------------------------------------------------------------------------


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """``git rev-parse HEAD`` in ``cwd``, or None outside a checkout or without git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _find_seeds(value, prefix: str = "") -> dict:
    """Every ``seed`` key in nested JSON data, by dotted path."""
    found = {}
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "seed" and not isinstance(item, (dict, list)):
                found[path] = item
            else:
                found.update(_find_seeds(item, path))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.update(_find_seeds(item, f"{prefix}[{index}]"))
    return found


def provenance(data: ReportData) -> list[tuple[str, str]]:
    """(field, value) rows: where the results came from and how this report was made."""
    meta, steps = data.meta, data.steps
    rows = [("results file", os.fspath(data.results_path)),
            ("results command", meta.get("command") or "(not recorded)"),
            ("cost model", str(meta.get("cost_model", "(not recorded)")))]
    for text in meta.get("cost_model_descriptions") or sorted(steps["cost_model"].unique()):
        rows.append(("cost model description", text))
    rows += [("NCCL version", ", ".join(sorted(map(str, steps["nccl_version"].unique())))),
             ("environment specs", ", ".join(sorted(map(str, steps["env_spec"].unique())))),
             ("traces", ", ".join(sorted(map(str, steps["trace"].unique())))),
             ("dynamics states", ", ".join(map(str, meta.get("states") or sorted(steps["state"].unique())))),
             ("online steps", str(meta.get("online_steps", "-"))),
             ("agents", ", ".join(data.agents)),
             ("dynamiccl version (results)", str(meta.get("dynamiccl_version", "(not recorded)"))),
             ("dynamiccl version (report)", __version__),
             ("git commit", git_commit() or "(not a git checkout)")]
    seeds = _find_seeds(meta)
    if data.table is not None:
        seeds.update({f"table.{k}": v for k, v in _find_seeds(data.table.provenance).items()})
    rows += [(f"seed ({path})", str(value)) for path, value in seeds.items()]
    for label, path in (("training curve", data.training_curve_path), ("calibration", data.calibration_path),
                        ("decision table", data.table_path), ("verify (measured on the job)", data.verify_path)):
        if path is not None:
            rows.append((label, os.fspath(path)))
    # The compute each case was replayed with: the GPU of its environment spec unless the workload named one.
    rows += [(f"case {label}", name) for label, name in data.case_names.items() if name != label]
    rows += [(f"compute of {label}", describe_compute(compute)) for label, compute in
             (meta.get("case_compute") or {}).items()]
    if data.table is not None:
        training = (data.table.provenance.get("policy_provenance") or {}).get("training_cases") or []
        rows += [(f"compute of training case {case.get('label', '?')}", describe_compute(case.get("compute") or {}))
                 for case in training if isinstance(case, dict) and "compute" in case]
    rows.append(("report command", data.command or "(library call)"))
    return rows


def fmt(value: float, digits: int = 4) -> str:
    """A number for a table cell: fixed ``digits`` decimals, ``-`` for NaN."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


# --- text tables ---------------------------------------------------------------------------------------


SUMMARY_HEADER = ("agent", "episodes", "geomean speedup", "min speedup", "share of search gain",
                  "mean gap to search", "cases >1% slower")


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:+.3f}%"


def summary_rows(data: ReportData) -> list[list[str]]:
    """``Results.summary`` as text cells, one row per agent (``SUMMARY_HEADER``); the share of the
    search's gain is :func:`gain_shares`' (``share_text``)."""
    shares = gain_shares(data)["gain_share"]
    return [[row.agent, str(row.episodes), fmt(row.geomean_speedup), fmt(row.min_speedup),
             share_text(shares.get(row.agent, math.nan)), _percent(row.mean_gap_to_search),
             f"{100 * row.slower_share:.0f}%"]
            for row in data.summary().itertuples(index=False)]


def share_note(data: ReportData) -> str:
    """Which cases the share of the search's gain is taken over, and why the others are left out."""
    shares = gain_shares(data)
    cases = int(shares["cases"].max()) if len(shares) else 0
    total = data.steps["case"].nunique()
    why = (f"the search gains less than {100 * NOTHING_TO_GAIN:.1f}% (inside run-to-run noise) on the other "
           f"{total - cases}" if cases < total else "")
    if cases == 0:
        return (f"share of search gain: — on every case: the search gains less than {100 * NOTHING_TO_GAIN:.1f}% "
                "everywhere (inside run-to-run noise), so there is no gain to take a share of")
    return (f"share of search gain = (agent's geomean speedup - 1) / (search's - 1) over the {cases} of {total} "
            f"case(s) where the search gains at least {100 * NOTHING_TO_GAIN:.1f}%"
            + (f"; {why}" if why else "") + "; <0: slower than NCCL's default there")


HEADROOM_HEADER = ("case", "default (ms)", "agent", "search", "line-rate bound", "no-comm ceiling", "gain share",
                   "saved per step (ms)", "saved per day (min)", "verdict")


def headroom_rows(data: ReportData) -> list[list[str]]:
    """``headroom`` as text cells (``HEADROOM_HEADER``; the agent's column is the report's agent),
    with the verdict "nothing to gain" where the search's gain is inside the noise."""
    rows = []
    for case, r in headroom(data).iterrows():
        verdict = ("nothing to gain" if r.nothing_to_gain else
                   "search not computed" if math.isnan(r.search_speedup) else
                   f"search gains {100 * (r.search_speedup - 1):.2f}%")
        rows.append([str(case), fmt(r.default_ms, 3), fmt(r.agent_speedup), fmt(r.search_speedup),
                     fmt(r.line_rate_bound_speedup), fmt(r.no_comm_speedup), share_text(r.gain_share),
                     f"{r.saved_ms:+.3f}", f"{r.saved_min_per_day:+.1f}", verdict])
    return rows


def speedup_text(data: ReportData) -> str:
    """An nccl-tests-like fixed-width table: per (case, state), NCCL default's step time and every
    agent's speedup (geomean over its counted episodes there), then the geomean per agent."""
    table = per_case(data)
    default_ms = default_step_ms(data)
    agents = list(table.columns)
    case_width = max([len("case")] + [len(str(c)) for c, _ in table.index])
    widths = [max(9, len(a)) for a in agents]
    lines = [f"# step-time speedup over NCCL's default (default / agent step time; online agents: "
             f"{'all iterations' if data.online == 'all' else 'last iteration'})",
             f"#{'case':<{case_width - 1}}  {'state':>6}  {'default':>11}  "
             + "  ".join(f"{a:>{w}}" for a, w in zip(agents, widths)),
             f"#{'':<{case_width - 1}}  {'':>6}  {'(ms)':>11}  " + "  ".join(f"{'':>{w}}" for w in widths)]
    for (case, state), row in table.iterrows():
        lines.append(f"{case:<{case_width}}  {state:>6}  {default_ms[(case, state)]:>11.3f}  "
                     + "  ".join(f"{fmt(row[a]):>{w}}" for a, w in zip(agents, widths)))
    geo = data.summary().set_index("agent")["geomean_speedup"]
    lines.append(f"# {'geomean':<{case_width - 2}}  {'':>6}  {'':>11}  "
                 + "  ".join(f"{fmt(geo.get(a, math.nan)):>{w}}" for a, w in zip(agents, widths)))
    return "\n".join(lines)
