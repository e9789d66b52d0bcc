"""Bad inputs through every reader (issue 15, items 8-12): each failure kind is a class that runs a
table of bad inputs, and each bad input must end in one ``InputError`` naming the file (or, on the
command line, argparse's one-line error with exit status 2) -- never a traceback, a hang or a
silent acceptance.

- ``TestNoTraceback``: malformed files (not UTF-8, huge integers, deep nesting, endless files, cut
  rows, non-finite numbers) through the readers of env specs, model and experiment TOML, world
  parameters, measurement CSVs, decision tables, traces and policies.
- ``TestNoHang``: inputs that made work unbounded (congestion periods far shorter than a step).
- ``TestNoSilentAcceptance``: inputs that were accepted and gave wrong results (an NCCL version
  outside the modelled range, a trace whose ranks do not fit together or do not fit the cluster).
- ``TestCommandLineRanges``: out-of-range flags.
- ``TestLargeWorkIsAnnounced``: large work says its size before it starts.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest

from dynamiccl import schema
from dynamiccl.cli import main
from dynamiccl.errors import DynamicclError, InputError

ROOT = Path(__file__).resolve().parents[1]
ENV = ROOT / "envs" / "h100-ib-2x8.toml"
SMALL_TRACE = ROOT / "traces" / "ref-dp2-tp2.parquet"   # 4 ranks, every one in the file
BIG_TRACE = ROOT / "traces" / "llama3-70b_tp4-pp4-cp2-dp2-sp.parquet"  # 64 GPUs

MEASUREMENT_HEADER = ["table", "system", "nccl_version", "coll", "algo", "proto", "gpus_per_node", "nodes",
                      "size_bytes", "time_us", "algbw_gbytes_per_s", "busbw_gbytes_per_s", "how"]
MEASUREMENT_ROW = {"table": "t", "system": "8x H100 SXM5, NVSwitch", "nccl_version": "2.23.4", "coll": "allreduce",
                   "algo": "default", "proto": "default", "gpus_per_node": "8", "nodes": "1", "size_bytes": "1024",
                   "time_us": "25.6", "algbw_gbytes_per_s": "0.04", "busbw_gbytes_per_s": "0.07",
                   "how": "all_reduce_perf -b 8 -e 8G"}


def measurements(**changes: str) -> str:
    """A two-row measurements CSV, with ``changes`` applied to its first row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(MEASUREMENT_HEADER)
    writer.writerow([{**MEASUREMENT_ROW, **changes}[c] for c in MEASUREMENT_HEADER])
    writer.writerow([{**MEASUREMENT_ROW, "size_bytes": "2048"}[c] for c in MEASUREMENT_HEADER])
    return out.getvalue()


def env_text(**dynamics: str) -> str:
    """The h100-ib-2x8 spec with its [dynamics] keys replaced (values as TOML text)."""
    lines = []
    for line in ENV.read_text().splitlines():
        key = line.split("=")[0].strip()
        lines.append(f"{key} = {dynamics[key]}" if key in dynamics and "=" in line else line)
    return "\n".join(lines) + "\n"


def _readers():
    """name -> (reader, file suffix): every reader of a file a user gives dynamiccl."""
    from dynamiccl import table
    from dynamiccl.costmodel.measurements import load_measurements
    from dynamiccl.costmodel.world import WorldParams
    from dynamiccl.envspec import load_env
    from dynamiccl.trace.store import Trace
    from dynamiccl.tuning.config import load_config
    from dynamiccl.tuning.policy_file import load_policy
    from dynamiccl.workload.models import load_model_file

    return {"env": (load_env, ".toml"), "model": (load_model_file, ".toml"), "config": (load_config, ".toml"),
            "world-params": (WorldParams.load, ".json"), "measurements": (load_measurements, ".csv"),
            "table-json": (table.load, ".json"), "table-csv": (table.load, ".csv"),
            "table-text": (table.load, ".txt"), "trace": (Trace.read, ".parquet"), "policy": (load_policy, ".zip")}


READERS = tuple(_readers())
TEXT_READERS = ("env", "model", "config", "world-params", "measurements", "table-json", "table-csv")
TOML_READERS = ("env", "model", "config")
DEEP_TOML = "a = " + "[" * 100_000 + "]" * 100_000 + "\n"
DEEP_JSON = "[" * 100_000 + "]" * 100_000


def _bad_files():
    """(case id, reader name, file bytes or a special, text the error must contain)."""
    for name in READERS:  # a Parquet trace or a zip is read by its index, never in whole: no cap to reach
        yield f"{name}-endless", name, "/dev/zero", "larger than" if name not in ("trace", "policy") else ""
        yield f"{name}-directory", name, "directory", ""
        if name != "table-csv":  # an empty NVIDIA tuner CSV is a table of no rules, as NVIDIA's plugin reads it
            yield f"{name}-empty", name, b"", ""
    for name in TEXT_READERS:
        yield f"{name}-latin1", name, "caf\xe9 = 1\n".encode("latin-1"), "UTF-8"
    for name in TOML_READERS:
        yield f"{name}-deep", name, DEEP_TOML.encode(), "nested too deeply"
    yield "world-params-deep", "world-params", DEEP_JSON.encode(), "nested too deeply"
    yield "table-json-deep", "table-json", DEEP_JSON.encode(), "nested too deeply"
    yield "env-huge-nodes", "env", ENV.read_text().replace("nodes = 2", "nodes = 1" + "0" * 30).encode(), \
        "cluster.nodes"
    yield "env-huge-float", "env", ENV.read_text().replace("nic_gbits_per_s = 400", "nic_gbits_per_s = 1" + "0" * 400
                                                           ).encode(), "inter.nic_gbits_per_s"
    model = (ROOT / "dynamiccl" / "workload" / "models" / "llama3-8b.toml").read_text()
    assert "\nhidden_size = 4096\n" in model
    yield "model-huge-width", "model", model.replace("\nhidden_size = 4096\n", "\nhidden_size = 1000000000000000\n"
                                                     ).encode(), "model.hidden_size"
    yield "measurements-cut-mid-row", "measurements", measurements().encode()[:-40], "line 3: expected 13 fields"
    yield "measurements-infinite-time", "measurements", measurements(time_us="inf").encode(), "column time_us"
    yield "measurements-nan-time", "measurements", measurements(time_us="nan").encode(), "column time_us"
    yield "measurements-huge-size", "measurements", measurements(size_bytes="9" * 400).encode(), "column size_bytes"
    yield "measurements-huge-nodes", "measurements", measurements(nodes="1e400").encode(), "column nodes"
    yield "measurements-column-twice", "measurements", \
        measurements().replace("algbw_gbytes_per_s", "time_us", 1).encode(), "column(s) time_us given twice"
    yield "measurements-unquoted-comma", "measurements", \
        measurements().replace("all_reduce_perf -b", "all_reduce_perf, -b", 1).encode(), "line 2: expected 13"


class TestNoTraceback:
    """Malformed files: one InputError naming the file, never a Python exception of another kind."""

    @pytest.mark.parametrize("case, reader, content, expected", [c[:4] for c in _bad_files()],
                             ids=[c[0] for c in _bad_files()])
    def test_bad_file_is_one_input_error_naming_it(self, tmp_path, case, reader, content, expected):
        read, suffix = _readers()[reader]
        path = tmp_path / f"{case}{suffix}"
        if content == "/dev/zero":
            if not os.path.exists("/dev/zero"):
                pytest.fail("this check needs /dev/zero (a file that never ends)")
            path.symlink_to("/dev/zero")
        elif content == "directory":
            path.mkdir()
        else:
            path.write_bytes(content)
        with pytest.raises(DynamicclError) as info:
            read(path)
        message = str(info.value)
        assert message.startswith(str(path)), message
        assert expected in message and "\n" not in message, message

    def test_the_read_cap_is_the_readers_own(self, tmp_path):
        path = tmp_path / "big.json"
        path.write_text("[" + "0," * 600 + "0]")
        with pytest.raises(InputError, match=r"larger than 1,000 bytes"):
            schema.read_json(path, "test", max_bytes=1000)
        assert len(schema.read_json(path, "test", max_bytes=2000)) == 601

    def test_an_integer_beyond_64_bits_says_so(self):
        field = schema.integer("count", low=1)
        with pytest.raises(InputError, match="in the 64-bit range"):
            schema.Schema(field).parse({"count": 2**64}, "f.toml")
        assert schema.Schema(schema.integer("size", low=0)).parse({"size": 2**64 - 1}, "f")["size"] == 2**64 - 1

    def test_a_trace_whose_metadata_nests_too_deeply(self, tmp_path):
        import pyarrow.parquet as pq

        from dynamiccl.trace.store import METADATA_KEY, Trace

        table = pq.read_table(SMALL_TRACE)
        bad = tmp_path / "deep.parquet"
        pq.write_table(table.replace_schema_metadata({METADATA_KEY: DEEP_JSON}), bad)
        with pytest.raises(InputError, match="nested too deeply"):
            Trace.read(bad)


    def test_a_results_file_whose_metadata_nests_too_deeply(self, tmp_path):
        import pyarrow.parquet as pq

        from dynamiccl.tuning.evaluate import METADATA_KEY, Results

        fixture = ROOT / "tests" / "fixtures" / "results" / "before-search-2026-12-02.parquet"
        bad = tmp_path / "deep.parquet"
        pq.write_table(pq.read_table(fixture).replace_schema_metadata({METADATA_KEY: DEEP_JSON}), bad)
        with pytest.raises(InputError, match="nested too deeply"):
            Results.read(bad, require_calls=False)


class TestNoHang:
    """Inputs that made the work unbounded are refused before (or while, boundedly) doing it."""

    @pytest.mark.parametrize("period_ms", ["1e-6", "0.01"])
    def test_congestion_periods_far_shorter_than_the_step(self, tmp_path, period_ms):
        from dynamiccl.tuning.cases import Case, load_case

        spec = tmp_path / "fast-markov.toml"
        spec.write_text(env_text(congestion='"markov"', mean_period_ms=period_ms))
        with pytest.raises(InputError) as info:
            load_case(Case(str(ROOT / "traces" / "llama3-8b_tp1-pp1-dp8.parquet"), str(spec)))
        assert info.value.source == str(spec) and info.value.field == "dynamics.mean_period_ms"
        assert "expected at least" in info.value.problem

    def test_a_replay_never_draws_more_than_its_bound_of_periods(self):
        from dynamiccl.costmodel.dynamics import MAX_PERIODS, CongestionProcess
        from dynamiccl.envspec import DynamicsSpec

        process = CongestionProcess(DynamicsSpec(congestion="markov", mean_period_ms=1e-6), seed=3, source="x.toml")
        with pytest.raises(InputError, match="x.toml: dynamics.mean_period_ms"):
            process.share_at(1e6)  # one second of 1 ns periods: a billion
        assert len(process._edges) <= MAX_PERIODS + 1

    def test_bulk_drawn_periods_are_the_one_at_a_time_timeline(self):
        """Drawing in bulk changes no simulation number: the same periods as one draw per period."""
        from dynamiccl.costmodel.dynamics import CongestionProcess
        from dynamiccl.envspec import DynamicsSpec

        spec = DynamicsSpec(congestion="markov", congested_fraction=0.4, congested_share=0.6, mean_period_ms=10.0)
        for seed in range(5):
            rng = np.random.default_rng(seed)
            congested = bool(rng.random() < spec.congested_fraction)
            edges, states = [0.0], [congested]
            while edges[-1] < 5e6:  # the former loop: one exponential per period, in order
                share = spec.congested_fraction if states[-1] else 1 - spec.congested_fraction
                edges.append(edges[-1] + float(rng.exponential(2 * spec.mean_period_ms * share * 1000.0)))
                states.append(not states[-1])
            process = CongestionProcess(spec, seed)
            process.share_at(5e6)
            n = len(edges)
            assert process._edges[:n].tolist() == edges and process._congested[:n].tolist() == states


def _swapped_trace(tmp_path) -> Path:
    """The 4-rank trace with two all-reduces of different sizes issued in the other order on rank 1."""
    from dynamiccl.trace.store import Trace

    trace = Trace.read(SMALL_TRACE)
    ops = trace.ops.copy()
    step = int(ops["step"].max())
    mine = ops[(ops["rank"] == 1) & (ops["step"] == step) & (ops["op"] == "allreduce")]
    sizes = mine["bytes_total"].to_numpy()
    k = int(np.flatnonzero(sizes[1:] != sizes[:-1])[0])  # two neighbours of different sizes
    a, b = mine.index[k], mine.index[k + 1]
    for column in ("bytes_total", "bytes_per_rank"):
        ops.loc[a, column], ops.loc[b, column] = ops.loc[b, column], ops.loc[a, column]
    path = tmp_path / "swapped.parquet"
    Trace(ops=ops, meta=trace.meta).write(path)
    return path


class TestNoSilentAcceptance:
    """Inputs that were read without complaint and gave wrong results."""

    @pytest.mark.parametrize("version", ["banana", "2.10.3", "3.0"])
    def test_an_nccl_version_outside_the_modelled_range(self, tmp_path, version):
        from dynamiccl.costmodel.measurements import load_measurements

        path = tmp_path / "m.csv"
        path.write_text(measurements(nccl_version=version))
        with pytest.raises(InputError, match=r"line 2, column nccl_version: expected an NCCL version between 2.18"):
            load_measurements(path)

    @pytest.mark.parametrize("version", ["", "unknown", "unknown (2023)", "2.18.5", "2.29.2"])
    def test_versions_the_calibration_set_gives_are_read(self, tmp_path, version):
        from dynamiccl.costmodel.measurements import load_measurements

        path = tmp_path / "m.csv"
        path.write_text(measurements(nccl_version=version))
        assert load_measurements(path)[0].nccl_version == version

    def test_a_csv_cut_mid_row_is_not_read_as_short_cells(self, tmp_path):
        from dynamiccl.costmodel.measurements import load_measurements

        path = tmp_path / "cut.csv"  # the last row loses its busbw and how columns
        path.write_text(measurements().rsplit(",", 2)[0])
        with pytest.raises(InputError, match="line 3: expected 13 fields"):
            load_measurements(path)

    @pytest.mark.parametrize("command", ["replay", "evaluate", "search"])
    def test_ranks_that_do_not_fit_together(self, tmp_path, capsys, command):
        from dynamiccl.trace.consistency import check_consistency
        from dynamiccl.trace.store import Trace

        swapped = _swapped_trace(tmp_path)
        data = Trace.read(swapped)
        assert not check_consistency(data, int(data.ops["step"].max())).ok  # what `trace check` rejects
        args = {"replay": ["replay", str(swapped), "--env", "dgx-h100"],
                "evaluate": ["evaluate", "--traces", str(swapped), "--envs", "dgx-h100", "--states", "1",
                             "--agents", "nccl-default", "-o", str(tmp_path / "r.parquet")],
                "search": ["search", "--trace", str(swapped), "--env", "dgx-h100", "--states", "1",
                           "-o", str(tmp_path / "t.json")]}[command]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"dynamiccl: error: {swapped}: step ") and "do not fit together" in err
        assert not (tmp_path / "r.parquet").exists() and not (tmp_path / "t.json").exists()

    def test_a_training_case_whose_ranks_do_not_fit_together(self, tmp_path):
        from dynamiccl.tuning.cases import Case, load_case

        swapped = _swapped_trace(tmp_path)
        with pytest.raises(InputError, match="do not fit together"):
            load_case(Case(str(swapped), "dgx-h100"))  # TuningEnv (train) loads its cases here

    @pytest.mark.parametrize("spec", ["pcie-h100-1x8", "h100-ib-4x8"])
    def test_a_trace_of_more_gpus_than_the_spec_has(self, capsys, spec):
        assert main(["replay", str(BIG_TRACE), "--env", spec]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"dynamiccl: error: {BIG_TRACE}: world_size: a 64-GPU trace") and spec in err
        assert "\n" not in err

    def test_a_sweep_factor_that_is_not_a_number(self, capsys):
        with pytest.raises(SystemExit) as info:
            main(["simulate", "--env", "dgx-h100", "--coll", "allreduce", "-f", "nan"])
        assert info.value.code == 2 and "argument -f/--stepfactor: expected a number > 1" in capsys.readouterr().err


class TestCommandLineRanges:
    """Out-of-range flags are argparse's one-line error (exit status 2) naming the flag."""

    @pytest.mark.parametrize("args, flag", [
        (["evaluate", "--states", "0", "-o", "r.parquet"], "--states"),
        (["evaluate", "--online-steps", "-1", "-o", "r.parquet"], "--online-steps"),
        (["evaluate", "--state-offset", "-5", "-o", "r.parquet"], "--state-offset"),
        (["search", "--max-sweeps", "-1", "-o", "t.json"], "--max-sweeps"),
        (["replay", "x.parquet", "--env", "dgx-h100", "--state", "-1"], "--state"),
        (["simulate", "--env", "dgx-h100", "--coll", "allreduce", "--throughput", "1e11"], "--throughput"),
        (["simulate", "--env", "dgx-h100", "--coll", "allreduce", "--throughput", "100000000000"], "--throughput"),
        (["simulate", "--env", "dgx-h100", "--coll", "allreduce", "--model", "live", "--nprocs", "0"], "--nprocs"),
        (["train", "--config", "c.toml", "--timesteps", "0"], "--timesteps"),
        (["train", "--config", "c.toml", "--timesteps", "many"], "--timesteps"),
    ])
    def test_out_of_range(self, capsys, args, flag):
        with pytest.raises(SystemExit) as info:
            main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and err[-1].startswith(f"dynamiccl {args[0]}: error: argument {flag}")
        assert "expected" in err[-1]

    def test_train_timesteps_overrides_the_config(self, monkeypatch, tmp_path, capsys):
        """--timesteps is the documented override: more than the config's total trains longer."""
        import dynamiccl.tuning.train as train_module
        from dynamiccl.tuning.config import load_config

        seen = {}

        def fake_train(config, output_dir, **options):
            seen["config"], seen["options"] = config, options
            return train_module.TrainResult(**{f: 0 for f in train_module.TrainResult.__dataclass_fields__
                                               if f != "resumed_from"})

        monkeypatch.setattr(train_module, "train", fake_train)
        config = ROOT / "experiments" / "default.toml"
        total = load_config(config).train.total_timesteps
        assert main(["train", "--config", str(config), "--output-dir", str(tmp_path), "--timesteps",
                     str(total * 3)]) == 0
        assert seen["config"].train.total_timesteps == total * 3 and "max_timesteps" not in seen["options"]
        assert seen["config"].raw["train"]["total_timesteps"] == total * 3  # the run's provenance says so


class TestLargeWorkIsAnnounced:
    """Large work says how large before it starts."""

    @pytest.mark.parametrize("kind", ["chakra", "param"])
    def test_an_export_says_its_size_first(self, tmp_path, capsys, monkeypatch, kind):
        from dynamiccl.profiler.exporters import export_trace, progress
        from dynamiccl.trace.store import Trace

        monkeypatch.setattr(progress, "ANNOUNCE_BYTES", 0)  # as the 405B trace's (2.2 GB) would
        written = export_trace(kind, Trace.read(SMALL_TRACE), tmp_path / "out")
        err = capsys.readouterr().err
        line = next(line for line in err.splitlines() if line.startswith(f"export {kind}: writing"))
        assert f"{len(written):,} file(s)" in line
        said = float(line.split("~")[1].split()[0].replace(",", ""))
        unit = {"B": 1, "kB": 1e3, "MB": 1e6}[line.split("~")[1].split()[1].rstrip(",")]
        actual = sum(p.stat().st_size for p in written)
        assert abs(said * unit - actual) <= 0.1 * actual

    def test_an_export_without_room_is_refused_before_writing(self, tmp_path, monkeypatch):
        import shutil

        from dynamiccl.profiler.exporters import export_trace
        from dynamiccl.trace.store import Trace

        monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
        with pytest.raises(InputError, match="only 1.0 kB free"):
            export_trace("chakra", Trace.read(SMALL_TRACE), tmp_path / "out")
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    def test_live_measurement_says_processes_cores_and_memory(self, monkeypatch):
        from dynamiccl.cli.costmodel import live_plan

        monkeypatch.setattr(os, "cpu_count", lambda: 2)
        pages = {"SC_AVPHYS_PAGES": (8 << 30) // 4096, "SC_PAGE_SIZE": 4096}  # 8 GiB free
        monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
        text = live_plan(64, 1 << 30, "--nprocs")
        assert "64 worker processes on 2 core(s)" in text and "2.00 GiB" in text and "128.00 GiB in all" in text
        assert "more than the 8.00 GiB of memory free" in text and "--nprocs <= 2" in text
        assert "WARNING" not in live_plan(2, 1 << 20)
