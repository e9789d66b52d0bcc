"""Evaluate agents on the cases of a ``TuningEnv``: step times against NCCL's default and the search reference.

``evaluate(agents, env, states)`` runs, for every case of ``env`` and every dynamics state in
``states``, one episode (one training step) per offline agent, plus the search reference
(:class:`~dynamiccl.tuning.agents.SearchAgent`, always run: the best decision table for the case,
searched over exactly those states; it gives ``search_step_time_us``, ``gap_to_search`` and
``gain_share``) and the two bounds of :func:`dynamiccl.tuning.search.step_bounds` (every call at
its links' line rate with no interference, and communication costing nothing). The search is
the costly part: a few hundred whole-step replays per case (on 2 cores, seconds for most of the
default experiment's held-out cases, about half a minute of CPU for its largest Llama-3 8B step);
it runs always because every gain share needs it. Online agents (``needs_measurements``) run instead ``online_steps`` consecutive
episodes per case, states cycling through ``states``, with a fresh learner per case that keeps
learning across those steps; after every decision it is given the call's duration under the
conditions at its start, noise included (what NCCL's profiler plugin would report).

``Results`` holds two tables:

- ``steps``: one row per (agent, case, state[, iteration]) with the step times (µs) and ratios:
  ``speedup`` = default / agent step time, ``search_speedup`` = default / search step time,
  ``gap_to_search`` = agent / search step time - 1, ``gain_share`` = (speedup - 1) / (search_speedup
  - 1) where the search gains at least ``NOTHING_TO_GAIN`` (else NaN: "nothing to gain"), and the
  bounds' step times ``line_rate_bound_step_time_us`` and ``no_comm_step_time_us``;
- ``calls``: one row per decided call of the recorded episodes (every offline episode and the last
  iteration of each online run), with the action, what NCCL really runs, and start/end times.

``Results.write(path)`` stores them as two Parquet files (``x.parquet`` and ``x.calls.parquet``)
with JSON metadata under the key ``dynamiccl.results``. Files written before the search reference
(issue 14) still load: their per-call greedy "oracle" rows become the agent ``greedy-per-call``, the
columns relative to it are dropped, and the search and bound columns are NaN (never the greedy's
numbers under the search's name).

``EvaluationPlan`` says what ``dynamiccl evaluate`` replays (an experiment config's held-out split,
or traces crossed with environment specs) and what static-best is fitted on; ``evaluate_plan``
builds the registered agents and evaluates them on it, its episodes fanned out as the tasks of an
:class:`EvaluationJob` (per case: its search, each online learner's run, each offline episode) over
worker processes or a Ray cluster (:mod:`dynamiccl.sweep`), with the same results wherever they ran;
``evaluate`` runs the same job in this process. A task that fails twice is listed in
``meta["failures"]`` and its rows are missing; every other task's rows are kept. ``TuningEnv`` is
imported only there, so that reading results (``dynamiccl report``) does not import gymnasium.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dynamiccl import __version__, atomic, schema
from dynamiccl.costmodel.protocol import CostModelOptions
from dynamiccl.costmodel.registry import DEFAULT_COST_MODEL
from dynamiccl.errors import InputError
from dynamiccl.nccl import FUNC_OP, Algorithm, Func, Protocol
from dynamiccl.tuning.agent_registry import AgentInputs, make_agents
from dynamiccl.tuning.actions import ACTION_ALGO, ACTION_PROTO, describe_action
from dynamiccl.tuning.agents import Agent, SearchAgent
from dynamiccl.tuning.cases import Case, load_case
from dynamiccl.tuning.observation import key_columns

if TYPE_CHECKING:
    from dynamiccl.tuning.env import TuningEnv

METADATA_KEY = b"dynamiccl.results"
SLOWER_TOLERANCE = 0.01     # "slower than NCCL's default" means a step more than 1% longer
CONVERGED_SHARE = 0.95      # sample efficiency: reaching 95% of the final gain
FINAL_ITERATIONS = 3        # the final speedup of an online run: mean of its last 3 iterations
# A search gain below this share of the step is inside run-to-run noise ("nothing to gain"): the
# step time's run-to-run SD on a quiet allocation is ~0.5% (A/B/A runs of the FastVideo GB200 FSDP2
# report, hao-ai-lab/FastVideo PR #1630). gain_share is undefined (NaN) there.
NOTHING_TO_GAIN = 0.005
# Cases where the search reference gains at least this much over NCCL's default are the ones an agent
# is judged on for its share of the gain (issue 14: ">= 90% of the search reference's gain ... on every
# case where that gain is >= 2%").
HEADROOM_CASE_GAIN = 0.02
REFERENCE_AGENT = "search"
LEGACY_ORACLE_AGENT = "oracle"          # the per-call greedy baseline's name in files written before issue 14
GREEDY_AGENT = "greedy-per-call"

STEP_COLUMNS = ("agent", "case", "trace", "env_spec", "state", "iteration", "step_time_us",
                "default_step_time_us", "search_step_time_us", "line_rate_bound_step_time_us",
                "no_comm_step_time_us", "speedup", "search_speedup", "gap_to_search", "gain_share",
                "measurements", "decisions", "invalid_actions", "cost_model", "nccl_version")
_LEGACY_STEP_COLUMNS = ("oracle_step_time_us", "oracle_speedup", "gap_to_oracle")
# Written only by evaluations with the knobs: per step, each communicator shape's config (JSON
# {"dp 8x1": "max_ctas=8", ...}); files without them read as before.
OPTIONAL_STEP_COLUMNS = ("communicators",)
CALL_COLUMNS = ("agent", "case", "state", "iteration", "call", "label", "group_kind", "coll", "nbytes",
                "nranks", "nnodes", "position", "action", "choice", "algo", "proto", "channels",
                "start_us", "end_us", "duration_us", "nccl_default_algo", "nccl_default_proto",
                "nccl_default_channels")

_ALGO_NAMES = np.array(["nccl"] + [a.name_lower for a in Algorithm], dtype=object)    # index: algo + 1
_PROTO_NAMES = np.array(["nccl"] + [p.name_lower for p in Protocol], dtype=object)


# --- one episode ----------------------------------------------------------------------------------


def run_episode(env, agent: Agent, case: int, state: int, record_calls: bool = False) -> dict:
    """Run one episode (one training step of ``case`` under dynamics ``state``) with ``agent``.

    An agent that ``needs_measurements`` gets ``observe(env, call, action, duration_us)`` right
    after each decision, with the action that really ran (NCCL's default if the chosen one was
    invalid) and the call's duration under the conditions at its start.

    Returns:
        ``{"step": {...}, "calls": {column: array} or None}``: the step row (agent, case, trace,
        env_spec, state, step_time_us, default_step_time_us, speedup, measurements, decisions,
        invalid_actions, cost_model, nccl_version) and, with ``record_calls``, one entry per decided
        call (see ``CALL_COLUMNS``; ``iteration`` is left for the caller).

    Raises:
        InputError: a case index outside ``env.cases`` (from ``env.reset``).
    """
    base = env.unwrapped
    obs, _ = base.reset(options={"case": int(case), "state": int(state)})
    agent.begin_episode(base)
    decided: list[int] = []
    invalid = 0
    info: dict = {}
    while base.pending is not None or base.pending_communicator is not None:
        if base.pending_communicator is not None:  # knobs: the communicators first
            obs, _, terminated, truncated, info = base.step(int(agent.act_communicator(base, obs, base.action_masks())))
            invalid += bool(info.get("invalid_action", False))
            continue
        call = base.pending
        action = int(agent.act(base, obs, base.action_masks()))
        obs, _, terminated, truncated, info = base.step(action)
        invalid += bool(info.get("invalid_action", False))
        decided.append(call)
        if agent.needs_measurements:
            agent.observe(base, call, *base.measured(call))
        if terminated or truncated:
            break
    loaded = base.simulator.case
    step = {
        "agent": agent.name, "case": loaded.case.label, "trace": loaded.case.trace, "env_spec": loaded.case.env,
        "state": int(state), "step_time_us": float(info["step_time_us"]),
        "default_step_time_us": float(info["default_step_time_us"]), "speedup": float(info["speedup"]),
        "measurements": int(agent.measurements), "decisions": int(base.decisions), "invalid_actions": invalid,
        "cost_model": loaded.costs.description, "nccl_version": loaded.env.nccl_version,
    }
    if base.knobs:  # which config each communicator shape was created with
        step["communicators"] = json.dumps(info.get("communicators", {}), sort_keys=True)
    return {"step": step, "calls": _call_rows(base, agent.name, int(state), decided) if record_calls else None}


def _call_rows(env, agent: str, state: int, calls: list[int]) -> dict[str, np.ndarray]:
    """The ``calls`` columns (but ``iteration``) for the decided ``calls`` of the finished episode."""
    simulator = env.simulator
    loaded, replay = simulator.case, simulator.replay
    program, costs = loaded.program, loaded.costs
    c = np.asarray(calls, dtype=np.int64)
    key = np.asarray(replay.call_row, dtype=np.int64)[c]  # the rows of the configs the calls ran under
    action = np.asarray(replay.call_action, dtype=np.int64)[c]
    start = np.asarray(replay.call_start_us, dtype=np.float64)[c]
    end = np.asarray(replay.call_end_us, dtype=np.float64)[c]
    keys = key_columns([program.call_key[call] for call in calls])
    n = len(c)
    pick = lambda values: np.asarray(values, dtype=object)[c] if n else np.zeros(0, dtype=object)  # noqa: E731
    return {
        "agent": np.full(n, agent, dtype=object), "case": np.full(n, loaded.case.label, dtype=object),
        "state": np.full(n, state, dtype=np.int64), "call": c,
        "label": pick(program.call_label), "group_kind": pick(program.call_kind),
        "coll": np.array([FUNC_OP[Func(f)] for f in keys["coll"]], dtype=object),
        "nbytes": keys["nbytes"], "nranks": keys["nranks"], "nnodes": keys["nnodes"], "position": keys["position"],
        "action": action, "choice": np.array([describe_action(a) for a in action], dtype=object),
        "algo": _ALGO_NAMES[ACTION_ALGO[action] + 1], "proto": _PROTO_NAMES[ACTION_PROTO[action] + 1],
        "channels": costs.channels[key, action].astype(np.int64),
        "start_us": start, "end_us": end, "duration_us": end - start,
        "nccl_default_algo": _ALGO_NAMES[costs.algo[key, 0] + 1],
        "nccl_default_proto": _PROTO_NAMES[costs.proto[key, 0] + 1],
        "nccl_default_channels": costs.channels[key, 0].astype(np.int64),
    }


# --- results --------------------------------------------------------------------------------------


def calls_path(path: str | os.PathLike) -> Path:
    """Where the per-call table of a results file goes: ``x.parquet`` -> ``x.calls.parquet``."""
    path = Path(path)
    stem = path.name[:-len(".parquet")] if path.name.endswith(".parquet") else path.name
    return path.with_name(stem + ".calls.parquet")


def counted_steps(steps: pd.DataFrame, online: str = "all") -> pd.DataFrame:
    """The rows of a steps table that count: every one (``online="all"``: an online learner's cost
    of learning included), or only the last iteration of each (agent, case) (``"last"``).

    Raises:
        ValueError: for another ``online`` value.
    """
    if online not in ("all", "last"):
        raise ValueError(f"online must be 'all' or 'last', got {online!r}")
    if online == "last" and len(steps):
        last = steps.groupby(["agent", "case"])["iteration"].transform("max")
        return steps[steps["iteration"] == last]
    return steps


SUMMARY_COLUMNS = ["agent", "episodes", "geomean_speedup", "min_speedup", "mean_gain_share", "mean_gap_to_search",
                   "slower_share", "search_geomean_speedup", "line_rate_bound_geomean_speedup",
                   "no_comm_geomean_speedup", "min_gain_share_on_headroom"]


def geomean_ratio(numerator: np.ndarray | None, denominator: np.ndarray | None) -> float:
    """Geometric mean of numerator / denominator (e.g. step times, µs: a speedup); NaN if either is
    missing or empty, or any value is NaN (not computed)."""
    if numerator is None or denominator is None:
        return math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = numerator / denominator
    if not len(ratio) or np.isnan(ratio).any():
        return math.nan
    return float(np.exp(np.log(ratio).mean()))


def gain_share(speedup: float, search_speedup: float, min_search_gain: float = NOTHING_TO_GAIN) -> float:
    """The share of the search reference's gain over NCCL's default that ``speedup`` reaches:
    ``(speedup - 1) / (search_speedup - 1)`` (speedups over NCCL's default, of one episode or the
    geometric mean of a case's); NaN where the search gains less than ``min_search_gain`` (nothing
    to gain, :data:`NOTHING_TO_GAIN` by default) or was not computed (NaN)."""
    return (speedup - 1.0) / (search_speedup - 1.0) if search_speedup - 1.0 >= min_search_gain else math.nan


def _from_legacy_steps(frame: pd.DataFrame) -> pd.DataFrame:
    """A steps table written before issue 14 in today's columns: the greedy oracle's columns go,
    search and bound columns and gain_share are NaN (they were relative to the greedy)."""
    frame = frame.drop(columns=[c for c in _LEGACY_STEP_COLUMNS if c in frame.columns])
    for col in ("search_step_time_us", "line_rate_bound_step_time_us", "no_comm_step_time_us", "search_speedup",
                "gap_to_search", "gain_share"):
        frame[col] = math.nan
    return frame[list(STEP_COLUMNS) + [c for c in frame.columns if c not in STEP_COLUMNS]]


@dataclass
class Results:
    """The outcome of ``evaluate``: ``steps`` and ``calls`` DataFrames (see the module docstring)
    and ``meta`` (JSON-serialisable: version, cost model, states, online_steps, agents, cases,
    command; ``failures`` only where tasks of the evaluation failed twice and their rows are missing)."""

    steps: pd.DataFrame
    calls: pd.DataFrame | None  # None: read without its companion file (``require_calls=False``)
    meta: dict = field(default_factory=dict)

    def write(self, path: str | os.PathLike, command: str | None = None) -> None:
        """Write ``steps`` to ``path`` and ``calls`` to ``calls_path(path)``, each atomically
        (zstd Parquet, metadata JSON under ``dynamiccl.results``). The calls file is written
        first, so a reader that sees the new steps file also sees its calls.

        Raises:
            OSError: a file cannot be written (an existing file is then left untouched).
            TypeError: ``meta`` is not JSON-serialisable.
        """
        meta = dict(self.meta)
        meta.setdefault("dynamiccl_version", __version__)
        if command is not None:
            meta["command"] = command
        for frame, dest, kind in ((self.calls, calls_path(path), "calls"), (self.steps, Path(path), "steps")):
            text = json.dumps({**meta, "table": kind}, separators=(",", ":"), allow_nan=False)
            table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata({METADATA_KEY: text})
            atomic.write_with(dest, lambda tmp, table=table: pq.write_table(table, tmp, compression="zstd"))
        self.meta = meta

    @classmethod
    def read(cls, path: str | os.PathLike, *, require_calls: bool = True) -> "Results":
        """Read what ``write`` wrote (``path`` and its ``.calls.parquet`` companion; without
        ``require_calls``, a missing companion gives ``calls`` None).

        Raises:
            InputError: a file is missing, not Parquet, lacks the ``dynamiccl.results`` metadata,
                or lacks a column of ``STEP_COLUMNS`` / ``CALL_COLUMNS``.
        """
        frames, meta = [], {}
        for dest, columns in ((Path(path), STEP_COLUMNS), (calls_path(path), CALL_COLUMNS)):
            source = os.fspath(dest)
            if not require_calls and columns is CALL_COLUMNS and not dest.exists():
                frames.append(None)
                continue
            if not dest.is_file():
                raise InputError(source, None, "no such results file (written by `Results.write`)")
            try:
                table = pq.read_table(source)
            except (pa.ArrowException, OSError) as exc:
                raise InputError(source, None, f"not a readable Parquet file ({exc})") from None
            raw = (table.schema.metadata or {}).get(METADATA_KEY)
            if raw is None:
                raise InputError(source, f"metadata '{METADATA_KEY.decode()}'", "missing: not a dynamiccl results file")
            file_meta = schema.parse_json(raw, source, f"metadata '{METADATA_KEY.decode()}'")  # deep: an error
            names = table.column_names
            legacy = columns is STEP_COLUMNS and "oracle_step_time_us" in names and "search_step_time_us" not in names
            if legacy:
                names = [c for c in names if c not in _LEGACY_STEP_COLUMNS] + [
                    c for c in STEP_COLUMNS if c not in names]
            missing = [col for col in columns if col not in names]
            if missing:
                raise InputError(source, missing[0], f"missing column; expected {', '.join(columns)}")
            frame = table.to_pandas()
            if legacy:
                frame = _from_legacy_steps(frame)
                file_meta["legacy"] = ("written before the search reference: the per-call greedy 'oracle' is "
                                       f"'{GREEDY_AGENT}'; search, bound and gain-share columns are NaN")
            if "agent" in frame.columns:
                frame["agent"] = frame["agent"].replace({LEGACY_ORACLE_AGENT: GREEDY_AGENT})
            frames.append(frame)
            if not meta:
                meta = {k: v for k, v in file_meta.items() if k != "table"}
        if meta.get("agents"):
            meta["agents"] = [GREEDY_AGENT if a == LEGACY_ORACLE_AGENT else a for a in meta["agents"]]
        return cls(frames[0], frames[1], meta)

    def summary(self, online: str = "all") -> pd.DataFrame:
        """Per agent (in order of appearance): ``episodes``, ``geomean_speedup``, ``min_speedup``,
        ``mean_gain_share`` (NaN rows -- nothing to gain -- skipped), ``mean_gap_to_search``,
        ``slower_share``: the share of cases whose geometric-mean speedup (over their episodes) is
        below 1/1.01, i.e. whose step is more than 1% slower than NCCL's default; and over the same
        episodes the geometric-mean speedup of the search reference (``search_geomean_speedup``),
        of the line-rate bound (``line_rate_bound_geomean_speedup``) and of the ceiling
        (``no_comm_geomean_speedup``), NaN where not computed; ``min_gain_share_on_headroom``: over the
        cases where the search's geometric-mean speedup is at least 1 + :data:`HEADROOM_CASE_GAIN`, the
        smallest share of the search's gain the agent reaches per case, (agent's geomean speedup - 1) /
        (search's - 1); NaN where no case has that much headroom.

        Args:
            online: which episodes of online agents count: ``"all"`` (every iteration, the cost
                of learning included) or ``"last"`` (the last iteration per case).

        Raises:
            ValueError: for another ``online`` value.
        """
        steps = counted_steps(self.steps, online)
        rows = []
        for agent, group in steps.groupby("agent", sort=False):
            log_speedup = np.log(group["speedup"].to_numpy(dtype=np.float64))
            per_case = group.assign(log_speedup=log_speedup).groupby("case", sort=False)["log_speedup"].mean()
            column_of = lambda name: (group[name].to_numpy(dtype=np.float64)  # noqa: E731
                                      if name in group.columns else None)
            headroom_shares = []
            if "search_step_time_us" in group.columns:
                ratio = group["default_step_time_us"].to_numpy(dtype=np.float64) / group["search_step_time_us"].to_numpy(
                    dtype=np.float64)
                search_case = np.exp(group.assign(log_search=np.log(ratio)).groupby("case", sort=False)["log_search"].mean())
                shares = [gain_share(math.exp(per_case[case]), search_speedup, HEADROOM_CASE_GAIN)
                          for case, search_speedup in search_case.items()]
                headroom_shares = [share for share in shares if not math.isnan(share)]
            rows.append({
                "agent": agent, "episodes": len(group),
                "geomean_speedup": float(np.exp(log_speedup.mean())),
                "min_speedup": float(group["speedup"].min()),
                "mean_gain_share": float(group["gain_share"].mean()),  # pandas skips NaN
                "mean_gap_to_search": float(group["gap_to_search"].mean()) if "gap_to_search" in group else math.nan,
                "slower_share": float((per_case < -math.log1p(SLOWER_TOLERANCE)).mean()),
                **{f"{name}_geomean_speedup": geomean_ratio(column_of("default_step_time_us"), column_of(column))
                   for name, column in (("search", "search_step_time_us"),
                                        ("line_rate_bound", "line_rate_bound_step_time_us"),
                                        ("no_comm", "no_comm_step_time_us"))},
                "min_gain_share_on_headroom": min(headroom_shares) if headroom_shares else math.nan,
            })
        return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)

    def summary_by_agent(self, online: str = "all") -> dict[str, dict]:
        """:meth:`summary` as JSON: ``{agent: {column: value}}``, an undefined figure (NaN, e.g.
        ``mean_gain_share`` where the search gains nothing) as None.

        Raises:
            ValueError: for an ``online`` value other than ``"all"`` or ``"last"``.
        """
        return {row["agent"]: schema.json_ready({key: value for key, value in row.items() if key != "agent"})
                for row in self.summary(online).to_dict("records")}


# --- evaluation -----------------------------------------------------------------------------------


def _finish_row(row: dict, iteration: int, reference: dict) -> dict:
    """Add the reference columns (``reference``: ``search_step_time_us``, ``line_rate_bound_step_time_us``,
    ``no_comm_step_time_us`` of the row's (case, state)) and the iteration to a step row of ``run_episode``."""
    default = row["default_step_time_us"]
    search_time = reference["search_step_time_us"]
    search_speedup = default / search_time
    row.update(reference, iteration=iteration, search_speedup=search_speedup,
               gap_to_search=row["step_time_us"] / search_time - 1.0,
               gain_share=gain_share(row["speedup"], search_speedup))
    return {col: row[col] for col in STEP_COLUMNS + OPTIONAL_STEP_COLUMNS if col in row}


def _calls_frame(parts: list[dict]) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame({col: pd.Series(dtype=object if col in ("agent", "case", "label", "group_kind",
                                                                    "coll", "choice", "algo", "proto",
                                                                    "nccl_default_algo", "nccl_default_proto")
                                            else np.float64 if col.endswith("_us") else np.int64)
                             for col in CALL_COLUMNS})
    columns = {col: np.concatenate([p[col] for p in parts]) for col in CALL_COLUMNS}
    return pd.DataFrame(columns)


def evaluate(agents: list[Agent], env, states: list[int], *, online_steps: int = 20,
             progress: bool = True) -> Results:
    """Evaluate ``agents`` on every case of ``env`` under every dynamics state of ``states``, in this
    process (:func:`evaluate_plan` fans the same episodes out over worker processes or Ray).

    Offline agents and the search reference (a :class:`~dynamiccl.tuning.agents.SearchAgent`,
    added when ``agents`` has none; its states are set to ``states``) run one episode per (case,
    state); the bounds of :func:`~dynamiccl.tuning.search.step_bounds` are replayed once per (case,
    state). Online agents (``needs_measurements``) must have ``fresh()``, which gives a learner
    that has learnt nothing: per case, a fresh one runs ``online_steps`` episodes, episode ``i``
    under ``states[i % len(states)]``; every one is a ``steps`` row with its ``iteration`` and the
    cumulative ``measurements``. ``calls`` rows are recorded for offline episodes and the last
    online iteration only. The episodes replay ``env``'s cases with its cost model, options and
    knobs (in environments of one case each, as a worker process does; see :class:`EvaluationJob`).

    Raises:
        ValueError: no states, ``online_steps`` < 1, or two agents with the same name.
        TypeError: an online agent without ``fresh()``.
        EvaluationFailed: an episode raised (twice: every task is retried once); it holds the
            results of the others and which ones failed.
    """
    from dynamiccl.sweep import Parallelism

    base = env.unwrapped
    job, names = _evaluation_job(agents, [AgentSource.of(a) for a in agents], tuple(base.cases), base.model,
                                 base.cost_options, bool(base.knobs), states, online_steps)
    results, failures = _run_evaluation(job, names, Parallelism(workers=1), progress)
    if failures:
        raise EvaluationFailed(results, failures)
    return results


class EvaluationFailed(RuntimeError):
    """Episodes of :func:`evaluate` raised: ``results`` holds the others' rows, ``failures`` the
    failed tasks (``meta["failures"]``'s entries)."""

    def __init__(self, results: Results, failures: list[dict]) -> None:
        super().__init__("evaluation tasks failed:\n" + failure_text(failures))
        self.results = results
        self.failures = failures


def meta_without_timing(meta: dict) -> dict:
    """``meta`` less what differs between two runs of the same evaluation: the command and the
    searches' ``wall_s`` (what two runs, wherever they ran, must otherwise agree on)."""
    meta = {key: value for key, value in meta.items() if key != "command"}
    meta["search"] = {case: {k: v for k, v in found.items() if k != "wall_s"}
                      for case, found in (meta.get("search") or {}).items()}
    return meta


def failure_text(failures: list[dict]) -> str:
    """One line per failed task of ``meta["failures"]``: what it was, the rows it leaves out, the error."""
    return "\n".join(f"  {f['task']}: failed {f['attempts']} times ({f['error']}); missing: {f['missing']}"
                     for f in failures)


# --- the evaluation as a sweep (dynamiccl.sweep) ---------------------------------------------------


@dataclass(frozen=True)
class AgentSource:
    """How a process that runs an evaluation's episodes gets one of its agents: ``agent`` itself
    (pickled to a worker process: the baselines, the online learners and the search reference are
    small), a static-best table as JSON (``static_best_json``: fitted once, by the process that
    plans the evaluation), or the file of a policy or decision table (``policy_path``, absolute:
    every worker loads it). ``name`` is the agent's name."""

    name: str
    agent: Agent | None = None
    static_best_json: str | None = None
    policy_path: str | None = None

    @classmethod
    def of(cls, agent: Agent, policy_path: str | os.PathLike | None = None) -> "AgentSource":
        """The source of ``agent``: a :class:`StaticBestAgent` as its JSON, an agent loaded from
        ``policy_path`` as that file, any other as itself."""
        from dynamiccl.tuning.agents import StaticBestAgent

        if isinstance(agent, StaticBestAgent):
            return cls(agent.name, static_best_json=agent.to_json())
        if policy_path is not None:
            return cls(agent.name, policy_path=os.path.abspath(policy_path))
        return cls(agent.name, agent=agent)

    def build(self) -> Agent:
        """The agent (``agent`` itself, not a copy: in this process, :func:`evaluate`'s caller sees
        what its agents recorded, e.g. ``SearchAgent.results``).

        Raises:
            InputError: an unreadable policy file or static-best JSON.
        """
        if self.agent is not None:
            return self.agent
        if self.static_best_json is not None:
            from dynamiccl.tuning.agents import StaticBestAgent

            return StaticBestAgent.from_json(self.static_best_json, f"<{self.name} table>")
        from dynamiccl.tuning.agents import load_policy_agent

        return load_policy_agent(self.policy_path)


# What a failed search task leaves its case's other rows: no reference (their gain shares are NaN).
_NO_REFERENCE = {"search_step_time_us": math.nan, "line_rate_bound_step_time_us": math.nan,
                 "no_comm_step_time_us": math.nan}


@dataclass(frozen=True)
class EvaluationJob:
    """The episodes of one evaluation as a :mod:`dynamiccl.sweep` job: ``cases`` replayed with the
    cost model ``model`` made with ``cost_options`` (``knobs``: ``TuningEnv(knobs=True)``) under
    ``states``, by the search reference ``search``, the ``offline`` agents and the ``online`` ones
    (``online_steps`` iterations each). Picklable: each worker process gets it once.

    Its tasks (:meth:`tasks`), keyed (case index, agent index, state index) in the order of the
    results' rows (per case: the search, then the offline agents, then the online ones, in the
    order given), are:

    - ``("search", case)``: the search reference over every state of the case, and the bounds. The
      search is one per case *across* its states (the table it finds is the best one for all of
      them together), so it cannot be split per state;
    - ``("offline", case, agent, state)``: one episode;
    - ``("online", case, agent)``: a fresh learner's ``online_steps`` iterations, in order (each one
      learns from the ones before: sequential by definition).

    :meth:`setup` builds the agents once per process and one ``TuningEnv`` per case the process
    replays (a case is loaded by the processes that replay it, not by every one). A task's result
    depends on its arguments only: :class:`~dynamiccl.tuning.agents.RandomAgent` seeds every episode
    by (seed, case, state), online learners start fresh per case, and the per-case caches of the
    table-like agents and the policy hold answers that do not depend on which cases came first.
    """

    cases: tuple[Case, ...]
    model: str
    cost_options: CostModelOptions
    knobs: bool
    states: tuple[int, ...]
    search: AgentSource
    offline: tuple[AgentSource, ...]
    online: tuple[AgentSource, ...]
    online_steps: int

    def tasks(self) -> list:
        """Every task (:class:`dynamiccl.sweep.Task`), the longest first: the searches and the online
        runs, then the single episodes, each kind from the largest case (its trace file's size,
        bytes: a proxy known before a case is loaded) to the smallest."""
        from dynamiccl.sweep import Task

        def size(case: int) -> int:
            path = Path(self.cases[case].trace)
            return path.stat().st_size if path.is_file() else 0

        order = sorted(range(len(self.cases)), key=lambda case: -size(case))
        states = ", ".join(str(s) for s in self.states)
        long, short = [], []
        for case in order:
            label = self.cases[case].label
            long.append(Task((case, 0, 0), f"search on {label} (states {states})", ("search", case)))
            for j, agent in enumerate(self.online):
                long.append(Task((case, 1 + len(self.offline) + j, 0),
                                 f"{agent.name} on {label} ({self.online_steps} iterations)", ("online", case, j)))
            for j, agent in enumerate(self.offline):
                short += [Task((case, 1 + j, i), f"{agent.name} on {label}, state {state}", ("offline", case, j, i))
                          for i, state in enumerate(self.states)]
        return long + short

    def describe(self, key) -> dict:
        """What task ``key`` evaluates: ``{"case", "agent", "state"}`` (state None: every state, or
        the iterations of an online run) and the rows it gives (``missing`` when it failed)."""
        case, agent, state = key
        label = self.cases[case].label
        if agent == 0:
            return {"case": label, "agent": self.search.name, "state": None,
                    "missing": f"the search rows of case {label} (its other agents' rows are kept without "
                               "the reference: their search and bound columns and gain shares are NaN)"}
        if agent <= len(self.offline):
            name = self.offline[agent - 1].name
            return {"case": label, "agent": name, "state": self.states[state],
                    "missing": f"{name} on {label} under state {self.states[state]}"}
        name = self.online[agent - 1 - len(self.offline)].name
        return {"case": label, "agent": name, "state": None,
                "missing": f"{name} on {label}, all {self.online_steps} iterations"}

    def setup(self) -> "_Episodes":
        return _Episodes(self)

    def run(self, context: "_Episodes", args: tuple) -> dict:
        """One task's rows: ``{"rows": [(step row, iteration), ...], "calls": [call columns, ...],
        "case_info": {"compute", "layout"}}``, and for a search task ``"reference"`` (state ->
        search and bound step times, µs) and ``"search"`` (its ``SearchResult.to_json()``)."""
        kind, case = args[0], args[1]
        if kind == "search":
            return context.search_case(case)
        if kind == "offline":
            agent, state = context.offline[args[2]], self.states[args[3]]
            return context.episodes(case, [(agent, state, -1, True)])
        agent = context.online[args[2]].fresh()
        last = self.online_steps - 1
        return context.episodes(case, [(agent, self.states[i % len(self.states)], i, i == last)
                                       for i in range(self.online_steps)])


class _Episodes:
    """What an :class:`EvaluationJob`'s tasks share in one process: its agents and an environment
    per case."""

    def __init__(self, job: EvaluationJob) -> None:
        self.job = job
        self.search = job.search.build()
        self.search.states = list(job.states)
        self.offline = [source.build() for source in job.offline]
        self.online = [source.build() for source in job.online]
        self._envs: dict[int, TuningEnv] = {}

    def env(self, case: int) -> TuningEnv:
        """A ``TuningEnv`` of case ``case`` alone (made once per process)."""
        if case not in self._envs:
            from dynamiccl.tuning.env import TuningEnv

            job = self.job
            self._envs[case] = TuningEnv([job.cases[case]], model=job.model, cost_options=job.cost_options,
                                         knobs=job.knobs)
        return self._envs[case]

    def episodes(self, case: int, runs: list[tuple[Agent, int, int, bool]]) -> dict:
        """``runs`` of (agent, state, iteration, record calls) on ``case``, in order."""
        env = self.env(case)
        rows, calls = [], []
        for agent, state, iteration, record in runs:
            out = run_episode(env, agent, 0, state, record_calls=record)
            rows.append((out["step"], iteration))
            if record:
                calls.append({**out["calls"], "iteration": np.full(len(out["calls"]["call"]), iteration)})
        loaded = env.simulator.case
        return {"rows": rows, "calls": calls,
                "case_info": {"compute": loaded.program.compute, "layout": loaded.layout_label}}

    def search_case(self, case: int) -> dict:
        from dynamiccl.tuning.search import step_bounds

        out = self.episodes(case, [(self.search, state, -1, True) for state in self.job.states])
        loaded = self.env(case).simulator.case
        reference = {}
        for (row, _), state in zip(out["rows"], self.job.states):  # the first episode ran the search
            bounds = step_bounds(loaded, state)
            reference[state] = {"search_step_time_us": row["step_time_us"],
                                "line_rate_bound_step_time_us": bounds.line_rate_step_time_us,
                                "no_comm_step_time_us": bounds.no_comm_step_time_us}
        label = self.job.cases[case].label
        return {**out, "reference": reference, "search": self.search.results[label].to_json()}


def _evaluation_job(agents: Sequence[Agent], sources: Sequence[AgentSource], cases: tuple[Case, ...], model: str,
                    cost_options: CostModelOptions, knobs: bool, states: Sequence[int],
                    online_steps: int) -> tuple[EvaluationJob, list[str]]:
    """The job of evaluating ``agents`` (each sent as ``sources[i]``), and the agents' names in the
    results' ``meta["agents"]`` order (the search reference first when not among ``agents``).

    Raises:
        ValueError: no states, ``online_steps`` < 1, or two agents with the same name.
        TypeError: an online agent without ``fresh()``.
    """
    states = tuple(int(s) for s in states)
    if not states:
        raise ValueError("evaluate needs at least one dynamics state")
    if online_steps < 1:
        raise ValueError(f"online_steps must be >= 1, got {online_steps}")
    pairs = list(zip(agents, sources))
    search = next(((a, s) for a, s in pairs if isinstance(a, SearchAgent)), None)
    if search is None:
        reference = SearchAgent()
        search = (reference, AgentSource(reference.name, agent=reference))
        pairs = [search] + pairs
    search[0].states = list(states)
    names = [a.name for a, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"agent names must be unique, got {names}")
    for agent, _ in pairs:
        if agent.needs_measurements and not callable(getattr(agent, "fresh", None)):
            raise TypeError(f"online agent {agent.name!r} needs a fresh() method (a new learner per case)")
    offline = tuple(s for a, s in pairs if not a.needs_measurements and a is not search[0])
    online = tuple(s for a, s in pairs if a.needs_measurements)
    return EvaluationJob(tuple(cases), model, cost_options, bool(knobs), states, search[1], offline, online,
                         int(online_steps)), names


def _run_evaluation(job: EvaluationJob, names: list[str], parallel, progress: bool) -> tuple[Results, list[dict]]:
    """Run ``job``'s tasks where ``parallel`` says and merge them: rows in key order, the offline and
    online rows finished with their case's search reference; ``meta["failures"]`` (present only when
    a task failed twice) lists what failed and the rows it leaves out.

    Raises:
        InputError: ``--ray`` without Ray, or a cluster that does not answer.
    """
    from dynamiccl.sweep import run_sweep

    outcome = run_sweep(job, job.tasks(), parallel, progress=progress, desc="evaluate")
    references = {key[0]: result["reference"] for key, result in outcome.results.items() if key[1] == 0}
    step_rows, call_parts, info = [], [], {}
    for key, result in outcome.results.items():
        reference = references.get(key[0])
        for row, iteration in result["rows"]:
            step_rows.append(_finish_row(row, iteration, reference[row["state"]] if reference else _NO_REFERENCE))
        call_parts += result["calls"]
        info.setdefault(key[0], result["case_info"])
    columns = list(STEP_COLUMNS) + [col for col in OPTIONAL_STEP_COLUMNS if any(col in row for row in step_rows)]
    steps = pd.DataFrame(step_rows, columns=columns)
    labels = [case.label for case in job.cases]
    searched = {labels[key[0]]: result["search"] for key, result in outcome.results.items() if key[1] == 0}
    meta = {"dynamiccl_version": __version__, "cost_model": job.model,
            "cost_model_descriptions": sorted({row["cost_model"] for row in step_rows}),
            "states": list(job.states), "online_steps": job.online_steps, "agents": names, "search": searched,
            "cases": labels,
            "case_compute": {labels[case]: info[case]["compute"] for case in sorted(info)},
            "case_layout": {labels[case]: info[case]["layout"] for case in sorted(info)},
            "knobs": job.knobs}
    if job.cost_options.measurements:
        meta["measurements"] = list(job.cost_options.measurements)
    failures = [{**job.describe(f.key), "task": f.label, "error": f.error, "attempts": f.attempts}
                for f in outcome.failures]
    if failures:
        meta["failures"] = failures
    return Results(steps, _calls_frame(call_parts), meta), failures


# --- what to evaluate ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationPlan:
    """What an evaluation replays: ``cases`` under the dynamics ``states``, priced by the cost
    model ``model`` (a :data:`~dynamiccl.costmodel.registry.COST_MODELS` name) made with
    ``cost_options`` (the measured model's CSVs), and the episodes the static-best table is fitted
    on (``fit_cases`` under ``fit_states``); ``knobs``: replay with the knobs
    (``TuningEnv(knobs=True)``: communicator configs and chunk sizes)."""

    cases: tuple[Case, ...]
    states: tuple[int, ...]
    fit_cases: tuple[Case, ...]
    fit_states: tuple[int, ...]
    model: str
    cost_options: CostModelOptions = CostModelOptions()
    knobs: bool = False

    @classmethod
    def from_config(cls, config_path: str | os.PathLike, run_dir: str | os.PathLike | None = None,
                    split: str = "heldout") -> "EvaluationPlan":
        """An experiment config's held-out split (its held-out cases under states ``state_offset ..
        state_offset + states - 1``), static-best fitted on its training split (training cases
        under states ``0 .. train.states - 1``), priced by the config's cost model. Workloads are
        generated into the training run's directory ``run_dir`` (default ``experiments/<name>/run``).

        ``split="train"`` replays the *training* cases instead, under the same held-out states
        (dynamics the training never drew): how well the policy fits the cases it learned from,
        the in-sample side of the held-out numbers.

        Raises:
            InputError: an unreadable or invalid config, a workload the generator rejects, or a
                config without held-out cases.
        """
        from dynamiccl.tuning.config import load_config

        if split not in ("heldout", "train"):
            raise InputError(str(config_path), "split", f"expected 'heldout' or 'train', got {split!r}")
        config = load_config(config_path)
        where = config.run_dir(run_dir)
        train_cases = tuple(config.train_cases(where))
        cases = config.heldout_cases(where) if split == "heldout" else train_cases
        if not cases:
            raise InputError(str(config_path), "heldout.cases", "the config has no held-out cases to evaluate")
        offset = config.heldout.state_offset
        return cls(tuple(cases), tuple(range(offset, offset + config.heldout.states)),
                   train_cases, tuple(range(config.train.states)), config.model, config.cost_options(), config.knobs)

    @classmethod
    def from_traces(cls, traces: Sequence[str], envs: Sequence[str], states: int = 4, state_offset: int = 1000,
                    model: str = DEFAULT_COST_MODEL, cost_options: CostModelOptions | None = None,
                    knobs: bool = False) -> "EvaluationPlan":
        """Every trace on every environment spec (trace-major), under states ``state_offset ..
        state_offset + states - 1``; static-best is fitted in-sample, on the same cases under other
        dynamics states (``0 .. states - 1``)."""
        cases = tuple(Case(trace, env) for trace in traces for env in envs)
        return cls(cases, tuple(range(state_offset, state_offset + states)), cases, tuple(range(states)), model,
                   cost_options or CostModelOptions(), knobs)

    def env(self) -> TuningEnv:
        """A ``TuningEnv`` over the evaluated cases.

        Raises:
            InputError: an unknown cost model or no cases.
        """
        from dynamiccl.tuning.env import TuningEnv

        return TuningEnv(list(self.cases), model=self.model, cost_options=self.cost_options, knobs=self.knobs)

    def fit_episodes(self) -> tuple[TuningEnv, list[tuple[int, int]]]:
        """(a ``TuningEnv`` over the fit cases, every (case index, state) of the fit split): the
        episodes ``AgentInputs.fit`` hands to agents fitted offline."""
        from dynamiccl.tuning.env import TuningEnv

        episodes = [(case, state) for case in range(len(self.fit_cases)) for state in self.fit_states]
        return TuningEnv(list(self.fit_cases), model=self.model, cost_options=self.cost_options,
                         knobs=self.knobs), episodes


@dataclass
class Evaluation:
    """The outcome of :func:`evaluate_plan`: the results, what priced them (the description of the
    cost model on the last case replayed, e.g. "world simulator (...) on 1 x 8 H100-SXM ..."), where
    it ran (``ran_on``: :meth:`dynamiccl.sweep.Parallelism.describe`), and the tasks that failed twice
    (``failures``, also in ``results.meta["failures"]``: case, agent, state, task, error, attempts and
    the rows it leaves ``missing``); the results hold every other task's rows."""

    results: Results
    cost_model: str
    ran_on: str = "this process"
    failures: list[dict] = field(default_factory=list)


# Left to its default (every core), an evaluation whose episodes decide fewer calls than this runs in
# this process: a worker process takes ~2 s to start and import what an episode needs (measured on 2
# cores: `dynamiccl evaluate` of traces/ref-pp2-dp2.parquet on dgx-h100 takes 1.6 s in this process,
# 3.8 s on two workers), and an episode costs ~25-70 µs per decided call (the default experiment's
# held-out cases), so this is ~5 s of work: below it, a pool costs more than it saves.
POOL_MIN_DECISIONS = 100_000


@dataclass
class EvaluationRun:
    """An evaluation ready to run (:func:`prepare_evaluation`): its ``job``, the agents' ``names`` in
    the results' order, where it runs (``parallel``, a :class:`dynamiccl.sweep.Parallelism`) and that
    in words (``ran_on``, with the reason where it differs from what was asked)."""

    job: EvaluationJob
    names: list[str]
    parallel: object
    ran_on: str

    def run(self, progress: bool = True) -> Evaluation:
        """Run every task (a progress bar over tasks with ``progress``) and merge the results.

        Raises:
            InputError: ``--ray`` without Ray, or a cluster that does not answer.
        """
        results, failures = _run_evaluation(self.job, self.names, self.parallel, progress)
        descriptions = results.steps["cost_model"]
        return Evaluation(results, str(descriptions.iloc[-1]) if len(descriptions) else self.job.model, self.ran_on,
                          failures)


def prepare_evaluation(plan: EvaluationPlan, agent_names: Sequence[str], *, policy: str | None = None,
                       online_steps: int = 20, parallel=None) -> EvaluationRun:
    """Check ``plan``'s cases (each is loaded here: bad input is an error before any task runs),
    build the registered agents ``agent_names`` (``policy``: the file of the "policy" agent; without
    it that agent is left out; static-best is fitted here, once) and say where the tasks of
    :class:`EvaluationJob` will run: ``parallel`` (a :class:`dynamiccl.sweep.Parallelism`; None is
    ``Parallelism()``: every core), except that

    - left to its default (no ``workers``, no ``ray``), an evaluation whose episodes decide fewer than
      :data:`POOL_MIN_DECISIONS` calls runs in this process (a pool would cost more than it saves);
    - a cost model that runs collectives on this machine (live) runs in this process: parallel
      measurements would share its cores.

    Raises:
        InputError: an unknown agent name, an unreadable policy, or a case that cannot be loaded.
        ValueError: no states, or ``online_steps`` < 1.
    """
    from dynamiccl.costmodel.registry import COST_MODELS
    from dynamiccl.sweep import Parallelism
    from dynamiccl.tuning.agents import PolicyAgent, TableAgent

    # What fails later, in a worker (a file missing on a Ray node, a worker killed), is a task failure.
    calls = [len(load_case(case, plan.model, plan.cost_options, knobs=plan.knobs).program.tunable_calls)
             for case in plan.cases]
    agents = make_agents(agent_names, AgentInputs(policy=policy, fit=plan.fit_episodes))
    # The registry's "policy" entry is what makes a PolicyAgent or TableAgent: its file goes to the workers.
    sources = [AgentSource.of(a, policy if isinstance(a, (PolicyAgent, TableAgent)) else None) for a in agents]
    job, names = _evaluation_job(agents, sources, tuple(plan.cases), plan.model, plan.cost_options, plan.knobs,
                                 plan.states, online_steps)
    parallel = parallel or Parallelism()
    here = Parallelism(workers=1)
    decisions = sum(calls) * (len(job.states) * (1 + len(job.offline)) + len(job.online) * job.online_steps)
    if COST_MODELS[plan.model].runs_collectives and parallel != here:
        return EvaluationRun(job, names, here, f"this process (the {plan.model} cost model measures on this "
                                               "machine's cores)")
    if parallel == Parallelism() and parallel.local_workers() > 1 and decisions < POOL_MIN_DECISIONS:
        return EvaluationRun(job, names, here, f"this process (a small evaluation, {decisions:,} call decisions: "
                                               "--workers N runs it on N processes)")
    return EvaluationRun(job, names, parallel, parallel.describe())


def evaluate_plan(plan: EvaluationPlan, agent_names: Sequence[str], *, policy: str | None = None,
                  online_steps: int = 20, progress: bool = True, parallel=None) -> Evaluation:
    """:func:`prepare_evaluation` and run it: the registered agents ``agent_names`` evaluated on
    ``plan`` as :func:`evaluate` does, with the same results wherever the tasks ran. A task that
    fails twice does not stop the others: it is in ``Evaluation.failures``.

    Raises:
        InputError: an unknown agent name, an unreadable policy, a case that cannot be loaded, or
            ``--ray`` without Ray or a cluster that answers.
        ValueError: no states, or ``online_steps`` < 1.
    """
    return prepare_evaluation(plan, agent_names, policy=policy, online_steps=online_steps,
                              parallel=parallel).run(progress)


# --- sample efficiency ------------------------------------------------------------------------------


def sample_efficiency(steps: pd.DataFrame, share: float = CONVERGED_SHARE,
                      final_iterations: int = FINAL_ITERATIONS) -> pd.DataFrame:
    """How fast each online agent reached its final gain, per case.

    For the online rows (``iteration`` >= 0) of one (agent, case), in iteration order: the final
    speedup is the mean over the last ``final_iterations`` iterations (all, if fewer), the final
    gain ``g = final - 1``. An iteration is *at* the final gain when its ``speedup - 1 >= g -
    (1 - share) x |g|`` (95% of a positive gain; for a loss, no more than 5% worse than the final
    loss). The converged iteration is the first from which every later iteration is at the final
    gain.

    Returns:
        One row per (agent, case): ``iterations_run``, ``final_speedup``, ``final_gain``,
        ``converged_iteration`` (0-based), ``iterations`` (episodes run up to and including it),
        ``measurements`` (cumulative measured collectives at the end of that iteration),
        ``total_measurements``, ``reached`` (False when even the last iteration is below; then
        the three counts are NaN).

    Raises:
        ValueError: ``steps`` lacks a needed column, or ``share`` is not in (0, 1].
    """
    needed = ("agent", "case", "iteration", "speedup", "measurements")
    missing = [col for col in needed if col not in steps.columns]
    if missing:
        raise ValueError(f"steps lacks column(s) {', '.join(missing)}")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    rows = []
    online = steps[steps["iteration"] >= 0]
    for (agent, case), group in online.groupby(["agent", "case"], sort=False):
        group = group.sort_values("iteration")
        gain = group["speedup"].to_numpy(dtype=np.float64) - 1.0
        final_gain = float(gain[-final_iterations:].mean())
        at_final = gain >= final_gain - (1.0 - share) * abs(final_gain)
        # First index of the trailing run of True values (len(gain) when the last is False).
        below = np.flatnonzero(~at_final)
        first = int(below[-1]) + 1 if len(below) else 0
        reached = first < len(gain)
        measurements = group["measurements"].to_numpy()
        rows.append({
            "agent": agent, "case": case, "iterations_run": len(gain),
            "final_speedup": 1.0 + final_gain, "final_gain": final_gain,
            "converged_iteration": float(group["iteration"].iloc[first]) if reached else math.nan,
            "iterations": float(first + 1) if reached else math.nan,
            "measurements": float(measurements[first]) if reached else math.nan,
            "total_measurements": int(measurements[-1]), "reached": bool(reached),
        })
    columns = ["agent", "case", "iterations_run", "final_speedup", "final_gain", "converged_iteration",
               "iterations", "measurements", "total_measurements", "reached"]
    return pd.DataFrame(rows, columns=columns)


__all__ = ["CALL_COLUMNS", "METADATA_KEY", "NOTHING_TO_GAIN", "REFERENCE_AGENT", "STEP_COLUMNS", "SUMMARY_COLUMNS",
           "POOL_MIN_DECISIONS", "AgentSource", "Evaluation", "EvaluationFailed", "EvaluationJob", "EvaluationPlan",
           "EvaluationRun", "Results", "calls_path",
           "evaluate", "evaluate_plan", "failure_text", "gain_share", "geomean_ratio", "run_episode",
           "meta_without_timing", "prepare_evaluation", "sample_efficiency"]
