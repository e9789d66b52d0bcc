"""The traces in traces/ are valid, fit together, and are exactly what their README line regenerates."""

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


def test_every_shipped_trace_has_a_readme_line():
    listed = {Path(shlex.split(cmd)[-1]).name for cmd in COMMANDS}
    shipped = {p.name for p in (ROOT / "traces").glob("*.parquet")}
    assert len(shipped) >= 4
    assert shipped == listed


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
