"""``dynamiccl launch`` and ``dynamiccl plugin``, run as users run them: real processes, the real
plugin (built once per session), real signals, and the reference training job under torchrun."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dynamiccl.cli import main
from dynamiccl.launcher import PREFIX, plan_launch
from dynamiccl.nccl import Algorithm as A, Func, Protocol as P
from dynamiccl.plugin import INSTRUMENTED_FILE_NAME, PLUGIN_FILE_NAME, TABLE_ENV
from dynamiccl.knobs.job_env import JOB_ENV_SETTINGS
from dynamiccl.table import MAX_BYTES, DecisionTable, Rule, StepShape, plugin_text, save
from dynamiccl.plugin.binding import InstrumentedTunerLibrary
from dynamiccl.plugin.build import build_plugin, instrumented_beside
from dynamiccl.trace.store import Trace

# Cleared for the launches under test ($CC stays: the plugin's cache key includes the compiler).
OUR_VARIABLES = ("NCCL_TUNER_PLUGIN", TABLE_ENV, "NCCL_ALGO", "NCCL_PROTO", "DYNAMICCL_PROFILE_DIR", *JOB_ENV_SETTINGS)
PRINT_ENV = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]


@pytest.fixture(scope="session")
def plugin(cache) -> Path:
    """The plugin a launch with ``cache`` finds (build_plugin resolves the link: ``plugin_path``)."""
    return build_plugin(cache / "plugin")


def sample_table() -> DecisionTable:
    return DecisionTable(
        rules=(Rule(coll=Func.ALLREDUCE, min_bytes=0, max_bytes=65535, algorithm=A.RING, protocol=P.LL),
               Rule(coll=Func.ALLREDUCE, min_bytes=65536, max_bytes=MAX_BYTES, position=0, algorithm=A.TREE,
                    protocol=P.SIMPLE, channels=4)),
        steps=(StepShape(16, 2, 96, Func.ALLREDUCE, 1 << 20),),
        job_env={"NCCL_P2P_NET_CHUNKSIZE": 524288, "NCCL_P2P_LL_THRESHOLD": 8192})


@pytest.fixture
def in_cache(cache, monkeypatch) -> Path:
    """For in-process launches: the session's cache (the plugin build and table texts go there)."""
    monkeypatch.setenv("DYNAMICCL_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def table(tmp_path) -> Path:
    path = tmp_path / "table.json"
    save(sample_table(), path)
    return path


def clean_env(cache: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
    if cache is not None:
        env["DYNAMICCL_CACHE_DIR"] = str(cache)
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def launch(*args: str, cache: Path | None, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynamiccl", "launch", *args], capture_output=True, text=True,
                          cwd=cwd, env=clean_env(cache, **extra), timeout=240)


def said(stderr: str) -> list[str]:
    """The launcher's own lines, without the prefix."""
    return [line[len(PREFIX):] for line in stderr.splitlines() if line.startswith(PREFIX)]


# --- what a launch sets -------------------------------------------------------------------------------

def test_dry_run_prints_every_setting_and_the_command_and_runs_nothing(tmp_path, cache, plugin, table):
    marker = tmp_path / "ran"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w')", "two words"]
    done = launch("--table", str(table), "--dry-run", "--", *command, cache=cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not marker.exists() and done.stdout == ""
    lines = said(done.stderr)
    assert lines[0] == f"NCCL_TUNER_PLUGIN={plugin}"
    assert lines[1].startswith(f"{TABLE_ENV}=") and "2 rule(s), 1 step line(s) from" in lines[1]
    text_path = Path(lines[1].split("=", 1)[1].split(" ", 1)[0])
    assert text_path.is_absolute() and text_path.parent == cache / "tables"
    assert plugin_text.read(text_path.read_bytes(), text_path).rules == sample_table().rules
    assert "NCCL_P2P_NET_CHUNKSIZE=524288 (from the table)" in lines
    assert "NCCL_P2P_LL_THRESHOLD=8192 (from the table)" in lines
    assert "the plugin exports tuner ABI v6, v5, v4, v3, v2" in lines[-2]  # and which NCCL it would find
    assert lines[-1] == f"would run: {shlex.join(command)}"
    assert len(lines) == 6 and len(done.stderr.splitlines()) == 6


def test_the_variables_reach_the_job_and_the_users_settings_win(tmp_path, cache, plugin, table):
    done = launch("--table", str(table), "--", *PRINT_ENV, cache=cache, cwd=tmp_path,
                  NCCL_TUNER_PLUGIN="libnccl-tuner-other.so", NCCL_P2P_LL_THRESHOLD="1")
    assert done.returncode == 0, done.stderr
    child = json.loads(done.stdout)  # the launcher writes nothing to stdout
    assert child["NCCL_TUNER_PLUGIN"] == str(plugin)
    assert InstrumentedTunerLibrary(instrumented_beside(plugin)).check_file(child[TABLE_ENV]) == (2, 1)
    assert child["NCCL_P2P_NET_CHUNKSIZE"] == "524288"
    assert child["NCCL_P2P_LL_THRESHOLD"] == "1"  # set by the user: theirs wins
    lines = said(done.stderr)
    assert f"NCCL_TUNER_PLUGIN={plugin} (replaced NCCL_TUNER_PLUGIN=libnccl-tuner-other.so from your " \
           "environment)" in lines
    assert "NCCL_P2P_LL_THRESHOLD=1 kept from your environment (the table has 8192)" in lines


def test_plugin_option_is_used_without_building(tmp_path, plugin, table):
    mine = tmp_path / "prebuilt" / PLUGIN_FILE_NAME
    mine.parent.mkdir()
    for name in (PLUGIN_FILE_NAME, INSTRUMENTED_FILE_NAME):  # a build is both (the second checks tables)
        shutil.copy(plugin.with_name(name), mine.with_name(name))
    empty = tmp_path / "empty-cache"  # nothing cached and no compiler: only --plugin can work
    done = launch("--table", str(table), "--plugin", str(mine), "--", *PRINT_ENV, cache=empty, cwd=tmp_path,
                  CC="/nonexistent")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["NCCL_TUNER_PLUGIN"] == str(mine)
    assert not (empty / "plugin").exists()


def test_a_prebuilt_plugin_alone_is_checked_by_the_cached_build_or_fails_open(tmp_path, in_cache, plugin, table,
                                                                               monkeypatch):
    mine = tmp_path / "alone" / PLUGIN_FILE_NAME
    mine.parent.mkdir()
    shutil.copy(plugin, mine)
    plan = plan_launch(table, plugin=mine, base_env=clean_env(in_cache))  # the cache has the instrumented build
    assert plan.tuned and plan.settings["NCCL_TUNER_PLUGIN"] == str(mine)
    monkeypatch.setenv("CC", "/nonexistent")
    monkeypatch.setenv("DYNAMICCL_CACHE_DIR", str(tmp_path / "empty-cache"))
    plan = plan_launch(table, plugin=mine, base_env=clean_env(None))
    assert not plan.tuned and "NCCL_TUNER_PLUGIN" not in plan.env
    assert plan.reason.startswith(f"no {INSTRUMENTED_FILE_NAME} beside {mine} to check the table with")
    assert "CC='/nonexistent' is not an executable" in plan.reason


def test_masks_in_the_environment_are_reported(in_cache, table):
    plan = plan_launch(table, base_env=clean_env(in_cache, NCCL_ALGO="ring", NCCL_PROTO="^ll128"))
    assert plan.tuned
    warnings = [line for line in plan.lines if line.startswith("warning: ")]
    assert [w.split(" ", 2)[1] for w in warnings] == ["NCCL_ALGO=ring", "NCCL_PROTO='^ll128'"]  # shell-quoted
    assert "tuner ABI v2" in warnings[0]


# --- exit status and signals --------------------------------------------------------------------------

@pytest.mark.parametrize("code, expected", [("sys.exit(3)", 3), ("os.kill(os.getpid(), signal.SIGKILL)", 128 + 9)])
def test_the_jobs_exit_status_is_the_launchers(tmp_path, code, expected):
    done = launch("--", sys.executable, "-c", f"import os, signal, sys; {code}", cache=None, cwd=tmp_path)
    assert done.returncode == expected, done.stderr
    assert said(done.stderr) == ["no --table: NCCL chooses"]


SIGNAL_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    out = sys.argv[1]
    def handler(signum, frame):
        with open(os.path.join(out, "marker"), "w") as f:
            f.write(signal.Signals(signum).name)
        sys.exit(7)
    signal.signal(getattr(signal, sys.argv[2]), handler)
    open(os.path.join(out, "ready"), "w").close()
    time.sleep(120)
    sys.exit(1)
""")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signals_are_forwarded_to_the_job(tmp_path, signame):
    script = tmp_path / "child.py"
    script.write_text(SIGNAL_CHILD)
    launcher = subprocess.Popen([sys.executable, "-m", "dynamiccl", "launch", "--", sys.executable, str(script),
                                 str(tmp_path), signame], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=clean_env(None), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "ready").exists():
            assert launcher.poll() is None, launcher.communicate()[1]
            assert time.monotonic() < deadline, "the child never got ready"
            time.sleep(0.05)
        launcher.send_signal(getattr(signal, signame))
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 7, stderr
    assert (tmp_path / "marker").read_text() == signame


# --- failing open --------------------------------------------------------------------------------------

def test_a_bad_table_runs_the_job_untuned_and_says_why_in_one_line(tmp_path, cache):
    bad = tmp_path / "bad.csv"
    bad.write_text("allreduce,0,100,ring,ll,-1,-1,-1\nallreduce,0,100,rong,ll,-1,-1,-1\n")
    done = launch("--table", str(bad), "--", *PRINT_ENV, cache=cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    child = json.loads(done.stdout)
    assert "NCCL_TUNER_PLUGIN" not in child and TABLE_ENV not in child
    assert said(done.stderr) == [f"not tuning: {bad}: line 2, field algorithm: unknown algorithm 'rong'; expected "
                                 "one of tree, ring, collnet_direct, collnet_chain, nvls, nvls_tree, pat "
                                 "(lowercase; NVIDIA's parser would silently use ring); NCCL chooses"]


BROKEN_TABLES = [  # (file name, content or None for a missing file, the reason after "FILE: ")
    ("missing.json", None, "cannot read decision table (no such file)"),
    ("bad.csv", "allreduce,0,100,ring,ll,-1,-1,-1\nallreduce,0,100,rong,ll,-1,-1,-1\n",
     "line 2, field algorithm: unknown algorithm 'rong'; expected one of tree, ring, collnet_direct, collnet_chain, "
     "nvls, nvls_tree, pat (lowercase; NVIDIA's parser would silently use ring)"),
]


def broken_table(tmp_path: Path, name: str, content: str | None) -> Path:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    return path


@pytest.mark.parametrize("flag", ["--dry-run", "--strict"])
@pytest.mark.parametrize("name, content, reason", BROKEN_TABLES, ids=["missing", "broken"])
def test_dry_run_and_strict_exit_2_on_a_table_they_cannot_apply(tmp_path, cache, flag, name, content, reason):
    table = broken_table(tmp_path, name, content)
    marker = tmp_path / "ran"
    done = launch("--table", str(table), flag, "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')",
                  cache=cache, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert not marker.exists() and done.stdout == ""  # a gate: nothing runs
    assert done.stderr.splitlines() == [f"{PREFIX}error: cannot apply the table {table}: {reason}"]


@pytest.mark.parametrize("name, content, reason", BROKEN_TABLES, ids=["missing", "broken"])
def test_without_dry_run_or_strict_the_job_runs_untuned_and_it_is_said_once(tmp_path, cache, name, content, reason):
    table = broken_table(tmp_path, name, content)
    done = launch("--table", str(table), "--", *PRINT_ENV, cache=cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "NCCL_TUNER_PLUGIN" not in json.loads(done.stdout)
    assert done.stderr.splitlines() == [f"{PREFIX}not tuning: {table}: {reason}; NCCL chooses"]


def test_strict_with_a_good_table_runs_the_job_tuned(tmp_path, cache, plugin, table):
    done = launch("--table", str(table), "--strict", "--", *PRINT_ENV, cache=cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["NCCL_TUNER_PLUGIN"] == str(plugin)


@pytest.mark.parametrize("name, content, reason", [
    ("missing.json", None, "missing.json: cannot read decision table (no such file)"),
    ("bad.txt", "dynamiccl-tuner-table 1\nrule allreduce 0 10 -1 -1 -1 -1 -1 ring ll\n",
     "bad.txt: line 2: 11 fields; a rule line has 12"),
    ("table.yaml", "", "table.yaml: unknown extension '.yaml'"),
])
def test_unusable_tables_leave_nccl_choosing_and_drop_stale_settings(tmp_path, in_cache, name, content, reason):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    plan = plan_launch(path, base_env=clean_env(in_cache, NCCL_TUNER_PLUGIN="dynamiccl", DYNAMICCL_TUNER_TABLE="/old"))
    assert not plan.tuned and reason in plan.reason
    assert "NCCL_TUNER_PLUGIN" not in plan.env and TABLE_ENV not in plan.env
    assert plan.lines[0] == f"not tuning: {plan.reason}; NCCL chooses"
    assert plan.lines[1:] == ["unset NCCL_TUNER_PLUGIN (was dynamiccl)", f"unset {TABLE_ENV} (was /old)"]


def test_a_file_that_is_not_our_plugin_fails_open(tmp_path, table):
    fake = tmp_path / "libnccl-tuner-fake.so"
    fake.write_text("not a library")
    plan = plan_launch(table, plugin=fake, base_env=clean_env(None))
    assert not plan.tuned and plan.reason.startswith(f"{fake}: cannot load the library")
    assert "NCCL_TUNER_PLUGIN" not in plan.env
    missing = plan_launch(table, plugin=tmp_path / "nowhere.so", base_env=clean_env(None))
    assert missing.reason.startswith("--plugin: ") and "is not a file" in missing.reason


def test_no_compiler_runs_the_job_untuned(tmp_path, table):
    done = launch("--table", str(table), "--", *PRINT_ENV, cache=tmp_path / "empty-cache", cwd=tmp_path,
                  CC="/nonexistent")
    assert done.returncode == 0, done.stderr
    assert "NCCL_TUNER_PLUGIN" not in json.loads(done.stdout)
    assert said(done.stderr) == ["not tuning: CC='/nonexistent' is not an executable on PATH; install a C compiler "
                                 "or point CC at one; NCCL chooses"]


def test_profiling_problems_leave_the_job_and_its_status_alone(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = launch("--profile", str(blocker), "--", *PRINT_ENV, cache=None, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "DYNAMICCL_PROFILE_DIR" not in json.loads(done.stdout)
    assert f"not profiling: cannot create {blocker / 'capture'}: Not a directory" in said(done.stderr)
    quiet = [sys.executable, "-I", "-c", "import sys; sys.exit(5)"]  # -I: no autostart, so nothing recorded
    done = launch("--profile", str(tmp_path / "prof"), "--", *quiet, cache=None, cwd=tmp_path)
    assert done.returncode == 5
    assert any(line.startswith("no trace: ") and "capture" in line for line in said(done.stderr)), done.stderr


def test_usage_errors(tmp_path, capsys):
    assert main(["launch"]) == 2
    assert "no command given; usage: dynamiccl launch" in capsys.readouterr().err
    assert main(["launch", "--", str(tmp_path / "no-such-program")]) == 2
    assert "cannot run" in capsys.readouterr().err


# --- the plugin commands ------------------------------------------------------------------------------

def test_plugin_build_and_check_commands(tmp_path, in_cache, plugin, table, capsys):
    assert main(["plugin", "build"]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first == str(plugin)
    assert f"{plugin.stat().st_size} bytes" in second and "exports tuner ABI v6, v5, v4, v3, v2" in second
    text = tmp_path / "table.txt"
    assert main(["plugin", "check", str(table), "-o", str(text)]) == 0
    out = capsys.readouterr().out
    assert "the plugin's parser accepts it: 2 rule(s), 1 step line(s)" in out and str(text) in out
    assert main(["plugin", "check", str(text)]) == 0  # the plugin's own text is a table too
    text.write_text(text.read_text().replace("ring", "rong"))
    assert main(["plugin", "check", str(text)]) == 2
    err = capsys.readouterr().err
    assert f"{text}: line 4, field algorithm: unknown algorithm 'rong'" in err


# --- a real job -----------------------------------------------------------------------------------------

WRAPPER = textwrap.dedent("""
    # Records what this rank's environment holds, then runs the reference job as `-m` would.
    import json, os, runpy, sys
    keys = ("NCCL_TUNER_PLUGIN", "DYNAMICCL_TUNER_TABLE", "DYNAMICCL_PROFILE_DIR", "NCCL_P2P_NET_CHUNKSIZE")
    with open(os.path.join(os.environ["ENV_DUMP_DIR"], f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump({k: os.environ.get(k) for k in keys}, f)
    runpy.run_module("dynamiccl.profiler.reference_job", run_name="__main__", alter_sys=True)
""")


def test_reference_job_under_torchrun_is_tuned_and_profiled(tmp_path, cache, plugin, table):
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    dumps, prof = tmp_path / "env", tmp_path / "prof"
    dumps.mkdir()
    done = launch("--table", str(table), "--profile", str(prof), "--",
                  sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", str(wrapper),
                  "--layers", "2", "--steps", "2", "--quiet", cache=cache, cwd=tmp_path, ENV_DUMP_DIR=str(dumps))
    assert done.returncode == 0, done.stderr[-4000:]
    text_path = next(line.split("=", 1)[1].split(" ")[0] for line in said(done.stderr) if line.startswith(TABLE_ENV))
    for rank in range(4):
        seen = json.loads((dumps / f"rank{rank}.json").read_text())
        assert seen == {"NCCL_TUNER_PLUGIN": str(plugin), TABLE_ENV: text_path,
                        "DYNAMICCL_PROFILE_DIR": str(prof / "capture"), "NCCL_P2P_NET_CHUNKSIZE": "524288"}
    trace = Trace.read(prof / "trace.parquet")
    assert sorted(trace.ops["rank"].unique()) == [0, 1, 2, 3]
    steps = sorted(int(s) for s in trace.ops["step"].unique())
    # setup, then one step per optimizer step (the loss report after the last one is setup traffic)
    assert steps == [0, 1, 2] and set(trace.ops[trace.ops["step"] == 1]["op"]) >= {"allreduce"}
    assert f"wrote {prof / 'trace.parquet'} (2 training step(s) after setup)" in said(done.stderr)
