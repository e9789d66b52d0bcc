"""A sweep on a real Ray cluster gives the local pool's results, row for row (issue 18's target).

One local Ray cluster of 2 CPUs is started for this module (``ray start --head`` from this
interpreter's environment, on free ports, in a short temporary directory: Ray's unix sockets live
under it and a socket path may not exceed 107 characters) and stopped afterwards, whatever happened:
the processes of its session are ended by their ids (not ``ray stop``, which ends every Ray process
of the machine, other users' clusters too) and its directory removed. The sweep goes through the
real command line (``python -m dynamiccl search|evaluate ... --ray 127.0.0.1:PORT``), the local pool
through ``main`` (``--workers 2``) at the same time.

Ray is in the dev extra: where it is missing these tests FAIL, saying how to install it (they never
skip: CI must run them).
"""

from __future__ import annotations

import ast
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from sweep_cases import REPO, search_argv, search_config, search_written

from dynamiccl.cli import main

RAY_START_S = 120  # a guard against a hung start, not a speed target
NO_RAY = "Ray is not installed; the sweep tests need it: pip install -e '.[dev]' (or 'dynamiccl[ray]')"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env() -> dict[str, str]:
    """This interpreter's environment, with this checkout's dynamiccl first (the Ray workers too), and
    Ray's token authentication off for the test's own cluster on this machine: ``ray start`` turns it
    on wherever ``~/.ray/auth_token`` exists (any earlier local ``ray.init()`` writes one), while a
    driver given an address uses it only when ``RAY_AUTH_MODE=token`` says so."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def _session_processes(temp_dir: str) -> list[int]:
    """The ids of the processes of the Ray session under ``temp_dir`` (each names it on its command
    line) and of their process group (that ``ray start`` made)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if temp_dir.encode() in argv:
            found.append(int(entry.name))
    return found


def _stop(group: int, temp_dir: str) -> None:
    """End the cluster this module started: its process group and every process of its session."""
    for sig, grace_s in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 0.0)):
        pids = _session_processes(temp_dir)
        with_group = [("group", group)] + [("pid", pid) for pid in pids]
        for kind, ident in with_group:
            try:
                (os.killpg if kind == "group" else os.kill)(ident, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _session_processes(temp_dir):
            time.sleep(0.2)


@pytest.fixture(scope="module")
def ray_address():
    """``127.0.0.1:PORT`` of a 2-CPU Ray cluster started for this module (see the module docstring)."""
    try:
        import ray  # noqa: F401  (only whether it is installed)
    except ImportError:
        pytest.fail(NO_RAY)
    ray_bin = Path(sys.executable).parent / "ray"
    if not ray_bin.is_file():
        pytest.fail(f"{NO_RAY} ({ray_bin} is missing)")
    temp_dir = tempfile.mkdtemp(prefix="dcl-ray-", dir="/tmp")
    port = _free_port()
    argv = [str(ray_bin), "start", "--head", "--num-cpus", "2", "--include-dashboard", "false",
            "--disable-usage-stats", "--port", str(port), "--temp-dir", temp_dir,
            # every port Ray would otherwise take at a fixed default: another cluster may hold it
            "--ray-client-server-port", str(_free_port()), "--dashboard-port", str(_free_port()),
            "--dashboard-agent-listen-port", str(_free_port())]
    log = Path(temp_dir) / "ray-start.log"
    with log.open("wb") as out:
        start = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    try:
        try:
            status = start.wait(timeout=RAY_START_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`ray start` did not finish in {RAY_START_S} s:\n{log.read_text(errors='replace')[-3000:]}")
        assert status == 0, f"`ray start` failed ({status}):\n{log.read_text(errors='replace')[-3000:]}"
        yield f"127.0.0.1:{port}"
    finally:
        _stop(start.pid, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _cli(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "dynamiccl", *argv], capture_output=True, text=True,
                              env=_env(), timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"`dynamiccl {' '.join(argv)}` still ran after {timeout_s} s:\n{err.stderr}")


def _on_ray_beside(argv: list[str], ray_address: str, local) -> subprocess.CompletedProcess:
    """``dynamiccl ARGV --ray ADDRESS`` through the command line, while ``local()`` runs here (the same
    sweep on the local pool, at the same time: each mostly waits on its workers' start)."""
    command = [sys.executable, "-m", "dynamiccl", *argv, "--ray", ray_address]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()) as ray_run:
        try:
            local()
        finally:
            try:
                out, err = ray_run.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                ray_run.kill()
                out, err = ray_run.communicate()
                pytest.fail(f"`dynamiccl {' '.join(argv)} --ray` still ran after 300 s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(command, ray_run.returncode, out, err)


def test_search_on_ray_writes_what_the_local_pool_writes(ray_address, tmp_path, capsys):
    config = search_config(tmp_path)
    on_ray, pool = (tmp_path / "ray", tmp_path / "ray.json"), (tmp_path / "pool", tmp_path / "pool.json")
    done = _on_ray_beside(search_argv(config, *on_ray), ray_address,
                          lambda: main(search_argv(config, *pool, "--workers", "2")))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"searched 2 of 2 case(s) on the Ray cluster {ray_address} (at most 2 tasks at a time)" in done.stdout
    assert "search (Ray)" in done.stderr  # the progress bar over the tasks
    assert "on 2 local worker processes" in capsys.readouterr().out
    tables, rows, failures = search_written(*on_ray)
    assert len(tables) == 2 and len(rows) == 2 and failures == []
    assert (tables, rows, failures) == search_written(*pool)  # byte for byte, row for row


def test_evaluate_on_ray_writes_what_the_local_pool_writes(ray_address, tmp_path):
    from dynamiccl.tuning.evaluate import Results, meta_without_timing

    traces = [str(REPO / "traces/ref-pp2-dp2.parquet"), str(REPO / "traces/llama3-8b_tp1-pp1-dp8.parquet")]
    argv = ["evaluate", "--traces", *traces, "--envs", "dgx-h100", "--states", "2",
            "--agents", "nccl-default,random,greedy-per-call"]
    on_ray, pool = tmp_path / "ray.parquet", tmp_path / "pool.parquet"
    statuses = []
    done = _on_ray_beside([*argv, "-o", str(on_ray)], ray_address,
                          lambda: statuses.append(main([*argv, "-o", str(pool), "--workers", "2"])))
    assert done.returncode == 0 and statuses == [0], done.stderr[-3000:]
    assert f"Ray cluster {ray_address}" in done.stderr  # where it ran
    got, expected = Results.read(on_ray), Results.read(pool)
    assert len(got.steps) == 2 * 2 * 4 and len(got.calls) > 0  # 2 cases x 2 states x (search + 3 agents)
    pd.testing.assert_frame_equal(got.steps, expected.steps)  # row for row
    pd.testing.assert_frame_equal(got.calls, expected.calls)
    assert meta_without_timing(got.meta) == meta_without_timing(expected.meta)


def test_ray_without_a_cluster_is_one_clear_error_naming_the_flag(tmp_path):
    nobody = f"127.0.0.1:{_free_port()}"  # nothing listens there
    done = _cli(["search", "--trace", "traces/ref-pp2-dp2.parquet", "--env", "dgx-h100", "--states", "1",
                 "-o", str(tmp_path / "t.json"), "--ray", nobody], timeout_s=30)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.startswith("dynamiccl: error: --ray:") and nobody in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "t.json").exists()


def test_nothing_imports_ray_unless_asked():
    # Statically: no module of dynamiccl but the Ray backend imports ray outside a function.
    package = REPO / "dynamiccl"
    for path in sorted(package.rglob("*.py")):
        if path == package / "sweep" / "ray_backend.py":
            continue
        for node in _imports_outside_functions(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n == "ray" or n.startswith("ray.") for n in names), f"{path}:{node.lineno} imports ray"
    # And for real: the commands that fan out, their help and the sweep runner load without Ray.
    code = ("import sys, contextlib, io\n"
            "import dynamiccl.sweep, dynamiccl.sweep.local, dynamiccl.table.sweep, dynamiccl.tuning.search\n"
            "import dynamiccl.tuning.evaluate\n"
            "from dynamiccl.cli import main\n"
            "for command in (['search', '--help'], ['evaluate', '--help'], ['table', 'check', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n"
            "            main(command)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def _imports_outside_functions(tree: ast.AST):
    """The import statements of ``tree`` that run when the module is imported (not in a function)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))
