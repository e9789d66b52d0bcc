"""Outputs (``dynamiccl.outputs``, ``dynamiccl.atomic``, the command line's ``main``): every writing
command checks its output before working and fails in one line; a failed, interrupted or terminated
command leaves no temporary files or half-made directories; one run per output directory; a closed
stdout pipe ends a command quietly."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynamiccl import atomic, outputs
from dynamiccl.cli import main
from dynamiccl.errors import OutputError
from dynamiccl.outputs import claim_output_dir, command_scope

REPO = Path(__file__).resolve().parent.parent
TRACE = str(REPO / "traces" / "ref-pp2-dp2.parquet")
BIG_TRACE = str(REPO / "traces" / "gpt3-175b_tp8-pp16-dp8-sp-vpp2.parquet")  # 1,024 ranks: export takes s
TABLE = str(REPO / "experiments" / "default" / "table.json")
RESULTS = str(REPO / "experiments" / "default" / "results.parquet")
ROOT = os.geteuid() == 0

TINY_CONFIG = f"""
[experiment]
name = "tiny"
seed = 7
model = "world"

[train]
total_timesteps = 512
n_steps = 128
batch_size = 64
n_epochs = 1
checkpoint_every = 256
net_arch = [16, 16]
states = 2

[[train.cases]]
trace = "{TRACE}"
env = "dgx-h100"
"""


def _config(directory: Path) -> str:
    path = directory / "tiny.toml"
    path.write_text(TINY_CONFIG, encoding="utf-8")
    return str(path)


# Every command that writes, with the flag of one of its outputs: (name, kind, argv(output, workdir)).
# kind "file": the output is a file, "dir": a directory. Each command's other inputs are valid, so a
# command that did not check its output first would start working (and fail much later, or not).
WRITERS = [
    ("generate", "file", lambda o, w: ["generate", "--model", "llama3-8b", "--tp", "1", "--pp", "1", "--dp", "2",
                                       "-o", o + ".parquet"]),
    ("import", "file", lambda o, w: ["import", "nccl-log", TRACE, "-o", o + ".parquet"]),
    ("trace export", "dir", lambda o, w: ["trace", "export", "chakra", TRACE, "-o", o]),
    ("export", "dir", lambda o, w: ["export", "param", TRACE, "-o", o]),
    ("table convert", "file", lambda o, w: ["table", "convert", TABLE, "-o", o + ".json"]),
    ("table export", "file", lambda o, w: ["table", "export", "--policy", "policy.zip", "-o", o + ".json"]),
    ("table export --nccl-csv", "file", lambda o, w: ["table", "export", "--policy", "policy.zip", "-o",
                                                      str(w / "t.json"), "--nccl-csv", o + ".csv"]),
    ("table check --sweep", "file", lambda o, w: ["table", "check", TABLE, "--sweep", "sweep.toml", "-o", o + ".md"]),
    ("calibrate", "file", lambda o, w: ["calibrate", "-o", o + ".json"]),
    ("validate --plot", "file", lambda o, w: ["validate", "--plot", o + ".png"]),
    ("validate --json", "file", lambda o, w: ["validate", "--plot", "", "--json", o + ".json"]),
    ("train", "dir", lambda o, w: ["train", "--config", _config(w), "--output-dir", o]),
    ("evaluate", "file", lambda o, w: ["evaluate", "--traces", TRACE, "--envs", "dgx-h100", "-o", o + ".parquet"]),
    ("evaluate --json", "file", lambda o, w: ["evaluate", "--traces", TRACE, "--envs", "dgx-h100", "-o",
                                              str(w / "r.parquet"), "--json", o + ".json"]),
    ("search", "file", lambda o, w: ["search", "--trace", TRACE, "--env", "dgx-h100", "-o", o + ".json"]),
    ("search (directory)", "dir", lambda o, w: ["search", "--trace", TRACE, "--env", "dgx-h100", "-o", o]),
    ("search --json", "file", lambda o, w: ["search", "--trace", TRACE, "--env", "dgx-h100", "-o",
                                            str(w / "t.json"), "--json", o + ".json"]),
    ("report", "dir", lambda o, w: ["report", RESULTS, "-o", o]),
    ("bench --record", "dir", lambda o, w: ["bench", "--record", o]),
    ("plugin check", "file", lambda o, w: ["plugin", "check", TABLE, "-o", o + ".txt"]),
    ("plugin bench --record", "file", lambda o, w: ["plugin", "bench", "--record", o + ".json"]),
    ("demo", "dir", lambda o, w: ["demo", "--out", o]),
]

# Unwritable outputs: (name, make(workdir) -> the output path without its suffix, why it fails). All but
# the read-only directory fail for root too.
SUFFIXES = (".parquet", ".json", ".csv", ".md", ".png", ".txt")


def _under_proc(w: Path) -> str:
    return "/proc/dynamiccl-test/out"


def _parent_is_a_file(w: Path) -> str:
    (w / "afile").write_text("x")
    return str(w / "afile" / "out")


def _wrong_kind(w: Path) -> str:
    # a directory where a file is expected (for each suffix a file command adds), a file where a
    # directory is expected
    for suffix in SUFFIXES:
        (w / f"taken{suffix}").mkdir()
    (w / "taken").write_text("x")
    return str(w / "taken")


def _read_only(w: Path) -> str:
    (w / "ro").mkdir()
    (w / "ro").chmod(0o555)
    return str(w / "ro" / "sub" / "out")


UNWRITABLE = [
    pytest.param(_under_proc, "a kernel proc filesystem", id="under-proc"),
    pytest.param(_parent_is_a_file, "is a file, not a directory", id="parent-is-a-file"),
    pytest.param(_wrong_kind, "it is a", id="directory-for-file-or-file-for-directory"),
    pytest.param(_read_only, "permission denied",
                 marks=pytest.mark.skipif(ROOT, reason="running as root, whom a read-only mode does not stop "
                                                       "(the other cases fail for root too)"),
                 id="read-only-directory"),
]


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size if p.is_file() else -1 for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("make, why", UNWRITABLE)
@pytest.mark.parametrize("name, kind, argv", WRITERS, ids=[w[0] for w in WRITERS])
def test_every_writer_refuses_an_unwritable_output_in_one_line_before_working(
        name, kind, argv, make, why, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = make(tmp_path)
    args = argv(out, tmp_path)
    output = next(a for a in args if a.startswith(out))
    before = _tree(tmp_path)
    try:
        status = main(args)
    finally:
        (tmp_path / "ro").exists() and (tmp_path / "ro").chmod(0o755)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert status == 2, err
    assert last.startswith(f"dynamiccl: error: {output}: cannot write (") and last.endswith(")"), err
    assert why in last and "Traceback" not in err
    assert _tree(tmp_path) == before  # no temporary file, no directory made


def test_a_special_file_is_not_replaced(tmp_path, capsys):
    # an atomic write renames over its destination: a FIFO (or, for root, /dev/null) would be replaced
    fifo = tmp_path / "t.json"
    os.mkfifo(fifo)
    assert main(["table", "convert", TABLE, "-o", str(fifo)]) == 2
    assert capsys.readouterr().err == (f"dynamiccl: error: {fifo}: cannot write (it is not a regular file (a "
                                       "device, FIFO or socket))\n")
    assert fifo.is_fifo() and [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_evaluate_checks_its_output_before_evaluating(tmp_path, monkeypatch, capsys):
    import dynamiccl.tuning.evaluate as evaluate

    def no_work(*args, **kwargs):
        raise AssertionError("the evaluation started before the output was checked")

    monkeypatch.setattr(evaluate, "evaluate_plan", no_work)
    (tmp_path / "x").write_text("")
    assert main(["evaluate", "--traces", TRACE, "--envs", "dgx-h100", "-o", str(tmp_path / "x" / "r.parquet")]) == 2
    assert "cannot write" in capsys.readouterr().err


# --- a full disk ------------------------------------------------------------------------------------


def _disk_full_for(monkeypatch, fragment: str) -> None:
    """Make fsync of files whose path contains ``fragment`` fail as a full disk does."""
    real_fsync = os.fsync

    def fsync(fd):
        if fragment in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_disk_full_during_a_write_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    _disk_full_for(monkeypatch, str(tmp_path))
    out = tmp_path / "new" / "dirs" / "t.parquet"
    assert main(["generate", "--model", "llama3-8b", "--tp", "1", "--pp", "1", "--dp", "2", "-o", str(out)]) == 2
    assert capsys.readouterr().err == f"dynamiccl: error: {out}: cannot write (No space left on device)\n"
    assert list(tmp_path.iterdir()) == []  # no temporary file, and the parents it made are gone


def test_disk_full_train_leaves_no_half_made_run(tmp_path, monkeypatch, capsys):
    config = _config(tmp_path)
    run = tmp_path / "run"
    _disk_full_for(monkeypatch, str(run / "checkpoints"))  # after run.json, the logs and the curve
    assert main(["train", "--config", config, "--output-dir", str(run), "--timesteps", "128"]) == 2
    err = capsys.readouterr().err
    assert "cannot write (No space left on device)" in err.splitlines()[-1]
    assert not run.exists()  # not run.json, not an empty workloads/ or tensorboard/


def test_disk_full_under_a_writer_of_its_own_is_one_line(tmp_path, monkeypatch, capsys):
    # TensorBoard's event files, for one, are not written through dynamiccl.atomic
    import dynamiccl.trace.store as store

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "events.out"))

    monkeypatch.setattr(store.Trace, "write", full)
    out = tmp_path / "t.parquet"
    assert main(["generate", "--model", "llama3-8b", "--tp", "1", "--pp", "1", "--dp", "2", "-o", str(out)]) == 2
    events = tmp_path / "events.out"
    assert capsys.readouterr().err == f"dynamiccl: error: {events}: cannot write (No space left on device)\n"


def test_a_failed_write_into_an_existing_directory_keeps_what_was_there(tmp_path, monkeypatch, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    _disk_full_for(monkeypatch, str(out))
    assert main(["trace", "export", "param", TRACE, "-o", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


# --- signals ----------------------------------------------------------------------------------------


def _start(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dynamiccl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for(predicate, proc: subprocess.Popen, what: str, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the command ended before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {what} within {limit_s} s")
        time.sleep(0.02)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("existing", [False, True], ids=["new-directory", "existing-directory"])
def test_a_signal_mid_export_leaves_no_temporaries(signum, existing, tmp_path):
    out = tmp_path / "chakra"
    if existing:
        out.mkdir()
        (out / "mine.txt").write_text("kept")
    proc = _start(["trace", "export", "chakra", BIG_TRACE, "-o", str(out)])
    _wait_for(lambda: out.is_dir() and any(p.suffix == ".tmp" for p in out.iterdir()), proc, "temporary file")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1] == (f"dynamiccl: {'terminated' if signum == signal.SIGTERM else 'interrupted'}"
                                            f" ({signal.Signals(signum).name})")
    assert "Traceback" not in err
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    else:
        assert not out.exists()


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_sigterm_during_a_live_measurement_kills_its_workers_and_removes_its_temp_dir(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = _start(["simulate", "--env", "dgx-h100", "--coll", "allreduce", "-b", "1K", "-e", "1M", "--model", "live",
                   "--nprocs", "2"], env={**os.environ, "TMPDIR": str(tmp)})
    _wait_for(lambda: len(_processes_mentioning(str(tmp))) == 2, proc, "two live workers")
    workers = _processes_mentioning(str(tmp))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    deadline = time.monotonic() + 10  # SIGKILL is delivered at once; the kernel then reaps
    while _processes_mentioning(str(tmp)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_mentioning(str(tmp)) == [], f"workers {workers} still run"
    assert list(tmp.iterdir()) == []


def test_sigterm_is_an_exception_only_while_a_command_runs():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(outputs.Terminated) as caught, command_scope():
        assert signal.getsignal(signal.SIGTERM) is not before
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


# --- one run per output directory -------------------------------------------------------------------


HOLD = """
import sys, time
from dynamiccl.outputs import claim_output_dir, command_scope
with command_scope():
    claim_output_dir(sys.argv[1], "dynamiccl hold " + sys.argv[1])
    print("held", flush=True)
    time.sleep(60)
"""


def _hold(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_second_claim_names_the_holder_and_a_dead_holder_frees_the_directory(tmp_path):
    out = tmp_path / "out"
    holder = _hold(out)
    try:
        with pytest.raises(OutputError) as caught, command_scope():
            claim_output_dir(out, "dynamiccl second")
        message = str(caught.value)
        assert message.startswith(f"{out}: cannot write (another run is writing into it: pid {holder.pid} on ")
        assert "(dynamiccl hold " in message and "give another output directory" in message
    finally:
        holder.kill()  # no cleanup at all: the kernel drops its lock
        holder.wait()
    assert (out / outputs.LOCK_NAME).exists()  # the dead holder's lock file is left ...
    with command_scope():
        claim_output_dir(out, "dynamiccl third")  # ... and does not block the next run
    assert list(out.iterdir()) == []  # a released claim removes its lock file


def test_a_command_run_inside_another_claims_the_same_directory_again(tmp_path):
    out = tmp_path / "out"
    with command_scope():
        claim_output_dir(out, "outer")
        with command_scope():
            claim_output_dir(out, "inner")
            atomic.write_text(out / "a.txt", "a")
        assert (out / outputs.LOCK_NAME).exists()
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]


def test_two_trains_into_one_directory_the_second_names_the_first(tmp_path, capsys):
    from dynamiccl.tuning.callbacks import latest_checkpoint

    config = _config(tmp_path)
    run = tmp_path / "run"
    first = _start(["train", "--config", config, "--output-dir", str(run), "--timesteps", "100000"])
    lock = run / outputs.LOCK_NAME
    _wait_for(lambda: lock.exists() and lock.read_text().endswith("\n"), first, "the first run's lock")
    assert main(["train", "--config", config, "--output-dir", str(run), "--timesteps", "128"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dynamiccl: error: {run}: cannot write (another run is writing into it: pid {first.pid} ")
    assert "dynamiccl train --config" in err and "--timesteps 100000" in err
    first.send_signal(signal.SIGTERM)
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, first_err
    # the stopped run is gone, or kept whole where a checkpoint makes it resumable; either way unlocked
    assert not run.exists() or (latest_checkpoint(run / "checkpoints") is not None and not lock.exists())


HOLD_REPLACED = HOLD.replace("claim_output_dir", "claim_replaced_dir")


def test_a_second_demo_into_one_directory_names_the_first_and_touches_nothing(tmp_path, capsys):
    # The demo renames its directory while it runs, so its lock sits beside the directory: a lock
    # inside would move to <out>.previous with it and the second demo would find none.
    out = tmp_path / "demo-output"
    out.mkdir()
    (out / "demo.toml").write_text("kept\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_REPLACED, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline() == "held\n"
        assert list(out.iterdir()) == [out / "demo.toml"]  # nothing of the lock inside
        assert main(["demo", "--out", str(out), "--timesteps", "64"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"dynamiccl: error: {out}: cannot write (another run is writing into it: "
                              f"pid {holder.pid} ")
        assert (out / "demo.toml").read_text() == "kept\n" and not (tmp_path / "demo-output.previous").exists()
    finally:
        holder.kill()
        holder.wait()


# --- a closed stdout pipe ---------------------------------------------------------------------------


PIPED = [
    ["models"],
    ["trace", "summary", TRACE, "--json"],
    ["simulate", "--env", "dgx-h100", "--coll", "allreduce", "-b", "1K", "-e", "1M"],
    ["table", "show", TABLE],
    ["validate", "--plot", ""],
]


@pytest.mark.parametrize("args", PIPED, ids=[" ".join(a[:2]) for a in PIPED])
def test_a_reader_that_closed_its_pipe_ends_the_command_quietly(args):
    # `dynamiccl ... | head -1` once head has exited: a real pipe whose read end is closed
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "dynamiccl", *args], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    finally:
        os.close(write_end)
    assert done.returncode == 128 + signal.SIGPIPE, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr


def test_piped_into_head_prints_the_first_line_and_no_error():
    # 218 kB of table: more than a pipe holds, so the write fails once head has exited
    command = (f"{sys.executable} -m dynamiccl simulate --env dgx-h100 --coll allreduce -b 8 -e 8G -f 1.01 "
               "| head -1")
    done = subprocess.run(["bash", "-c", "set -o pipefail; " + command], capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.startswith("# dynamiccl simulate: allreduce") and done.stdout.count("\n") == 1
    assert done.stderr == "" and done.returncode == 128 + signal.SIGPIPE
