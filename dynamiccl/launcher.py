"""``dynamiccl launch -- CMD``: build the environment of a tuned job and run the job in it.

What a launch does, in order:

1. finds the tuner plugin: ``--plugin PATH`` (a prebuilt ``libnccl-tuner-dynamiccl.so``) or
   ``dynamiccl.plugin.build.build_plugin`` (compiled once, cached by source hash);
2. reads the decision table (``.json``, NVIDIA's example CSV ``.csv``/``.conf``, or the plugin's own
   text ``.txt``), writes it in the plugin's text format to ``<cache root>/tables/<hash>.txt``
   (atomically; the name is a hash of the text, so concurrent launches of one table share a file)
   and has the plugin's own C parser check that file, exactly as the plugin's ``init`` will. The
   production library exports nothing but NCCL's symbols, so the parser run is the instrumented
   library of the same build (``open_checker``: the one beside the plugin, else the cached build);
3. sets ``NCCL_TUNER_PLUGIN`` to the plugin's absolute path (replacing a value the user had) and
   ``DYNAMICCL_TUNER_TABLE`` to the text file, and exports the table's per-job settings
   (``DecisionTable.job_env``) unless the user already set them -- the user's value wins -- minus
   what :mod:`dynamiccl.knobs.safety` refuses on the NCCL found here (``nccl_libraries.find_nccl``;
   every version found must be safe) over the job's transport (``--env SPEC``'s ``inter.transport``,
   else the link layer of the RDMA devices in ``/sys/class/infiniband``; unknown: refused as
   ``safety`` says); where ``safety`` refuses the table's per-call chunk sizes it sets
   ``DYNAMICCL_TUNER_NO_CHUNK=1`` (the plugin then keeps NCCL's chunk). Each refusal is one line; an
   unsafe value the user set themselves is kept (theirs), with a warning;
4. with per-communicator settings in the table (``DecisionTable.communicators``): writes them to
   ``<cache root>/tables/<hash>.communicators.json`` (a table without rules, atomically) and names it
   in ``DYNAMICCL_COMM_CONFIG``, with the autostart directory on ``PYTHONPATH``, so the zero-code hook
   (:mod:`dynamiccl.commconfig_hook`) gives every NCCL process group of the job its ``ncclConfig_t``
   fields; and writes the same settings as Megatron-LM's ``--nccl-communicator-config-path`` YAML
   (:mod:`dynamiccl.megatron_yaml`) beside it, printing the flag (for runs without the launcher);
5. with ``--profile DIR``: the profiler's zero-code environment (``DIR/capture``), and after the job
   the capture is merged into ``DIR/trace.parquet`` as ``dynamiccl profile`` does;
6. runs the command (``torchrun ...``, ``srun ...``, ``python ...``) unchanged in its own process
   group; the environment reaches every child. SIGINT and SIGTERM are forwarded to the group and
   the launcher exits with the command's status (128 + N if signal N killed it).

With ``--trace T --env SPEC`` the table is first checked on the job's step (``dynamiccl table
check``: the step replayed with and without it); a table that makes the step slower is not used.

It fails open: if the plugin cannot be built or loaded, the table cannot be read or is refused by
the plugin's parser or by the check on the trace, the job still runs, without ``NCCL_TUNER_PLUGIN`` (NCCL's own choices), and
the launcher says why in one line. Fail-open is for the job only: ``--dry-run`` (a CI gate) and
``--strict`` exit with status 2 on a table they cannot apply, naming the file and the reason, and
run nothing. Every line it prints starts with ``dynamiccl launch:`` and goes to stderr, so the
job's own output stays clean.

Paths are absolute. On a multi-node job the plugin, the table text and ``--profile DIR`` must be
visible on every node: keep ``$DYNAMICCL_CACHE_DIR`` (default ``~/.cache/dynamiccl``) on a shared
filesystem, or run ``dynamiccl launch`` on each node (``srun dynamiccl launch --table T -- python
train.py``).
"""

from __future__ import annotations

import hashlib
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from dynamiccl.atomic import write_text
from dynamiccl.commconfig_hook import ENV_FILE as COMM_CONFIG_ENV
from dynamiccl.errors import DynamicclError, InputError
from dynamiccl.knobs.safety import PER_CALL_CHUNK, RULES as SAFETY_RULES, Refusal, refusals
from dynamiccl.plugin import INSTRUMENTED_FILE_NAME, NO_CHUNK_ENV, TABLE_ENV
from dynamiccl.plugin.binding import InstrumentedTunerLibrary, TunerLibrary
from dynamiccl.plugin.build import PluginBuildError, build_plugin, cache_root, instrumented_beside
from dynamiccl.profiler.auto import ENV_DIR as PROFILE_ENV
from dynamiccl.profiler.run import (autostart_environment, create_capture_dir, merge_after_run, profile_environment,
                                   run_forwarding_signals)
from dynamiccl.profiler.run import say as say_as
from dynamiccl.table import DecisionTable, format_of, load, plugin_text, save

PREFIX = "dynamiccl launch: "
PLUGIN_ENV = "NCCL_TUNER_PLUGIN"
MASK_ENVS = ("NCCL_ALGO", "NCCL_PROTO")
PLUGIN_TEXT_SUFFIX = ".txt"
USAGE = ("dynamiccl launch [--table T [--trace TRACE --env SPEC]] [--plugin PATH] [--profile DIR] [--dry-run] "
         "[--strict] -- CMD ...")
NOT_APPLIED_STATUS = 2  # --dry-run / --strict with a table that cannot be applied: an input error
INFINIBAND_SYSFS = "/sys/class/infiniband"  # RDMA devices; ports/N/link_layer: InfiniBand or Ethernet (RoCE)
COMMUNICATORS_SUFFIX = ".communicators.json"
MEGATRON_SUFFIX = ".megatron.yaml"


@dataclass(frozen=True)
class PreparedTable:
    """A table converted for the plugin and accepted by the plugin's C parser.

    ``source``: the user's file; ``text_path``: the plugin text (absolute) that
    ``$DYNAMICCL_TUNER_TABLE`` names; ``rules`` / ``step_lines``: what the C parser counted.
    """

    source: Path
    table: DecisionTable
    text_path: Path
    rules: int
    step_lines: int


@dataclass
class LaunchPlan:
    """The environment of a launch and what the launcher reports about it.

    ``env``: the job's whole environment; ``settings``: the variables the launcher set (name ->
    value) or removed (name -> None); ``lines``: the report, one line per variable or note, without
    the ``dynamiccl launch:`` prefix; ``reason``: why the job runs untuned (None when it is tuned);
    ``capture_dir``: where the profiler records (``--profile``), else None.
    """

    env: dict[str, str]
    settings: dict[str, str | None] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    plugin: Path | None = None
    prepared: PreparedTable | None = None
    reason: str | None = None
    capture_dir: Path | None = None

    @property
    def tuned(self) -> bool:
        """Whether the job gets the plugin and a table (NCCL_TUNER_PLUGIN is set)."""
        return self.prepared is not None

    def set(self, name: str, value: str, note: str = "") -> None:
        """Set ``name`` in the job's environment and report it (``note`` in parentheses)."""
        self.env[name] = value
        self.settings[name] = value
        self.lines.append(f"{name}={shlex.quote(value)}" + (f" ({note})" if note else ""))

    def unset(self, name: str) -> None:
        """Remove ``name`` from the job's environment, reporting the value it had, if it had one."""
        if name in self.env:
            self.lines.append(f"unset {name} (was {shlex.quote(self.env.pop(name))})")
            self.settings[name] = None


# --- the pieces --------------------------------------------------------------------------------------

def resolve_plugin(plugin: str | os.PathLike | None = None) -> Path:
    """The plugin library to use: ``plugin`` (``--plugin PATH``) if given, else the cached build.

    Returns:
        An absolute path.

    Raises:
        InputError: ``--plugin`` names no file.
        PluginBuildError: no C compiler, or compiling failed (only when ``plugin`` is None).
    """
    if plugin is None:
        return build_plugin()
    path = Path(plugin)
    if not path.is_file():
        raise InputError("--plugin", None, f"{path} is not a file; expected a prebuilt "
                         "libnccl-tuner-dynamiccl.so (see `dynamiccl plugin build`)")
    return path.resolve()


def open_plugin(path: str | os.PathLike) -> TunerLibrary:
    """Load the plugin library with ctypes (as NCCL would dlopen it) and check that it is dynamiccl's:
    it exports ``ncclTunerPlugin_vN`` structs, each named ``dynamiccl``.

    Raises:
        InputError: naming the file, if it cannot be loaded or is not dynamiccl's tuner plugin.
    """
    try:
        library = TunerLibrary(path)
    except OSError as exc:
        raise InputError(path, None, f"cannot load the library ({exc}); expected a shared library "
                         "built by `dynamiccl plugin build`") from None
    versions = library.exported_abi_versions()
    if not versions or any(library.plugin(v).name != b"dynamiccl" for v in versions):
        raise InputError(path, None, "not dynamiccl's tuner plugin (no ncclTunerPlugin_vN named dynamiccl); "
                         "expected a libnccl-tuner-dynamiccl.so built by `dynamiccl plugin build`")
    return library


def open_checker(plugin: str | os.PathLike) -> InstrumentedTunerLibrary:
    """The instrumented library whose C parser checks tables for the production library ``plugin``:
    the one beside it (``dynamiccl plugin build`` writes both into one directory), else the cached
    build of this package's sources.

    Raises:
        InputError: naming the library, if it cannot be loaded or lacks dynamiccl's entry points.
        PluginBuildError: none beside ``plugin``, and none can be built (no compiler, or it failed).
    """
    path = instrumented_beside(plugin)
    if not path.is_file():
        try:
            path = instrumented_beside(build_plugin())
        except PluginBuildError as exc:
            raise PluginBuildError(f"no {INSTRUMENTED_FILE_NAME} beside {plugin} to check the table with "
                                   f"(`dynamiccl plugin build` writes both), and none can be built here: "
                                   f"{exc}") from None
    try:
        return InstrumentedTunerLibrary(path)
    except OSError as exc:
        raise InputError(path, None, f"cannot load the library ({exc}); expected the "
                         f"{INSTRUMENTED_FILE_NAME} of `dynamiccl plugin build`") from None
    except AttributeError as exc:
        raise InputError(path, None, f"not dynamiccl's instrumented plugin ({exc}); expected the "
                         f"{INSTRUMENTED_FILE_NAME} of `dynamiccl plugin build`") from None


def prepare_table(path: str | os.PathLike, library: InstrumentedTunerLibrary,
                  text_path: str | os.PathLike | None = None) -> PreparedTable:
    """Convert the table at ``path`` to the plugin's text and check it with the plugin's C parser.

    Args:
        path: the user's table, any format ``dynamiccl.table.load`` reads.
        library: the instrumented plugin whose parser checks the text (``open_checker``).
        text_path: where to write the text (default ``<cache root>/tables/<hash of the text>.txt``).

    Raises:
        InputError: naming ``path``: the table is unreadable or invalid, or the C parser refuses
            it (a ``.txt`` file) or the converted text (its line and field in the message).
        OSError: if the text cannot be written.
    """
    path = Path(path)
    table = load(path)
    if format_of(path) == "plugin-text":
        library.check_file(path)  # the user's own plugin text: the C parser's verdict on it, too
    text = plugin_text.write(table, os.fspath(path))
    if text_path is None:
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        text_path = cache_root() / "tables" / f"{digest}{PLUGIN_TEXT_SUFFIX}"
    text_path = Path(text_path).absolute()
    write_text(text_path, text)
    try:
        rules, step_lines = library.check_file(text_path)
    except InputError as err:
        raise InputError(path, None, f"the plugin's parser refuses the converted text {text_path}: "
                         f"{err.problem}") from None
    return PreparedTable(path, table, text_path, rules, step_lines)


def mask_warnings(env: Mapping[str, str]) -> list[str]:
    """Why NCCL_ALGO / NCCL_PROTO in ``env`` defeat some of a table's rules (one message each)."""
    return [f"{name}={shlex.quote(env[name])} is set: NCCL disables the cells it masks before the plugin "
            "sees them, so rules asking for them do not apply (and under tuner ABI v2 the plugin then "
            "applies no algorithm/protocol rule at all)" for name in MASK_ENVS if env.get(name)]


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, DynamicclError) else f"{type(exc).__name__}: {exc}"
    first, _, rest = text.strip().partition("\n")
    return first + (" ... (run `dynamiccl plugin build` for the whole message)" if rest else "")


# --- the plan and the run ---------------------------------------------------------------------------

def check_on_trace(table: str | os.PathLike, trace: str | os.PathLike, env_spec: str | None):
    """``dynamiccl table check`` of ``table`` on one step of ``trace`` replayed on ``env_spec``: the
    :class:`~dynamiccl.table.check.CaseCheck` (``passed`` False: the table makes the step slower).

    Raises:
        InputError: no ``env_spec``, or an unreadable table, trace or spec.
    """
    from dynamiccl.table.check import check_cases
    from dynamiccl.tuning.cases import Case

    if not env_spec:
        raise InputError("--env", None, "checking the table on --trace needs the environment spec the job runs on")
    return check_cases(load(table), [Case(os.fspath(trace), env_spec)])[0]


def check_verdict(check) -> str:
    """One line: a table check's ratio and verdict, and the call that lost most when it was refused."""
    line = (f"table check on {check.label}: NCCL's default {check.default_step_us / 1e3:,.1f} ms, with the table "
            f"{check.table_step_us / 1e3:,.1f} ms ({check.ratio:.4f}x, noise {check.noise:.2%})")
    if check.passed:
        return line + ": passes"
    worst = check.responsible[0].describe() if check.responsible else "no single call"
    return f"{line}: refused, the table makes the step {1 - check.ratio:.2%} slower (worst: {worst})"


def plan_launch(table: str | os.PathLike | None = None, plugin: str | os.PathLike | None = None,
                profile_dir: str | os.PathLike | None = None,
                base_env: Mapping[str, str] | None = None, trace: str | os.PathLike | None = None,
                env_spec: str | None = None, checked=None, nccl_found=None) -> LaunchPlan:
    """The environment a launch gives its job, and the report of what was set and why.

    Builds or finds the plugin and writes the table's plugin text (see the module docstring), but
    starts nothing and creates no capture directory. ``base_env`` defaults to ``os.environ``.
    With ``trace`` (and ``env_spec``, the cluster it runs on) the table is first checked on the
    job's step (``check_on_trace``; ``checked``: a check already run, e.g. by ``dynamiccl doctor``):
    a table that makes the step slower is not used. ``nccl_found``: the NCCL libraries already
    searched (``dynamiccl.nccl_libraries.find_nccl``), so the plan does not search again.

    Never raises for a problem of ours (plugin, compiler, table, the check): the plan then runs the
    job untuned and ``reason`` says why.
    """
    plan = LaunchPlan(env=dict(os.environ if base_env is None else base_env))
    if table is None:
        plan.lines.append("no --table: NCCL chooses" + (" (--plugin is not used)" if plugin else ""))
    else:
        try:
            if checked is None and trace is not None:
                checked = check_on_trace(table, trace, env_spec)
            if checked is not None:
                if not checked.passed:  # said once, in the "not tuning" line
                    raise InputError(table, None, check_verdict(checked))
                plan.lines.append(check_verdict(checked))
            plan.plugin = resolve_plugin(plugin)
            library = open_plugin(plan.plugin)
            plan.prepared = prepare_table(table, open_checker(plan.plugin))
            transport = job_transport(env_spec)
            communicator_files = write_communicator_files(plan.prepared)
        except Exception as exc:  # fail open: the job runs with NCCL's own choices
            plan.reason = _one_line(exc)
            plan.plugin = None
            plan.lines.append(f"not tuning: {plan.reason}; NCCL chooses")
            for name in (PLUGIN_ENV, TABLE_ENV, NO_CHUNK_ENV, COMM_CONFIG_ENV):
                plan.unset(name)
        else:
            if nccl_found is None:
                nccl_found = _search_nccl(plan.env)
            _set_tuner(plan, plan.env.get(PLUGIN_ENV))
            _set_job_settings(plan, _nccl_versions(nccl_found), transport)
            _set_communicators(plan, *communicator_files)
            plan.lines.append(nccl_and_abi_line(library.exported_abi_versions(), plan.env, nccl_found))
    if profile_dir is not None:
        plan.capture_dir = Path(profile_dir).absolute() / "capture"
        profiled = profile_environment(plan.capture_dir, plan.env)
        for name, value in profiled.items():
            if plan.env.get(name) != value:
                plan.set(name, value, "profiler")
    return plan


def nccl_and_abi_line(exported: Sequence[int], env: Mapping[str, str], nccl_found=None) -> str:
    """One line: the NCCL libraries a job started here would find (``nccl_found``: a search already
    made, e.g. by ``dynamiccl doctor``; else searched here) and the tuner ABI each looks up, beside
    those the plugin exports. Never raises: a search that fails says so (the job's own NCCL still
    picks the newest ABI it knows)."""
    from dynamiccl.nccl_libraries import find_nccl, format_version, tuner_abi_for

    exports = "the plugin exports tuner ABI " + ", ".join(f"v{v}" for v in exported)
    try:
        libraries = find_nccl(env=env) if nccl_found is None else nccl_found
        found = [lib for lib in libraries if lib.version is not None]
    except Exception as exc:  # a description only: never a reason not to tune
        return f"NCCL: not detected ({_one_line(exc)}); {exports}"
    if not found:
        return (f"NCCL: none found from here (the job's own NCCL takes the newest of these it knows; "
                f"NCCL_DEBUG=INFO names it); {exports}")
    looked_up = []
    for lib in found:
        abi = tuner_abi_for(lib.version)
        looked_up.append(f"NCCL {format_version(lib.version)} ({lib.source}) looks up tuner ABI "
                         + (f"v{abi}" if abi else "v1 only (no tuner support)"))
    return f"{'; '.join(looked_up)}; {exports}"


def _set_tuner(plan: LaunchPlan, previous_plugin: str | None) -> None:
    prepared = plan.prepared
    plugin = str(plan.plugin)
    replaced = f"replaced {PLUGIN_ENV}={shlex.quote(previous_plugin)} from your environment" \
        if previous_plugin not in (None, plugin) else ""
    plan.set(PLUGIN_ENV, plugin, replaced)
    plan.set(TABLE_ENV, str(prepared.text_path), f"{prepared.rules} rule(s), {prepared.step_lines} "
             f"step line(s) from {prepared.source}")
    plan.lines.extend(f"warning: {message}" for message in mask_warnings(plan.env))


# --- per-job settings and their safety -----------------------------------------------------------------

def detect_transport(sysfs: str | os.PathLike | None = None) -> tuple[str | None, str]:
    """(``roce`` / ``ib`` / None, how it was found) from the link layer of this machine's RDMA ports
    (``<sysfs>/<device>/ports/<n>/link_layer``: ``Ethernet`` is RoCE; ``sysfs`` defaults to
    :data:`INFINIBAND_SYSFS`). None: no RDMA device, or devices of both kinds. Never raises."""
    sysfs = INFINIBAND_SYSFS if sysfs is None else sysfs
    layers: dict[str, list[str]] = {}
    for path in sorted(Path(sysfs).glob("*/ports/*/link_layer")):
        try:
            layers.setdefault(path.read_text().strip(), []).append(path.parts[-4])
        except OSError:
            continue
    kinds = {"Ethernet": "roce", "InfiniBand": "ib"}
    found = {kinds.get(layer) for layer in layers}
    if len(found) == 1 and None not in found:
        (transport,), (layer, devices) = found, next(iter(layers.items()))
        return transport, f"detected: link layer {layer} of {', '.join(sorted(set(devices)))}"
    if not layers:
        return None, f"unknown: no RDMA device in {sysfs}; give --env SPEC"
    return None, (f"unknown: link layers {', '.join(sorted(layers))} in {sysfs}; give --env SPEC")


def job_transport(env_spec: str | None) -> tuple[str | None, str]:
    """The job's network transport and where it came from: ``env_spec``'s ``inter.transport``, else
    :func:`detect_transport`.

    Raises:
        InputError: ``env_spec`` names no readable spec.
    """
    if env_spec:
        from dynamiccl.envspec import resolve_env

        return resolve_env(env_spec).inter.transport, f"from --env {env_spec}"
    return detect_transport()


def refused_settings(settings: Mapping[str, int], nccl_versions: Sequence[str], transport: str | None) -> list[Refusal]:
    """The settings :func:`dynamiccl.knobs.safety.refusals` refuses on any of ``nccl_versions`` (none
    known: the version is unknown) over ``transport``; one refusal per setting."""
    found: dict[str, Refusal] = {}
    for version in list(nccl_versions) or [None]:
        for refusal in refusals(dict(settings), version, transport):
            found.setdefault(refusal.setting, refusal)
    return list(found.values())


def table_chunk_bytes(table: DecisionTable) -> int:
    """The largest per-call chunk size (bytes) the table's rules ask for; 0 when none does."""
    return max((rule.chunk_bytes for rule in table.rules if rule.chunk_bytes > 0), default=0)


def _search_nccl(env: Mapping[str, str]):
    from dynamiccl.nccl_libraries import find_nccl

    try:
        return find_nccl(env=env)
    except Exception:  # a description only; nccl_and_abi_line says why, and safety refuses as unknown
        return None


def _nccl_versions(libraries) -> list[str]:
    from dynamiccl.nccl_libraries import format_version

    return sorted({format_version(lib.version) for lib in libraries or () if lib.version is not None})


def _set_job_settings(plan: LaunchPlan, nccl_versions: Sequence[str], transport: tuple[str | None, str]) -> None:
    """Export the table's ``job_env`` minus what safety refuses, and ``NO_CHUNK_ENV`` where it refuses
    the table's per-call chunk sizes; one line per refusal."""
    table = plan.prepared.table
    where = (f"NCCL {', '.join(nccl_versions) or 'unknown (none found)'}, transport "
             f"{transport[0] or 'unknown'} ({transport[1]})")
    refused = {r.setting: r for r in refused_settings(table.job_env, nccl_versions, transport[0])}
    for name, value in table.job_env.items():
        wanted = str(value)
        if name in refused:
            plan.lines.append(f"not exported: {refused[name]} ({where})")
        elif name in plan.env and plan.env[name] != wanted:
            plan.lines.append(f"{name}={shlex.quote(plan.env[name])} kept from your environment "
                              f"(the table has {wanted})")
        else:
            plan.set(name, wanted, "from the table")
    yours = {rule.setting: int(plan.env[rule.setting]) for rule in SAFETY_RULES
             if rule.setting != PER_CALL_CHUNK and plan.env.get(rule.setting, "").strip().isdigit()}
    for refusal in refused_settings(yours, nccl_versions, transport[0]):
        plan.lines.append(f"warning: {refusal.setting}={refusal.value} from your environment is known to be unsafe "
                          f"here ({refusal.why}; {where}); it is yours, so it is kept")
    chunk = table_chunk_bytes(table)
    chunk_refused = refused_settings({PER_CALL_CHUNK: chunk}, nccl_versions, transport[0]) if chunk else []
    if chunk_refused:
        plan.set(NO_CHUNK_ENV, "1", f"the table's per-call chunk sizes (up to {chunk} bytes) are not used: "
                 f"{chunk_refused[0].why}; {where}")
    elif chunk:
        plan.unset(NO_CHUNK_ENV)


# --- per-communicator settings -------------------------------------------------------------------------

def write_communicator_files(prepared: PreparedTable) -> tuple[Path, Path, list[str]] | tuple[()]:
    """Write the table's communicators for the hook (a JSON table without rules) and as Megatron's
    YAML, beside the plugin text; returns (JSON path, YAML path, the YAML's notes), or () when the
    table sets no communicator.

    Raises:
        OSError: a file cannot be written.
    """
    from dataclasses import replace

    from dynamiccl.megatron_yaml import write_megatron_yaml

    table = prepared.table
    if not any(not rule.config.is_default for rule in table.communicators):
        return ()
    stem = prepared.text_path.name.removesuffix(PLUGIN_TEXT_SUFFIX)
    json_path = prepared.text_path.with_name(stem + COMMUNICATORS_SUFFIX)
    save(replace(table, rules=(), steps=()), json_path)
    yaml_path = prepared.text_path.with_name(stem + MEGATRON_SUFFIX)
    notes = write_megatron_yaml(table, yaml_path, os.fspath(prepared.source))
    return json_path, yaml_path, notes


def _set_communicators(plan: LaunchPlan, json_path: Path | None = None, yaml_path: Path | None = None,
                       notes: Sequence[str] = ()) -> None:
    if json_path is None:
        plan.unset(COMM_CONFIG_ENV)
        return
    rules = plan.prepared.table.communicators
    plan.set(COMM_CONFIG_ENV, str(json_path), f"{len(rules)} communicator rule(s): "
             + "; ".join(f"{r.kind or 'any'} {r.config.describe()}" for r in rules))
    with_hook = autostart_environment({COMM_CONFIG_ENV: str(json_path)}, plan.env)
    if with_hook.get("PYTHONPATH") != plan.env.get("PYTHONPATH"):
        plan.set("PYTHONPATH", with_hook["PYTHONPATH"], "the hook that applies them")
    from dynamiccl.megatron_yaml import CONFIG_PATH_FLAG

    plan.lines.append(f"Megatron-LM: the same settings are in {yaml_path}: add {CONFIG_PATH_FLAG} {yaml_path} "
                      "to run without this launcher (under it, the hook applies them to every group)")
    plan.lines.extend(f"Megatron YAML: {note}" for note in notes)


def say(line: str) -> None:
    """Print one launcher line (prefixed, to stderr)."""
    say_as("launch", line)


def not_applied(table: str | os.PathLike, reason: str) -> str:
    """The line ``--dry-run``/``--strict`` end with when ``table`` cannot be applied: the file and
    the reason (``reason`` as ``LaunchPlan.reason``; a leading copy of the file name is dropped)."""
    name = os.fspath(table)
    return f"error: cannot apply the table {name}: {reason.removeprefix(name + ': ')}"


def launch(command: Sequence[str], table: str | os.PathLike | None = None,
           plugin: str | os.PathLike | None = None, profile_dir: str | os.PathLike | None = None,
           dry_run: bool = False, gpus_per_node: int = 0, trace: str | os.PathLike | None = None,
           env_spec: str | None = None, strict: bool = False) -> int:
    """Run ``command`` in the environment of ``plan_launch``; returns its exit status.

    Args:
        command: the job (``torchrun ...``, ``srun ...``, ``python ...``), run without a shell.
        table, plugin, profile_dir: as ``plan_launch``.
        dry_run: print what would be set and the command (shell-quoted), run nothing, return 0;
            2 if ``table`` cannot be applied.
        strict: a ``table`` that cannot be applied is an error (status 2, the job does not run)
            instead of a job run with NCCL's own choices.
        gpus_per_node: for the node counts of the merged trace (0: torchrun's local world size).
        trace, env_spec: a trace of the job's step and the spec of its cluster: the table is used
            only if ``dynamiccl table check`` passes it there (``plan_launch``).

    Returns:
        The command's exit status (128 + N if signal N killed it), 0 for a dry run, 2 when
        ``dry_run`` or ``strict`` meets a table that cannot be applied (one line names the file
        and the reason; nothing runs). A capture
        directory that cannot be created, or a capture that cannot be merged, is reported and
        changes neither the run nor the status.

    Raises:
        InputError: an empty command, or one that cannot be started.
    """
    command = list(command)
    if not command:
        raise InputError("launch", None, f"no command given; usage: {USAGE}")
    plan = plan_launch(table, plugin, profile_dir, trace=trace, env_spec=env_spec)
    if table is not None and plan.reason is not None and (dry_run or strict):
        say(not_applied(table, plan.reason))
        return NOT_APPLIED_STATUS
    for line in plan.lines:
        say(line)
    if dry_run:
        say(f"would run: {shlex.join(command)}")
        return 0
    if plan.capture_dir is not None:
        problem = create_capture_dir(plan.capture_dir)
        if problem is not None:  # fail open: the job runs unprofiled
            say(problem)
            plan.env.pop(PROFILE_ENV, None)
            plan.capture_dir = None
    status = run_forwarding_signals(command, plan.env, "launch")
    if plan.capture_dir is not None:
        merged = merge_after_run(plan.capture_dir, command, gpus_per_node, "launch")
        if merged is not None:
            from dynamiccl.profiler.merge import training_steps

            say(f"wrote {merged[0]} ({training_steps(merged[1])} training step(s) after setup)")
    return status
