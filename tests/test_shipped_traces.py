"""The traces in traces/ are valid, fit together, and are exactly what their README line regenerates
(generated traces; recorded ones are measurements, checked for validity and shape only)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pandas as pd
import pytest

from dynamiccl.cli import main
from dynamiccl.trace.consistency import check_consistency
from dynamiccl.trace.store import Trace

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "traces" / "README.md"
COMMANDS = re.findall(r"`(dynamiccl generate [^`]+)`", README.read_text(encoding="utf-8"))
# Recorded with the reference job (dynamiccl/profiler/reference_job.py): `torchrun ... --trace FILE`.
RECORDED = re.findall(r"`(\S*torchrun [^`]*-m dynamiccl\.profiler\.reference_job [^`]+)`",
                      README.read_text(encoding="utf-8"))


def test_every_shipped_trace_has_a_readme_line():
    listed = {Path(shlex.split(cmd)[-1]).name for cmd in COMMANDS + RECORDED}
    shipped = {p.name for p in (ROOT / "traces").glob("*.parquet")}
    assert len(shipped) >= 4 and len(RECORDED) >= 3
    assert shipped == listed
    assert all(shlex.split(cmd)[-2] == "--trace" for cmd in RECORDED)


@pytest.mark.parametrize("command", RECORDED, ids=[Path(shlex.split(c)[-1]).stem for c in RECORDED])
def test_recorded_trace_is_valid_with_setup_and_training_steps(command):
    shipped = ROOT / shlex.split(command)[-1]
    trace = Trace.read(shipped)
    assert trace.meta.source == "profiler" and trace.meta.world_size == 4
    steps = sorted(trace.ops["step"].unique())
    assert steps == [0, 1, 2, 3, 4]
    assert set(trace.ops[trace.ops["step"] == 0]["phase"]) == {"setup"}
    assert trace.ops["start_us"].notna().all()  # measured
    for step in steps:
        report = check_consistency(trace, step=step)
        assert report.ok, (step, report.problems)


@pytest.mark.parametrize("command", COMMANDS, ids=[Path(shlex.split(c)[-1]).stem for c in COMMANDS])
def test_shipped_trace_is_valid_and_regenerates_exactly(command, tmp_path):
    args = shlex.split(command)[1:]
    shipped = ROOT / args[-1]
    trace = Trace.read(shipped)
    report = check_consistency(trace)
    assert report.ok, report.problems
    args[-1] = str(tmp_path / shipped.name)
    assert main(args) == 0
    fresh = Trace.read(args[-1])
    pd.testing.assert_frame_equal(trace.ops, fresh.ops)
    assert trace.meta.groups == fresh.meta.groups and trace.meta.roles == fresh.meta.roles
    old, new = dict(trace.meta.workload), dict(fresh.meta.workload)
    assert old.pop("command").endswith(shipped.name) and new.pop("command").endswith(shipped.name)
    assert old == new
