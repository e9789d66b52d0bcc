"""Tests of dynamiccl.cluster (the [cluster] table of an environment spec) and dynamiccl.gpus.

Expected GPU figures are NVIDIA datasheet values (dense BF16, HBM bandwidth), not the catalog's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamiccl.cluster import cluster_from_dict, load_cluster
from dynamiccl.errors import InputError
from dynamiccl.gpus import gpu_spec

GOOD = """\
# an environment spec: the generator only reads [cluster]
[cluster]
gpu = "H100-SXM"
gpus_per_node = 8
nodes = 2
"""


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "env.toml"
    path.write_text(text, encoding="utf-8")
    return path


def good_table(**changes) -> dict:
    table = {"gpu": "H100-SXM", "gpus_per_node": 8, "nodes": 2}
    table.update(changes)
    return {"cluster": {k: v for k, v in table.items() if v is not None}}


# --- good specs ----------------------------------------------------------------------------------

def test_load_good_spec(tmp_path):
    spec = load_cluster(write_spec(tmp_path, GOOD))
    assert spec.gpu.name == "H100-SXM"
    assert spec.gpu.peak_bf16_tflops == 989.4  # H100 SXM5 datasheet, dense BF16
    assert spec.gpu.hbm_gbytes_per_s == 3350.0  # 3.35 TB/s
    assert spec.gpu.arch == "hopper"
    assert spec.gpu.sm_count == 132
    assert spec.gpus_per_node == 8 and spec.nodes == 2
    assert spec.world_size == 16


def test_load_cluster_ignores_other_tables(tmp_path):
    spec = load_cluster(write_spec(tmp_path, GOOD + "\n[network]\nnic_gbits = 400\n"))
    assert spec.world_size == 16


@pytest.mark.parametrize("key, value, attribute, expected", [
    ("peak_bf16_tflops", 900, "peak_bf16_tflops", 900.0),
    ("peak_bf16_tflops", 756.5, "peak_bf16_tflops", 756.5),
    ("hbm_gbytes_per_s", 4800, "hbm_gbytes_per_s", 4800.0),
    ("arch", "blackwell", "arch", "blackwell"),
    ("sm_count", 114, "sm_count", 114),
])
def test_overrides(key, value, attribute, expected):
    spec = cluster_from_dict(good_table(**{key: value}), "env.toml")
    assert getattr(spec.gpu, attribute) == expected
    assert spec.gpu.name == "H100-SXM"
    # The other catalog figures stay.
    untouched = {"peak_bf16_tflops": 989.4, "hbm_gbytes_per_s": 3350.0, "arch": "hopper", "sm_count": 132}
    del untouched[attribute]
    for name, figure in untouched.items():
        assert getattr(spec.gpu, name) == figure


def test_overrides_do_not_change_the_catalog():
    cluster_from_dict(good_table(peak_bf16_tflops=1.0), "env.toml")
    assert gpu_spec("H100-SXM").peak_bf16_tflops == 989.4


@pytest.mark.parametrize("gpu, name, tflops, hbm", [
    ("A100", "A100-SXM", 312.0, 2039.0),
    ("H200", "H200-SXM", 989.4, 4800.0),
    ("B200", "B200", 2250.0, 8000.0),
])
def test_other_gpus(gpu, name, tflops, hbm):
    spec = cluster_from_dict(good_table(gpu=gpu, gpus_per_node=4, nodes=3), "env.toml")
    assert (spec.gpu.name, spec.gpu.peak_bf16_tflops, spec.gpu.hbm_gbytes_per_s) == (name, tflops, hbm)
    assert spec.world_size == 12


# --- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, key, problem", [
    pytest.param({"gpu": "Z100"}, "cluster.gpu", "unknown GPU 'Z100'", id="unknown-gpu"),
    pytest.param({"gpu": 100}, "cluster.gpu", "GPU name", id="gpu-not-a-string"),
    pytest.param({"gpu": None}, "cluster.gpu", "missing", id="missing-gpu"),
    pytest.param({"nodes": None}, "cluster.nodes", "missing", id="missing-nodes"),
    pytest.param({"gpus_per_node": None}, "cluster.gpus_per_node", "missing", id="missing-gpus_per_node"),
    pytest.param({"nodes": 0}, "cluster.nodes", "positive integer", id="zero-nodes"),
    pytest.param({"nodes": -2}, "cluster.nodes", "positive integer", id="negative-nodes"),
    pytest.param({"nodes": 2.0}, "cluster.nodes", "positive integer", id="float-nodes"),
    pytest.param({"gpus_per_node": "8"}, "cluster.gpus_per_node", "positive integer", id="string-gpus"),
    pytest.param({"gpus_per_node": True}, "cluster.gpus_per_node", "positive integer", id="bool-gpus"),
    pytest.param({"gpus": 8}, "cluster.gpus", "unknown key", id="unknown-key"),
    pytest.param({"arch": "pascal"}, "cluster.arch", "volta, ampere, ada, hopper, blackwell", id="bad-arch"),
    pytest.param({"peak_bf16_tflops": 0}, "cluster.peak_bf16_tflops", "positive number", id="zero-peak"),
    pytest.param({"peak_bf16_tflops": "fast"}, "cluster.peak_bf16_tflops", "positive number",
                 id="string-peak"),
    pytest.param({"hbm_gbytes_per_s": -1.0}, "cluster.hbm_gbytes_per_s", "positive number", id="bad-hbm"),
    pytest.param({"sm_count": 13.5}, "cluster.sm_count", "positive integer", id="float-sm-count"),
])
def test_bad_cluster_table(changes, key, problem):
    with pytest.raises(InputError) as info:
        cluster_from_dict(good_table(**changes), "env.toml")
    err = info.value
    assert err.source == "env.toml" and err.field == key
    assert str(err).startswith(f"env.toml: {key}: ")
    assert problem in str(err)


@pytest.mark.parametrize("text, key, problem", [
    pytest.param(GOOD.replace("nodes = 2\n", ""), "cluster.nodes", "missing", id="missing-nodes"),
    pytest.param(GOOD.replace("nodes = 2", "nodes = 0"), "cluster.nodes", "positive", id="zero-nodes"),
    pytest.param(GOOD.replace("gpus_per_node = 8", 'gpus_per_node = "8"'), "cluster.gpus_per_node",
                 "positive integer", id="string-gpus_per_node"),
    pytest.param(GOOD + "gpus = 8\n", "cluster.gpus", "unknown key", id="unknown-key"),
    pytest.param(GOOD + 'arch = "pascal"\n', "cluster.arch", "pascal", id="bad-arch"),
    pytest.param(GOOD.replace('"H100-SXM"', '"Z100"'), "cluster.gpu", "H100-SXM", id="unknown-gpu"),
    pytest.param("[network]\nnic_gbits = 400\n", "cluster", "missing [cluster]", id="no-cluster-table"),
    pytest.param('cluster = "8xH100"\n', "cluster", "missing [cluster]", id="cluster-not-a-table"),
])
def test_bad_spec_file_names_file_and_key(tmp_path, text, key, problem):
    path = write_spec(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_cluster(path)
    assert str(info.value).startswith(f"{path}: {key}: ")
    assert problem in str(info.value)


def test_invalid_toml(tmp_path):
    path = write_spec(tmp_path, GOOD.replace("nodes = 2", "nodes = = 2"))
    with pytest.raises(InputError) as info:
        load_cluster(path)
    assert str(path) in str(info.value) and "not valid TOML" in str(info.value)


def test_missing_spec_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(InputError) as info:
        load_cluster(path)
    assert str(path) in str(info.value) and "cannot read" in str(info.value)


# --- GPU names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling, name", [
    ("h100", "H100-SXM"),
    ("H100", "H100-SXM"),  # "H100" means the SXM part
    ("H100 SXM", "H100-SXM"),
    ("h100-pcie", "H100-PCIe"),
    ("H100_PCIe", "H100-PCIe"),
    ("A100", "A100-SXM"),
    ("a100-sxm", "A100-SXM"),
    ("H800", "H800-SXM"),
    ("gh200", "GH200"),
    ("GB200", "GB200"),
])
def test_gpu_spec_name_normalisation(spelling, name):
    assert gpu_spec(spelling).name == name


@pytest.mark.parametrize("spelling", ["V100", "H", "", "h100x"])
def test_gpu_spec_unknown(spelling):
    with pytest.raises(InputError) as info:
        gpu_spec(spelling, "--gpu")
    message = str(info.value)
    assert message.startswith("--gpu: ")
    assert "H100-SXM" in message and "A100-SXM" in message  # lists the known GPUs
