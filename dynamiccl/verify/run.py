"""``dynamiccl verify --table T -- CMD``: run the user's job A/B/A (or ABBA) and say whether the table
made it faster, with no change to the job.

What a verify does, in order:

1. plans arm B with the launcher (:func:`dynamiccl.launcher.plan_launch`: the plugin built or found,
   the table converted and accepted by the plugin's C parser). A table that cannot be applied ends
   the verify there (status 2, the reason in the JSON and on stderr): nothing is compared;
2. runs CMD once per arm (A1 B1 A2, or A1 B1 B2 A2), each time unchanged, in its own process group
   (signals forwarded, as ``dynamiccl launch`` does). Arm A is NCCL alone: ``NCCL_TUNER_PLUGIN`` and
   ``DYNAMICCL_TUNER_TABLE`` are removed from its environment (one line says so if the user had
   them). Arm B is the launcher's environment. Every arm gets the step timer
   (:mod:`dynamiccl.profiler.steptimer`: ``DYNAMICCL_STEP_TIMES_DIR=DIR/arms/<arm>``) and
   ``DYNAMICCL_VERIFY_ARM=<arm>``, which the job may log;
3. reads each arm's rank files: a job that failed, recorded no step, lost a rank's file or ran too
   few steps is an error naming the arm; a B arm whose ranks did not all get the plugin and the
   table is "not applied" (status 2), never compared;
4. compares the arms (:func:`dynamiccl.verify.stats.compare`) and writes ``DIR/verify.json``
   (atomically), ``DIR/verify.md``, ``DIR/verify.html`` and ``DIR/plots/verify-step-times.png``;
5. ``--keep PATH`` copies the table to PATH only when the verdict is "faster"; otherwise it says
   why nothing was kept. A table that made the job slower is never kept.

Exit status: 0 when the arms were compared (whatever the verdict), ``SLOWER_STATUS`` (1) with
``--fail-if-slower`` and the verdict "slower", 2 for an error (bad input, the table not applied, an arm
that failed or recorded too few steps), 128 + N when signal N stopped it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from dynamiccl import atomic
from dynamiccl.errors import DynamicclError, InputError
from dynamiccl.launcher import PLUGIN_ENV, LaunchPlan, open_plugin, plan_launch
from dynamiccl.plugin import TABLE_ENV
from dynamiccl.profiler.run import autostart_environment, run_forwarding_signals
from dynamiccl.profiler.run import say as say_as
from dynamiccl.profiler.steptimer import ENV_ARM, ENV_DIR, FORMAT as STEP_TIMES_FORMAT
from dynamiccl.verify import FORMAT, stats

SLOWER_STATUS = 1       # --fail-if-slower and the verdict "slower": a CI pipeline's guard fails
ERROR_STATUS = 2        # bad input, the table not applied, an arm that failed or recorded too few steps
NOT_APPLIED = "not applied"
USAGE = ("dynamiccl verify --table T [--order ABA|ABBA] [--warmup-steps K] [--steps N] [--fail-if-slower] "
         "[--keep PATH] [-o DIR] -- CMD ...")
ARMS_DIR = "arms"
JSON_NAME = "verify.json"


class ArmError(DynamicclError):
    """An arm that cannot be compared: the job failed, or its step times are missing or too few."""


def say(line: str) -> None:
    """Print one ``dynamiccl verify:`` line to stderr (the job's own output stays clean)."""
    say_as("verify", line)


# --- the environments ---------------------------------------------------------------------------------

def control_environment(base: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Arm A's environment: ``base`` without the tuner plugin and table; the lines saying what went."""
    env = dict(base)
    lines = [f"arm A runs NCCL alone: unset {name} (was {shlex.quote(env.pop(name))}) from your environment"
             for name in (PLUGIN_ENV, TABLE_ENV) if name in env]
    return env, lines


def arm_environment(env: dict[str, str], arm: str, times_dir: Path) -> dict[str, str]:
    """``env`` with the step timer on (recording into ``times_dir``) and the arm's name."""
    return autostart_environment({ENV_DIR: str(times_dir), ENV_ARM: arm}, env)


# --- one arm's records ----------------------------------------------------------------------------------

@dataclass
class ArmRecords:
    """What one arm's ranks recorded: ``step_times_s[rank]`` in seconds, one per step."""

    name: str
    step_times_s: dict[int, list[float]]
    records: dict[int, dict]
    notes: list[str] = field(default_factory=list)

    def matrix(self) -> list[list[float]]:
        """Steps x ranks, cut to the fewest steps any rank recorded (a note says so if they differ)."""
        ranks = sorted(self.step_times_s)
        count = min(len(self.step_times_s[r]) for r in ranks)
        return [[self.step_times_s[r][i] for r in ranks] for i in range(count)]


def read_rank_file(path: Path) -> dict:
    """One rank file of :mod:`dynamiccl.profiler.steptimer`, checked.

    Raises:
        InputError: naming the file and the field, if it is not JSON of that format or its step
            times are not a list of non-negative numbers.
    """
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(path, None, f"unreadable step-times file ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != STEP_TIMES_FORMAT:
        raise InputError(path, "format", f"expected {STEP_TIMES_FORMAT!r} (a rank file of dynamiccl's step timer)")
    times = record.get("step_times_s")
    if not isinstance(times, list) or not all(isinstance(t, (int, float)) and t >= 0 for t in times):
        raise InputError(path, "step_times_s", "expected a list of step times in seconds (numbers >= 0)")
    if not isinstance(record.get("rank"), int) or not isinstance(record.get("world_size"), int):
        raise InputError(path, "rank", "expected integer rank and world_size")
    return record


def read_arm(name: str, times_dir: Path) -> ArmRecords:
    """The rank files of arm ``name`` in ``times_dir``.

    Raises:
        ArmError: no rank file (the job ran no optimizer step with the timer on), or ranks missing.
        InputError: a malformed rank file.
    """
    files = sorted(times_dir.glob("rank*.json"))
    if not files:
        raise ArmError(f"arm {name}: the job recorded no training step (no rank file in {times_dir}): the step "
                       "timer ends a step at every optimizer.step() of a PyTorch job; did the job start Python "
                       "processes that kept PYTHONPATH, and step an optimizer?")
    records = {}
    for path in files:
        record = read_rank_file(path)
        records[record["rank"]] = record
    world = max(r["world_size"] for r in records.values())
    missing = sorted(set(range(world)) - set(records))
    if missing:
        raise ArmError(f"arm {name}: no step times from rank(s) {missing} of {world} in {times_dir}")
    arm = ArmRecords(name, {rank: list(map(float, r["step_times_s"])) for rank, r in records.items()}, records)
    counts = {len(times) for times in arm.step_times_s.values()}
    if len(counts) > 1:
        arm.notes.append(f"arm {name}: the ranks recorded {min(counts)} to {max(counts)} steps; the first "
                         f"{min(counts)} of each are compared")
    return arm


def tuned_in_every_rank(arm: ArmRecords, plan: LaunchPlan) -> str | None:
    """None if every rank of B arm ``arm`` ran with the plan's plugin and table, else why not."""
    for rank, record in sorted(arm.records.items()):
        if record.get("tuner_plugin") != plan.env.get(PLUGIN_ENV) or record.get("tuner_table") != plan.env.get(TABLE_ENV):
            return (f"arm {arm.name}, rank {rank}: the job ran with {PLUGIN_ENV}={record.get('tuner_plugin')!r} and "
                    f"{TABLE_ENV}={record.get('tuner_table')!r}, not the launcher's (does the launcher of the job "
                    "pass the environment on?)")
    return None


# --- which NCCL, which ABI, which table -------------------------------------------------------------------

def nccl_line(arms: Sequence[ArmRecords], plan: LaunchPlan) -> tuple[dict, str]:
    """(the JSON record, one line): the job's backend and NCCL version, the tuner ABI that NCCL looks
    up and those the plugin exports, and the table used."""
    from dynamiccl.nccl_libraries import tuner_abi_for

    records = [r for arm in arms for r in arm.records.values()]
    backends = sorted({r.get("backend") or "none" for r in records})
    versions = sorted({r["nccl_version"] for r in records if r.get("nccl_version")})
    exported = open_plugin(plan.plugin).exported_abi_versions() if plan.plugin else []
    info = {"backends": backends, "nccl_versions": versions, "plugin": str(plan.plugin) if plan.plugin else None,
            "plugin_abi_versions": exported, "table": str(plan.prepared.source) if plan.prepared else None,
            "table_text": str(plan.prepared.text_path) if plan.prepared else None,
            "table_rules": plan.prepared.rules if plan.prepared else None}
    exports = "plugin exports tuner ABI " + ", ".join(f"v{v}" for v in exported) if exported else "no plugin"
    table = f"table {info['table']} ({info['table_rules']} rule(s), as {info['table_text']})" if plan.prepared else "no table"
    if versions:
        looked_up = []
        for text in versions:
            abi = tuner_abi_for(tuple(int(p) for p in text.split(".")[:3]))
            looked_up.append(f"NCCL {text} looks up tuner ABI " + (f"v{abi}" if abi else "v1 only (unsupported)"))
        info["nccl_tuner_abi"] = looked_up
        line = f"{'; '.join(looked_up)}; {exports}; {table}"
    else:
        line = (f"backend {'/'.join(backends)}: NCCL not used (gloo/CPU: the table cannot change anything, this run "
                f"measures the noise); {exports}; {table}")
    return info, line


# --- the run -------------------------------------------------------------------------------------------------

@dataclass
class VerifyOutcome:
    """What :func:`verify` wrote and the status the command exits with."""

    status: int
    record: dict
    json_path: Path
    report: dict[str, Path] | None = None


def verify(command: Sequence[str], table: str | os.PathLike, out_dir: str | os.PathLike, *, order: str = "ABA",
           warmup_steps: int = 5, steps: int = 30, plugin: str | os.PathLike | None = None,
           run_to_run_sd: float = stats.RUN_TO_RUN_SD, keep: str | os.PathLike | None = None,
           fail_if_slower: bool = False, command_line: str | None = None) -> VerifyOutcome:
    """Run ``command`` once per arm of ``order`` and compare (see the module docstring).

    Args:
        command: the job (``torchrun ...``, ``srun ...``, ``python ...``), run without a shell.
        table: the decision table (any format ``dynamiccl launch`` reads).
        out_dir: where the arms' step times, ``verify.json`` and the report go (claimed by the caller).
        order: "ABA" or "ABBA".
        warmup_steps, steps: steps dropped, then analysed, per arm (the job must run at least their sum).
        plugin: a prebuilt plugin (default: build or find the cached one).
        run_to_run_sd: the SD of a run's level, a fraction (``dynamiccl.verify.stats``).
        keep: copy the table here when the verdict is "faster" (never otherwise).
        fail_if_slower: exit status ``SLOWER_STATUS`` on the verdict "slower".
        command_line: the ``dynamiccl verify ...`` line, for the JSON.

    Returns:
        The outcome; ``status`` as the module docstring says. ``verify.json`` is written for a
        comparison and for a table that could not be applied.

    Raises:
        InputError: an empty command, a command that cannot be started, a bad order or step count.
        ArmError: an arm's job failed (its status named), recorded no steps or lost a rank.
    """
    command = list(command)
    if not command:
        raise InputError("verify", None, f"no command given; usage: {USAGE}")
    arms = stats.arms_of(order)
    if warmup_steps < 0 or steps < 2:
        raise InputError("--steps", None, f"--warmup-steps {warmup_steps} --steps {steps}; expected "
                         "--warmup-steps >= 0 and --steps >= 2")
    out = Path(out_dir).absolute()
    json_path = out / JSON_NAME
    base = dict(os.environ)
    plan = plan_launch(table, plugin, base_env=base)
    record = {"format": FORMAT, "command": command, "command_line": command_line, "order": order,
              "arms_order": list(arms), "warmup_steps": warmup_steps, "steps": steps, "table": os.fspath(table),
              "keep": os.fspath(keep) if keep is not None else None, "kept": None, "notes": []}
    if not plan.tuned:
        record |= {"verdict": NOT_APPLIED, "reason": plan.reason,
                   "sentence": f"not compared: the table could not be applied ({plan.reason})"}
        atomic.write_text(json_path, json.dumps(record, indent=1) + "\n")
        say(f"the table could not be applied, so nothing was run or compared: {plan.reason}")
        _say_not_kept(keep, "the table could not be applied")
        return VerifyOutcome(ERROR_STATUS, record, json_path)
    for line in plan.lines:
        say(f"arm B: {line}")
    control_env, lines = control_environment(base)
    for line in lines:
        say(line)
    recorded: list[ArmRecords] = []
    for index, arm in enumerate(arms, 1):
        times_dir = out / ARMS_DIR / arm
        if times_dir.exists():
            shutil.rmtree(times_dir)  # a stale rank file would count in this run
        times_dir.mkdir(parents=True)
        tuned = arm.startswith("B")
        say(f"arm {index}/{len(arms)}: {arm} ({'with the table' if tuned else 'NCCL alone'}): {shlex.join(command)}")
        status = run_forwarding_signals(command, arm_environment(plan.env if tuned else control_env, arm, times_dir),
                                        "verify")
        if status != 0:
            raise ArmError(f"arm {arm}: the job exited with status {status}; nothing was compared")
        arm_records = read_arm(arm, times_dir)
        stats.kept_steps(arm, arm_records.matrix(), warmup_steps, steps)  # too few steps: said now, naming the arm
        recorded.append(arm_records)
        record["notes"] += arm_records.notes
        if tuned:
            reason = tuned_in_every_rank(arm_records, plan)
            if reason is not None:
                record |= {"verdict": NOT_APPLIED, "reason": reason,
                           "sentence": f"not compared: the table was not applied ({reason})"}
                atomic.write_text(json_path, json.dumps(record, indent=1) + "\n")
                say(f"the table was not applied, so the arms are not compared: {reason}")
                _say_not_kept(keep, "the table was not applied")
                return VerifyOutcome(ERROR_STATUS, record, json_path)
    comparison = stats.compare({arm.name: arm.matrix() for arm in recorded}, warmup_steps, steps,
                               run_to_run_sd=run_to_run_sd)
    record["nccl"], line = nccl_line(recorded, plan)
    say(line)
    record |= {"verdict": comparison.verdict, "sentence": comparison.sentence(), "comparison": comparison.to_json(),
               "recorded": {arm.name: {"clock": sorted({r["clock"] for r in arm.records.values()}),
                                       "step_times_s": {str(k): v for k, v in sorted(arm.step_times_s.items())}}
                            for arm in recorded}}
    if keep is not None:
        record["kept"] = keep_table(table, keep, comparison.verdict)
    from dynamiccl.report.verify import write_verify_report

    atomic.write_text(json_path, json.dumps(record, indent=1) + "\n")
    report = write_verify_report(record, out)
    print_summary(comparison)
    if comparison.contradicted:
        say(f"the repeated arms varied more than 3x the stated run-to-run SD ({run_to_run_sd:.2%}): the interval "
            f"is widened to a level SD of {comparison.level_sd:.2%}; pass your runs' SD (--run-to-run-sd)"
            + (" or use --order ABBA" if order == "ABA" else "") + " for a sharper answer")
    say(comparison.sentence())
    status = SLOWER_STATUS if fail_if_slower and comparison.verdict == stats.SLOWER else 0
    if status:
        say(f"--fail-if-slower: exit status {SLOWER_STATUS}")
    return VerifyOutcome(status, record, json_path, report)


def keep_table(table: str | os.PathLike, keep: str | os.PathLike, verdict: str) -> str | None:
    """``--keep``: copy ``table`` to ``keep`` (atomically) when ``verdict`` is "faster", else say why
    not (one line). Returns the path kept, or None.

    Raises:
        OutputError: ``keep`` cannot be written.
    """
    if verdict != stats.FASTER:
        _say_not_kept(keep, f"the verdict is {verdict!r}" + (": a table that made the job slower is never kept"
                                                              if verdict == stats.SLOWER else ""))
        return None
    data = Path(table).read_bytes()
    atomic.write_with(keep, lambda tmp: tmp.write_bytes(data))
    say(f"kept the table as {keep} (the job was faster with it)")
    return os.fspath(keep)


def _say_not_kept(keep: str | os.PathLike | None, why: str) -> None:
    if keep is not None:
        say(f"not keeping the table as {keep}: {why}")


def print_summary(comparison: stats.Comparison) -> None:
    """The arms as a table on stdout: steps, slowest-rank median step time, and against the A arms."""
    a_mean = sum(arm.median_s for arm in comparison.arms if arm.name.startswith("A")) / \
        sum(arm.name.startswith("A") for arm in comparison.arms)
    print(f"#{'arm':>5} {'what':>14} {'ranks':>6} {'recorded':>9} {'analysed':>9} {'median_ms':>10} {'vs_A':>8}")
    for arm in comparison.arms:
        what = "with the table" if arm.name.startswith("B") else "NCCL alone"
        print(f" {arm.name:>5} {what:>14} {arm.ranks:>6} {arm.recorded_steps:>9} {len(arm.step_times_s):>9} "
              f"{arm.median_s * 1e3:>10.3f} {arm.median_s / a_mean - 1:>+8.2%}")
    print(f"# delta {comparison.delta:+.2%} (95% CI {comparison.ci_low:+.2%} .. {comparison.ci_high:+.2%}), "
          f"control drift {comparison.drift:+.2%}: {comparison.verdict}")
    sys.stdout.flush()
