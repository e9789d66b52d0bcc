"""The sweep runner (dynamiccl.sweep): the same results in this process and on a process pool, in key
order whatever order tasks finish in; a task that fails once is retried, one that fails twice is
reported with its label while the others' results are kept; a worker that dies costs its tasks an
attempt, not the sweep; workers see the submitter's directory and DYNAMICCL_* variables."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dynamiccl.cli import build_parser
from dynamiccl.cli.common import parallelism
from dynamiccl.sweep import Parallelism, Task, run_sweep


@dataclass(frozen=True)
class ToyJob:
    """Squares its argument after a delay that makes late keys finish first; special arguments fail."""

    scratch: str

    def setup(self):
        return {"pid": os.getpid(), "param": os.environ.get("DYNAMICCL_TOY"), "cwd": os.getcwd()}

    def run(self, context, args):
        kind, value = args
        if kind == "fail-once":  # fails on its first attempt only (a file remembers it)
            marker = Path(self.scratch) / f"tried-{value}"
            if not marker.exists():
                marker.write_text("1")
                raise RuntimeError(f"first attempt of {value}")
        elif kind == "fail-always":
            raise ValueError(f"task {value} is broken")
        elif kind == "die":  # the worker process dies (only ever run on a pool)
            marker = Path(self.scratch) / f"died-{value}"
            if not marker.exists():
                marker.write_text("1")
                os._exit(3)
        time.sleep(0.02 * (10 - value) if kind == "ok" else 0)
        return {"square": value * value, "param": context["param"], "cwd": context["cwd"]}


def tasks(kinds: dict[int, str]) -> list[Task]:
    return [Task(("case", value), f"case {value}", (kind, value)) for value, kind in kinds.items()]


def test_the_pool_gives_what_this_process_gives_in_key_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DYNAMICCL_TOY", "from the submitter")
    job = ToyJob(str(tmp_path))
    here = run_sweep(job, tasks({v: "ok" for v in range(8)}), Parallelism(workers=1), progress=False)
    pool = run_sweep(job, list(reversed(tasks({v: "ok" for v in range(8)}))), Parallelism(workers=2), progress=False)
    assert (here.backend, pool.backend, pool.workers) == ("this process", "process pool", 2)
    assert list(pool.results) == [("case", v) for v in range(8)]  # key order, though submitted reversed
    assert pool.results == here.results and not pool.failures
    assert {r["param"] for r in pool.results.values()} == {"from the submitter"}
    assert {r["cwd"] for r in pool.results.values()} == {str(tmp_path)}

    # A second sweep from this process with other variables: the workers take the new ones.
    monkeypatch.setenv("DYNAMICCL_TOY", "changed")
    again = run_sweep(job, tasks({1: "ok", 2: "ok"}), Parallelism(workers=2), progress=False)
    assert {r["param"] for r in again.results.values()} == {"changed"}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_task_is_retried_once_then_reported_and_the_others_kept(tmp_path, workers, capsys):
    kinds = {0: "ok", 1: "fail-once", 2: "fail-always", 3: "ok"}
    outcome = run_sweep(ToyJob(str(tmp_path)), tasks(kinds), Parallelism(workers=workers), progress=False)
    assert list(outcome.results) == [("case", 0), ("case", 1), ("case", 3)]
    assert outcome.results[("case", 1)]["square"] == 1  # its second attempt
    [failure] = outcome.failures
    assert (failure.key, failure.label, failure.attempts) == (("case", 2), "case 2", 2)
    assert failure.error == "ValueError: task 2 is broken"  # no line of dynamiccl's raised it
    assert "case 2: failed 2 times; last error: ValueError: task 2 is broken" in outcome.failure_text()
    said = capsys.readouterr().err
    assert "case 1 failed (attempt 1 of 2: RuntimeError: first attempt of 1); retrying once" in said
    assert "case 2 failed (attempt 2 of 2" in said and "giving up" in said


def test_a_worker_that_dies_costs_its_task_one_attempt(tmp_path):
    kinds = {0: "ok", 1: "die", 2: "ok", 3: "ok"}
    outcome = run_sweep(ToyJob(str(tmp_path)), tasks(kinds), Parallelism(workers=2), progress=False)
    assert not outcome.failures
    assert [r["square"] for r in outcome.results.values()] == [0, 1, 4, 9]


def test_duplicate_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unique keys"):
        run_sweep(ToyJob(str(tmp_path)), [Task(1, "a", ("ok", 1)), Task(1, "b", ("ok", 2))], progress=False)


def test_workers_and_ray_on_the_command_line():
    parser = build_parser()
    args = parser.parse_args(["evaluate", "-o", "x.parquet", "--workers", "3"])
    assert parallelism(args) == Parallelism(workers=3)
    args = parser.parse_args(["search", "-o", "x.json", "--ray", "auto"])
    assert parallelism(args) == Parallelism(ray="auto")
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "-o", "x.parquet", "--workers", "0"])
