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
