"""``dynamiccl demo`` reruns into its own output (issue 15, item 4).

The demo's steps after the trace (train, evaluate, export, check, report) are stood in for by a
command that writes one file per step, numbered by the run, so that these tests see exactly which
run's files the output directory holds; the trace generation and the demo's own file handling run
for real. The real commands run end to end, twice into one directory, in ``test_readme_commands.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamiccl.demo import run_demo
from dynamiccl.errors import InputError


class Steps:
    """A stand-in for ``dynamiccl.cli.main``: each command writes ``<its output>/<step>.txt`` holding
    the run's label, and the one named in ``fail_at`` fails (status 3) or is interrupted."""

    def __init__(self, label: str, fail_at: str | None = None, interrupt: bool = False):
        self.label, self.fail_at, self.interrupt, self.seen = label, fail_at, interrupt, []

    def __call__(self, argv: list[str]) -> int:
        step = argv[0] if argv[0] != "table" else f"table-{argv[1]}"
        self.seen.append(step)
        if step == self.fail_at:
            if self.interrupt:
                raise KeyboardInterrupt
            return 3
        for flag in ("--output-dir", "-o"):
            if flag in argv:
                target = Path(argv[argv.index(flag) + 1])
                directory = target if flag == "--output-dir" or not target.suffix else target.parent
                directory.mkdir(parents=True, exist_ok=True)
                (directory / f"{step}.txt").write_text(self.label)
                break
        return 0


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


def test_a_failed_rerun_leaves_the_previous_output_as_it_was_and_a_good_one_replaces_it(tmp_path, capsys):
    out = tmp_path / "demo-output"
    assert run_demo(out, Steps("run 1"), timesteps=64) == 0
    first = snapshot(out)
    assert (out / "run" / "train.txt").read_text() == "run 1" and "demo.toml" in first

    failing = Steps("run 2", fail_at="evaluate")
    with pytest.raises(SystemExit) as stopped:
        run_demo(out, failing, timesteps=128)  # train ran and wrote run 2's files before evaluate failed
    assert stopped.value.code == 3 and failing.seen == ["train", "evaluate"]
    assert snapshot(out) == first and siblings(out) == []
    assert "holds the previous run again" in capsys.readouterr().out

    assert run_demo(out, Steps("run 3"), timesteps=64) == 0
    third = snapshot(out)
    assert (out / "run" / "train.txt").read_text() == "run 3" and (out / "report" / "report.txt").exists()
    assert set(third) == set(first) and siblings(out) == []


def test_an_interrupted_rerun_puts_the_previous_output_back(tmp_path):
    out = tmp_path / "demo-output"
    assert run_demo(out, Steps("run 1"), timesteps=64) == 0
    first = snapshot(out)
    with pytest.raises(KeyboardInterrupt):
        run_demo(out, Steps("run 2", fail_at="table-export", interrupt=True), timesteps=64)
    assert snapshot(out) == first and siblings(out) == []


def test_a_run_killed_midway_is_recovered_by_the_next(tmp_path):
    """What a SIGKILL leaves: the earlier output set aside, a partial one in its place."""
    out = tmp_path / "demo-output"
    assert run_demo(out, Steps("run 1"), timesteps=64) == 0
    first = snapshot(out)
    out.rename(tmp_path / "demo-output.previous")
    (out / "run").mkdir(parents=True)
    (out / "demo.toml").write_text(first["demo.toml"].decode())  # the demo writes its config first
    (out / "run" / "train.txt").write_text("partial")
    with pytest.raises(SystemExit):
        run_demo(out, Steps("run 2", fail_at="train"), timesteps=64)
    assert snapshot(out) == first and siblings(out) == []


def test_a_directory_that_is_not_a_demo_output_is_never_touched(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    steps = Steps("run 1")
    with pytest.raises(InputError, match="not a dynamiccl demo output"):
        run_demo(mine, steps, timesteps=64)
    assert snapshot(mine) == {"notes.txt": b"keep"} and steps.seen == []
    monkeypatch.chdir(mine)
    with pytest.raises(InputError, match="working directory"):
        run_demo(Path("."), steps, timesteps=64)
    assert snapshot(mine) == {"notes.txt": b"keep"}
