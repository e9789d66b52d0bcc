"""``dynamiccl verify``: the statistics on simulated runs (false positives, power), the step timer, and
the command on real gloo jobs (tests/verify_job.py under torchrun): a null run of a real table, an
injected slowdown, and tables that could not be applied; which table --keep keeps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dynamiccl.cli import main
from dynamiccl.errors import InputError
from dynamiccl.report.verify import load_verify_record
from dynamiccl.nccl import Algorithm as A, Func, Protocol as P
from dynamiccl.profiler.steptimer import StepTimer
from dynamiccl.table import MAX_BYTES, DecisionTable, Rule, save
from dynamiccl.verify import stats
from dynamiccl.verify.run import FORMAT, NOT_APPLIED, SLOWER_STATUS, keep_table, read_rank_file

ROOT = Path(__file__).resolve().parents[1]

JOB = Path(__file__).resolve().parent / "verify_job.py"
OUR_VARIABLES = ("NCCL_TUNER_PLUGIN", "DYNAMICCL_TUNER_TABLE", "DYNAMICCL_STEP_TIMES_DIR", "DYNAMICCL_VERIFY_ARM",
                 "DYNAMICCL_PROFILE_DIR", "NCCL_ALGO", "NCCL_PROTO")
WARMUP, STEPS = 3, 20


# --- the statistics on simulated runs -----------------------------------------------------------------

# Runs like real ones: a run's level moves by RUN_SD from run to run, a drift linear in time of up to
# DRIFT over the whole A/B/A, per-step noise STEP_CV per rank, 2% of steps 30% slower (a hiccup),
# warm-up steps 50% slower. Effect: the B arms' level is that much higher (a slowdown).
RUN_SD, DRIFT, STEP_CV, RANKS = 0.005, 0.01, 0.03, 4


def simulated_arms(rng: np.random.Generator, order: str, effect: float, run_sd: float = RUN_SD,
                   steps: int = 30) -> dict[str, np.ndarray]:
    names = stats.arms_of(order)
    slope = rng.uniform(-DRIFT, DRIFT)
    arms = {}
    for index, name in enumerate(names):
        level = 1.0 + rng.normal(0, run_sd) + slope * index / (len(names) - 1) + (effect if name[0] == "B" else 0)
        times = 0.5 * level * np.exp(rng.normal(0, STEP_CV, (WARMUP + steps, RANKS)))
        times[:WARMUP] *= 1.5
        times[rng.random(times.shape) < 0.02] *= 1.3
        arms[name] = times
    return arms


def verdicts(order: str, effect: float, runs: int, seed: int, run_sd: float = RUN_SD) -> Counter:
    rng = np.random.default_rng(seed)
    return Counter(stats.compare(simulated_arms(rng, order, effect, run_sd), WARMUP, 30).verdict
                   for _ in range(runs))


@pytest.mark.parametrize("order, runs", [("ABA", 300), ("ABBA", 150)])
def test_false_positive_rate_over_simulated_null_runs_is_at_most_5_percent(order, runs):
    counts = verdicts(order, 0.0, runs, seed=1)
    false_positives = counts[stats.FASTER] + counts[stats.SLOWER]
    assert false_positives / runs <= 0.05, counts


def test_runs_far_noisier_than_stated_widen_the_interval():
    # Runs whose level moves by 10% (20x the stated 0.5%): one or two pairs of repeated arms cannot
    # measure that well, so the rate stays above 5%, but far below the ~33% (ABA) / ~18% (ABBA) of
    # an interval that took the repeated arms' change at face value.
    for order, bound in (("ABA", 0.15), ("ABBA", 0.08)):
        counts = verdicts(order, 0.0, 150, seed=3, run_sd=0.10)
        assert (counts[stats.FASTER] + counts[stats.SLOWER]) / 150 <= bound, (order, counts)
    assert stats.level_sd_of([0.01], 0.005) == pytest.approx(0.01 / 2 ** 0.5)  # consistent: taken as it is
    assert stats.level_sd_of([0.10], 0.005) == pytest.approx(0.10 / 2 ** 0.5 * 12.7062 / 1.959964)


@pytest.mark.parametrize("order", ["ABA", "ABBA"])
def test_power_against_a_4_percent_slowdown_is_at_least_80_percent(order):
    # 30 analysed steps, 4 ranks, step noise 3%, run-to-run SD 0.5%, drift up to 1%.
    counts = verdicts(order, 0.04, 100, seed=2)
    assert counts[stats.SLOWER] >= 80 and counts[stats.FASTER] == 0, counts


def test_the_comparison_step_by_step():
    # Two ranks; rank 1 is the slow one at every step but the first analysed.
    a1 = np.array([[9.0, 9.0], [1.0, 1.2], [1.1, 1.0], [1.0, 1.0]])
    arms = {"A1": a1, "B1": a1 * 0.5, "A2": a1 * 1.02}
    result = stats.compare(arms, warmup_steps=1, steps=3)
    assert [arm.step_times_s for arm in result.arms][0] == (1.2, 1.1, 1.0)
    assert result.arms[0].median_s == pytest.approx(1.1) and result.arms[0].recorded_steps == 4
    assert result.drift == pytest.approx(0.02)
    assert result.ratio == pytest.approx(0.55 / ((1.1 + 1.1 * 1.02) / 2))
    assert result.ci_low <= result.delta <= result.ci_high
    assert result.verdict == stats.FASTER and result.sentence().startswith("faster: ")
    again = stats.compare(arms, warmup_steps=1, steps=3)
    assert (again.ci_low, again.ci_high) == (result.ci_low, result.ci_high)  # seeded


def test_a_delta_inside_the_control_drift_is_no_difference():
    steady = np.ones((10, 2))
    arms = {"A1": steady, "B1": steady * 1.05, "A2": steady * 1.08}  # B is 1.04x the A mean; A drifted 8%
    result = stats.compare(arms, 0, 10, run_to_run_sd=0.0)
    assert result.delta == pytest.approx(1.05 / 1.04 - 1) and result.verdict == stats.NO_DIFFERENCE
    assert stats.decide(0.03, 0.01, 0.05, drift=0.02) == stats.SLOWER
    assert stats.decide(0.03, 0.01, 0.05, drift=-0.04) == stats.NO_DIFFERENCE
    assert stats.decide(-0.03, -0.05, 0.001, drift=0.0) == stats.NO_DIFFERENCE


def test_too_few_steps_names_the_arm_and_what_was_recorded():
    with pytest.raises(InputError, match=r"arm B1: the job recorded 7 step\(s\); verify needs at least 8 "
                                         r"\(3 warm-up \+ 5 analysed\)"):
        stats.compare({"A1": np.ones((9, 2)), "B1": np.ones((7, 2)), "A2": np.ones((9, 2))}, 3, 5)
    with pytest.raises(InputError, match="--order"):
        stats.arms_of("AB")


# --- the step timer ------------------------------------------------------------------------------------------

def test_the_step_timer_writes_one_rank_file_of_its_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("DYNAMICCL_VERIFY_ARM", "B2")
    timer = StepTimer(str(tmp_path))
    timer.write()
    assert list(tmp_path.iterdir()) == []  # no optimizer step: no file (torchrun's agent)
    for _ in range(3):
        timer.boundary()
    timer.write()
    record = read_rank_file(tmp_path / "rank3.json")
    assert (record["rank"], record["world_size"], record["arm"], record["clock"]) == (3, 4, "B2", "perf_counter")
    assert len(record["step_times_s"]) == 3 and record["backend"] is None
    (tmp_path / "rank3.json").write_text(json.dumps(record | {"step_times_s": [0.1, "x"]}))
    with pytest.raises(InputError, match="rank3.json: step_times_s: expected a list of step times"):
        read_rank_file(tmp_path / "rank3.json")


class RecordedEvent:
    """Stands in for a torch.cuda.Event already recorded at ``at_ms`` on the GPU's clock."""

    def __init__(self, at_ms: float):
        self.at_ms = at_ms

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: "RecordedEvent") -> float:
        return end.at_ms - self.at_ms


def test_gpu_step_times_come_from_the_events_once_cuda_is_in_use(tmp_path):
    timer = StepTimer(str(tmp_path))
    timer.start_s, timer.boundaries_s = 100.0, [101.0, 101.5, 101.75, 102.0]  # CPU clock, seconds
    # CUDA was first used in step 2: events at boundaries 2, 3 and 4 (GPU clock, milliseconds)
    timer.events, timer.first_event_step = [RecordedEvent(10.0), RecordedEvent(40.0), RecordedEvent(100.0)], 1
    assert timer.step_times_s() == ([1.0, 0.5, 0.03, 0.06], "cuda-event")
    timer.cuda_problem = "RuntimeError: CUDA error"  # events unusable: the CPU clock for every step
    assert timer.step_times_s() == ([1.0, 0.5, 0.25, 0.25], "perf_counter")


# --- the command on real jobs ------------------------------------------------------------------------------------

@pytest.fixture
def table(tmp_path) -> Path:
    path = tmp_path / "table.json"
    save(DecisionTable(rules=(Rule(coll=Func.ALLREDUCE, min_bytes=0, max_bytes=MAX_BYTES, algorithm=A.RING,
                                   protocol=P.SIMPLE, channels=4),)), path)
    return path


def verify(*args: str, cache: Path, cwd: Path, job: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
    env |= {"DYNAMICCL_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dynamiccl", "verify", *args, "--", *job], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def torchrun_job(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(JOB),
            "--steps", str(WARMUP + STEPS), *args]


def common(out: Path) -> list[str]:
    # This shared CPU machine's runs of the job differ by up to ~20% (other processes compete for its
    # cores), not the 0.5% of a quiet GPU allocation: the tests state it, as a user on it would.
    return ["--warmup-steps", str(WARMUP), "--steps", str(STEPS), "--run-to-run-sd", "20%", "-o", str(out)]


def test_a_null_run_of_a_real_table_on_gloo_is_no_difference(tmp_path, cache, table):
    out = tmp_path / "out"
    done = verify("--table", str(table), *common(out), cache=cache, cwd=tmp_path, job=torchrun_job())
    assert done.returncode == 0, done.stderr[-4000:]
    record = json.loads((out / "verify.json").read_text())
    assert record["verdict"] == stats.NO_DIFFERENCE, record["sentence"]
    assert [arm["name"] for arm in record["comparison"]["arms"]] == ["A1", "B1", "A2"]
    assert all(arm["ranks"] == 2 and len(arm["step_times_s"]) == STEPS for arm in record["comparison"]["arms"])
    for arm in ("A1", "B1", "A2"):  # every rank of every arm saw its arm's name and only B the plugin
        for rank in (0, 1):
            rank_record = json.loads((out / "arms" / arm / f"rank{rank}.json").read_text())
            assert rank_record["arm"] == arm and rank_record["backend"] == "gloo"
            assert (rank_record["tuner_plugin"] is not None) == arm.startswith("B")
    assert record["nccl"]["backends"] == ["gloo"] and record["nccl"]["plugin_abi_versions"]
    assert "backend gloo: NCCL not used" in done.stderr and f"table {table}" in done.stderr
    assert "no difference detectable at this noise" in done.stdout
    assert (out / "plots" / "verify-step-times.png").read_bytes()[:4] == b"\x89PNG"
    assert "![per-step times](plots/verify-step-times.png)" in (out / "verify.md").read_text()
    assert 'id="plot-verify-step-times"' in (out / "verify.html").read_text()
    # The same record as a section of `dynamiccl report --verify`, beside a (recorded) evaluation.
    results = tmp_path / "results.parquet"
    shutil.copy(ROOT / "tests" / "fixtures" / "results" / "before-search-2026-12-02.parquet", results)
    assert main(["report", str(results), "--verify", str(out / "verify.json"), "-o", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Verify on the job: A/B runs" in page and 'id="plot-verify-step-times"' in page
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert f"**{record['sentence']}**" in summary and "verify (measured on the job)" in page


def test_an_injected_slowdown_is_slower_fails_the_guard_and_is_not_kept(tmp_path, cache, table):
    out, keep = tmp_path / "out", tmp_path / "kept.json"
    # One process, no torchrun (the null run above covers the distributed job): the arms' timing and
    # the verdict are what this test is about, and each arm starts one interpreter instead of three.
    job = [sys.executable, str(JOB), "--steps", str(WARMUP + STEPS), "--slow-arm", "B", "--slow-ms", "60"]
    done = verify("--table", str(table), *common(out), "--fail-if-slower", "--keep", str(keep), cache=cache,
                  cwd=tmp_path, job=job)
    assert done.returncode == SLOWER_STATUS, done.stderr[-4000:]
    record = json.loads((out / "verify.json").read_text())
    assert record["verdict"] == stats.SLOWER and record["comparison"]["ci_low"] > 0
    assert not keep.exists() and record["kept"] is None
    assert f"not keeping the table as {keep}: the verdict is 'slower': a table that made the job slower is never " \
           "kept" in done.stderr
    assert f"--fail-if-slower: exit status {SLOWER_STATUS}" in done.stderr


@pytest.mark.parametrize("verdict", stats.VERDICTS)
def test_keep_copies_the_table_only_when_the_job_was_faster(tmp_path, table, capsys, verdict):
    keep = tmp_path / "kept" / "table.json"
    kept = keep_table(table, keep, verdict)
    if verdict == stats.FASTER:
        assert kept == str(keep) and keep.read_bytes() == table.read_bytes()
    else:
        assert kept is None and not keep.exists()
        assert f"not keeping the table as {keep}: the verdict is {verdict!r}" in capsys.readouterr().err


def test_a_table_that_cannot_be_applied_is_not_compared(tmp_path, cache):
    bad, out = tmp_path / "bad.json", tmp_path / "out"
    bad.write_text("{not json")
    done = verify("--table", str(bad), *common(out), cache=cache, cwd=tmp_path, job=torchrun_job())
    assert done.returncode == 2
    record = json.loads((out / "verify.json").read_text())
    assert record["verdict"] == NOT_APPLIED and str(bad) in record["reason"]
    assert not (out / "arms").exists()  # nothing ran
    assert "the table could not be applied, so nothing was run or compared" in done.stderr


def test_a_job_that_drops_the_plugin_in_arm_b_is_not_compared(tmp_path, cache, table):
    out = tmp_path / "out"
    job = ["env", "-u", "NCCL_TUNER_PLUGIN", sys.executable, str(JOB), "--steps", "2", "--compute-ms", "0"]
    done = verify("--table", str(table), "--warmup-steps", "0", "--steps", "2", "-o", str(out), cache=cache,
                  cwd=tmp_path, job=job)
    assert done.returncode == 2, done.stderr[-4000:]
    record = json.loads((out / "verify.json").read_text())
    assert record["verdict"] == NOT_APPLIED and record["reason"].startswith("arm B1, rank 0: the job ran with "
                                                                           "NCCL_TUNER_PLUGIN=None")
    assert not (out / "arms" / "A2").exists()


def test_a_failing_job_is_an_error_naming_the_arm(tmp_path, cache, table):
    done = verify("--table", str(table), *common(tmp_path / "out"), cache=cache, cwd=tmp_path,
                  job=["sh", "-c", "exit 3"])
    assert done.returncode == 2
    assert "dynamiccl: error: arm A1: the job exited with status 3; nothing was compared" in done.stderr


def test_report_refuses_a_file_that_is_not_a_verify_record(tmp_path):
    path = tmp_path / "verify.json"
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="format"):
        load_verify_record(path)
    path.write_text(json.dumps({"format": FORMAT, "verdict": "faster", "sentence": "s", "order": "ABA",
                                "warmup_steps": 1, "steps": 2, "command": ["x"], "comparison": {"arms": []}}))
    with pytest.raises(InputError, match="comparison"):
        load_verify_record(path)
