"""``dynamiccl doctor``: can a job on this machine be tuned, and if not, what is missing?

A checklist that runs anywhere, GPUs or not. Each check ends ``ok``, ``warn`` (works, but something
may defeat tuning), ``missing`` (a prerequisite is not installed here) or ``fail`` (something given or
built is broken; the exit status is then 1):

- NCCL: the libraries a job may load -- ``--nccl PATH``, ``$LD_LIBRARY_PATH``, ``$NCCL_HOME/lib``,
  ``$CUDA_HOME/lib64``, the usual system directories, the ``nvidia-nccl-cu12``/``-cu13`` wheels
  (``site-packages/nvidia/nccl/lib/libnccl.so.2``) and the dynamic linker's cache -- and torch's NCCL
  (``torch.cuda.nccl.version()``, absent from CPU builds of torch). Each library's version comes
  from its ``ncclGetVersion``, called in a separate process (a broken library cannot take the
  doctor down); if it cannot be loaded (no CUDA driver libraries, say), from the wheel's metadata
  or the file name ``libnccl.so.2.X.Y``;
- the tuner ABI each NCCL version looks up (``tuner_abi_for``) and whether the plugin exports it;
- the plugin: a C compiler, the build (or ``--plugin PATH``), the ABI versions the production library
  exports (it must export nothing of dynamiccl's own: that is the instrumented library's job), and
  the instrumented library beside it, whose C parser checks tables;
- the table (``--table``): read and checked by the plugin's C parser; rules, position rules, step
  shapes, init-time settings;
- with ``--trace T --env SPEC``: the table checked on the job's step (``dynamiccl table check``: the
  step replayed with and without it; a table that makes it slower fails, with the calls responsible);
- the environment: ``NCCL_TUNER_PLUGIN`` naming another plugin, ``NCCL_ALGO`` / ``NCCL_PROTO``;
- what ``dynamiccl launch`` would set (``dynamiccl.launcher.plan_launch``, the launcher's own code).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from dynamiccl.errors import DynamicclError
from dynamiccl.launcher import PLUGIN_ENV, check_on_trace, check_verdict, mask_warnings, open_checker, open_plugin, \
    plan_launch, prepare_table, resolve_plugin
from dynamiccl.nccl import FUNC_OP, KEEP
from dynamiccl.nccl_libraries import (  # noqa: F401 (re-exported: the doctor's vocabulary)
    NCCL_WHEELS, SYSTEM_LIB_DIRS, TUNER_ABI_SINCE, TUNER_V1_SINCE, NcclLibrary, abi_story, find_nccl, format_version, probe_library, tuner_abi_for,
    version_from_code)
from dynamiccl.plugin.build import PluginBuildError, find_compiler
from dynamiccl.table import load as load_table

STATUSES = ("ok", "warn", "missing", "fail")
DEBUG_TIP = ("NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,TUNING shows NCCL loading the plugin "
             "(\"dynamiccl tuner: loaded N rules\") and the choices it makes")

# --- what the report holds ------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One line of the report: ``status`` is one of ``STATUSES``."""

    name: str
    status: str
    detail: str


@dataclass
class Report:
    """Everything the doctor found; ``exit_status`` is 1 if any check failed, else 0."""

    checks: list[Check] = field(default_factory=list)
    nccl: list[NcclLibrary] = field(default_factory=list)
    torch_nccl: str | None = None
    plugin: dict = field(default_factory=dict)
    table: dict = field(default_factory=dict)
    launch: dict = field(default_factory=dict)
    tips: list[str] = field(default_factory=list)

    def add(self, name: str, status: str, detail: str) -> None:
        """Append a check; ``status`` must be one of ``STATUSES``."""
        assert status in STATUSES, status
        self.checks.append(Check(name, status, detail))

    def counts(self) -> dict[str, int]:
        """How many checks ended in each status."""
        return {status: sum(c.status == status for c in self.checks) for status in STATUSES}

    @property
    def exit_status(self) -> int:
        """1 if any check failed, else 0."""
        return 1 if any(c.status == "fail" for c in self.checks) else 0

    def to_json(self) -> dict:
        """The report as JSON-serialisable data."""
        return {"checks": [asdict(c) for c in self.checks],
                "nccl": [asdict(lib) | {"tuner_abi": lib.abi} for lib in self.nccl],
                "torch_nccl": self.torch_nccl, "plugin": self.plugin, "table": self.table,
                "launch": self.launch, "tips": self.tips, "summary": self.counts(),
                "exit_status": self.exit_status}

    def render(self) -> str:
        """The report as text: one line per check, what a launch would set, tips, a summary."""
        width = max((len(c.name) for c in self.checks), default=0)
        lines = ["dynamiccl doctor"]
        lines += [f"  {c.status:<8} {c.name:<{width}}  {c.detail}" for c in self.checks]
        if self.launch.get("lines"):
            lines.append("dynamiccl launch would say:")
            lines += [f"  {line}" for line in self.launch["lines"]]
        lines += [f"tip: {tip}" for tip in self.tips]
        counts = self.counts()
        lines.append("summary: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES)
                     + ("" if self.exit_status == 0 else " -- fix the failed check(s) above"))
        return "\n".join(lines) + "\n"


def _torch_build_info(version_file: Path):
    """torch's generated ``version.py`` (``__version__``, ``cuda``) run on its own, or None."""
    try:
        spec = importlib.util.spec_from_file_location("_dynamiccl_torch_version", version_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module if hasattr(module, "cuda") and hasattr(module, "__version__") else None
    except Exception:  # an unexpected layout: fall back to importing torch
        return None


def torch_nccl_version() -> tuple[str, str, tuple[int, int, int] | None]:
    """(status, detail, version) of the NCCL that torch uses, without touching a GPU."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return "missing", "torch is not installed", None
    build = _torch_build_info(Path(spec.origin).with_name("version.py"))
    if build is not None and not build.cuda:  # a CPU build, known without importing torch (seconds)
        return "missing", (f"torch {build.__version__} is a CPU build: it has no NCCL "
                           "(GPU jobs need a CUDA build of torch)"), None
    import torch

    try:
        raw = torch.cuda.nccl.version()
    except Exception as exc:  # a broken CUDA install must not stop the report
        return "warn", f"torch {torch.__version__} (CUDA {torch.version.cuda}): NCCL version unknown ({exc})", None
    version = tuple(raw) if isinstance(raw, tuple) else version_from_code(int(raw))
    return "ok", f"torch {torch.__version__} (CUDA {torch.version.cuda}) uses NCCL {format_version(version)}", version


# --- the checks ---------------------------------------------------------------------------------------

def _check_nccl(report: Report, extra: Sequence[str | os.PathLike], env: Mapping[str, str]) -> list:
    report.nccl = find_nccl(extra, env)
    for lib in report.nccl:
        where = f"{lib.path} ({lib.source})"
        if lib.version_from == "ncclGetVersion":
            report.add("nccl", "ok", f"NCCL {format_version(lib.version)} at {where}")
        elif lib.source == "--nccl" and lib.load_error == "not a file":
            report.add("nccl", "fail", f"--nccl {lib.path}: not a file; expected a libnccl.so.2")
        elif lib.version:
            report.add("nccl", "warn", f"NCCL {format_version(lib.version)} (from the {lib.version_from}) at "
                       f"{where}; could not load it here: {lib.load_error}")
        else:
            report.add("nccl", "warn", f"{where}: version unknown; could not load it: {lib.load_error}")
    if not report.nccl:
        report.add("nccl", "missing", "no libnccl.so.2 found (searched LD_LIBRARY_PATH, NCCL_HOME, CUDA_HOME, "
                   f"{', '.join(SYSTEM_LIB_DIRS)}, the {' and '.join(NCCL_WHEELS)} wheels and the linker "
                   "cache); GPU jobs bring their own (pip install nvidia-nccl-cu12, or a CUDA torch), "
                   "or name one with --nccl PATH")
    status, detail, version = torch_nccl_version()
    report.torch_nccl = format_version(version) if version else None
    report.add("torch nccl", status, detail)
    versions = [lib.version for lib in report.nccl if lib.version] + ([version] if version else [])
    return sorted(set(versions))


def _check_plugin(report: Report, plugin: str | os.PathLike | None):
    if plugin is None:
        try:
            report.add("compiler", "ok", find_compiler())
        except PluginBuildError as exc:
            report.add("compiler", "missing", str(exc))
            report.add("plugin", "missing", "cannot be built without a C compiler (or give --plugin PATH)")
            return None
    try:
        path = resolve_plugin(plugin)
        library = open_plugin(path)
        checker = open_checker(path)
    except PluginBuildError as exc:
        report.add("plugin", "fail", str(exc).replace("\n", " | "))
        return None
    except DynamicclError as exc:
        report.add("plugin", "fail", str(exc))
        return None
    exported = library.exported_abi_versions()
    report.plugin = {"path": str(library.path), "size_bytes": library.path.stat().st_size,
                     "abi_versions": exported, "version": checker.version,
                     "instrumented_path": str(checker.path)}
    names = ", ".join(f"v{v}" for v in exported)
    report.add("plugin", "ok", f"{library.path} ({report.plugin['size_bytes']} bytes, plugin version "
               f"{checker.version}): exports tuner ABI {names}; tables are checked with {checker.path}")
    if hasattr(library.lib, "dynamiccl_tuner_override"):
        report.add("plugin", "warn", f"{library.path} is the instrumented variant (test and measurement entry "
                   "points, counters on every call); give NCCL the libnccl-tuner-dynamiccl.so beside it")
    return checker


def _check_abi(report: Report, versions: list, checker) -> None:
    if not versions:
        report.add("tuner abi", "missing", "no NCCL found, so which ABI NCCL will look up is unknown; dynamiccl "
                   "tunes NCCL 2.21.5 or newer (" + ", ".join(f"v{abi} from {format_version(since)}"
                                                            for abi, since in reversed(TUNER_ABI_SINCE)) + ")")
        return
    for version in versions:
        abi = tuner_abi_for(version)
        story = abi_story(version)
        if abi is None:
            report.add("tuner abi", "warn", story)
        elif checker is None:
            report.add("tuner abi", "warn", f"{story}; the plugin was not checked")
        elif abi in report.plugin["abi_versions"]:
            report.add("tuner abi", "ok", f"{story}: the plugin exports it")
        else:
            report.add("tuner abi", "fail", f"{story}: the plugin {report.plugin['path']} does not export it")


def _check_table(report: Report, table_path: str | os.PathLike, checker) -> None:
    try:
        if checker is not None:
            prepared = prepare_table(table_path, checker)
            table = prepared.table
            parsed = (f"the plugin's parser accepts it ({prepared.rules} rule(s), {prepared.step_lines} step "
                      f"line(s) in {prepared.text_path})")
        else:
            table = load_table(table_path)
            parsed = "the plugin's parser was not run (no plugin)"
    except DynamicclError as exc:
        report.table = {"path": os.fspath(table_path), "error": str(exc)}
        report.add("table", "fail", str(exc))
        return
    positional = sum(rule.position != KEEP for rule in table.rules)
    report.table = {"path": os.fspath(table_path), "rules": len(table.rules), "position_rules": positional,
                    "steps": [{"nranks": s.nranks, "nnodes": s.nnodes, "calls_per_step": s.calls_per_step,
                               "anchor_coll": FUNC_OP[s.anchor_coll], "anchor_bytes": s.anchor_bytes}
                              for s in table.steps], "job_env": dict(table.job_env)}
    report.add("table", "ok", f"{table_path}: {len(table.rules)} rule(s), {positional} with a position; {parsed}")
    for step in report.table["steps"]:
        report.add("table step", "ok", f"{step['nranks']} rank(s) on {step['nnodes']} node(s): "
                   f"{step['calls_per_step']} call(s) per step, anchor {step['anchor_coll']} "
                   f"{step['anchor_bytes']} bytes")
    if positional and not table.steps:
        report.add("table step", "warn", f"{positional} rule(s) need a position but the table has no step "
                   "shapes: the plugin never knows positions, so they never apply")
    if table.job_env:
        report.add("table job_env", "ok", " ".join(f"{k}={v}" for k, v in table.job_env.items())
                   + " (per-job NCCL settings that launch exports)")


def _check_environment(report: Report, env: Mapping[str, str]) -> None:
    current = env.get(PLUGIN_ENV)
    ours = report.plugin.get("path")
    if not current:
        report.add(PLUGIN_ENV, "ok", "not set here; `dynamiccl launch` sets it")
    elif ours and os.path.realpath(current) == os.path.realpath(ours):
        report.add(PLUGIN_ENV, "ok", f"{current} (this plugin)")
    else:
        report.add(PLUGIN_ENV, "warn", f"set to {current}: outside `dynamiccl launch` NCCL loads that instead; "
                   "launch replaces it")
    warnings = mask_warnings(env)
    for message in warnings:
        report.add(message.split("=", 1)[0], "warn", message)
    if not warnings:
        report.add("NCCL_ALGO/NCCL_PROTO", "ok", "not set: the plugin sees every cell NCCL can run")
    subsystems = env.get("NCCL_DEBUG_SUBSYS", "").upper().split(",")
    if env.get("NCCL_DEBUG", "").upper() not in ("INFO", "TRACE") or not {"TUNING", "ALL"} & set(subsystems):
        report.tips.append(DEBUG_TIP)


def _check_on_trace(report: Report, table_path, trace, env_spec):
    """The table checked on the job's step (``dynamiccl table check``); None if it could not run."""
    try:
        checked = check_on_trace(table_path, trace, env_spec)
    except DynamicclError as exc:
        report.add("table check", "fail", f"cannot replay {trace}: {exc}")
        return None
    report.table["check"] = checked.to_json()
    if checked.passed:
        report.add("table check", "ok", check_verdict(checked))
    else:
        report.add("table check", "fail", check_verdict(checked) + "; launch would run the job with NCCL's own "
                   "choices")
        for call in checked.responsible[:5]:
            report.add("table check", "fail", call.describe())
    return checked


def run_doctor(table: str | os.PathLike | None = None, plugin: str | os.PathLike | None = None,
               nccl: Sequence[str | os.PathLike] = (), env: Mapping[str, str] | None = None,
               trace: str | os.PathLike | None = None, env_spec: str | None = None) -> Report:
    """Run every check (see the module docstring) and return the report.

    Args:
        table: a decision table to check (``--table``); plugin: a prebuilt plugin (``--plugin``);
        nccl: NCCL libraries to check besides those found (``--nccl``); env: the environment a job
            would start from (default ``os.environ``); trace, env_spec: a trace of the job's step and
            the spec of its cluster, to check the table there (``dynamiccl table check``).

    Never raises for what it checks: problems become ``fail`` / ``missing`` / ``warn`` checks.
    """
    env = dict(os.environ if env is None else env)
    report = Report()
    versions = _check_nccl(report, nccl, env)
    checker = _check_plugin(report, plugin)
    _check_abi(report, versions, checker)
    checked = None
    if table is not None:
        _check_table(report, table, checker)
        if trace is not None:
            checked = _check_on_trace(report, table, trace, env_spec)
        else:
            report.tips.append("give --trace T --env SPEC to replay your step with and without the table")
    else:
        report.tips.append("give --table T to check a decision table as the plugin will read it")
    _check_environment(report, env)
    # A check that could not run is left to the launch plan, which then runs the job untuned.
    plan = plan_launch(table, plugin, base_env=env, checked=checked,
                       trace=trace if checked is None else None, env_spec=env_spec, nccl_found=report.nccl)
    report.launch = {"tuned": plan.tuned, "reason": plan.reason, "settings": plan.settings, "lines": plan.lines}
    if table is not None:
        report.add("launch", "ok" if plan.tuned else "warn",
                   "would tune the job" if plan.tuned else f"would run the job untuned: {plan.reason}")
    return report
