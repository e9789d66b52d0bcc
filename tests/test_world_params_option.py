"""``--params FILE``: a command costs with a user's own world fit, for that command only; and the
measurements CSV's optional ``channels`` column round-trips through its writer."""

import json
import os

import pytest

from dynamiccl.cli import main
from dynamiccl.costmodel.measurements import COLUMNS, load_measurements, write_measurements
from dynamiccl.costmodel.world import PARAMS_ENV, PARAMS_PATH


def _simulate(capsys, *extra):
    status = main(["simulate", "--env", "dgx-h100", "--coll", "allreduce", "-b", "1M", "-e", "1M", "--json",
                   *extra])
    assert status == 0
    return json.loads(capsys.readouterr().out)[0]["time_us"]


def test_params_changes_the_world_for_that_command_only(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(PARAMS_ENV, raising=False)
    params = json.loads(PARAMS_PATH.read_text())
    # Half the NVLink efficiency: a 1 MB AllReduce inside a node must get slower.
    params["link_efficiency"] = {key: value / 2 for key, value in params["link_efficiency"].items()}
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(params))
    shipped = _simulate(capsys)
    with_fit = _simulate(capsys, "--params", str(slow))
    assert with_fit > shipped * 1.05
    assert PARAMS_ENV not in os.environ  # restored after the command
    assert _simulate(capsys) == shipped


def test_params_names_a_missing_or_bad_file(tmp_path, capsys):
    assert main(["simulate", "--env", "dgx-h100", "--coll", "allreduce", "--params", str(tmp_path / "no.json")]) == 2
    assert "--params" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"link_efficiency": "fast"}')
    assert main(["simulate", "--env", "dgx-h100", "--coll", "allreduce", "--params", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


def _row(**overrides):
    row = dict(table="t1", system="8x H100 SXM", nccl_version="2.21.5", coll="allreduce", algo="ring",
               proto="simple", gpus_per_node=8, nodes=1, size_bytes=1048576, time_us=20.5,
               algbw_gbytes_per_s=51.15, busbw_gbytes_per_s=89.5, how="dynamiccl measure")
    row.update(overrides)
    return row


def test_channels_column_round_trips(tmp_path):
    path = tmp_path / "m.csv"
    write_measurements(path, [_row(channels=4), _row(size_bytes=2097152, time_us=30.0, channels=4),
                              _row(table="t2", algo="default", proto="default")])
    header = path.read_text().splitlines()[0].split(",")
    assert header == [*COLUMNS, "channels", "chunk_bytes"]
    tables = {t.table: t for t in load_measurements(path)}
    assert tables["t1"].channels == 4 and list(tables["t1"].size_bytes) == [1048576, 2097152]
    assert tables["t2"].channels == 0 and tables["t2"].algo == -1


def test_channels_out_of_range_is_named(tmp_path):
    from dynamiccl.errors import InputError

    path = tmp_path / "m.csv"
    write_measurements(path, [_row(channels=65)])
    with pytest.raises(InputError, match="channels"):
        load_measurements(path)


def test_chunk_bytes_column_round_trips_and_bad_values_are_named(tmp_path):
    from dynamiccl.errors import InputError

    path = tmp_path / "m.csv"
    write_measurements(path, [_row(algo="default", proto="default", chunk_bytes=262144),
                              _row(algo="default", proto="default", size_bytes=2097152, chunk_bytes=262144),
                              _row(table="t2", algo="default", proto="default", chunk_bytes=""),
                              _row(table="t3", algo="default", proto="default", chunk_bytes=0)])
    tables = {t.table: t for t in load_measurements(path)}
    assert tables["t1"].chunk_bytes == 262144 and list(tables["t1"].size_bytes) == [1048576, 2097152]
    assert tables["t2"].chunk_bytes == 0 and tables["t3"].chunk_bytes == 0  # empty / 0: NCCL's chunk
    again = tmp_path / "again.csv"  # what is read back is what was written
    write_measurements(again, [_row(algo="default", proto="default", chunk_bytes=tables["t1"].chunk_bytes)])
    assert load_measurements(again)[0].chunk_bytes == 262144
    for value, expected in (("100000", "a power of two"), ("-4096", "integer"), ("2048", "a power of two"),
                            ("134217728", "integer"), ("64K", "integer")):
        write_measurements(path, [_row(), _row(table="t2", chunk_bytes=value)])
        with pytest.raises(InputError, match=expected) as err:
            load_measurements(path)
        assert str(err.value).startswith(f"{path}: line 3, column chunk_bytes: expected"), str(err.value)
    # one table is one configuration: a row with another chunk size is named
    write_measurements(path, [_row(chunk_bytes=65536), _row(size_bytes=2097152, chunk_bytes=131072)])
    with pytest.raises(InputError, match=r"line 3, column chunk_bytes: table t1 has chunk_bytes 65536 on its first row"):
        load_measurements(path)


def test_writer_refuses_a_row_without_a_column(tmp_path):
    row = _row()
    del row["time_us"]
    with pytest.raises(ValueError, match="time_us"):
        write_measurements(tmp_path / "m.csv", [row])
    assert not (tmp_path / "m.csv").exists()


def _measured_on_my_cluster(tmp_path):
    """Tables as `dynamiccl measure` writes them on a user's 2-node H100 cluster: communicators of
    2 ranks in one node and of 1 rank on each of 2 nodes (no spec has 1 or 2 H100s per node)."""
    rows = []
    for table, per_node, nodes in (("tp2", 2, 1), ("dp2x1", 1, 2)):
        for size, time_us in ((1 << 20, 40.0), (1 << 24, 300.0)):
            rows.append(_row(table=table, system="NVIDIA H100 80GB HBM3, my cluster", gpus_per_node=per_node,
                             nodes=nodes, algo="default", proto="default", size_bytes=size, time_us=time_us,
                             algbw_gbytes_per_s=size / time_us / 1e3, busbw_gbytes_per_s=0.0))
    path = tmp_path / "mine.csv"
    write_measurements(path, rows)
    return path


def test_validate_env_costs_every_table_on_the_measured_cluster(tmp_path, capsys):
    mine = _measured_on_my_cluster(tmp_path)
    # By system text: no spec in envs/ has 1 or 2 H100s per node.
    assert main(["validate", "--measurements", str(mine), "--plot", ""]) == 2
    assert "GPUs per node" in capsys.readouterr().err
    out = tmp_path / "v.json"
    assert main(["validate", "--measurements", str(mine), "--env", "h100-ib-16x8", "--plot", "",
                 "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert set(summary["points"]) == {"tp2", "dp2x1"}
    # A communicator larger than the spec's nodes is named, not silently mapped.
    assert main(["validate", "--measurements", str(mine), "--env", "dgx-h100", "--plot", ""]) == 2
    err = capsys.readouterr().err
    assert "dp2x1" in err and "do not fit spec dgx-h100" in err


def test_calibrate_env_fits_to_the_measured_cluster(tmp_path, capsys):
    mine = _measured_on_my_cluster(tmp_path)
    assert main(["calibrate", "--measurements", str(mine), "--env", "h100-ib-16x8",
                 "-o", str(tmp_path / "fit.json")]) == 0
    assert (tmp_path / "fit.json").is_file()
