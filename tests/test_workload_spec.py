"""WorkloadSpec: one workload-to-trace path for `generate`, experiment cases, TuningEnv and the demo.

The regression this guards: a case's workload was generated with H100 compute whatever cluster the
case ran on, so an A100 case was replayed with compute ~3.2x too fast (989.4 vs 312 dense BF16
TFLOPS, the two datasheets).
"""

from __future__ import annotations

import math

import pytest

from dynamiccl.cli import main
from dynamiccl.envspec import resolve_env
from dynamiccl.errors import InputError, LayoutError
from dynamiccl.trace.store import Trace
from dynamiccl.tuning.config import load_config
from dynamiccl.workload.layout import ParallelLayout
from dynamiccl.workload.spec import WORKLOAD, WorkloadSpec

SMALL = {"model": "llama3-8b", "tp": 2, "pp": 1, "dp": 4, "global_batch": 8}


def compute_us(trace: Trace) -> float:
    ops = trace.ops
    return float(ops.loc[ops["kind"] == "compute", "duration_us"].sum())


def test_a_case_on_an_a100_cluster_gets_a100_compute(tmp_path):
    spec = WorkloadSpec.from_dict(SMALL, "test")
    a100 = Trace.read(spec.cached_trace(tmp_path, resolve_env("dgx-a100").cluster))
    h100 = Trace.read(spec.cached_trace(tmp_path, resolve_env("dgx-h100").cluster))
    assert a100.meta.compute["gpu"] == "A100-SXM" and a100.meta.compute["peak_bf16_tflops"] == 312
    assert h100.meta.compute["gpu"] == "H100-SXM" and h100.meta.compute["peak_bf16_tflops"] == pytest.approx(989.4)
    # The GEMM-bound part scales with the peak; memory-bound optimizer work with HBM bandwidth.
    ratio = compute_us(a100) / compute_us(h100)
    assert 2.0 < ratio < 989.4 / 312 + 1e-9


def test_experiment_cases_are_generated_on_their_own_cluster(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text(
        '[experiment]\nname = "x"\n[train]\ntotal_timesteps = 10\n'
        '[[train.cases]]\nworkload = { model = "llama3-8b", tp = 2, pp = 1, dp = 4, global_batch = 8 }\n'
        'env = "dgx-a100"\n'
        '[[train.cases]]\nworkload = { model = "llama3-8b", tp = 2, pp = 1, dp = 4, global_batch = 8 }\n'
        'env = "dgx-h100"\n', encoding="utf-8")
    cases = load_config(config).train_cases(tmp_path / "run")
    gpus = [Trace.read(case.trace).meta.compute["gpu"] for case in cases]
    assert gpus == ["A100-SXM", "H100-SXM"]
    assert cases[0].trace != cases[1].trace  # the same workload on two clusters: two traces


def test_node_size_comes_from_the_cluster():
    env = resolve_env("gh200-4x4")
    spec = WorkloadSpec.from_dict({"model": "llama3-8b", "tp": 4, "dp": 4, "global_batch": 16}, "test")
    assert spec.placed_layout(env.cluster).gpus_per_node == 4
    assert spec.placed_layout(None).gpus_per_node == 8
    pinned = WorkloadSpec.from_dict({"model": "llama3-8b", "gpus_per_node": 2}, "test")
    assert pinned.placed_layout(env.cluster).gpus_per_node == 2


def test_workload_names_override_the_cluster():
    cluster = resolve_env("dgx-a100").cluster
    assert WorkloadSpec("llama3-8b", gpu="H100-SXM").compute_rate(cluster).gpu == "H100-SXM"
    rate = WorkloadSpec("llama3-8b", peak_tflops=100.0, efficiency=0.5).compute_rate(cluster)
    assert (rate.gpu, rate.peak_tflops, rate.efficiency, rate.hbm_gbytes_per_s) == ("A100-SXM", 100.0, 0.5, 2039.0)
    assert WorkloadSpec("llama3-8b").compute_rate(None).gpu == "H100-SXM"


def test_round_trip_and_every_key_documented():
    spec = WorkloadSpec.from_dict({"model": "llama3-70b", "tp": 8, "pp": 4, "dp": 2, "sp": True, "vpp": 2,
                                   "dp_mode": "fsdp", "efficiency": 0.3, "gpu": "B200"}, "test")
    assert WorkloadSpec.from_dict(spec.to_dict(), "again") == spec
    assert set(spec.to_dict()) == set(WORKLOAD.names)
    assert spec.layout == ParallelLayout(tp=8, pp=4, dp=2, sp=True, vpp=2, dp_mode="fsdp", gpus_per_node=0)


@pytest.mark.parametrize("table, field, words", [
    ({"tp": 2}, "model", "missing"),
    ({"model": "llama3-8b", "tensor_parallel": 2}, "tensor_parallel", "unknown key"),
    ({"model": "llama3-8b", "tp": 0}, "tp", ">= 1"),
    ({"model": "llama3-8b", "sp": 1}, "sp", "true or false"),
    ({"model": "llama3-8b", "dp_mode": "zero"}, "dp_mode", "ddp, megatron, distopt, fsdp"),
    ({"model": "llama3-8b", "efficiency": 1.5}, "efficiency", "<= 1"),
    ({"model": "llama3-8b", "peak_tflops": math.nan}, "peak_tflops", "a number"),
])
def test_bad_workload_tables_name_the_key(table, field, words):
    with pytest.raises(InputError) as info:
        WorkloadSpec.from_dict(table, "exp.toml")
    assert (info.value.source, info.value.field) == ("exp.toml", field)
    assert words in str(info.value)


def test_a_layout_the_model_cannot_run_fails_before_generating(tmp_path):
    with pytest.raises(LayoutError, match="not divisible by TP 3"):
        WorkloadSpec.from_dict({"model": "llama3-8b", "tp": 3}, "test").cached_trace(tmp_path, None)
    assert not list(tmp_path.iterdir())


def test_generate_with_an_env_uses_its_gpu(tmp_path):
    out = tmp_path / "a100.parquet"
    assert main(["generate", "--model", "llama3-8b", "--tp", "2", "--pp", "1", "--dp", "4", "--global-batch", "8",
                 "--env", "dgx-a100", "-o", str(out)]) == 0
    meta = Trace.read(out).meta
    assert meta.compute["gpu"] == "A100-SXM" and meta.gpus_per_node == 8


def test_unknown_model_or_gpu_in_a_config_names_the_config_and_key(tmp_path):
    config = tmp_path / "exp.toml"
    for workload, key, words in (('{ model = "llama-7" }', "model", "unknown model 'llama-7'"),
                                 ('{ model = "llama3-8b", gpu = "Z100" }', "gpu", "unknown GPU 'Z100'")):
        config.write_text(f'[train]\n[[train.cases]]\nworkload = {workload}\nenv = "dgx-h100"\n', encoding="utf-8")
        with pytest.raises(InputError) as info:  # when the config is read, before any work
            load_config(config)
        assert (info.value.source, info.value.field) == (str(config), f"train.cases[0].workload.{key}")
        assert words in str(info.value)


def test_a_layout_the_model_cannot_run_names_the_case(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text('[train]\n[[train.cases]]\nworkload = { model = "llama3-8b", tp = 3 }\nenv = "dgx-h100"\n',
                      encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_config(config).train_cases(tmp_path / "run")
    assert (info.value.source, info.value.field) == (str(config), "train.cases[0].workload")
    assert "not divisible by TP 3" in str(info.value)


def test_a_model_file_error_names_the_model_file_not_a_flag(tmp_path, capsys):
    model = tmp_path / "bad.toml"
    model.write_text('[model]\nname = "bad"\n', encoding="utf-8")
    assert main(["generate", "--model", str(model), "--tp", "1", "--pp", "1", "--dp", "1",
                 "-o", str(tmp_path / "x.parquet")]) == 2
    assert f"{model}: model.num_layers: missing" in capsys.readouterr().err


def test_generate_argv_reproduces_the_workload(tmp_path):
    from dynamiccl.workload.spec import generate_argv

    spec = WorkloadSpec.from_dict({"model": "llama3-8b", "tp": 2, "pp": 2, "dp": 2, "sp": True, "global_batch": 16,
                                   "overlap_grad_reduce": False, "efficiency": 0.5}, "test")
    argv = generate_argv(spec, "dgx-a100")
    assert argv[:3] == ["generate", "--model", "llama3-8b"] and "--no-overlap-grad-reduce" in argv
    out = tmp_path / "t.parquet"
    assert main([*argv, "-o", str(out)]) == 0
    expected = spec.generate(resolve_env("dgx-a100").cluster)
    got = Trace.read(out)
    assert got.meta.workload["layout"] == expected.meta.workload["layout"]
    assert got.meta.compute == expected.meta.compute
