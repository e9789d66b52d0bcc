"""A sweep of mainstream layouts a table must not slow down (``dynamiccl table check --sweep FILE``).

A sweep file (TOML, e.g. ``experiments/sweep/layouts.toml``) lists layouts -- a generator workload
on an environment spec -- and how to replay them::

    [sweep]
    states = 2             # dynamics states per layout
    state_offset = 2000    # first state: none that an experiment trains or evaluates on
    tolerance = 0.005      # a layout fails below 1 - tolerance (dynamiccl.table.check.TOLERANCE)

    [[layouts]]
    name = "llama3-8b tp8 on dgx-h100"
    kind = "TP"            # what the layout exercises: TP/SP, PP, DP, FSDP, EP ...
    workload = { model = "llama3-8b", tp = 8, pp = 1, dp = 1, global_batch = 4 }
    env = "dgx-h100"

``run_sweep`` checks a table on every layout (``dynamiccl.table.check.check_cases``; workloads are
generated once into the user's cache) and marks a layout *seen* when the table's provenance lists
its case among those it was built from (then it is no held-out evidence and does not count).
The layouts are checked one sweep task each (:mod:`dynamiccl.sweep`, :class:`LayoutCheckJob`): in
this process, on a local process pool or on a Ray cluster, with the same results in the sweep
file's order whichever way; a layout whose check fails twice is reported with its name (the table
then does not pass) and the others' results are kept. The workloads are generated here first, so
every worker reads the same trace files. ``SweepResult.write`` stores a Markdown table and the JSON
beside it, each atomically, once.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from dynamiccl import __version__, atomic, schema
from dynamiccl.costmodel.protocol import CostModelOptions
from dynamiccl.envspec import resolve_env
from dynamiccl.errors import InputError, LayoutError
from dynamiccl.sweep import Failure, Parallelism, Task
from dynamiccl.sweep import run_sweep as fan_out
from dynamiccl.table.check import CHECK_STATE_OFFSET, TOLERANCE, CaseCheck, check_cases
from dynamiccl.table.model import DecisionTable
from dynamiccl.tuning.cases import Case, check_case
from dynamiccl.workload.spec import WORKLOAD, WorkloadSpec

SWEEP = schema.Schema(
    schema.table("sweep", schema.Schema(
        schema.string("description", ""),
        schema.integer("states", 2, low=1, high=64, help="dynamics states per layout"),
        schema.integer("state_offset", CHECK_STATE_OFFSET, low=0, help="the first dynamics state"),
        schema.number("tolerance", TOLERANCE, low=0, high=0.5, help="a layout fails below 1 - tolerance"),
    ), {}),
    schema.tables("layouts", schema.Schema(
        schema.string("name", non_empty=True, help="what the layout is, for the results table"),
        schema.string("kind", non_empty=True, help="what it exercises: TP/SP, PP, DP, FSDP, EP ..."),
        schema.table("workload", WORKLOAD, help="a generator workload (dynamiccl.workload.spec)"),
        schema.string("env", non_empty=True, help="a shipped spec name or the path of a spec file"),
    )),
    sections=True,
)


@dataclass(frozen=True)
class SweepLayout:
    """One layout of a sweep file: ``name``, ``kind``, ``workload``, ``env`` (spec name or path)."""

    name: str
    kind: str
    workload: WorkloadSpec
    env: str


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file (module docstring)."""

    source: str
    description: str
    states: tuple[int, ...]
    tolerance: float
    layouts: tuple[SweepLayout, ...]


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Read and check a sweep file.

    Raises:
        InputError: naming the file and the field, for anything malformed, an unknown model or
            environment spec, or two layouts with one name.
    """
    values = SWEEP.parse(schema.read_toml(path, "sweep file"), path)
    layouts, names = [], set()
    for index, entry in enumerate(values["layouts"]):
        where = f"layouts[{index}]"
        if entry["name"] in names:
            raise InputError(path, f"{where}.name", f"{entry['name']!r} is used twice; expected unique names")
        names.add(entry["name"])
        resolve_env(entry["env"])  # an unknown spec fails here, naming it
        workload = WorkloadSpec.from_values(entry["workload"], path, prefix=f"{where}.workload.")
        layouts.append(SweepLayout(entry["name"], entry["kind"], workload, entry["env"]))
    if not layouts:
        raise InputError(path, "layouts", "no layouts; expected at least one [[layouts]] table")
    sweep = values["sweep"]
    states = tuple(range(sweep["state_offset"], sweep["state_offset"] + sweep["states"]))
    return Sweep(os.fspath(path), sweep["description"], states, sweep["tolerance"], tuple(layouts))


def workload_cache() -> Path:
    """Where generated workloads are kept: ``$XDG_CACHE_HOME/dynamiccl/workloads`` (``~/.cache`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dynamiccl" / "workloads"


def layout_case(layout: SweepLayout, source: str = "<sweep>") -> Case:
    """The layout's case, its workload generated once into ``workload_cache()``.

    Raises:
        InputError: a layout the model cannot run, naming ``source`` and the layout.
    """
    return Case(workload_trace(layout.workload, layout.env, source, f"layout {layout.name!r}"), layout.env)


def workload_trace(workload, env: str, source: str, field: str) -> str:
    """The trace of ``workload`` (a :class:`~dynamiccl.workload.spec.WorkloadSpec`) on the cluster of
    ``env``, generated once into :func:`workload_cache`.

    Raises:
        InputError: a layout the model cannot run, naming ``source`` and ``field``.
    """
    try:
        return str(workload.cached_trace(workload_cache(), resolve_env(env).cluster))
    except LayoutError as err:
        raise InputError(source, field, err.problem) from None


def output_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """The two files a sweep's results go to: ``<output>.md`` and ``<output>.json`` (``output``
    without a .md/.json suffix)."""
    base = Path(output)
    base = base.with_suffix("") if base.suffix in (".md", ".json") else base
    return base.with_name(base.name + ".md"), base.with_name(base.name + ".json")


@dataclass
class SweepResult:
    """A table checked on a sweep: per layout checked (sweep file order) its ``CaseCheck`` and whether
    the table saw it; ``failed``: the layouts whose check failed twice, each with its
    :class:`~dynamiccl.sweep.Failure`; ``backend`` and ``workers``: where the checks ran (as
    :class:`~dynamiccl.sweep.SweepOutcome` says)."""

    table_path: str
    sweep: Sweep
    layouts: list[SweepLayout]
    checks: list[CaseCheck]
    seen: list[bool]
    wall_s: float
    model: str
    failed: list[tuple[SweepLayout, Failure]] = field(default_factory=list)
    backend: str = "this process"
    workers: int = 1

    @property
    def counted(self) -> list[int]:
        """Indices of the layouts that count (not seen by the table)."""
        return [i for i, seen in enumerate(self.seen) if not seen]

    @property
    def passed(self) -> bool:
        """Whether the table passes on every layout that counts (and every layout could be checked)."""
        return not self.failed and all(self.checks[i].passed for i in self.counted)

    @property
    def worst(self) -> float:
        """The lowest ratio over the layouts that count (1.0 when none count)."""
        return min((self.checks[i].ratio for i in self.counted), default=1.0)

    def verdict(self, index: int) -> str:
        if self.seen[index]:
            return "seen in training"
        return "pass" if self.checks[index].passed else "FAIL"

    def to_json(self) -> dict:
        """Everything, JSON-serialisable."""
        return {"dynamiccl_version": __version__, "table": self.table_path, "sweep": self.sweep.source,
                "model": self.model, "states": list(self.sweep.states), "tolerance": self.sweep.tolerance,
                "wall_s": round(self.wall_s, 1), "passed": self.passed, "worst_ratio": self.worst,
                "layouts": [{"name": layout.name, "kind": layout.kind, "env": layout.env,
                             "workload": layout.workload.to_dict(), "verdict": self.verdict(i),
                             **check.to_json()}
                            for i, (layout, check) in enumerate(zip(self.layouts, self.checks))],
                "failed": [{"name": layout.name, "kind": layout.kind, "env": layout.env,
                            "attempts": failure.attempts, "error": failure.error} for layout, failure in self.failed]}

    def markdown(self) -> str:
        """The results table: per layout NCCL's default step, the table's, the ratio, the verdict."""
        counted = self.counted
        failed = sum(not self.checks[i].passed for i in counted)
        lines = [f"# Sweep of `{self.table_path}` on `{self.sweep.source}`", "",
                 f"{len(self.layouts)} layouts ({len(counted)} the table never saw"
                 f"{f'; {len(self.failed)} more could not be checked' if self.failed else ''}), dynamics states "
                 f"{self.sweep.states[0]}..{self.sweep.states[-1]}, cost model `{self.model}`, tolerance "
                 f"{self.sweep.tolerance:.1%}: **{'PASS' if self.passed else 'FAIL'}** ({failed} failed; "
                 f"worst ratio {self.worst:.4f}x). Ratio = NCCL's default step / the table's step (> 1: "
                 f"the table is faster); noise = run-to-run SD of the default step over the states. "
                 f"{self.wall_s:.0f} s.", "",
                 "| layout | kind | env | default step (ms) | table step (ms) | ratio | noise | changed calls/step "
                 "| verdict |",
                 "|---|---|---|---:|---:|---:|---:|---:|---|"]
        for i, (layout, check) in enumerate(zip(self.layouts, self.checks)):
            lines.append(f"| {layout.name} | {layout.kind} | {layout.env} | {check.default_step_us / 1e3:,.2f} | "
                         f"{check.table_step_us / 1e3:,.2f} | {check.ratio:.4f} | {check.noise:.2%} | "
                         f"{check.changed_calls:g} | {self.verdict(i)} |")
        if self.failed:
            lines += ["", "## Layouts that could not be checked", ""]
            lines += [f"- **{layout.name}** ({layout.kind}, {layout.env}): failed {failure.attempts} times; "
                      f"{failure.error}" for layout, failure in self.failed]
        refused = [i for i in counted if not self.checks[i].passed]
        if refused:
            lines += ["", "## Calls responsible where the table fails", ""]
            for i in refused:
                lines.append(f"- **{self.layouts[i].name}** ({self.checks[i].ratio:.4f}x):")
                lines += [f"  - {call.describe()}" for call in self.checks[i].responsible[:5]]
        return "\n".join(lines) + "\n"

    def write(self, output: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``<output>.md`` and ``<output>.json`` (``output`` without its suffix), each atomically;
        returns both paths.

        Raises:
            dynamiccl.errors.OutputError: a file cannot be written (an existing one is then left
                untouched).
        """
        md, js = output_paths(output)
        atomic.write_text(md, self.markdown())
        atomic.write_text(js, json.dumps(schema.json_ready(self.to_json()), indent=1) + "\n")
        return md, js


@dataclass(frozen=True)
class LayoutCheckJob:
    """The checks of a sweep as a sweep job (:class:`dynamiccl.sweep.SweepJob`): a task's args are a
    layout's :class:`~dynamiccl.tuning.cases.Case`, its result that case's ``CaseCheck`` of ``table``
    under ``states`` and ``tolerance``, priced by the registered cost model ``model`` made with
    ``cost_options``."""

    table: DecisionTable
    states: tuple[int, ...]
    tolerance: float
    model: str
    cost_options: CostModelOptions | None = None

    def setup(self) -> None:
        return None  # load_case caches each case per process

    def run(self, context: None, case: Case) -> CaseCheck:
        """Check ``case`` (no progress bar: the sweep has its own).

        Raises:
            InputError: a case that cannot be replayed.
        """
        return check_cases(self.table, [case], states=self.states, model=self.model, tolerance=self.tolerance,
                           cost_options=self.cost_options)[0]


def run_sweep(table: DecisionTable, sweep: Sweep, *, table_path: str = "", model: str | None = None,
              progress: bool = False, cost_options=None, parallel: Parallelism = Parallelism()) -> SweepResult:
    """Check ``table`` on every layout of ``sweep`` (module docstring), under the registered cost
    model ``model`` made with ``cost_options`` (a ``CostModelOptions``; None: the defaults), one
    task per layout where ``parallel`` says (default: a process per core); ``progress``: a bar over
    the layouts.

    Raises:
        InputError: a layout whose workload cannot be generated or replayed (before any check
            runs), or a Ray cluster that cannot be reached.
    """
    from dynamiccl.costmodel.registry import DEFAULT_COST_MODEL

    model = model or DEFAULT_COST_MODEL
    started = time.perf_counter()
    cases = [layout_case(layout, sweep.source) for layout in sweep.layouts]
    # A layout that cannot be replayed is refused here, before any check runs.
    calls = [len(check_case(case)[1].tunable_calls) for case in cases]
    trained_on = set(table.provenance.get("cases", []) or [])
    job = LayoutCheckJob(table, tuple(sweep.states), sweep.tolerance, model, cost_options)
    tasks = [Task(i, layout.name, case) for i, (layout, case) in enumerate(zip(sweep.layouts, cases))]
    tasks.sort(key=lambda task: -calls[task.key])  # the biggest steps first: none starts last on a busy pool
    outcome = fan_out(job, tasks, parallel, progress=progress, desc="check")
    checked = list(outcome.results)
    return SweepResult(table_path, sweep, [sweep.layouts[i] for i in checked], list(outcome.results.values()),
                       [cases[i].label in trained_on for i in checked], time.perf_counter() - started, model,
                       [(sweep.layouts[f.key], f) for f in outcome.failures], outcome.backend, outcome.workers)


__all__ = ["SWEEP", "LayoutCheckJob", "Sweep", "SweepLayout", "SweepResult", "layout_case", "load_sweep",
           "run_sweep", "workload_cache"]
