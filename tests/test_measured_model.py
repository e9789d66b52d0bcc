"""The ``measured`` cost model: a user's measurements CSV interpolated directly, and ``search`` /
``evaluate`` / ``simulate`` run on it; plus ``--params`` on a command other than ``simulate`` and the
``channels`` column in validation.

The end-to-end CSV is built here by timing the shapes that ``traces/ref-pp2-dp2.parquet`` issues
(AllReduce and Send over 2 ranks of one node) with the world simulator, quiet and alone, standing in
for a cluster: NCCL's default and four forced configurations, at every size 4 B .. 4 MiB (x2), in
the format ``dynamiccl measure`` writes. The world is only the source of the numbers; everything
downstream reads the CSV."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest

from dynamiccl.cli import main
from dynamiccl.costmodel.batch import make_batch
from dynamiccl.costmodel.calibration import predict
from dynamiccl.costmodel.measured import MeasuredModel, SizeCurve, load_measured_tables
from dynamiccl.costmodel.measurements import load_measurements, write_measurements
from dynamiccl.costmodel.protocol import CostModelOptions
from dynamiccl.costmodel.registry import COST_MODELS
from dynamiccl.costmodel.world import PARAMS_PATH, WorldModel
from dynamiccl.envspec import resolve_env
from dynamiccl.errors import InputError
from dynamiccl.nccl import Algorithm, Func, Protocol, busbw_factor
from dynamiccl.table import load
from dynamiccl.tuning.actions import ACTION_ALGO, ACTION_CHANNELS, ACTION_PROTO, DEFAULT_ACTION
from dynamiccl.tuning.cases import Case, load_case
from dynamiccl.tuning.config import load_config
from dynamiccl.tuning.evaluate import Results

TRACE, ENV = "traces/ref-pp2-dp2.parquet", "dgx-h100"
SIZES = [4 * 2 ** k for k in range(21)]  # 4 B .. 4 MiB: every call size of the trace is one of them or between
# (algo, proto, channels) measured besides NCCL's default (-1, -1, 0); channels 0: NCCL's count for the pair.
FORCED = [(Algorithm.RING, Protocol.LL, 0), (Algorithm.RING, Protocol.SIMPLE, 0), (Algorithm.RING, Protocol.LL, 2),
          (Algorithm.TREE, Protocol.SIMPLE, 0)]


def _row(table, coll, algo, proto, channels, size, time_us, nranks=2, nodes=1, system="8x H100 SXM"):
    algbw = size / time_us / 1e3
    return dict(table=table, system=system, nccl_version="2.21.5", coll=coll, algo=algo, proto=proto,
                gpus_per_node=nranks // nodes, nodes=nodes, size_bytes=size, time_us=time_us,
                algbw_gbytes_per_s=algbw, busbw_gbytes_per_s=algbw * busbw_factor(coll, nranks), how="test",
                channels=channels)


@pytest.fixture(scope="module")
def measured_csv(tmp_path_factory):
    """The trace's shapes timed by the world simulator (module docstring), as a measurements CSV."""
    world = WorldModel(resolve_env(ENV))
    rows = []
    configs = [("allreduce", Func.ALLREDUCE, -1, -1, 0), ("sendrecv", Func.SEND, -1, -1, 0)]
    configs += [("allreduce", Func.ALLREDUCE, int(a), int(p), c) for a, p, c in FORCED]
    for coll, func, algo, proto, channels in configs:
        got = world.evaluate(make_batch(int(func), np.array(SIZES, dtype=float), 2, 1, algo=algo, proto=proto,
                                        channels=channels, forced_by_env=True))
        name = f"{coll}-{algo}-{proto}-{channels}"
        rows += [_row(name, coll, Algorithm(algo).name_lower if algo >= 0 else "default",
                      Protocol(proto).name_lower if proto >= 0 else "default", channels or "", size, t)
                 for size, t in zip(SIZES, got.time_us.tolist())]
    path = tmp_path_factory.mktemp("measured") / "M.csv"
    write_measurements(path, rows)
    return path


# --- interpolation ---------------------------------------------------------------------------------

def test_interpolation_is_log_log_inside_and_latency_plus_bandwidth_outside():
    curve = SizeCurve(np.array([1e3, 1e6, 1.6e7]), np.array([10.0, 20.0, 200.0]))
    # Between two points: linear in log size / log time -> the geometric mean at the geometric middle.
    assert curve.time_at(np.array([math.sqrt(1e3 * 1e6)]))[0] == pytest.approx(math.sqrt(10 * 20))
    assert curve.time_at(np.array([1e6]))[0] == pytest.approx(20.0)
    # Below: the line through the two smallest points, its intercept the latency.
    slope = 10.0 / (1e6 - 1e3)
    assert curve.latency_us == pytest.approx(10.0 - slope * 1e3)
    assert curve.time_at(np.array([0.0, 500.0])) == pytest.approx([curve.latency_us, 10.0 - slope * 500])
    # Above: the bandwidth of the two largest points, from the largest one on.
    assert curve.time_at(np.array([3.2e7]))[0] == pytest.approx(200.0 + 1.6e7 * 180.0 / 1.5e7)
    # One point: bounded above by pure latency below it and pure bandwidth above it.
    single = SizeCurve(np.array([1e6]), np.array([50.0]))
    assert single.time_at(np.array([1e3, 1e6, 4e6])) == pytest.approx([50.0, 50.0, 200.0])
    # Times that fall at the large end (noise): the largest point's average rate, never a falling time.
    noisy = SizeCurve(np.array([1e3, 1e6, 2e6]), np.array([10.0, 30.0, 25.0]))
    assert noisy.time_at(np.array([4e6]))[0] == pytest.approx(25.0 + 2e6 * 25.0 / 2e6)


def _model(*paths) -> MeasuredModel:
    return COST_MODELS["measured"].create(resolve_env(ENV), CostModelOptions(measurements=tuple(map(str, paths))))


def test_forced_configuration_never_measured_costs_inf(measured_csv):
    model = _model(measured_csv)
    assert model.applies_nccl_knobs and model.costs_p2p and not model.models_conditions
    batch = make_batch(int(Func.ALLREDUCE), 262144.0, 2, 1, algo=np.array([-1, Algorithm.RING, Algorithm.TREE]),
                       proto=np.array([-1, Protocol.LL, Protocol.LL]), channels=np.array([0, 2, 0]))
    got = model.evaluate(batch)
    default = next(t for t in load_measurements(measured_csv) if t.algo < 0 and t.func == Func.ALLREDUCE)
    assert got.time_us[0] == pytest.approx(default.time_us[list(default.size_bytes).index(262144.0)])
    assert np.isfinite(got.time_us[1]) and got.channels[1] == 2 and got.algo[1] == Algorithm.RING
    assert math.isinf(got.time_us[2]) and got.algo[2] == -1  # tree/ll was never measured
    # The tuning cost table masks it: neither a policy nor the search can choose it.
    costs = load_case(Case(TRACE, ENV), "measured", CostModelOptions(measurements=(str(measured_csv),))).costs
    allreduce = [k for k, key in enumerate(costs.keys) if key.coll == Func.ALLREDUCE]
    valid = {(int(ACTION_ALGO[a]), int(ACTION_PROTO[a]), int(ACTION_CHANNELS[a]))
             for a in np.flatnonzero(costs.mask[allreduce[0]]) if a != DEFAULT_ACTION}
    assert valid and valid <= {(int(a), int(p), c) for a, p, c in FORCED}
    assert np.isfinite(costs.time_us[costs.mask]).all()


def test_a_shape_without_default_measurements_is_named(measured_csv):
    model = _model(measured_csv)
    with pytest.raises(InputError, match=r"allgather over 8 ranks on 1 node\(s\).*dynamiccl measure --trace"):
        model.evaluate(make_batch(int(Func.ALLGATHER), 1024.0, 8, 1))
    with pytest.raises(InputError, match="--measurements"):
        COST_MODELS["measured"].create(resolve_env(ENV), CostModelOptions())


def test_merging_files_and_conflicting_duplicates(tmp_path):
    first, second, clash = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    write_measurements(first, [_row("t", "allreduce", "default", "default", "", 1024, 10.0, 8)])
    # The same table id in another file, another size: merged into one series.
    write_measurements(second, [_row("t", "allreduce", "default", "default", "", 4096, 12.0, 8)])
    model = _model(first, second)
    assert model.evaluate(make_batch(int(Func.ALLREDUCE), 4096.0, 8, 1)).time_us[0] == pytest.approx(12.0)
    assert not model.applies_nccl_knobs and not model.costs_p2p  # defaults only, no point-to-point tables
    write_measurements(clash, [_row("u", "allreduce", "default", "default", "", 1024, 11.0, 8)])
    with pytest.raises(InputError) as err:
        _model(first, clash)
    assert str(first) in str(err.value) and str(clash) in str(err.value) and "1024 B" in str(err.value)
    # `dynamiccl measure --with-gemm` writes the same configuration timed with a GEMM beside as a table of its
    # own: left out (the model costs calls alone), not a conflict.
    beside = tmp_path / "g.csv"
    write_measurements(beside, [{**_row("u-gemm", "allreduce", "default", "default", "", 1024, 30.0, 8),
                                 "how": "dynamiccl measure: ...; with a 8192x8192x8192 bf16 GEMM beside"}])
    model = _model(first, beside)
    assert model.evaluate(make_batch(int(Func.ALLREDUCE), 1024.0, 8, 1)).time_us[0] == pytest.approx(10.0)
    assert "1 table(s) timed with compute beside left out" in model.describe()
    with pytest.raises(InputError, match="no such measurements CSV"):
        load_measured_tables([tmp_path / "missing.csv"])


def test_chunk_rows_are_priced_from_their_own_measurements(measured_csv, tmp_path):
    """`dynamiccl measure --chunks` tables (NCCL's own algorithm/protocol/channels, a chunk size set)
    are the only prices of a chunk size: the model prices them and says so; a chunk never measured is inf."""
    assert not _model(measured_csv).prices_chunk  # no chunk rows: a consumer must not ask for chunks
    chunks = tmp_path / "chunks.csv"
    rows = [{**_row("c256", "allreduce", "default", "default", "", size, t), "chunk_bytes": 262144}
            for size, t in ((4096, 9.0), (1 << 20, 40.0), (1 << 22, 120.0))]
    # as `measure --chunks` writes a chunk timed where NCCL chose ring/simple on every call: the tuner's
    # (cell, chunk) action
    rows += [{**_row("ring-c64", "allreduce", "ring", "simple", "", 1 << 20, 35.0), "chunk_bytes": 65536}]
    write_measurements(chunks, rows)
    model = _model(measured_csv, chunks)
    assert model.prices_chunk and "chunk sizes measured: 64 KiB, 256 KiB" in model.describe()
    batch = make_batch(int(Func.ALLREDUCE), np.array([1 << 20, 1 << 21, 1 << 20, 1 << 20]), 2, 1,
                       chunk_bytes=np.array([262144, 262144, 65536, 0]))
    got = model.evaluate(batch)
    assert got.time_us[0] == pytest.approx(40.0)  # a measured point
    assert got.time_us[1] == pytest.approx(math.sqrt(40.0 * 120.0))  # log-log between measured sizes
    assert math.isinf(got.time_us[2])  # 64 KiB was never measured
    default = next(t for t in load_measurements(measured_csv) if t.algo < 0 and t.func == Func.ALLREDUCE)
    assert got.time_us[3] == pytest.approx(default.time_us[list(default.size_bytes).index(float(1 << 20))])
    ring = model.evaluate(make_batch(int(Func.ALLREDUCE), float(1 << 20), 2, 1, algo=int(Algorithm.RING),
                                     proto=int(Protocol.SIMPLE), chunk_bytes=np.array([65536, 131072])))
    assert ring.time_us[0] == pytest.approx(35.0) and math.isinf(ring.time_us[1])
    # a shape without NCCL-default measurements is still named, chunk row or not
    with pytest.raises(InputError, match=r"allreduce over 4 ranks"):
        model.evaluate(make_batch(int(Func.ALLREDUCE), 4096.0, 4, 1, chunk_bytes=262144))


def test_simulate_prints_an_nccl_tests_table_of_the_measurements(measured_csv, tmp_path, capsys):
    assert main(["simulate", "--env", ENV, "--coll", "allreduce", "--nranks", "2", "--nnodes", "1", "-b", "4K",
                 "-e", "16K", "--model", "measured", "--measurements", str(measured_csv)]) == 0
    out = capsys.readouterr().out
    assert "# cost model: measured" in out and "busbw" in out
    table = next(t for t in load_measurements(measured_csv) if t.algo < 0 and t.func == Func.ALLREDUCE)
    rows = [line.split() for line in out.splitlines() if not line.startswith("#")]
    assert [int(r[0]) for r in rows] == [4096, 8192, 16384]
    for r in rows:
        assert float(r[4]) == pytest.approx(table.time_us[list(table.size_bytes).index(float(r[0]))], abs=0.006)
    assert main(["simulate", "--env", ENV, "--coll", "allreduce", "--measurements", str(measured_csv)]) == 2
    assert "only --model measured reads measurements" in capsys.readouterr().err
    defaults_only = tmp_path / "d.csv"
    write_measurements(defaults_only, [_row("t", "allreduce", "default", "default", "", 1024, 10.0)])
    assert main(["simulate", "--env", ENV, "--coll", "sendrecv", "--nranks", "2", "--model", "measured",
                 "--measurements", str(defaults_only)]) == 2
    assert "--coll: no cost for sendrecv under measured" in capsys.readouterr().err


# --- end to end: search, train and evaluate on the measurements ------------------------------------

def test_search_train_and_evaluate_run_on_the_measurements(measured_csv, tmp_path, capsys):
    table, figures = tmp_path / "t.json", tmp_path / "s.json"
    assert main(["search", "--trace", TRACE, "--env", ENV, "--model", "measured", "--measurements", str(measured_csv),
                 "--states", "1", "--max-sweeps", "1", "-o", str(table), "--json", str(figures)]) == 0
    written = json.loads(figures.read_text())
    row = written["cases"][0]
    assert written["cost_model"] == "measured" and row["search_step_time_us"][0] <= row["default_step_time_us"][0]
    measured = {(int(a), int(p), c or -1) for a, p, c in FORCED}
    for rule in load(table).rules:  # every rule the search wrote is a measured configuration (or NCCL's)
        if rule.algorithm is not None:
            assert (int(rule.algorithm), int(rule.protocol), rule.channels) in measured
    # evaluate from an experiment config whose measurements are relative to the config file
    config = tmp_path / "exp.toml"
    (tmp_path / "M.csv").write_bytes(measured_csv.read_bytes())
    config.write_text(f'[experiment]\nmodel = "measured"\nmeasurements = ["M.csv"]\n'
                      f'[train]\ntotal_timesteps = 128\nn_steps = 64\nbatch_size = 32\n'
                      f'[[train.cases]]\ntrace = "{TRACE}"\nenv = "{ENV}"\n'
                      f'[heldout]\nstates = 1\n[[heldout.cases]]\ntrace = "{TRACE}"\nenv = "{ENV}"\n')
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--output-dir", str(run)]) == 0
    policy = json.loads(zipfile.ZipFile(run / "policy.zip").read("policy.json"))["provenance"]
    assert policy["cost_model"] == "measured" and policy["measurements"] == [str((tmp_path / "M.csv").resolve())]
    out = tmp_path / "r.parquet"
    assert main(["evaluate", "--config", str(config), "--run-dir", str(run), "--policy", str(run / "policy.zip"),
                 "--agents", "nccl-default,policy", "--online-steps", "1", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cost model: measured" in printed
    results = Results.read(out)
    assert results.meta["cost_model"] == "measured"
    assert results.meta["measurements"] == [str((tmp_path / "M.csv").resolve())]
    steps = results.steps.set_index("agent")["step_time_us"]
    assert set(steps.index) == {"search", "nccl-default", "policy"} and steps["search"] <= steps["nccl-default"]
    # --measurements beside --config: the config's own are the ones
    assert main(["evaluate", "--config", str(config), "--measurements", str(measured_csv), "-o", str(out)]) == 2
    assert "not with --config" in capsys.readouterr().err


def test_config_measurements_are_checked(tmp_path):
    def config(experiment: str):
        path = tmp_path / "c.toml"
        path.write_text(f'[experiment]\n{experiment}\n[[train.cases]]\ntrace = "{TRACE}"\nenv = "{ENV}"\n')
        return path

    with pytest.raises(InputError, match=r"experiment.measurements: missing"):
        load_config(config('model = "measured"'))
    with pytest.raises(InputError, match=r"experiment.measurements\[0\]: no such file 'nope.csv'"):
        load_config(config('model = "measured"\nmeasurements = ["nope.csv"]'))
    with pytest.raises(InputError, match=r"experiment.measurements: only model = \"measured\""):
        load_config(config('model = "world"\nmeasurements = ["nope.csv"]'))


# --- the channels column in validation, and --params beyond simulate -------------------------------

def test_validation_costs_a_table_with_its_forced_channels(tmp_path):
    path = tmp_path / "m.csv"
    sizes = [1 << 20, 1 << 26]
    write_measurements(path, [_row("free", "allreduce", "ring", "simple", "", s, 100.0, 8) for s in sizes]
                       + [_row("two", "allreduce", "ring", "simple", 2, s, 100.0, 8) for s in sizes])
    free, two = predict(load_measurements(path), [resolve_env(ENV)])
    assert list(two.channels) == [2, 2] and (free.channels > 2).all()
    assert two.world_time_us[-1] > 1.5 * free.world_time_us[-1]  # 2 channels cannot carry 64 MB at line rate


def test_replay_honours_params_for_that_command_only(tmp_path, capsys):
    params = json.loads(PARAMS_PATH.read_text())
    params["link_efficiency"] = {key: value / 2 for key, value in params["link_efficiency"].items()}
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(params))

    def step_us(*extra) -> float:
        assert main(["replay", TRACE, "--env", ENV, "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)["step_time_us"]

    shipped = step_us()
    assert step_us("--params", str(slow)) > shipped  # half the NVLink efficiency: slower communication
    assert step_us() == shipped  # the cached case of the shipped parameters is not the fitted one's


def test_validate_leaves_out_tables_timed_with_compute_beside(tmp_path, capsys):
    path = tmp_path / "m.csv"
    alone = [_row("alone", "allreduce", "default", "default", "", s, 30.0, 8) for s in (1 << 20, 1 << 22)]
    beside = [{**row, "table": "beside", "time_us": 90.0, "how": "dynamiccl measure: ...; with a bf16 GEMM beside"}
              for row in alone]
    chunk = [{**row, "table": "chunk", "time_us": 25.0, "chunk_bytes": 65536} for row in alone]
    write_measurements(path, alone + beside + chunk)
    js = tmp_path / "v.json"
    assert main(["validate", "--measurements", str(path), "--plot", "", "--json", str(js)]) == 0
    err = capsys.readouterr().err
    assert "left out 1 table(s) timed with compute beside" in err
    assert "left out 1 table(s) timed with a chunk size set" in err  # the world keeps NCCL's chunk
    assert list(json.loads(js.read_text())["tables"]) == ["alone"]


def test_measurements_offer_no_communicator_settings(measured_csv):
    # Timed on communicators created with NCCL's defaults: no CTA budget or policy can be priced.

    loaded = load_case(Case(TRACE, ENV), "measured", CostModelOptions(measurements=(str(measured_csv),)), knobs=True)
    assert loaded.communicators.shapes and loaded.communicators.masks[:, 1:].sum() == 0
    assert len(loaded.costs.keys) == len(set(loaded.costs.call_row))  # one row per key: no config rows
