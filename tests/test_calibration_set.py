"""The calibration set's plumbing: several measurement CSVs, the launch mode and NCCL version of a
table, the per-class summary and the fastest-configuration check (``dynamiccl.costmodel.calibration``
and ``.measurements``), on small in-memory tables."""

from __future__ import annotations

import numpy as np
import pytest

from dynamiccl.costmodel import world
from dynamiccl.costmodel.calibration import (TableResult, _free_parameters, calibrate, fastest_checks, hardware_class,
                                             leave_one_out, predict, summarize)
from dynamiccl.costmodel.measurements import (COLUMNS, MeasuredTable, load_measurement_files, load_measurements,
                                              map_table)
from dynamiccl.envspec import resolve_env
from dynamiccl.errors import InputError

HEADER = ",".join(c if c not in ("algbw_gbytes_per_s", "busbw_gbytes_per_s") else c.replace("gbytes_per_s", "gbps")
                  for c in COLUMNS)


def write(path, rows: list[str]):
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    return path


G5_ROW = ('g5,"AWS g5.xlarge, 1x NVIDIA A10G per node, torch.distributed",,allgather,ring,simple,1,2,{size},{time},,,'
          '"mean of 20 calls; NCCL version not logged"')
L40S_ROW = ('l40s,"NVIDIA L40S (PCIe), 1 node, nccl-tests all_reduce_perf -g 2 (single process)",2.29.2,allreduce,'
            'default,default,2,1,{size},{time},1.0,1.0,"out-of-place columns"')


def test_torch_distributed_rows_without_busbw_or_version_load_and_map(tmp_path):
    path = write(tmp_path / "g5.csv", [G5_ROW.format(size=8, time=150.0), G5_ROW.format(size=1024, time=230.0)])
    (table,) = load_measurements(path)
    assert table.nccl_version == "" and (table.busbw_gbytes_per_s == 0).all() and table.launch_gpus == 1
    env = map_table(table, [resolve_env("aws-g5-2x1"), resolve_env("dgx-a100")])
    assert env.name == "aws-g5-2x1" and env.nccl_version == resolve_env("aws-g5-2x1").nccl_version
    assert hardware_class(table, env) == "ampere/pcie+tcp"


def test_a_torch_distributed_allgather_is_sized_by_its_per_rank_input(tmp_path):
    # dist.all_gather(tensor_list, t): the harness names the call by t's bytes; NCCL's nBytes (and
    # nccl-tests' size) is the whole output, ranks x that. nccl-tests rows keep their size.
    path = write(tmp_path / "g5.csv", [G5_ROW.format(size=8, time=150.0), G5_ROW.format(size=1024, time=230.0),
                                       L40S_ROW.format(size=8, time=9.2)])
    g5, l40s = load_measurements(path)
    assert g5.nranks == 2 and g5.size_bytes.tolist() == [16, 2048]
    assert l40s.size_bytes.tolist() == [8]
    reduce_scatter = write(tmp_path / "rs.csv", [G5_ROW.format(size=64, time=150.0).replace("allgather",
                                                                                              "reducescatter")])
    assert load_measurements(reduce_scatter)[0].size_bytes.tolist() == [64]


def test_launch_mode_read_from_the_system_text(tmp_path):
    (table,) = load_measurements(write(tmp_path / "l40s.csv", [L40S_ROW.format(size=8, time=9.2)]))
    assert table.launch_gpus == 2
    env = map_table(table, [resolve_env("l40s-pcie-1x2")])
    assert env.nccl_version == "2.29.2" and hardware_class(table, env) == "ada/pcie"


def test_several_files_join_and_a_table_id_used_twice_is_refused(tmp_path):
    a = write(tmp_path / "a.csv", [L40S_ROW.format(size=8, time=9.2)])
    b = write(tmp_path / "b.csv", [G5_ROW.format(size=8, time=150.0)])
    assert [t.table for t in load_measurement_files([a, b])] == ["l40s", "g5"]
    with pytest.raises(InputError) as err:
        load_measurement_files([a, a])
    assert "l40s" in str(err.value) and "a.csv" in str(err.value)


def result(name: str, algo: int, measured: list[float], world: list[float], env) -> TableResult:
    sizes = np.array([1024.0, 1 << 20, 1 << 26])
    table = MeasuredTable(table=name, system="x", nccl_version="2.29.2", coll="allreduce", func=4, algo=algo, proto=-1,
                          gpus_per_node=2, nodes=1, how="", size_bytes=sizes, time_us=np.array(measured),
                          busbw_gbytes_per_s=np.zeros(3))
    n = np.full(3, -1)
    return TableResult(table, env, np.array(world), np.array(world), n, n, n)


def test_fastest_check_uses_the_measured_time_of_the_worlds_pick():
    env = resolve_env("l40s-pcie-1x2")
    ring = result("ring", 1, [10.0, 90.0, 4300.0], [9.0, 95.0, 4400.0], env)
    tree = result("tree", 0, [10.3, 150.0, 4600.0], [9.0, 80.0, 4500.0], env)  # the world wrongly picks Tree at 1 MiB
    (check,) = fastest_checks([ring, tree])
    assert check["sizes"] == 3 and check["ok"] == 2
    small, mid, large = check["rows"]
    assert small["world_pick"] == "ring=tree" and small["excess"] == pytest.approx(0.015)  # a tie: the mean
    assert not mid["ok"] and mid["world_pick"] == "tree" and mid["excess"] == pytest.approx(150 / 90 - 1)
    assert large["ok"] and large["world_pick"] == "ring"
    summary = summarize([ring, tree])
    assert summary["classes"]["ada/pcie"]["tables"] == ["ring", "tree"]
    assert summary["fastest"] == [check]


def test_leave_one_out_keeps_the_tree_ring_order_on_gb200_partitions(tmp_path):
    # NVIDIA/nccl#1801 (3 x NVL8 over IB, 16 GiB): each table predicted from the other two alone.
    rows = ['gb200-ring,"GB200 NVL72: three NVL partitions, IB only",2.27.3,allreduce,default,default,8,3,17179869184,'
            '83650,205.39,393.66,"NCCL_NVLS_ENABLE=0"',
            'gb200-tree,"GB200 NVL72: three NVL partitions, IB only",2.27.3,allreduce,tree,default,8,3,17179869184,'
            '68096,253.40,485.68,"NCCL_NVLS_ENABLE=0"',
            'gb200-4gpu,"4x GB200 (Blackwell, NVLink5), 1 VM",2.25.1,allreduce,ring,default,4,1,1073741824,'
            '2900,370.2,646.87,"all_reduce_perf -g 4"']
    tables = load_measurements(write(tmp_path / "gb.csv", rows))
    specs = [resolve_env("gb200-nvl8-ib-3x8"), resolve_env("gb200-nvl4")]
    loo, folds = leave_one_out(tables, specs, progress=False)
    results = {r.table.table: r for r in loo}
    assert [fold["held_out"] for fold in folds] == ["gb200-ring", "gb200-tree", "gb200-4gpu"]
    assert np.isfinite(results["gb200-ring"].world_time_us).all()
    assert results["gb200-tree"].world_time_us[0] < results["gb200-ring"].world_time_us[0]


# A fold must not see its held-out table: three small tables of three classes, and a planted H100
# table whose 1 KiB row is far slower than the world's priors, so that fitting it pulls the latency
# parameters every class shares (hop_us, base_us).
FOLD_ROWS = [
    'gb200-4gpu,"4x GB200 (Blackwell, NVLink5), 1 VM",2.25.1,allreduce,ring,default,4,1,8192,24.0,,,"-g 4"',
    'gb200-4gpu,"4x GB200 (Blackwell, NVLink5), 1 VM",2.25.1,allreduce,ring,default,4,1,1073741824,2900,,,"-g 4"',
    L40S_ROW.format(size=8, time=9.2), L40S_ROW.format(size=1 << 20, time=160.0),
    'planted,"8x H100 SXM (DGX H100)",2.23.4,allreduce,ring,ll,8,1,1024,200.0,,,"one process per GPU"',
]
FOLD_EVALUATIONS = 4  # small: the test checks what a fold sees, not that it converges


def _held_out_time_us(results, name: str) -> np.ndarray:
    return next(r for r in results if r.table.table == name).world_time_us


@pytest.fixture()
def fold_tables(tmp_path):
    tables = load_measurements(write(tmp_path / "folds.csv", FOLD_ROWS))
    specs = [resolve_env("gb200-nvl4"), resolve_env("l40s-pcie-1x2"), resolve_env("dgx-h100")]
    return tables, specs


def test_a_fold_cannot_see_its_held_out_table(fold_tables, monkeypatch):
    tables, specs = fold_tables
    planted = next(t for t in tables if t.table == "planted")
    rest = [t for t in tables if t is not planted]
    loo, folds = leave_one_out(tables, specs, progress=False, max_evaluations=FOLD_EVALUATIONS)
    held_out = _held_out_time_us(loo, "planted")
    # The fold is calibrate on the other tables, and nothing else.
    without, _ = calibrate(rest, specs, max_evaluations=FOLD_EVALUATIONS)
    np.testing.assert_array_equal(held_out, predict([planted], specs, without)[0].world_time_us)
    # The planted row does pull the shared latencies: a fit that saw it predicts it much slower.
    with_planted, _ = calibrate(tables, specs, max_evaluations=FOLD_EVALUATIONS)
    seen = predict([planted], specs, with_planted)[0].world_time_us
    assert seen[0] > 1.5 * held_out[0]
    # Nor does a fold start from the shipped parameters: poisoning them changes no fold.
    poisoned = world.default_params()
    poisoned.hop_us, poisoned.base_us, poisoned.nvls_us = [9.0, 9.0, 9.0], [39.0, 39.0, 39.0], 59.0
    poisoned.link_efficiency = {k: 0.41 for k in poisoned.link_efficiency}
    monkeypatch.setattr(world, "_DEFAULT", poisoned)
    assert world.default_params().base_us == [39.0, 39.0, 39.0]
    again, _ = leave_one_out(tables, specs, progress=False, max_evaluations=FOLD_EVALUATIONS)
    for before, after in zip(loo, again):
        np.testing.assert_array_equal(before.world_time_us, after.world_time_us)


def test_every_fitted_parameter_starts_from_a_literature_prior(fold_tables):
    tables, specs = fold_tables
    start = world.prior_params()
    free = _free_parameters(predict(tables, specs, start))
    assert {"hop_us", "base_us", "launch_gap_us", "link_efficiency"} <= {name for name, *_ in free}
    assert {name for name, *_ in free} <= set(world.PRIORS)
    # The priors are NCCL's own Ring latencies (src/graph/tuning.cc), not a fitted set.
    assert start.hop_us == [0.6, 1.9, 3.4] and start.base_us == [6.6, 14.0, 8.4] and start.nvls_us == 25.0
    assert start.provenance.startswith("unfitted")
