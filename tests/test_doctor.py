"""``dynamiccl doctor`` on this machine (no GPU, probably no NCCL) and with NCCL libraries we build:
a C library exporting ``ncclGetVersion`` stands in for libnccl.so.2, found by --nccl, by
LD_LIBRARY_PATH, and inside an nvidia-nccl-cu12 wheel layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynamiccl.doctor import STATUSES, abi_story, find_nccl, run_doctor, tuner_abi_for, version_from_code
from dynamiccl.nccl import Algorithm as A, Func, Protocol as P
from dynamiccl.plugin import PLUGIN_FILE_NAME
from dynamiccl.plugin.build import compile_sources, find_compiler
from dynamiccl.table import MAX_BYTES, DecisionTable, Rule, StepShape, save

FAKE_NCCL = "int ncclGetVersion(int* v) { *v = %d; return 0; }\n"


@pytest.fixture
def env(cache, monkeypatch) -> dict[str, str]:
    """A clean environment using the session's plugin cache, for in-process and child doctors."""
    monkeypatch.setenv("DYNAMICCL_CACHE_DIR", str(cache))
    for name in ("NCCL_TUNER_PLUGIN", "DYNAMICCL_TUNER_TABLE", "NCCL_ALGO", "NCCL_PROTO", "LD_LIBRARY_PATH"):
        monkeypatch.delenv(name, raising=False)
    return dict(os.environ)


def fake_nccl(directory: Path, code: int) -> Path:
    """A libnccl.so.2 whose ncclGetVersion reports ``code``."""
    source = directory / "fake_nccl.c"
    source.write_text(FAKE_NCCL % code)
    return compile_sources(directory / "libnccl.so.2", [source], ("-shared", "-fPIC", "-O0"), find_compiler())


def doctor(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynamiccl", "doctor", *args], capture_output=True, text=True,
                          env=env, timeout=240)


def checks(report_json: dict, name: str) -> list[dict]:
    return [c for c in report_json["checks"] if c["name"] == name]


def good_table(path: Path) -> Path:
    table = DecisionTable(rules=(Rule(coll=Func.ALLREDUCE, min_bytes=0, max_bytes=MAX_BYTES, position=1,
                                      algorithm=A.RING, protocol=P.LL128, channels=8),),
                          steps=(StepShape(8, 1, 12, Func.ALLREDUCE, 4096),),
                          job_env={"NCCL_NCHANNELS_PER_NET_PEER": 4})
    save(table, path)
    return path


# --- the version -> ABI mapping --------------------------------------------------------------------------

@pytest.mark.parametrize("version, abi", [
    ((2, 18, 6), None), ((2, 19, 3), None), ((2, 20, 5), None), ((2, 21, 5), 2), ((2, 22, 2), 2), ((2, 22, 3), 3),
    ((2, 23, 4), 3), ((2, 24, 3), 4), ((2, 27, 7), 4), ((2, 28, 3), 5), ((2, 29, 7), 5), ((2, 30, 3), 6),
    ((2, 31, 0), 6), ((3, 0, 0), 6)])
def test_each_nccl_version_looks_up_one_tuner_abi(version, abi):
    assert tuner_abi_for(version) == abi


def test_version_codes_and_the_abi_story():
    assert version_from_code(22304) == (2, 23, 4)
    assert version_from_code(23003) == (2, 30, 3)
    assert version_from_code(2708) == (2, 7, 8)  # before 2.9: major*1000 + minor*100 + patch
    assert abi_story((2, 28, 9)) == "NCCL 2.28.9 looks up ncclTunerPlugin_v5 first (then older ones)"
    assert "only loads tuner ABI v1, which dynamiccl does not support" in abi_story((2, 20, 3))
    assert "has no tuner plugin interface" in abi_story((2, 18, 1))


# --- this machine ---------------------------------------------------------------------------------------

def test_doctor_here_reports_nccl_and_still_checks_plugin_and_table(tmp_path, env):
    table = good_table(tmp_path / "table.json")
    done = doctor("--table", str(table), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    nccl_lines = [line.split() for line in out.splitlines() if line.split()[1:2] == ["nccl"]]
    if not find_nccl(env=env):  # the usual case on this CPU-only machine
        assert nccl_lines[0][0] == "missing" and "no libnccl.so.2 found" in out
    assert "is a CPU build: it has no NCCL" in out or "uses NCCL" in out
    assert "exports tuner ABI v6, v5, v4, v3, v2" in out
    assert f"{table}: 1 rule(s), 1 with a position; the plugin's parser accepts it (1 rule(s), 1 step line(s)" in out
    assert "8 rank(s) on 1 node(s): 12 call(s) per step, anchor allreduce 4096 bytes" in out
    assert "NCCL_NCHANNELS_PER_NET_PEER=4" in out
    assert "dynamiccl launch would say:\n  NCCL_TUNER_PLUGIN=" in out
    assert "tip: NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,TUNING" in out
    assert out.splitlines()[-1].startswith("summary: ") and "0 fail" in out.splitlines()[-1]


@pytest.mark.parametrize("name, content, where", [
    ("bad.csv", "allreduce,0,100,ring,ll,-1,-1,-1\nallreduce,0,100,rong,ll,-1,-1,-1\n",
     "line 2, field algorithm: unknown algorithm 'rong'"),
    ("bad.txt", "dynamiccl-tuner-table 1\n# ok\nrule allreduce 0 10 -1 -1 -1 -1 -1 ring ll 99\n",
     "line 3, field channels: '99'; expected -1 .. 64"),
])
def test_an_invalid_table_fails_with_exit_1_naming_file_and_line(tmp_path, env, name, content, where):
    bad = tmp_path / name
    bad.write_text(content)
    done = doctor("--table", str(bad), env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    fail = [line for line in done.stdout.splitlines() if line.split()[:1] == ["fail"]]
    assert len(fail) == 1 and fail[0].split()[1] == "table" and f"{bad}: {where}" in fail[0]
    assert "would run the job untuned" in done.stdout


def test_json_report(tmp_path, env):
    done = doctor("--json", "--table", str(good_table(tmp_path / "t.json")), env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {c["status"] for c in report["checks"]} <= set(STATUSES)
    assert report["exit_status"] == 0 and sum(report["summary"].values()) == len(report["checks"])
    assert report["plugin"]["abi_versions"] == [6, 5, 4, 3, 2] and report["plugin"]["size_bytes"] > 0
    assert report["table"]["rules"] == 1 and report["table"]["job_env"] == {"NCCL_NCHANNELS_PER_NET_PEER": 4}
    assert report["launch"]["tuned"] and report["launch"]["settings"]["NCCL_TUNER_PLUGIN"] == report["plugin"]["path"]


def test_the_plugin_given_to_nccl_must_be_the_production_library(env, plugin_path, instrumented_path):
    report = run_doctor(plugin=plugin_path, env=env)
    assert [c.status for c in report.checks if c.name == "plugin"] == ["ok"]
    assert report.plugin["instrumented_path"] == str(instrumented_path)  # its parser checks tables
    report = run_doctor(plugin=instrumented_path, env=env)
    plugin_checks = [c for c in report.checks if c.name == "plugin"]
    assert [c.status for c in plugin_checks] == ["ok", "warn"]
    assert "is the instrumented variant" in plugin_checks[1].detail and PLUGIN_FILE_NAME in plugin_checks[1].detail


# --- NCCL libraries we build -------------------------------------------------------------------------------

def test_a_named_nccl_gives_its_version_and_abi(tmp_path, env):
    lib = fake_nccl(tmp_path, 22304)
    done = doctor("--json", "--nccl", str(lib), env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    named = next(entry for entry in report["nccl"] if entry["source"] == "--nccl")
    assert (named["path"], named["version"], named["version_from"], named["tuner_abi"]) == \
        (str(lib), [2, 23, 4], "ncclGetVersion", 3)
    assert {"name": "tuner abi", "status": "ok", "detail": "NCCL 2.23.4 looks up ncclTunerPlugin_v3 first (then "
            "older ones): the plugin exports it"} in report["checks"]


def test_nccl_on_ld_library_path_and_an_unsupported_version(tmp_path, env):
    lib = fake_nccl(tmp_path, 22005)  # 2.20.5: tuner ABI v1 only
    report = run_doctor(env={**env, "LD_LIBRARY_PATH": str(tmp_path)})
    found = [entry for entry in report.nccl if entry.source == "LD_LIBRARY_PATH"]
    assert [(entry.path, entry.version) for entry in found] == [(str(lib), (2, 20, 5))]
    story = [c for c in report.checks if c.name == "tuner abi" and "2.20.5" in c.detail]
    assert story[0].status == "warn" and "dynamiccl does not support" in story[0].detail
    assert report.exit_status == 0


def test_a_wheel_that_cannot_be_loaded_falls_back_to_its_metadata(tmp_path, env, monkeypatch):
    site = tmp_path / "site"
    library = site / "nvidia" / "nccl" / "lib" / "libnccl.so.2"
    library.parent.mkdir(parents=True)
    library.write_text("not an ELF file: as if its CUDA libraries were missing")
    info = site / "nvidia_nccl_cu12-2.28.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nvidia-nccl-cu12\nVersion: 2.28.3\n")
    (info / "RECORD").write_text("nvidia/nccl/lib/libnccl.so.2,,\nnvidia_nccl_cu12-2.28.3.dist-info/METADATA,,\n")
    monkeypatch.syspath_prepend(str(site))
    report = run_doctor(env=env)
    wheel = next(entry for entry in report.nccl if entry.source == "wheel nvidia-nccl-cu12")
    assert (wheel.path, wheel.version, wheel.version_from) == (str(library), (2, 28, 3), "wheel metadata")
    assert wheel.load_error
    line = next(c for c in report.checks if c.name == "nccl" and str(library) in c.detail)
    assert line.status == "warn" and "NCCL 2.28.3 (from the wheel metadata)" in line.detail
    assert any(c.status == "ok" and "ncclTunerPlugin_v5" in c.detail for c in report.checks if c.name == "tuner abi")


def test_a_missing_named_nccl_fails(tmp_path, env):
    report = run_doctor(nccl=[tmp_path / "libnccl.so.2"], env=env)
    assert [c.status for c in report.checks if c.name == "nccl"][0] == "fail" and report.exit_status == 1


# --- the environment and missing tools --------------------------------------------------------------------

def test_settings_that_defeat_the_tuner_are_warned_about(tmp_path, env):
    report = run_doctor(table=good_table(tmp_path / "t.json"),
                        env={**env, "NCCL_TUNER_PLUGIN": "libnccl-tuner-other.so", "NCCL_ALGO": "ring"})
    statuses = {c.name: c.status for c in report.checks}
    assert statuses["NCCL_TUNER_PLUGIN"] == "warn" and statuses["NCCL_ALGO"] == "warn"
    assert "NCCL_PROTO" not in statuses
    assert any("replaced NCCL_TUNER_PLUGIN=libnccl-tuner-other.so" in line for line in report.launch["lines"])
    assert report.exit_status == 0


def test_without_a_compiler_the_table_is_still_checked(tmp_path, env, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent")
    monkeypatch.setenv("DYNAMICCL_CACHE_DIR", str(tmp_path / "empty-cache"))
    report = run_doctor(table=good_table(tmp_path / "t.json"), env=env)
    statuses = {c.name: (c.status, c.detail) for c in report.checks}
    assert statuses["compiler"][0] == "missing" and "CC='/nonexistent'" in statuses["compiler"][1]
    assert statuses["plugin"][0] == "missing"
    assert statuses["table"] == ("ok", f"{tmp_path / 't.json'}: 1 rule(s), 1 with a position; the plugin's "
                                       "parser was not run (no plugin)")
    assert statuses["launch"][0] == "warn" and not report.launch["tuned"]
    assert report.exit_status == 0


def test_launch_names_the_nccl_it_finds_and_the_abi_it_looks_up(tmp_path, env):
    from dynamiccl.launcher import plan_launch

    fake_nccl(tmp_path, 22304)  # NCCL 2.23.4: tuner ABI v3 (NVIDIA/nccl ext-tuner)
    table = good_table(tmp_path / "t.json")
    plan = plan_launch(table, base_env={**env, "LD_LIBRARY_PATH": str(tmp_path)})
    line = next(line for line in plan.lines if line.startswith("NCCL "))
    assert "NCCL 2.23.4 (LD_LIBRARY_PATH) looks up tuner ABI v3" in line
    assert "the plugin exports tuner ABI v6" in line
    bare = plan_launch(table, base_env=env)
    assert any(line.startswith("NCCL: none found from here") for line in bare.lines) or \
        any(line.startswith("NCCL ") and "looks up tuner ABI" in line for line in bare.lines)
