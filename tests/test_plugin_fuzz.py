"""A short bounded fuzzing run of the plugin's table parser, and the Python mirror against it.

``experiments/plugin/fuzz.py`` builds ``tests/c/fuzz_table.c`` with the plugin's C files under
AddressSanitizer + UBSan, mutates seed tables for a few seconds (fixed RNG seed) and keeps every
seed and every N-th input with the C parser's verdict; ``dynamiccl.table.plugin_text.read`` must agree on each
(accept/reject, rule and step counts, the line of the error), and on a table past the plugin's
limit of 4,096 step lines. The recorded 5-minute run is
``experiments/plugin/fuzz.json``.
"""

from __future__ import annotations

import pytest

from dynamiccl.plugin.build import PluginBuildError
from test_plugin_memcheck import load_fuzz_module

SECONDS = 5.0


def test_fuzzing_finds_no_crash_and_no_disagreement(tmp_path, instrumented_path):
    fuzz = load_fuzz_module()
    try:
        result = fuzz.fuzz(SECONDS, rng_seed=7, every=40, max_samples=800, work_dir=tmp_path, tables=30,
                           plugin=instrumented_path)
    except PluginBuildError as exc:
        pytest.fail(f"the sanitized fuzzer did not build: {exc}")
    assert result["crashes"] == 0, result.get("report")
    assert result["executions"] > 10 * result["seed_files"]
    assert result["differential_samples"] >= result["seed_files"] + 100
    assert 0 < result["differential_accepted"] < result["differential_samples"]  # both verdicts checked
    assert result["disagreements"] == 0, result["disagreement_examples"]
    assert result["error_line_disagreements"] == 0, result["disagreement_examples"]
