"""`dynamiccl import nccl-tests`: raw nccl-tests output from public issue threads
(tests/fixtures/nccl-tests/, sources in its README) into the measurements CSV that validate and
calibrate read. Every expected number below is the fixture's own row, read off the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamiccl.cli import main
from dynamiccl.costmodel.measurements import load_measurements
from dynamiccl.costmodel.nccl_tests_log import ImportOptions, import_logs, parse_log, version_from_code
from dynamiccl.errors import InputError
from dynamiccl.nccl import KEEP, Func

FIXTURES = Path(__file__).parent / "fixtures" / "nccl-tests"


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def rows_of(table) -> list[tuple]:
    return [(r["size_bytes"], r["time_us"], r["algbw_gbytes_per_s"], r["busbw_gbytes_per_s"]) for r in table.rows]


def test_every_fixture_is_listed_with_its_public_source():
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    for path in FIXTURES.glob("*.txt"):
        line = next((row for row in readme.splitlines() if f"`{path.name}`" in row), "")
        assert "https://github.com/NVIDIA/" in line, path.name


def test_out_of_place_columns_by_default_in_place_on_request_and_the_logs_forced_algorithm():
    options = ImportOptions(system="H100 SXM, 1 GPU per node, 4 NICs", gpus_per_node=1, nodes=2)
    (table,), warnings = import_logs([fixture("nvidia-nccl-tests-232.txt")], options)
    assert rows_of(table) == [(2097152, 113.2, 18.53, 18.53), (4194304, 154.4, 27.16, 27.16),
                              (8388608, 231.4, 36.24, 36.24), (16777216, 420.5, 39.9, 39.9),
                              (33554432, 812.3, 41.31, 41.31)]
    assert (table.coll, table.algo, table.proto) == ("allreduce", "tree", "default")  # -x NCCL_ALGO=Tree
    assert "out-of-place columns" in table.how and "NCCL_ALGO=Tree" in table.how
    cut = [w for w in warnings if "line 14" in w]
    assert len(cut) == 1 and "cut short" in cut[0] and "kept the 5 complete row(s)" in cut[0]
    (in_place,), _ = import_logs([fixture("nvidia-nccl-tests-232.txt")], ImportOptions(
        system="H100 SXM", gpus_per_node=1, nodes=2, in_place=True))
    assert rows_of(in_place)[0] == (2097152, 93.35, 22.46, 22.46) and "in-place columns" in in_place.how


def test_rows_whose_data_check_failed_are_refused_and_named():
    options = ImportOptions(system="DGX-H100 + DGX-A100, 1 GPU each, 100GbE", gpus_per_node=1, nodes=2,
                            nccl_version="2.18.3")
    (table,), warnings = import_logs([fixture("nvidia-nccl-1184.txt")], options)
    assert rows_of(table) == [(8, 130.1, 0.0, 0.0), (262144, 325.1, 0.81, 0.81)]
    refused = [w for w in warnings if "line 10" in w]
    assert len(refused) == 1 and "size 524288" in refused[0] and "#wrong 237858" in refused[0]
    assert any("line 8: '...'" in w for w in warnings)                    # rows the poster left out
    assert any("line 11" in w and "cut short" in w for w in warnings)     # "     1048576"
    assert (table.proto, table.nccl_version) == ("simple", "2.18.3")      # NCCL_PROTO=SIMPLE in the prose


def test_one_process_driving_eight_gpus_is_costed_with_that_launch_mode(tmp_path):
    out = tmp_path / "m.csv"
    assert main(["import", "nccl-tests", fixture("nvidia-nccl-318.txt"), "--system", "AWS p3dn.24xlarge",
                 "-o", str(out)]) == 0
    (measured,) = load_measurements(out)
    assert measured.launch_gpus == 8 and (measured.gpus_per_node, measured.nodes) == (8, 1)  # from the device lines
    assert "Tesla V100-SXM2-32GB" in measured.system                      # --system lacked the GPU
    assert list(measured.size_bytes) == [8] and list(measured.time_us) == [59.98]  # old `error` 2e-07: kept
    with pytest.raises(InputError, match=r"line 8: the log's devices list 8 rank\(s\) on 1 host\(s\), but "
                                         r"--gpus-per-node 4 x --nodes 1 = 4"):
        import_logs([fixture("nvidia-nccl-318.txt")], ImportOptions(gpus_per_node=4, nodes=1))


def test_old_broadcast_header_command_line_and_an_unmodelled_nccl_version():
    (table,), warnings = import_logs([fixture("nvidia-nccl-tests-82.txt")], ImportOptions())
    assert rows_of(table) == [(8, 45.82, 0.0, 0.0)]
    assert (table.coll, table.algo, table.proto) == ("broadcast", "ring", "simple")  # ./build/broadcast_perf, -x ...
    assert (table.gpus_per_node, table.nodes) == (1, 2)                   # two hosts, one device each
    assert table.system == "Tesla V100-PCIE-16GB, 1 per node, 2 nodes"
    assert table.nccl_version.startswith("unknown (NCCL 2.9.6")          # costed with its spec's version
    assert "data not checked (-c 0)" in table.how and "root 0" in table.how
    assert any("NCCL 2.9.6 is outside the modelled" in w for w in warnings)


def test_newest_preamble_names_the_collective_and_the_nccl_library():
    assert version_from_code(23102) == "2.31.2" and version_from_code(22703) == "2.27.3"
    assert version_from_code(2708) == "2.7.8"                             # NCCL_VERSION_CODE before 2.9
    (run,) = parse_log(Path(fixture("nvidia-dgx-spark-playbooks-103.txt")).read_text(), "f")
    assert run.tests_version == "2.20.0" and run.binaries[0][:1] == ("all_reduce",)
    assert [(d.rank, d.host, d.gpu) for d in run.devices] == [(0, "spark-d708", "NVIDIA GB10"),
                                                              (1, "spark-dbf4", "NVIDIA GB10")]
    assert [r.size_bytes for r in run.rows] == [8192, 16384, 32768, 65536] and run.cut_rows == [17]
    with pytest.raises(InputError, match=r"line 3: the log ran all_reduce_perf \(allreduce\), but --coll says allgather"):
        import_logs([fixture("nvidia-dgx-spark-playbooks-103.txt")], ImportOptions(coll="allgather"))


def test_size_zero_rows_are_skipped_and_a_collective_named_only_in_prose_needs_coll():
    options = ImportOptions(system="unknown GPU", gpus_per_node=4, nodes=2)
    with pytest.raises(InputError, match=r"line 5: the log names no nccl-tests binary.*give --coll"):
        import_logs([fixture("nvidia-nccl-tests-128.txt")], options)
    (table,), warnings = import_logs([fixture("nvidia-nccl-tests-128.txt")], ImportOptions(
        system="unknown GPU", gpus_per_node=4, nodes=2, coll="reduce_scatter"))
    assert table.coll == "reducescatter" and rows_of(table) == [(128, 32.31, 0.0, 0.0), (256, 24.01, 0.01, 0.01)]
    assert any("lines 7, 8, 9, 10, 11: size 0 rows skipped" in w for w in warnings)


def test_several_logs_in_one_file_keep_their_own_settings(tmp_path):
    joined = tmp_path / "runs.log"
    joined.write_text("".join(Path(fixture(name)).read_text() for name in
                              ("nvidia-nccl-tests-232.txt", "nvidia-nccl-tests-82.txt")))
    tables, _ = import_logs([joined], ImportOptions(system="H100 SXM and V100 PCIe", gpus_per_node=1, nodes=2))
    assert [(t.table, t.coll, t.algo, t.proto, len(t.rows)) for t in tables] == [
        ("runs-allreduce", "allreduce", "tree", "default", 5), ("runs-broadcast", "broadcast", "ring", "simple", 1)]


def test_bad_input_is_named_by_file_line_and_column(tmp_path):
    text = Path(fixture("nvidia-nccl-tests-232.txt")).read_text()
    bad = tmp_path / "bad.log"
    bad.write_text(text.replace("154.4   27.16", "154.4   fast!"))
    options = ImportOptions(system="H100", gpus_per_node=1, nodes=2)
    with pytest.raises(InputError, match=r"bad.log: line 10, column algbw: expected a finite number >= 0, got 'fast!'"):
        import_logs([bad], options)
    bad.write_text(text.replace("812.3   41.31   41.31      0", "812.3   41.31   41.31      0   0"))
    with pytest.raises(InputError, match=r"line 13: expected 13 columns as the header at line 7 has, got 14"):
        import_logs([bad], options)
    # busbw/algbw = 1 is AllReduce on 2 ranks; 16 ranks would print 1.875
    with pytest.raises(InputError, match=r"line 9: busbw/algbw = 1.0000, but allreduce on 16 rank\(s\) has "
                                         r"nccl-tests' bus factor 1.8750"):
        import_logs([fixture("nvidia-nccl-tests-232.txt")], ImportOptions(system="H100", gpus_per_node=8, nodes=2))
    # the same rank printed by two processes: nccl-tests without MPI under mpirun (each timed alone)
    device = "#   Rank  7 Pid  23638 on ip-10-0-26-117 device  7 [0x00] Tesla V100-SXM2-32GB\n"
    bad.write_text(Path(fixture("nvidia-nccl-318.txt")).read_text().replace(
        device, device + device.replace("Rank  7 Pid  23638", "Rank  7 Pid  23639")))
    with pytest.raises(InputError, match=r"line 16: rank 7 is listed again \(first at line 15\) by another process"):
        import_logs([bad], ImportOptions())
    bad.write_text(text.replace("./all_reduce_perf", "./gather_perf"))
    with pytest.raises(InputError, match=r"line 3: gather_perf: its collective is not costed by any cost model"):
        import_logs([bad], options)
    with pytest.raises(InputError, match=r"--coll: unknown collective 'allgatherv'"):
        import_logs([fixture("nvidia-nccl-tests-128.txt")], ImportOptions(system="x", gpus_per_node=4, nodes=2,
                                                                           coll="allgatherv"))
    with pytest.raises(InputError, match=r"NCCL_ALGO=Tree, but --algo says ring"):
        import_logs([fixture("nvidia-nccl-tests-232.txt")], ImportOptions(system="H100", gpus_per_node=1, nodes=2,
                                                                           algo="ring"))


def test_options_of_one_kind_of_import_are_refused_for_the_other(tmp_path, capsys):
    out = str(tmp_path / "x.csv")
    assert main(["import", "nccl-tests", fixture("nvidia-nccl-tests-82.txt"), "--trust-pickle", "-o", out]) == 2
    assert "--trust-pickle: only for trace formats" in capsys.readouterr().err
    assert main(["import", "kineto", fixture("nvidia-nccl-tests-82.txt"), "--system", "H100", "-o", out]) == 2
    assert "--system: only for `import nccl-tests`, not for `import kineto`" in capsys.readouterr().err
    assert not Path(out).exists()


def test_headerless_rows_import_then_validate_and_calibrate_end_to_end(tmp_path, capsys):
    out = tmp_path / "h100.csv"
    assert main(["import", "nccl-tests", fixture("nvidia-nccl-1469.txt"), "--system", "H100 SXM, 16 nodes, IB",
                 "--gpus-per-node", "8", "--nodes", "16", "--coll", "allreduce", "--nccl-version", "2.20.5",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert "no column header before these rows" in printed.err
    assert "nvidia-nccl-1469-allreduce: costed on spec h100-ib-16x8" in printed.out
    (measured,) = load_measurements(out)
    assert list(measured.size_bytes) == [8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    assert list(measured.time_us) == [72.01, 62.15, 62.18, 62.39, 62.38, 73.17, 67.39, 73.73, 76.84]
    assert list(measured.busbw_gbytes_per_s)[-3:] == [0.02, 0.03, 0.05] and measured.nccl_version == "2.20.5"
    assert main(["validate", "--measurements", str(out), "--plot", str(tmp_path / "v.png"),
                 "--json", str(tmp_path / "v.json")]) == 0
    report = capsys.readouterr().out
    assert "nvidia-nccl-1469-allreduce h100-ib-16x8   2.20.5  allreduce           9" in report
    assert (tmp_path / "v.png").stat().st_size > 0
    assert main(["calibrate", "--measurements", str(out), "-o", str(tmp_path / "fit.json")]) == 0
    assert "nvidia-nccl-1469-allreduce" in capsys.readouterr().out and (tmp_path / "fit.json").stat().st_size > 0


# nccl-tests' current header and row formats (NVIDIA/nccl-tests src/util.cu writeResultHeader,
# writeBenchmarkLinePreamble, writeBenchmarkLineBody, writePerIterReport) and the 2024 side-work one
# (src/common.cu at 7bd5758), filled the way nccl-tests fills them.
_LEAD = "# %10s  %12s  %8s  %6s  %6s" % ("size", "count", "type", "redop", "root")
_ROW_LEAD = "%12li  %12li  %8s  %6s  %6s" % (1048576, 262144, "float", "sum", "-1")


@pytest.mark.parametrize("header, body, time_name", [
    (_LEAD + "  %7s  %6s  %6s  %6s  %7s  %6s  %6s  %6s %*s" % ("time", "algbw", "busbw", "#wrong", "time", "algbw",
                                                          "busbw", "#wrong", 0, ""),
     "  %7s  %6s  %6s  %6g" % ("27.76", "37.78", "66.11", 0) + "  %7s  %6s  %6s  %6g" % ("27.49", "38.15", "66.76", 0),
     "time"),
    (_LEAD + "  %7s  %6s  %6s  %6s  %7s  %6s  %6s  %6s %*s" % ("cputime", "algbw", "busbw", "#wrong", "cputime", "algbw",
                                                          "busbw", "#wrong", 19, "timestamp"),
     "  %7s  %6s  %6s    N/A" % ("27.76", "37.78", "66.11") + "  %7s  %6s  %6s    N/A" % ("27.49", "38.15", "66.76")
     + " 2025-10-28 12:00:00", "cputime"),
    (_LEAD + 2 * ("  %7s  %6s  %6s  %6s  %7s  %7s  %7s  %7s" % ("time", "algbw", "busbw", "#wrong", "i_min", "i_max",
                                                               "i_p99", "i_cv%")),
     ("  %7s  %6s  %6s  %6g" % ("27.76", "37.78", "66.11", 0) + "  %7s  %7s  %7s  %7s" % ("26.10", "30.02", "29.90", "2.10"))
     + ("  %7s  %6s  %6s  %6g" % ("27.49", "38.15", "66.76", 0) + "  %7s  %7s  %7s  %7s" % ("26.0", "29.1", "29.0", "1.9")),
     "time"),
    (_LEAD + "  %7s  %6s  %6s %6s %6s  %7s  %6s  %6s %6s %6s" % ("time", "algbw", "busbw", "copybw", "#wrong", "time",
                                                                "algbw", "busbw", "copybw", "#wrong"),
     "  %7s  %6.2f  %6.2f  %6.2f %5g" % ("27.76", 37.78, 66.11, 12.0, 0) + "  %7s  %6.2f  %6.2f  %6.2f %5g" % (
         "27.49", 38.15, 66.76, 12.0, 0), "time"),
])
def test_every_header_variant_reads_its_out_of_place_group(header, body, time_name):
    text = f"./build/all_reduce_perf -b 1M -e 1M -g 1\n{header}\n{_ROW_LEAD}{body}\n"
    (run,) = parse_log(text, "variant.log")
    assert run.layout.time_name == time_name and run.layout.groups == 2
    (row,) = run.rows
    assert (row.size_bytes, row.time_us, row.algbw_gbytes_per_s, row.busbw_gbytes_per_s) == (1048576, 27.76, 37.78, 66.11)
    (in_place,) = parse_log(text, "variant.log", in_place=True)[0].rows
    assert (in_place.time_us, in_place.busbw_gbytes_per_s) == (27.49, 66.76)


@pytest.mark.parametrize("prefix", ["[1,0]<stdout>:", "0: "])  # mpirun --tag-output, srun -l
def test_launcher_prefixes_and_nccls_own_setting_lines_are_read_through(prefix, tmp_path):
    text = Path(fixture("nvidia-nccl-tests-82.txt")).read_text().replace("-x NCCL_ALGO=Ring -x NCCL_PROTO=Simple ", "")
    text = text.replace("NCCL version 2.9.6+cuda11.2\n", "NCCL version 2.9.6+cuda11.2\n"
                        "v100-gpu-1:14926:14926 [0] NCCL INFO NCCL_ALGO set by environment to Ring\n")
    tagged = tmp_path / "tagged.log"
    tagged.write_text("".join(prefix + line for line in text.splitlines(keepends=True)))
    (table,), _ = import_logs([tagged], ImportOptions())
    assert rows_of(table) == [(8, 45.82, 0.0, 0.0)] and (table.coll, table.algo, table.proto) == ("broadcast", "ring",
                                                                                                   "default")
    assert (table.gpus_per_node, table.nodes) == (1, 2)


def test_the_gpu_named_in_the_device_lines_lets_the_table_find_its_spec(tmp_path):
    from dynamiccl.costmodel.measurements import load_env_dir, map_table
    from dynamiccl.envspec import env_dir

    # the -g 8 fixture with its GPU renamed to one envs/ has a spec for (a synthetic variant, for this piece)
    log = tmp_path / "a100.log"
    text = Path(fixture("nvidia-nccl-318.txt")).read_text()
    log.write_text(text.replace("Tesla V100-SXM2-32GB", "NVIDIA A100-SXM4-80GB"))
    out = tmp_path / "a100.csv"
    assert main(["import", "nccl-tests", str(log), "--system", "one 8-GPU node", "--nccl-version", "2.23.4",
                 "-o", str(out)]) == 0
    (measured,) = load_measurements(out)
    assert measured.system == "one 8-GPU node (NVIDIA A100-SXM4-80GB from the log's device list)"
    spec = map_table(measured, load_env_dir(env_dir()))
    assert spec.name == "dgx-a100" and spec.nccl_version == "2.23.4" and measured.launch_gpus == 8


def test_sendrecv_checked_out_of_place_only_is_a_point_to_point_table(tmp_path):
    out = tmp_path / "sendrecv.csv"
    assert main(["import", "nccl-tests", fixture("nvidia-nccl-tests-214.txt"), "--coll", "sendrecv", "--nccl-version",
                 "2.21.5", "-o", str(out)]) == 0
    (measured,) = load_measurements(out)
    assert (measured.coll, measured.func, measured.algo, measured.gpus_per_node, measured.nodes) == (
        "sendrecv", Func.SEND, KEEP, 1, 2)                               # "p2p": nothing to force
    assert list(measured.size_bytes) == [256, 512, 1024, 2048, 4096]
    assert list(measured.time_us) == [34.24, 34.24, 34.24, 31.58, 30.74]
    assert list(measured.busbw_gbytes_per_s) == [0.01, 0.01, 0.03, 0.06, 0.13]
    assert "data checked" in measured.how and measured.system == "NVIDIA A40, 1 per node, 2 nodes"
    with pytest.raises(InputError, match="sendrecv runs as point-to-point transfers"):
        import_logs([fixture("nvidia-nccl-tests-214.txt")], ImportOptions(coll="sendrecv", algo="ring"))


def test_the_first_header_printed_milliseconds():
    # NVIDIA/nccl-tests at its initial commit (v1.0.0/v2.0.0): src/all_reduce.cu print_header and
    # print_line_header, src/common.cu's "  %7.3f  %5.2f  %5.2f  %7.0le" with the time as deltaSec * 1.0E3
    header = "# %10s  %12s  %6s  %6s  %7s  %5s  %5s  %7s  %7s  %5s  %5s  %7s" % (
        "bytes", "N", "type", "op", "time", "algbw", "busbw", "res", "time", "algbw", "busbw", "res")
    row = "%12li  %12li  %6s  %6s" % (4194304, 1048576, "float", "sum") + \
        "  %7.3f  %5.2f  %5.2f  %7.0le" % (0.120, 34.95, 61.16, 2e-07) * 2
    device = "#   Rank %2d on %10s device %2d [0x%02x] %s" % (0, "dgx1", 0, 6, "Tesla V100-SXM2-16GB")  # no Pid yet
    (run,) = parse_log(f"./build/all_reduce_perf -b 4M -e 4M -g 8\n{device}\n{header}\n{row}\n", "old.log")
    assert [(d.rank, d.host, d.gpu) for d in run.devices] == [(0, "dgx1", "Tesla V100-SXM2-16GB")]
    (parsed,) = run.rows
    assert (parsed.size_bytes, parsed.time_us, parsed.busbw_gbytes_per_s, parsed.redop) == (4194304, 120.0, 61.16, "sum")
    assert run.layout.wrong_name == "error"
