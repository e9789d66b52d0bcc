"""Every command in the README works as printed on a fresh clone (issue 15, item 4).

The README's ``bash`` blocks are read, and every command in them must have an entry in
:data:`CHECKS` saying how it is checked, so a command added to the README without a check fails
here. They all run in one copy of the files git tracks (``git ls-files``: what a clone holds; a new
file counts once it is ``git add``-ed, and what README commands run in the working tree left there
does not), from its root, in README order, so a command finds what the ones before it wrote
(``table.json``, ``llama70b.parquet``, ``my_params.json``). The demo's commands, which write only
``demo-output/`` (read by no other command) and take half of the time, run in README order in a lane
of their own, beside the other commands: each command is one busy process, and CI has two cores.

- ``RUN``: run in full; it must exit 0. ``./run demo --timesteps 2048`` (the quick form the README
  documents) runs twice into the same directory: the second run must replace the first. ``bench``
  may also exit 1, its verdict when a speed target is missed on a busy machine (speed is not what
  this test judges), but every benchmark it names must have run (no FAILED row) and been recorded.
- ``STARTS``: too long for a test at the budget the README prints (``./run demo`` with 24,576
  decisions, ``train`` ~9 min, ``evaluate`` with every baseline, ``search`` over the held-out
  cases, ``validate --leave-one-out`` with 16 fits). These are NOT run to the end: each is started
  and must reach its progress bar (the marker), which it shows only after its arguments, its
  config and its output directory have been checked and work has begun; then it is stopped.
- ``NEEDS``: needs a user's own job or files (``train.py``, NCCL logs, profiler dumps, a trace of
  the user's step) or cluster (``ray start``, ``--ray auto``); only its command line is checked, by
  its program's own parser: dynamiccl's, Ray's (its click commands), and for ``pip install
  'dynamiccl[EXTRA]'`` the project's name and extras in ``pyproject.toml``.
- ``./run test`` is this suite.

``./run`` itself: its setup (create ``.venv``, ``pip install``) needs the network, so the copy gets
a ``.venv`` whose stamp says it is set up, with ``.venv/bin/dynamiccl`` running this interpreter;
``./run demo`` then goes straight to what it runs after setup.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from dynamiccl.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 900  # a command still running after this long has hung (not a speed target)


@dataclass(frozen=True)
class Check:
    kind: str           # RUN, STARTS, NEEDS or SUITE
    detail: str = ""    # STARTS: the marker (regex) in its output; NEEDS / SUITE: why it is not run
    ok_status: tuple[int, ...] = (0,)  # RUN: the exit statuses that mean it worked


RUN = Check("RUN")
BENCH = Check("RUN", ok_status=(0, 1))  # 1: a target missed (a verdict on speed, see the docstring)


def starts(marker: str) -> Check:
    return Check("STARTS", marker)


def needs(what: str) -> Check:
    return Check("NEEDS", what)


TRAIN_BAR = r"train:\s+\d+%"
CHECKS: dict[str, Check] = {
    "./run demo": starts(TRAIN_BAR),
    "./run demo --timesteps 2048": RUN,
    "./run test": Check("SUITE", "the suite this test belongs to"),
    "dynamiccl train --config experiments/default.toml --output-dir my-run": starts(TRAIN_BAR),
    "dynamiccl evaluate --config experiments/default.toml --policy experiments/default/run/policy.zip "
    "-o results.parquet": starts(r"evaluate:\s+\d+%"),
    "dynamiccl search --config experiments/default.toml -o search/": starts(r"search:\s+\d+%"),
    "dynamiccl table export --policy experiments/default/run/policy.zip -o table.json --nccl-csv nccl_tuner.conf": RUN,
    "dynamiccl report experiments/default/results.parquet -o report/ --training-curve "
    "experiments/default/run/training_curve.csv --calibration experiments/calibration/validation.json "
    "--table table.json": RUN,
    "dynamiccl models": RUN,
    "dynamiccl generate --model llama3-70b --tp 4 --pp 4 --cp 2 --dp 2 --sp -o llama70b.parquet": RUN,
    "dynamiccl trace summary llama70b.parquet": RUN,
    "dynamiccl trace summary llama70b.parquet --json": RUN,
    "dynamiccl trace check llama70b.parquet": RUN,
    "dynamiccl profile -o prof -- torchrun --nproc-per-node 4 train.py ...": needs("the user's training script"),
    "dynamiccl import flight-recorder nccl_trace_rank_* -o fr.parquet": needs("the user's Flight Recorder dumps"),
    "dynamiccl import kineto kineto/*.json -o kineto.parquet": needs("the user's PyTorch profiler traces"),
    "dynamiccl import nccl-log nccl.log -o log.parquet": needs("the user's NCCL_DEBUG=INFO log"),
    "dynamiccl import inspector inspector/*.log -o insp.parquet": needs("the user's NCCL Inspector logs"),
    "dynamiccl trace export chakra prof/trace.parquet -o chakra/": needs("the trace `profile` records of a job"),
    "dynamiccl headroom traces/llama3-8b_tp1-pp1-dp8.parquet --env dgx-h100": RUN,
    "dynamiccl headroom prof/trace.parquet --env my-cluster.toml --noise-pct 0.8 --table best.json --json "
    "headroom.json": needs("a trace of the user's step and a spec of their cluster"),
    "dynamiccl trace export param prof/trace.parquet -o param/": needs("the trace `profile` records of a job"),
    "torchrun --nproc-per-node 4 -m dynamiccl.profiler.reference_job --tp 2 --pp 2 --sp --steps 4 "
    "--profile cap --trace ref.parquet": RUN,
    "dynamiccl table show table.json": RUN,
    "dynamiccl table lookup table.json --coll allreduce --bytes 1048576 --nranks 16 --nnodes 2": RUN,
    "dynamiccl table lookup nccl_tuner.conf --as nvidia-example --coll allreduce --bytes 1048576 --nranks 16 "
    "--nnodes 2": RUN,
    "dynamiccl table check table.json --trace my_step.parquet --env dgx-h100": needs("a trace of the user's step"),
    "dynamiccl table check table.json --env dgx-h100 --model llama3-8b --tp 8 --pp 1 --dp 1 --global-batch 4": RUN,
    "dynamiccl table check table.json --sweep experiments/sweep/layouts.toml -o results": RUN,
    "dynamiccl doctor --table table.json": RUN,
    "dynamiccl doctor --table table.json --env h100-roce-4x8": RUN,
    "dynamiccl launch --table table.json --env h100-roce-4x8 -- torchrun --nproc-per-node 8 train.py":
        needs("the user's training script"),
    "dynamiccl headroom fsdp.parquet --env gb200-nvl4-symmetric.toml --knobs":
        needs("an FSDP trace and a spec with symmetric_memory (experiments/knobs/README.md has both commands)"),
    "dynamiccl measure --trace my_step.parquet -o measured.csv --chunks --budget 30m -- torchrun --nproc-per-node 8":
        needs("a trace of the user's step and a GPU node with NCCL >= 2.30.3"),
    "dynamiccl launch --table table.json --dry-run -- torchrun --nproc-per-node 8 train.py": RUN,
    "dynamiccl launch --table table.json -- torchrun --nproc-per-node 8 train.py": needs("the user's training script"),
    "dynamiccl launch --table table.json --profile out/ -- torchrun ...": needs("the user's training command"),
    "dynamiccl measure --trace my_step.parquet -o measured.csv --json measured.json --budget 10m -- torchrun "
    "--nproc-per-node 8": needs("a trace of the user's step and a GPU node"),
    "dynamiccl measure --trace my_step.parquet -o measured.csv --budget 1h --with-gemm --system \"4x NDR IB\" -- srun "
    "-N 4 --ntasks-per-node 8 python": needs("a trace of the user's step and a Slurm cluster"),
    # torchrun after `--` is looked up on PATH, which a test's clone does not set up; tests/test_measure.py
    # runs the same command on gloo for real (python -m torch.distributed.run, 4 and 2 ranks).
    "dynamiccl measure --trace traces/ref-dp2-tp2.parquet -o gloo.csv --budget 60s --channels 0,8 -- torchrun "
    "--nproc-per-node 4": needs("torchrun on PATH; run for real by tests/test_measure.py"),
    "dynamiccl verify --table table.json -o verify/ -- torchrun --nproc-per-node 8 train.py":
        needs("the user's training script"),
    "dynamiccl verify --table table.json --order ABBA --fail-if-slower --keep tuned.json -- torchrun "
    "--nproc-per-node 8 train.py": needs("the user's training script"),
    "dynamiccl simulate --env dgx-h100 --coll allreduce -b 64K -e 1G -f 16": RUN,
    "dynamiccl simulate --env h100-ib-2x8 --coll allreduce -b 8 -e 8G --algo tree --proto simple --channels 8": RUN,
    "dynamiccl simulate --env h100-ib-2x8 --coll allgather -b 1M -e 1G --model nccl --json": RUN,
    "dynamiccl validate --plot validation.png": RUN,
    "dynamiccl validate --leave-one-out --plot validation-loo.png": starts(r"leave-one-table-out:\s+\d+%"),
    "dynamiccl calibrate -o my_params.json": RUN,
    "dynamiccl import nccl-tests tests/fixtures/nccl-tests/nvidia-nccl-1469.txt --system \"H100 SXM, 16 nodes, IB\" "
    "--gpus-per-node 8 --nodes 16 --coll allreduce --nccl-version 2.20.5 -o my-nccl-tests.csv": RUN,
    "dynamiccl validate --measurements my-nccl-tests.csv --plot my-nccl-tests.png": RUN,
    "dynamiccl import nccl-tests all_reduce.log all_gather.log --system \"8x H100 SXM, NVSwitch, 2 nodes, IB\" "
    "-o m.csv": needs("the user's nccl-tests logs"),
    "DYNAMICCL_WORLD_PARAMS=my_params.json dynamiccl simulate --env dgx-h100 --coll allreduce": RUN,
    "dynamiccl simulate --env l40s-pcie-1x2 --coll allreduce -b 8 -e 128M -f 8 --model measured --measurements "
    "dynamiccl/data/calibration/more-systems.csv": RUN,
    "dynamiccl generate --model llama3-8b --tp 1 --pp 1 --dp 2 --dp-mode ddp --global-batch 8 --env l40s-pcie-1x2 "
    "-o l40s-dp2.parquet": RUN,
    "dynamiccl search --trace l40s-dp2.parquet --env l40s-pcie-1x2 --model measured --measurements "
    "dynamiccl/data/calibration/more-systems.csv --states 2 -o measured-table.json": RUN,
    "dynamiccl evaluate --traces l40s-dp2.parquet --envs l40s-pcie-1x2 --model measured --measurements "
    "dynamiccl/data/calibration/more-systems.csv --agents nccl-default --states 2 -o measured.parquet": RUN,
    "dynamiccl search --trace my_step.parquet --env my-cluster.toml --model measured --measurements M.csv "
    "-o table.json": needs("a trace of the user's step and the CSV `dynamiccl measure` wrote on their cluster"),
    "dynamiccl replay traces/ref-pp2-dp2.parquet --env dgx-h100 --params my_params.json": RUN,
    "dynamiccl bench --list": RUN,
    "dynamiccl bench generate-405b costmodel-evals --record experiments/bench": BENCH,
    "pip install 'dynamiccl[ray]'": needs("a machine of the user's Ray cluster (the extra is checked in "
                                          "pyproject.toml)"),
    "ray start --head": needs("a machine of the user's Ray cluster (tests/test_ray_sweep.py starts a local one)"),
    "ray start --address HEAD:6379": needs("the head of the user's Ray cluster"),
    "dynamiccl evaluate --config experiments/default.toml --policy experiments/default/run/policy.zip --ray auto "
    "-o results.parquet": needs("a Ray cluster (tests/test_ray_sweep.py runs a sweep on a local one)"),
    "dynamiccl search --config experiments/default.toml -o search/ --ray auto":
        needs("a Ray cluster (tests/test_ray_sweep.py runs a sweep on a local one)"),
    "ray stop": needs("the user's Ray cluster (it stops every Ray process of the machine)"),
}


def readme_commands() -> list[str]:
    """Every command of the README's ``bash`` blocks, in order: continuation lines joined, comments
    dropped, whitespace collapsed."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                commands.append(" ".join(line.split()))
    return commands


def fresh_clone(root: Path) -> Path:
    """The files git tracks (as in the working tree) copied under ``root``."""
    listed = subprocess.run(["git", "ls-files", "--cached", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    clone = root / "clone"
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not in the copy
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    # What `./run`'s setup leaves behind, with this interpreter standing in for the installed venv.
    venv = clone / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    launcher = venv / "bin" / "dynamiccl"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dynamiccl "$@"\n')
    launcher.chmod(0o755)
    stamp = hashlib.sha256((clone / "pyproject.toml").read_bytes()).hexdigest()
    (venv / ".dynamiccl-installed").write_text(stamp + "\n")
    return clone


def process_argv(command: str) -> tuple[dict[str, str], list[str]]:
    """(environment assignments, argv) of a README command, as a shell in the clone would run it."""
    words = shlex.split(command)
    env = {}
    while "=" in words[0] and not words[0].startswith(("-", ".")):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    head, rest = words[0], words[1:]
    programs = {"dynamiccl": [sys.executable, "-m", "dynamiccl"],
                "torchrun": [sys.executable, "-m", "torch.distributed.run"], "./run": ["./run"]}
    return env, programs[head] + rest


@dataclass
class Outcome:
    status: int | None  # exit status; None: stopped by the test after its marker
    output: str


def run_in(clone: Path, command: str, check: Check, log_name: str = "command.log") -> Outcome:
    """Run one README command in the clone, as :data:`CHECKS` says; stdout and stderr together
    (written to ``log_name`` beside the clone: one per lane of commands running at the same time)."""
    env_assignments, argv = process_argv(command)
    env = {**os.environ, **env_assignments, "PYTHONPATH": str(clone)}  # the clone's dynamiccl, not this tree's
    log = clone.parent / log_name
    with open(log, "wb") as sink:
        process = subprocess.Popen(argv, cwd=clone, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        deadline = time.monotonic() + HANG_GUARD_S
        try:
            while process.poll() is None and time.monotonic() < deadline:
                if check.kind == "STARTS" and re.search(check.detail, log.read_text(errors="replace")):
                    os.killpg(process.pid, signal.SIGTERM)
                    try:
                        process.wait(30)
                    except subprocess.TimeoutExpired:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
                    return Outcome(None, log.read_text(errors="replace"))
                time.sleep(0.5)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    output = log.read_text(errors="replace")
    return Outcome(process.returncode, output)


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The fresh clone the README commands run in."""
    return fresh_clone(tmp_path_factory.mktemp("readme"))


def lane_of(command: str) -> int:
    """The lane a README command runs in: 1 for the demo's (they write only ``demo-output/``, which
    no other README command reads), 0 for the others."""
    return 1 if command.startswith("./run demo") else 0


@pytest.fixture(scope="module")
def outcomes(clone) -> dict[str, list[Outcome]]:
    """Each README command's outcome(s), run in README order in one fresh clone (the demo's lane
    beside the others, see :func:`lane_of`)."""
    shipped_run = tree_bytes(clone / "experiments" / "default" / "run")
    lanes: list[list[tuple[str, str, Check, int]]] = [[], []]  # (key in the results, command, check, runs)
    for command in readme_commands():
        check = CHECKS.get(command)
        if check is None or check.kind in ("NEEDS", "SUITE"):
            continue
        times = 2 if command == "./run demo --timesteps 2048" else 1  # rerun into the same directory
        lanes[lane_of(command)].append((command, command, check, times))
    # Last, before the shipped run is compared: train with neither --output-dir nor --resume.
    lanes[0].append(("(bare train)", "dynamiccl train --config experiments/default.toml", RUN, 1))

    def run_lane(index: int) -> dict[str, list[Outcome]]:
        return {key: [run_in(clone, command, check, f"command-lane{index}.log") for _ in range(times)]
                for key, command, check, times in lanes[index]}

    results: dict[str, list[Outcome]] = {}
    with ThreadPoolExecutor(len(lanes)) as pool:
        for lane_results in pool.map(run_lane, range(len(lanes))):
            results.update(lane_results)
    # After everything: the shipped training run's files are as committed (its workloads/ is a cache of
    # generated steps, ignored by git, that evaluate, search and export fill), and the demo left one output.
    after = tree_bytes(clone / "experiments" / "default" / "run")
    changed = sorted(name for name, data in shipped_run.items() if after.get(name) != data)
    results["(shipped run untouched)"] = [Outcome(len(changed), "\n".join(changed))]
    results["(demo output)"] = [Outcome(0, "\n".join(sorted(p.name for p in clone.glob("demo-output*"))))]
    return results


def test_every_readme_command_has_a_check():
    commands = readme_commands()
    assert len(commands) > 30
    assert [c for c in commands if c not in CHECKS] == []
    assert [c for c in CHECKS if c not in commands] == []  # no check left for a command the README dropped


@pytest.mark.parametrize("command", [c for c, check in CHECKS.items() if check.kind == "NEEDS"])
def test_commands_on_a_users_files_parse(command):
    words = shlex.split(command)
    if words[0] == "pip":
        _check_pip_install(words)
        return
    if words[0] == "ray":
        _check_ray_command(words[1:])
        return
    _, argv = process_argv(command)
    assert argv[:3] == [sys.executable, "-m", "dynamiccl"]
    args = build_parser().parse_args(argv[3:])  # SystemExit (status 2) on an unknown flag or a bad value
    assert callable(args.func)


def _check_pip_install(words: list[str]) -> None:
    """``pip install 'dynamiccl[EXTRA,...]'``: this project, and extras its pyproject.toml defines."""
    import tomllib

    from packaging.requirements import Requirement

    assert words[:2] == ["pip", "install"] and len(words) == 3, words
    requirement = Requirement(words[2])
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert requirement.name == project["name"]
    assert requirement.extras and requirement.extras <= set(project["optional-dependencies"]), requirement.extras


def _check_ray_command(args: list[str]) -> None:
    """A ``ray`` command line, parsed (not run) by Ray's own click commands: its sub-command and flags exist."""
    try:
        from ray.scripts.scripts import cli
    except ImportError:
        pytest.fail("Ray is not installed: pip install -e '.[dev]' (or 'dynamiccl[ray]')")
    import click

    name, *rest = args
    command = cli.get_command(click.Context(cli), name)
    assert command is not None, f"Ray has no command {name!r}"
    command.make_context(f"ray {name}", rest)  # click.UsageError on an unknown flag or a bad value


@pytest.mark.parametrize("command", [c for c, check in CHECKS.items() if check.kind in ("RUN", "STARTS")])
def test_readme_command_works_as_printed_on_a_fresh_clone(outcomes, command):
    for outcome in outcomes[command]:
        if CHECKS[command].kind == "STARTS":
            assert outcome.status is None, f"exited {outcome.status} before its marker:\n{outcome.output[-3000:]}"
        else:
            assert outcome.status in CHECKS[command].ok_status, outcome.output[-3000:]


def test_the_benchmarks_run_and_are_recorded(outcomes):
    (bench,) = outcomes["dynamiccl bench generate-405b costmodel-evals --record experiments/bench"]
    rows = [line.split()[0] for line in bench.output.splitlines() if line.split()[-1:] in (["ok"], ["MISSED"])]
    assert rows == ["generate-405b", "costmodel-evals"] and "FAILED" not in bench.output, bench.output[-3000:]
    assert "recorded experiments/bench/generate-405b.json" in bench.output


def test_the_demo_reruns_into_its_own_output_and_leaves_one(outcomes):
    first, second = outcomes["./run demo --timesteps 2048"]
    assert "What is where" in first.output and "What is where" in second.output
    assert outcomes["(demo output)"][0].output == "demo-output"  # no .previous / .discarded left


def test_no_command_writes_the_shipped_training_run(outcomes):
    (untouched,) = outcomes["(shipped run untouched)"]
    assert untouched.status == 0, f"changed: {untouched.output}"


def test_train_into_the_shipped_run_names_both_ways_on(outcomes):
    (bare,) = outcomes["(bare train)"]
    assert bare.status == 2
    (line,) = [line for line in bare.output.splitlines() if line.strip()]
    assert line.startswith("dynamiccl: error: ") and "experiments/default/run" in line
    assert "--resume" in line and "--output-dir" in line


def test_the_demo_runs_every_stage_for_real(outcomes, clone):
    # The README's quick demo (2,048 decisions instead of 24,576); every stage still runs for real.
    from dynamiccl.table import load
    from dynamiccl.tuning.evaluate import Results

    second = outcomes["./run demo --timesteps 2048"][-1]
    assert "OK" in second.output and "rank 0, step 0" in second.output
    out = clone / "demo-output"
    assert (out / "llama3-8b_tp2-pp2-dp2-sp.parquet").is_file()
    assert (out / "run" / "policy.zip").is_file() and (out / "demo.toml").is_file()
    agents = set(Results.read(out / "results.parquet").steps["agent"])
    assert {"nccl-default", "search", "greedy-per-call", "policy", "ucb-bandit", "coordinate-descent"} <= agents
    assert load(out / "table.json").provenance["policy"] == "demo-output/run/policy.zip"
    # NVIDIA's example plugin runs a call no line takes on 1 channel: the demo's CSV writes NCCL's own
    # choice out for the demo's calls instead of leaving them unmatched (it had no data line).
    conf = (out / "nccl_tuner.conf").read_text(encoding="utf-8")
    assert [line for line in conf.splitlines() if line and not line.startswith("#")]
    assert "What is where" in second.output and "demo-output/table.json" in second.output
    assert "$ dynamiccl table export --policy" in second.output and "the old spelling" not in second.output
    html = (out / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html and (out / "report" / "summary.md").is_file()
