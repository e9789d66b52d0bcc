"""``dynamiccl bench``'s judging of figures (the benchmarks themselves run under ``dynamiccl bench``)."""

from __future__ import annotations

import pytest

from dynamiccl.bench import BENCHMARKS, _figure


def test_a_star_judges_the_worst_class_and_skips_classes_without_the_figure():
    summary = {"classes": {"ada/pcie": {"world": {"small": 0.05, "large": 0.01}},
                           "hopper/nvlink": {"world": {"small": 0.56, "large": None}},
                           "blackwell/nvswitch+ib": {"world": {"small": None, "large": 0.004}}}}
    assert _figure(summary, "classes.*.world.small") == 0.56
    assert _figure(summary, "classes.*.world.large") == 0.01
    bench = BENCHMARKS["calibration-error-small"]
    assert not bench.judge(_figure(summary, bench.rate_key))  # one class over 20%: MISSED
    with pytest.raises(ValueError):
        _figure({"classes": {"x": {"world": {"small": None}}}}, "classes.*.world.small")
    with pytest.raises(KeyError):
        _figure(summary, "classes.*.nccl_model.small")


def test_calibration_benchmarks_judge_leave_one_table_out_on_the_default_set_with_the_issue_targets():
    for name, key, target in (("calibration-error", "classes.*.world.large", 0.10),
                              ("calibration-error-small", "classes.*.world.small", 0.20)):
        bench = BENCHMARKS[name]
        assert "--leave-one-out" in bench.args and "--measurements" not in bench.args
        assert (bench.rate_key, bench.max_value) == (key, target)


# --- where benchmarks run (issue 15, item 6) -----------------------------------------------------------

def test_every_benchmark_names_files_the_repository_has():
    from dynamiccl.bench import REPOSITORY

    assert (REPOSITORY / "pyproject.toml").is_file() and (REPOSITORY / "dynamiccl").is_dir()
    named = {path for bench in BENCHMARKS.values() for path in bench.repository_files()}
    assert {"traces/llama3.1-405b_tp8-pp16-dp64.parquet", "experiments/default.toml",
            "experiments/default/run/policy.zip"} <= named
    for path in named:
        assert (REPOSITORY / path).exists(), path


def test_a_benchmark_runs_in_the_repository_from_any_working_directory(tmp_path, monkeypatch):
    from dynamiccl.bench import Benchmark, run_benchmark

    monkeypatch.chdir(tmp_path)  # where `traces/...` does not exist
    bench = Benchmark("summary", "a repository trace's summary", ("trace", "summary", "traces/ref-pp2-dp2.parquet",
                                                                  "--json"), rate_key="dp.allreduce.count", min_rate=1)
    result = run_benchmark(bench, repeat=1)
    assert result["within_target"] and result["value"] >= 1


def test_a_failing_benchmark_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    import dynamiccl.bench as bench_module
    from dynamiccl.bench import Benchmark, run_benchmarks

    broken = Benchmark("broken", "a command that fails", ("trace", "summary", "{tmp}/missing.parquet"), target_s=60)
    fine = Benchmark("fine", "a command that works", ("models",), target_s=600)
    monkeypatch.setattr(bench_module, "BENCHMARKS", {"broken": broken, "fine": fine})
    assert run_benchmarks(["broken", "fine"], repeat=1, record_dir=tmp_path) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "exited with status 2" in out and "missing.parquet" in out
    assert "\nfine " in out and not (tmp_path / "broken.json").exists() and (tmp_path / "fine.json").is_file()


def test_a_missing_repository_file_is_named_before_anything_runs(tmp_path, monkeypatch):
    import dynamiccl.bench as bench_module
    from dynamiccl.bench import Benchmark, run_benchmarks
    from dynamiccl.errors import InputError

    gone = Benchmark("gone", "a trace the repository lacks", ("replay", "traces/gone.parquet"), target_s=1)
    monkeypatch.setattr(bench_module, "BENCHMARKS", {"gone": gone})
    with pytest.raises(InputError, match=r"traces/gone\.parquet: missing: benchmark gone needs"):
        run_benchmarks(["gone"], repeat=1)
