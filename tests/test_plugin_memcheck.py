"""The tuner plugin under valgrind and under AddressSanitizer + UBSan.

``tests/c/test_tuner.c`` drives every ABI struct (v2..v6) as NCCL does -- tables valid, missing,
unreadable, invalid and empty; thousands of getCollInfo calls compared with a reference lookup;
5,000-rule and heavily overlapping tables; threads -- and exits non-zero on any failed check.
It runs under valgrind on both libraries as built (``build_plugin``): the instrumented one, whose
reset and counters the full run needs, and the production one NCCL loads (one table for the whole
process: it has no reset); and compiled together with the instrumented plugin's C files under
``-fsanitize=address,undefined``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from dynamiccl.plugin.build import INSTRUMENTED, compile_sources

ROOT = Path(__file__).resolve().parents[1]
TEST_SOURCE = ROOT / "tests" / "c" / "test_tuner.c"
WARNINGS = ("-std=c11", "-Wall", "-Wextra", "-Werror")
CALLS = "1500"  # getCollInfo calls per table and ABI version (about 4 s under valgrind)


def load_fuzz_module():
    """experiments/plugin/fuzz.py (not a package): the sanitizer flags and the fuzzing harness."""
    path = ROOT / "experiments" / "plugin" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("dynamiccl_experiments_fuzz", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(command: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def _report(done: subprocess.CompletedProcess) -> str:
    return f"exit status {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-6000:]}"


@pytest.mark.skipif(shutil.which("valgrind") is None,
                    reason="valgrind is not installed (apt install valgrind); the ASan/UBSan run still checks memory")
@pytest.mark.parametrize("variant", ["instrumented", "production"])
def test_plugin_clean_under_valgrind(plugin_path, instrumented_path, tmp_path, variant):
    program = compile_sources(tmp_path / "test_tuner", [TEST_SOURCE],
                              ("-O1", "-g", *WARNINGS, "-Wl,--no-as-needed", "-ldl"))
    plugin = [str(instrumented_path)] if variant == "instrumented" else \
        ["--production", str(plugin_path), str(instrumented_path)]
    done = _run(["valgrind", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
                 str(program), *plugin, str(tmp_path), CALLS])
    assert done.returncode == 0, _report(done)
    assert "0 failures" in done.stdout and "ERROR SUMMARY: 0 errors" in done.stderr, _report(done)


def test_plugin_clean_under_asan_and_ubsan(tmp_path):
    fuzz = load_fuzz_module()
    program = compile_sources(tmp_path / "test_tuner_asan", [TEST_SOURCE, *INSTRUMENTED.source_paths()],
                              (*fuzz.SANITIZE_FLAGS, *INSTRUMENTED.defines, "-rdynamic"))
    done = _run([str(program), "--self", str(tmp_path), CALLS], env=fuzz.sanitizer_env())
    assert done.returncode == 0, _report(done)
    assert "0 failures" in done.stdout, _report(done)
