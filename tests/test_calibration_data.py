"""The calibration set ships with the package, and no command writes package data (issue 15, items 5
and 6).

The set is found relative to the repository (``dynamiccl/data/calibration``), never through an
absolute path or a directory beside the clone, and a missing file fails these tests rather than
skipping them. The copies are the files the shipped fit and the recorded validation were made on:
their sha256 prefixes are the ones those records name.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from dynamiccl.cli import main
from dynamiccl.costmodel import world
from dynamiccl.costmodel.measurements import (CALIBRATION_DIR, DEFAULT_MEASUREMENT_FILES, default_measurement_paths,
                                              load_measurement_files)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "dynamiccl" / "data" / "calibration"
NAMED_DIGEST = re.compile(r"([\w.-]+\.csv) \(sha256 ([0-9a-f]{12})\)")


def test_the_calibration_set_is_package_data_inside_the_repository():
    assert CALIBRATION_DIR == SHIPPED
    assert default_measurement_paths() == [SHIPPED / name for name in DEFAULT_MEASUREMENT_FILES]
    assert (SHIPPED / "README.md").is_file()  # the sources of every table
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for path in SHIPPED.iterdir():
        relative = str(path.relative_to(REPO / "dynamiccl"))
        assert any(fnmatch.fnmatch(relative, glob) for glob in package_data["dynamiccl"]), relative
    tables = load_measurement_files(default_measurement_paths())
    assert (len(tables), sum(len(t.time_us) for t in tables)) == (16, 288)


def test_the_shipped_files_are_the_ones_the_fit_and_the_validation_record_name():
    digests = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12] for path in default_measurement_paths()}
    shipped_fit = json.loads((REPO / "dynamiccl" / "costmodel" / "world_params.json").read_text())["provenance"]
    recorded = (REPO / "experiments" / "calibration" / "validate.txt").read_text().splitlines()[0]
    for record in (shipped_fit, recorded):
        assert dict(NAMED_DIGEST.findall(record)) == digests, record


def test_validate_reads_the_shipped_set_from_any_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "--plot", "", "--json", "v.json"]) == 0
    summary = json.loads((tmp_path / "v.json").read_text())
    assert summary["overall"]["world"]["rows"] == 288


# --- calibrate writes only where it is told; a user's fit is used where it is asked for ---------------

@pytest.fixture
def shipped_params(tmp_path, monkeypatch) -> Path:
    """A copy of world_params.json standing in for the package's, so that no run can touch the real one."""
    copy = tmp_path / "package" / "world_params.json"
    copy.parent.mkdir()
    copy.write_bytes(world.PARAMS_PATH.read_bytes())
    monkeypatch.setattr(world, "PARAMS_PATH", copy)
    return copy


def test_calibrate_without_an_output_is_refused_and_writes_nothing(shipped_params, capsys):
    before = shipped_params.read_bytes()
    with pytest.raises(SystemExit) as stopped:
        main(["calibrate"])
    assert stopped.value.code == 2 and "-o/--output" in capsys.readouterr().err
    assert shipped_params.read_bytes() == before


def test_calibrate_refuses_to_write_into_the_package(tmp_path, capsys):
    before = world.PARAMS_PATH.read_bytes()
    assert main(["calibrate", "-o", str(world.PARAMS_PATH)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynamiccl: error: -o: ") and "never written" in err and "DYNAMICCL_WORLD_PARAMS" in err
    assert world.PARAMS_PATH.read_bytes() == before


def test_a_users_parameters_are_used_when_DYNAMICCL_WORLD_PARAMS_names_them(tmp_path, monkeypatch, capsys):
    mine = tmp_path / "my_params.json"
    slow = replace(world.default_params(), base_us=[39.0, 39.0, 39.0], provenance="my fit")
    mine.write_text(slow.to_json())
    argv = ["simulate", "--env", "dgx-h100", "--coll", "allreduce", "-b", "8", "-e", "8", "--json"]

    def time_us() -> float:
        assert main(argv) == 0
        return json.loads(capsys.readouterr().out)[0]["time_us"]

    shipped = time_us()
    monkeypatch.setenv(world.PARAMS_ENV, str(mine))
    assert world.default_params().provenance == f"my fit [DYNAMICCL_WORLD_PARAMS={mine}]"  # reports name it
    assert time_us() > shipped + 20  # 39 us base latency instead of the shipped fit's
    assert main(argv[:-1]) == 0 and "my fit [DYNAMICCL_WORLD_PARAMS=" in capsys.readouterr().out
    monkeypatch.setenv(world.PARAMS_ENV, str(tmp_path / "missing.json"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and "DYNAMICCL_WORLD_PARAMS" in err and len(err.splitlines()) == 1
    monkeypatch.delenv(world.PARAMS_ENV)
    assert time_us() == shipped
