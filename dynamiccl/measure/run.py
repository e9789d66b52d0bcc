"""``dynamiccl measure --trace T -o M.csv -- LAUNCHER ...``: the command side.

1. Builds the plan from the trace (:mod:`dynamiccl.measure.plan`) and finds the instrumented tuner
   plugin (``dynamiccl.launcher.resolve_plugin``, then the instrumented library beside it).
2. Runs ``LAUNCHER ... -m dynamiccl.measure.worker ARGS`` like any job, in its own process group,
   with ``NCCL_TUNER_PLUGIN`` set to the instrumented library's absolute path (the workers load the
   same path, so their override reaches the plugin NCCL loaded) and without ``DYNAMICCL_TUNER_TABLE``,
   ``NCCL_ALGO`` and ``NCCL_PROTO`` (a table or a mask would decide or disable cells under the
   override; each removal is reported). The plan, the progress file and the results live in a
   working directory beside ``-o`` (on a cluster, a shared filesystem every node sees), removed at
   the end.
3. Shows a progress bar from the file rank 0 rewrites after every step, and stops the job (SIGTERM
   to its process group, SIGKILL after :data:`STOP_GRACE_S`) on Ctrl-C / SIGTERM, or when it runs
   :data:`OVERRUN_S` past the budget.
4. Writes the calibration CSV (``dynamiccl.costmodel.measurements.write_measurements``): one table
   per (collective, shape, configuration) that was measured *and applied*: NCCL's default always; a
   forced configuration only where the plugin's counters show NCCL ran it on every call of every
   rank (a chunk size: where NCCL asked the plugin's getChunkSize on every call and took it). Prints an nccl-tests-style table per (collective, shape), and with ``--json`` writes
   everything (plan, placements, every step's probes and counters, applied flags, pruning reasons).

A job that fails (a worker's exception, a launcher error) raises :class:`MeasureError` with the
line that says why and the tail of the job's output.

``--chunks`` also times each collective under NCCL's own choice with each chunk size of
:data:`~dynamiccl.knobs.chunk.CHUNK_CHOICES_BYTES` (:mod:`dynamiccl.measure.plan`). It needs an NCCL
with tuner ABI v6: on gloo it is refused before the job starts; where the workers find an older NCCL
the job stops before timing anything and the command refuses with the reason
(:func:`~dynamiccl.measure.plan.chunks_refusal`), writing nothing.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from dynamiccl import atomic
from dynamiccl.errors import DynamicclError, InputError
from dynamiccl.measure.plan import DEFAULT_CHANNELS, Plan, build_plan, chunks_refusal
from dynamiccl.measure.schedule import PRUNE_RATIO, SCREEN_REPS
from dynamiccl.measure.worker import term_with_parent

PREFIX = "dynamiccl measure: "
WORKER_MODULE = "dynamiccl.measure.worker"
REMOVED_ENV = ("DYNAMICCL_TUNER_TABLE", "NCCL_ALGO", "NCCL_PROTO")
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this long
OVERRUN_S = 120.0  # a job still running this long after its budget is stopped (a hung collective)
POLL_S = 0.2
RESERVE_MIN_S, RESERVE_MAX_S = 5.0, 30.0  # of the budget, kept for the end of the job and the outputs


class MeasureError(DynamicclError):
    """The measurement job failed, or ran far past its budget; the message has its output's tail."""


@dataclass
class MeasureReport:
    """What a run wrote: ``rows`` (the CSV's), ``results`` (rank 0's JSON), ``lines`` (what was said)."""

    rows: list[dict]
    results: dict
    report: dict
    lines: list[str] = field(default_factory=list)


def say(line: str) -> None:
    print(PREFIX + line, file=sys.stderr, flush=True)


def measure(trace_path: str | os.PathLike, output_csv: str | os.PathLike, command: Sequence[str],
            budget_s: float = 600.0, with_gemm: bool = False, system: str = "", json_out: str | os.PathLike | None = None,
            channels: tuple[int, ...] = DEFAULT_CHANNELS, iters: int = 20, warmup: int = 5,
            max_bytes: int | None = None, plugin: str | os.PathLike | None = None, backend: str = "auto",
            progress: bool = True, chunks: bool = False) -> MeasureReport:
    """Measure the trace's collectives on the cluster ``command`` launches (see the module docstring).

    Args:
        command: the launcher without a script (``torchrun --nproc-per-node 4``, ``srun -N2 python``);
            ``-m dynamiccl.measure.worker ...`` is appended.
        budget_s: wall-clock seconds for the whole command (the job stops taking new steps in time to
            write its results).
        iters, warmup: timed repetitions per configuration, untimed calls before its first ones.
        backend: the workers' backend: auto (NCCL when each rank has a GPU, else gloo), nccl or gloo.
        chunks: also time every chunk size of :data:`~dynamiccl.knobs.chunk.CHUNK_CHOICES_BYTES`.

    Raises:
        InputError: a bad argument, trace or plugin path; ``chunks`` where the job's NCCL (or gloo)
            cannot set a chunk size (naming ``--chunks`` and why).
        OutputError: ``output_csv`` or ``json_out`` cannot be written.
        PluginBuildError: no plugin given and none can be built.
        MeasureError: the job failed or ran :data:`OVERRUN_S` past its budget.
    """
    from dynamiccl.launcher import resolve_plugin
    from dynamiccl.outputs import check_outputs
    from dynamiccl.plugin.binding import InstrumentedTunerLibrary
    from dynamiccl.plugin.build import instrumented_beside
    from dynamiccl.trace.store import Trace

    started = time.time()
    command = list(command)
    if not command:
        raise InputError("measure", None, "no launcher given; usage: dynamiccl measure --trace T -o M.csv -- "
                                          "torchrun --nproc-per-node 4")
    for name, value, low in (("--iters", iters, 1), ("--warmup", warmup, 0)):
        if value < low:
            raise InputError(name, None, f"must be >= {low}, got {value}")
    if chunks and backend == "gloo":
        raise InputError("--chunks", None, chunks_refusal("gloo", None))
    check_outputs(output_csv, json_out)
    from dynamiccl.knobs.chunk import CHUNK_CHOICES_BYTES

    plan = build_plan(Trace.read(trace_path), os.fspath(trace_path), channels, max_bytes,
                      CHUNK_CHOICES_BYTES if chunks else ())
    instrumented = instrumented_beside(resolve_plugin(plugin))
    try:
        library = InstrumentedTunerLibrary(instrumented)
    except (OSError, AttributeError) as exc:
        raise InputError(instrumented, None, f"not dynamiccl's instrumented tuner plugin ({exc}); build it with "
                                             "`dynamiccl plugin build`") from None
    lines = _describe_plan(plan) + [
        f"plugin: {instrumented} (instrumented, version {library.version}; exports tuner ABI "
        f"{', '.join(f'v{v}' for v in library.exported_abi_versions())}; NCCL takes the newest it knows)",
        f"pruning rule: after {SCREEN_REPS} repetitions a configuration whose fastest repetition is over "
        f"{PRUNE_RATIO} x the best median so far is dropped (NCCL's default never is)"]
    for line in lines:
        say(line)
    out_dir = Path(output_csv).absolute().parent
    work = Path(tempfile.mkdtemp(prefix=".dynamiccl-measure-", dir=out_dir if out_dir.is_dir() else None))
    try:
        plan.write(work / "plan.json")
        env = dict(os.environ)
        for name in REMOVED_ENV:
            if name in env:
                lines.append(f"unset {name} (was {shlex.quote(env.pop(name))}) for the measurement")
                say(lines[-1])
        env["NCCL_TUNER_PLUGIN"] = str(instrumented)
        root = str(Path(__file__).resolve().parents[2])  # the workers import this very dynamiccl
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        # The ranks' teardown (destroy_process_group, the launcher's exit) and this command's outputs.
        reserve_s = min(RESERVE_MAX_S, max(RESERVE_MIN_S, 0.15 * budget_s))
        deadline = started + budget_s - reserve_s
        job = command + ["-m", WORKER_MODULE, "--plan", str(work / "plan.json"), "--out", str(work),
                         "--deadline", f"{deadline:.3f}", "--iters", str(iters), "--warmup", str(warmup),
                         "--backend", backend, "--timeout-s", f"{max(1800.0, budget_s + OVERRUN_S):.0f}"]
        job += ["--with-gemm"] if with_gemm else []
        say(f"running: {shlex.join(job)}")
        _run_job(job, env, work, started + budget_s + OVERRUN_S, progress)
        results_path = work / "results.json"
        if not results_path.is_file():
            raise MeasureError(f"the job exited without results; its output ends with:\n{_tail(work)}")
        results = json.loads(results_path.read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if results.get("refused"):  # the workers found no NCCL that sets a chunk size: nothing was timed
        raise InputError("--chunks", None, results["refused"])
    run_id = datetime.datetime.fromtimestamp(started, datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    rows, not_written = measurement_rows(plan, results, system, run_id)
    lines += _describe_results(plan, results, rows, not_written, budget_s, time.time() - started)
    if not rows:
        placed = "; ".join(f"shape {k}: {v}" for k, v in results["placements"].items() if isinstance(v, str))
        raise MeasureError("nothing was measured, so nothing is written: "
                           + (placed or f"the budget ({budget_s:.0f} s) ran out before the first repetition"))
    report = {"command": job[: len(command)], "trace": os.fspath(trace_path), "budget_s": budget_s,
              "elapsed_s": time.time() - started, "output": os.fspath(output_csv), "plan": plan.to_json(),
              "results": results, "rows_written": len(rows), "not_written": not_written,
              "gemm_slowdowns": gemm_slowdowns(plan, results) if with_gemm else None, "lines": lines}
    from dynamiccl.costmodel.measurements import write_measurements

    write_measurements(output_csv, rows)
    if json_out is not None:
        atomic.write_text(json_out, json.dumps(report, indent=1) + "\n")
    return MeasureReport(rows, results, report, lines)


def _describe_plan(plan: Plan) -> list[str]:
    shapes = ", ".join(f"{s.nranks} ranks on {s.nnodes} node(s)" for s in plan.shapes)
    chunks = (f"; NCCL's own choice with chunk sizes {','.join(str(c) for c in plan.chunks)} B set through "
              "getChunkSize" if plan.chunks else "")
    lines = [f"trace {plan.trace}: {len(plan.items)} item(s) (collective x shape x size band) on {shapes}; "
             f"{plan.n_configs} configuration(s) in all (NCCL's default and every supported algorithm/protocol x "
             f"channels {','.join(str(c) for c in plan.channels)}{chunks})"]
    lines += [f"not timed: {s['what']}: {s['reason']}" for s in plan.skipped]
    return lines


def _run_job(job: list[str], env: dict, work: Path, hard_deadline: float, progress: bool) -> None:
    """Run the job, showing its progress; raise MeasureError if it fails or overruns."""
    from tqdm import tqdm

    from dynamiccl.costmodel.live import cause_line

    log = work / "job.log"
    with open(log, "wb") as handle:  # a file, not a pipe: a full pipe would block the job
        try:
            child = subprocess.Popen(job, env=env, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=term_with_parent)
        except OSError as exc:
            raise InputError("measure", None, f"cannot run {job[0]!r}: {exc.strerror}") from None
    bar = None
    try:
        while child.poll() is None:
            if time.time() > hard_deadline:
                _stop(child)
                raise MeasureError(f"the job ran {OVERRUN_S:.0f} s past its budget and was stopped (a hung "
                                   f"collective?); its output ends with:\n{_tail(work)}")
            state = _read_progress(work)
            if state and progress and (bar is None or (bar.n, bar.total) != (state["done"], state["total"])):
                if bar is None:
                    bar = tqdm(total=state["total"], desc="measure", unit="rep", file=sys.stderr)
                bar.total = state["total"]
                bar.n = state["done"]
                bar.set_postfix_str(f"{state['item']} {state['config']}", refresh=False)
                bar.refresh()
            time.sleep(POLL_S)
    except BaseException:
        _stop(child)
        raise
    finally:
        if bar is not None:
            bar.close()
    if child.returncode != 0:
        tail = _tail(work)
        status = child.returncode if child.returncode > 0 else 128 - child.returncode
        killed = f" (killed by {signal.Signals(status - 128).name})" if 128 < status < 128 + signal.NSIG else ""
        raise MeasureError(f"the job exited with status {status}{killed}: {cause_line(tail)}\n"
                           f"its output ends with:\n{tail}")


def _read_progress(work: Path) -> dict | None:
    try:
        return json.loads((work / "progress.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _tail(work: Path) -> str:
    from dynamiccl.costmodel.live import output_tail

    return output_tail(work / "job.log", max_lines=40)


def _stop(child: subprocess.Popen) -> None:
    """SIGTERM to the job's process group (torchrun passes it on; each worker clears its override),
    SIGKILL after STOP_GRACE_S."""
    for signum, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, None)):
        if child.poll() is not None:
            return
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            return
        try:
            child.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue


# --- rows and reports ---------------------------------------------------------------------------------

def system_text(results: dict, nranks: int, nnodes: int, user_system: str) -> str:
    """The CSV's ``system``: the device, the communicator's placement, the backend, ``--system``.
    (Not the words "torch.distributed": the calibration reader takes those for per-rank AllGather
    sizes, and these sizes are nccl-tests'.)"""
    backend = f"NCCL {results['nccl_version']}" if results["backend"] == "nccl" else "gloo on CPU"
    text = f"{results['device']}, {nranks // nnodes} per node x {nnodes} node(s), {backend}"
    return f"{text}; {user_system}" if user_system else text


def nccl_version_cell(results: dict) -> str:
    """The CSV's ``nccl_version``: the version NCCL ran, "unknown (...)" outside the range dynamiccl's
    model covers (the calibration reader refuses those), empty on gloo."""
    from dynamiccl.envspec import NEWEST_NCCL, OLDEST_NCCL
    from dynamiccl.nccl import parse_version

    version = results.get("nccl_version")
    if not version:
        return ""
    if OLDEST_NCCL <= parse_version(version) <= NEWEST_NCCL:
        return version
    return f"unknown (measured with NCCL {version}, outside the modelled range)"


def measurement_rows(plan: Plan, results: dict, system: str, run_id: str) -> tuple[list[dict], list[str]]:
    """The calibration CSV rows of a run and what was measured but not written (with why).

    A row is one (item, configuration) with timed repetitions that was applied (NCCL's default
    always is); with a GEMM beside, a second row with its own table id and ``how``. A chunk size
    timed under NCCL's own choice is written with the (algorithm, protocol) NCCL chose on every call
    where the plugin recorded one (``ran``): the key under which the measured model prices the
    tuner's (cell, chunk) actions; else as NCCL's default pair.
    """
    from dynamiccl.nccl import Algorithm, Protocol, busbw_factor

    rows, not_written = [], []
    timing = "CUDA events" if results["backend"] == "nccl" else "time.perf_counter"
    for item, measured in zip(plan.items, results["items"]):
        shape = item.shape
        for config, state in zip(item.configs, measured["configs"]):
            if not state["times_us"]:
                continue
            if not state["applied"]:
                not_written.append(f"{item.label} {config.label}: not applied ({state['reason'] or results['backend']})")
                continue
            forced = "NCCL's default" if config.is_default else \
                f"forced {config.label} through the tuner plugin's override (NCCL ran it on every call)"
            algo, proto = config.algo, config.proto
            if config.chunk_bytes:  # NCCL's own algorithm, protocol and channels, the chunk size set
                forced = (f"NCCL's own algorithm, protocol and channels with a {config.chunk_bytes} B chunk set "
                          "through the tuner plugin's getChunkSize (NCCL asked on every call; it clamps a chunk to "
                          "what its buffers allow)")
                if algo < 0 and state.get("ran"):  # the cell NCCL chose, as the measured model keys it
                    algo, proto = state["ran"]
                    forced += (f"; NCCL chose {Algorithm(algo).name_lower}/{Protocol(proto).name_lower} on every "
                               "call of every rank (the plugin's decision record)")
            if config.channels:  # the tuner can only lower the count below the pool fixed at init
                forced += f"; {config.channels} channels asked, capped by NCCL at the communicator's pool"
            base_how = (f"dynamiccl measure: {item.coll} {item.dtype} on {results['backend']}, {forced}; {timing}, "
                        f"median of {{n}} slowest-rank repetitions after {results['warmup']} warm-up call(s)")
            for suffix, times, extra in (("", state["times_us"], ""),
                                         ("-gemm", state.get("gemm_times_us") or [], "gemm")):
                if not times:
                    continue
                time_us = statistics.median(times)
                how = base_how.format(n=len(times))
                if extra:
                    how += f"; with a {results['gemm']['what']} beside"
                algbw = item.size_bytes / time_us / 1e3
                rows.append({
                    "table": f"measure-{run_id}-{item.coll}-{shape.key}-{config.label.replace('/', '-')}{suffix}",
                    "system": system_text(results, shape.nranks, shape.nnodes, system),
                    "nccl_version": nccl_version_cell(results), "coll": item.coll,
                    "algo": Algorithm(algo).name_lower if algo >= 0 else "default",
                    "proto": Protocol(proto).name_lower if proto >= 0 else "default",
                    "gpus_per_node": shape.ranks_per_node, "nodes": shape.nnodes, "size_bytes": item.size_bytes,
                    "time_us": round(time_us, 3), "algbw_gbytes_per_s": round(algbw, 6),
                    "busbw_gbytes_per_s": round(algbw * busbw_factor(item.coll, shape.nranks), 6), "how": how,
                    "channels": config.channels, "chunk_bytes": config.chunk_bytes})
    return rows, not_written


def gemm_slowdowns(plan: Plan, results: dict) -> list[dict]:
    """Per item and configuration timed with a GEMM beside: the collective's median time alone and
    beside it, and the GEMM's median time beside the collective over its time alone (rank 0's)."""
    out = []
    alone = (results.get("gemm") or {}).get("alone_us_rank0")
    medians: dict[tuple[int, int], list[float]] = {}
    for entry in results["steps"]:
        kind, item, config = entry["step"][:3]
        if kind == 2:  # MEASURE_GEMM
            medians.setdefault((item, config), []).append(entry["members"][0]["gemm_median_us"])
    for (i, c), gemm in sorted(medians.items()):
        state = results["items"][i]["configs"][c]
        out.append({"item": plan.items[i].label, "config": plan.items[i].configs[c].label,
                    "collective_us": statistics.median(state["times_us"]) if state["times_us"] else None,
                    "collective_beside_gemm_us": statistics.median(state["gemm_times_us"]),
                    "gemm_alone_us": alone, "gemm_beside_us": statistics.median(gemm),
                    "gemm_slowdown": statistics.median(gemm) / alone if alone else None})
    return out


def _describe_results(plan: Plan, results: dict, rows: list[dict], not_written: list[str], budget_s: float,
                      elapsed_s: float) -> list[str]:
    lines = []
    if results["backend"] == "nccl":
        from dynamiccl.nccl_libraries import tuner_abi_for
        from dynamiccl.nccl import parse_version

        abi = tuner_abi_for(parse_version(results["nccl_version"]))
        backend = (f"NCCL {results['nccl_version']} on {results['device']}, which loads tuner ABI "
                   f"{f'v{abi}' if abi else 'none dynamiccl supports'}")
    else:
        backend = f"gloo on {results['device']} (no NCCL)"
    lines.append(f"ran on {results['world_size']} ranks, {backend}; plugin {results['plugin']['path']}")
    for key, placed in results["placements"].items():
        if isinstance(placed, str):
            lines.append(f"shape {key} skipped: {placed}")
    statuses: dict[str, int] = {}
    for item in results["items"]:
        for state in item["configs"]:
            statuses[state["status"]] = statuses.get(state["status"], 0) + 1
    lines.append("configurations: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    unsafe = sorted({state["reason"] for item in results["items"] for state in item["configs"]
                     if state["status"] == "unavailable" and state["reason"].startswith("chunk_bytes=")})
    lines += [f"not timed: {reason}" for reason in unsafe]
    if results["backend"] != "nccl":
        forced = sum(1 for item in plan.items for c in item.configs if not c.is_default)
        lines.append(f"gloo: NCCL is not involved, so none of the {forced} forced configurations was applied; each "
                     "was still set and cleared through the plugin's override in every process (probes in --json), "
                     "and only NCCL-default rows (gloo's times) are written")
    elif not_written:
        lines.append(f"{len(not_written)} forced configuration(s) not applied by NCCL, not written (see --json)")
    cleared = all(p["source"] == "nccl" for p in results["after_end"])
    lines.append(f"override after the run: {'cleared on every rank' if cleared else 'NOT cleared on some rank'}")
    budget = f"budget {budget_s:.0f} s, used {elapsed_s:.0f} s"
    lines.append(budget + ("; stopped by the budget (configurations not reached are in --json)"
                           if results["stopped_by_budget"] else "; the plan finished within it"))
    for entry in gemm_slowdowns(plan, results) if results.get("gemm") else []:
        if entry["collective_us"] is None or entry["gemm_slowdown"] is None:
            continue
        lines.append(f"GEMM beside {entry['item']} {entry['config']}: collective {entry['collective_us']:.1f} -> "
                     f"{entry['collective_beside_gemm_us']:.1f} us, GEMM x{entry['gemm_slowdown']:.2f}")
    lines.append(f"wrote {len(rows)} row(s)")
    for line in lines:
        say(line)
    return lines


def format_rows(plan: Plan, rows: list[dict]) -> str:
    """nccl-tests-style tables of the written rows, one per (collective, shape, with/without GEMM)."""
    from dynamiccl.costmodel.table import format_table, make_row
    from dynamiccl.nccl import parse_algorithm, parse_dtype, parse_protocol

    dtypes = {(i.coll, i.shape.nranks, i.shape.nnodes, i.size_bytes): i.dtype for i in plan.items}
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["coll"], row["gpus_per_node"] * row["nodes"], row["nodes"], row["table"].endswith("-gemm"),
               row.get("chunk_bytes") or 0)
        groups.setdefault(key, []).append(row)
    out = []
    for (coll, nranks, nnodes, gemm, chunk), group in groups.items():
        table_rows = []
        for row in sorted(group, key=lambda r: (r["size_bytes"], r["time_us"])):
            dtype = parse_dtype(dtypes.get((coll, nranks, nnodes, row["size_bytes"]), "fp32"))
            algo = -1 if row["algo"] == "default" else int(parse_algorithm(row["algo"]))
            proto = -1 if row["proto"] == "default" else int(parse_protocol(row["proto"]))
            table_rows.append(make_row(coll, nranks, row["size_bytes"], dtype.name_lower, dtype.size_bytes,
                                       row["time_us"], algo, proto, row["channels"]))
        header = [f"dynamiccl measure: {coll}, {nranks} ranks on {nnodes} node(s)" + (", GEMM beside" if gemm else "")
                  + (f", chunk {chunk} B set through getChunkSize in the cell NCCL chose" if chunk else ""),
                  group[0]["system"], "algo/proto '-' = NCCL's default; channels 0 = NCCL's own count"]
        out.append(format_table(table_rows, header))
    return "\n\n".join(out)
