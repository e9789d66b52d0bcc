"""The GPU catalog beyond DGX parts, the ``ada`` architecture, and GPUs described by the spec itself.

Expected figures are the NVIDIA datasheet / whitepaper values quoted in ``dynamiccl/gpus.py`` (dense
BF16 = half the "with sparsity" figure), typed in here independently of the catalog.
"""

from __future__ import annotations

import pytest

from dynamiccl.costmodel.nccl_constants import ARCH_INDEX, nvlink_model_gbytes_per_s
from dynamiccl.envspec import env_from_dict
from dynamiccl.errors import InputError
from dynamiccl.gpus import gpu_spec


@pytest.mark.parametrize("name, arch, cc, sms, dense_bf16_tflops, memory_gbytes_per_s", [
    ("L40S", "ada", 89, 142, 362.05, 864.0),       # L40S datasheet (733 with sparsity)
    ("L40", "ada", 89, 142, 181.05, 864.0),        # L40 datasheet (362.1 with sparsity)
    ("L4", "ada", 89, 58, 121.0, 300.0),           # L4 datasheet (242 with sparsity)
    ("RTX 4090", "ada", 89, 128, 165.2, 1008.0),   # Ada whitepaper, FP32 accumulate (330.4 sparse)
    ("RTX 6000 Ada", "ada", 89, 142, 364.2, 960.0),  # Ada whitepaper (1,457 TFLOPS is FP8 sparse)
    ("A40", "ampere", 86, 84, 149.7, 696.0),       # A40 datasheet (299.4 with sparsity)
    ("A10", "ampere", 86, 72, 125.0, 600.0),       # A10 datasheet (250 with sparsity)
    ("A10G", "ampere", 86, 80, 70.0, 600.0),       # AWS G5 (80 SMs), Baseten's A10G table
    ("H20", "hopper", 90, 78, 148.0, 4000.0),
    ("H800-PCIe", "hopper", 90, 114, 756.0, 2000.0),
    ("H100-NVL", "hopper", 90, 132, 835.5, 3900.0),  # H100 datasheet, NVL column (1,671 sparse)
    ("B300", "blackwell", 103, 160, 2250.0, 8000.0),  # HGX B300: 36 PFLOPS sparse / 8 GPUs / 2
    ("GB300", "blackwell", 103, 160, 2500.0, 8000.0),  # GB300 NVL72: 360 PFLOPS sparse / 72 GPUs / 2
])
def test_catalog_figures(name, arch, cc, sms, dense_bf16_tflops, memory_gbytes_per_s):
    gpu = gpu_spec(name)
    assert gpu.name == name and gpu.arch == arch and gpu.compute_capability == cc
    assert gpu.sm_count == sms
    assert gpu.peak_bf16_tflops == dense_bf16_tflops
    assert gpu.hbm_gbytes_per_s == memory_gbytes_per_s


@pytest.mark.parametrize("spelling, name", [
    ("l40s", "L40S"), ("L40", "L40"), ("rtx-4090", "RTX 4090"), ("RTX4090", "RTX 4090"),
    ("rtx_6000_ada", "RTX 6000 Ada"), ("a10g", "A10G"), ("A10", "A10"), ("h100 nvl", "H100-NVL"),
    ("H800", "H800-SXM"), ("h800-pcie", "H800-PCIe"), ("h20", "H20"), ("gb300", "GB300"),
])
def test_new_names_resolve(spelling, name):
    assert gpu_spec(spelling).name == name


def test_ada_uses_amperes_nccl_rows_and_has_no_nvlink():
    # NCCL's compCapIndex distinguishes only < 9.0, 9.0 and 10.0+ (src/graph/tuning.cc).
    assert ARCH_INDEX["ada"] == ARCH_INDEX["ampere"] == 1
    env = env_from_dict({"cluster": {"gpu": "L40S", "gpus_per_node": 8, "nodes": 1}}, "l40s.toml")
    assert env.arch == "ada" and env.compute_capability == 89
    assert env.intra.fabric == "pcie" and env.intra.nvlink_links == 0 and env.intra.nvlink_gbytes_per_s == 0.0
    assert env.intra.pcie_gen == 4 and not env.intra.nvls


def test_ga10x_nvlink_is_what_nccl_models_for_sm86():
    # NVIDIA/nccl src/graph/topo.h: SM86_NVLINK_BW 12.0 (vs 20.0 for sm80, 20.6 sm90, 40.1 sm100+).
    assert nvlink_model_gbytes_per_s(86) == 12.0
    assert nvlink_model_gbytes_per_s(80) == nvlink_model_gbytes_per_s(89) == 20.0
    assert nvlink_model_gbytes_per_s(90) == 20.6
    assert nvlink_model_gbytes_per_s(100) == nvlink_model_gbytes_per_s(103) == 40.1
    a40 = env_from_dict({"cluster": {"gpu": "A40", "gpus_per_node": 8, "nodes": 1}}, "a40.toml")
    assert a40.intra.fabric == "pcie"  # bridge pairs, not an NVLink fabric across the node
    assert (a40.intra.nvlink_links, a40.intra.nvlink_link_gbytes_per_s) == (4, 14.0625)  # 112.5 GB/s bidir


ANY_GPU = {"gpu": "MI-Z 9000", "arch": "ada", "sm_count": 100, "hbm_gbytes_per_s": 1200,
           "peak_bf16_tflops": 400.0, "gpus_per_node": 4, "nodes": 1}


def test_any_gpu_with_its_figures_is_accepted():
    env = env_from_dict({"cluster": dict(ANY_GPU)}, "custom.toml")
    gpu = env.cluster.gpu
    assert (gpu.name, gpu.arch, gpu.sm_count, gpu.hbm_gbytes_per_s, gpu.peak_bf16_tflops) == (
        "MI-Z 9000", "ada", 100, 1200, 400.0)
    assert env.compute_capability == 89 and env.intra.fabric == "pcie"  # the architecture's defaults
    hopper = env_from_dict({"cluster": {**ANY_GPU, "arch": "hopper", "compute_capability": 90}}, "c.toml")
    assert hopper.intra.fabric == "nvswitch" and hopper.intra.nvlink_links == 18


@pytest.mark.parametrize("drop", ["arch", "sm_count", "hbm_gbytes_per_s", "peak_bf16_tflops"])
def test_unknown_gpu_without_its_figures_names_file_field_and_missing_keys(drop):
    cluster = {k: v for k, v in ANY_GPU.items() if k != drop}
    with pytest.raises(InputError) as info:
        env_from_dict({"cluster": cluster}, "envs/custom.toml")
    err = info.value
    assert err.source == "envs/custom.toml" and err.field == "cluster.gpu"
    assert f"missing: cluster.{drop}" in str(err) and "unknown GPU 'MI-Z 9000'" in str(err)


def test_arch_override_drops_the_parts_compute_capability():
    env = env_from_dict({"cluster": {"gpu": "A40", "arch": "ada", "gpus_per_node": 2, "nodes": 1}}, "x.toml")
    assert env.compute_capability == 89
    env = env_from_dict({"cluster": {"gpu": "A40", "compute_capability": 80, "gpus_per_node": 2, "nodes": 1}},
                        "x.toml")
    assert env.compute_capability == 80


def test_bad_compute_capability_is_an_error():
    with pytest.raises(InputError) as info:
        env_from_dict({"cluster": {**ANY_GPU, "compute_capability": 61}}, "x.toml")
    assert info.value.field == "cluster.compute_capability" and "89" in str(info.value)


@pytest.mark.parametrize("gpu, links, pcie_gen", [
    ("H800-SXM", 8, 5),   # H800 datasheet: NVLink 400 GB/s bidirectional = 8 x 25 GB/s per direction
    ("H20", 18, 5),       # NVLink 900 GB/s
    ("B300", 18, 6),      # NVLink5 1.8 TB/s; Blackwell Ultra: PCIe Gen6
    ("GB300", 18, 6),
])
def test_nvlink_and_pcie_defaults_of_new_parts(gpu, links, pcie_gen):
    env = env_from_dict({"cluster": {"gpu": gpu, "gpus_per_node": 8, "nodes": 1}}, "x.toml")
    assert env.intra.fabric == "nvswitch" and env.intra.nvlink_links == links and env.intra.pcie_gen == pcie_gen
