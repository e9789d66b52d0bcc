"""The ``[cluster]`` table of an environment spec (``envs/*.toml``): GPUs and how many per node.

This is the part of an environment spec the workload generator needs (GPU peak for compute time,
GPUs per node for the nodes each group spans). The cost model reads the rest of the spec.

Keys (contract)::

    [cluster]
    gpu = "H100-SXM"           # a name from dynamiccl.gpus (its peak FLOPS and HBM bandwidth), or any
                               # name when arch, sm_count, hbm_gbytes_per_s and peak_bf16_tflops are given
    arch = "hopper"            # volta | ampere | ada | hopper | blackwell
    compute_capability = 90    # optional: x10 (86 for the GA10x parts); default the part's or the arch's
    sm_count = 132
    hbm_gbytes_per_s = 3350
    gpus_per_node = 8
    nodes = 2
    peak_bf16_tflops = 989.4   # optional for a catalog GPU: overrides its dense BF16 peak
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from dynamiccl import schema
from dynamiccl.errors import InputError
from dynamiccl.gpus import ARCHS, COMPUTE_CAPABILITIES, GPUS, GPUSpec, find_gpu

# What a GPU outside the catalog must give (the catalog supplies them for the parts it knows).
GPU_KEYS = ("arch", "sm_count", "hbm_gbytes_per_s", "peak_bf16_tflops")

# Upper bounds that keep per-rank arrays in memory, far above any cluster built: the largest published
# training clusters hold 24,576 GPUs (Meta, "Building Meta's GenAI infrastructure", 2024), and the
# largest NVLink domain announced is 576 GPUs (NVIDIA Vera Rubin NVL576, GTC 2025).
MAX_GPUS_PER_NODE, MAX_NODES = 1024, 65536

CLUSTER = schema.Schema(
    schema.string("gpu", expect="a GPU name string (see dynamiccl.gpus)",
                  help="GPU model; a catalog part gives the defaults of the other GPU fields"),
    schema.choice("arch", ARCHS, None, help="GPU architecture (default: the GPU's)"),
    schema.choice("compute_capability", COMPUTE_CAPABILITIES, None,
                  help="compute capability x10 (default: the GPU's, else the architecture's)"),
    schema.integer("sm_count", None, low=0, low_inclusive=False, help="streaming multiprocessors per GPU"),
    schema.number("hbm_gbytes_per_s", None, low=0, low_inclusive=False, help="HBM bandwidth, GB/s"),
    schema.integer("gpus_per_node", low=1, high=MAX_GPUS_PER_NODE, help="GPUs per node",
                   expect=f"a positive integer (an integer >= 1 and <= {MAX_GPUS_PER_NODE})"),
    schema.integer("nodes", low=1, high=MAX_NODES, help="nodes",
                   expect=f"a positive integer (an integer >= 1 and <= {MAX_NODES})"),
    schema.number("peak_bf16_tflops", None, low=0, low_inclusive=False,
                  help="dense BF16 peak (default: the GPU's datasheet figure)"),
)
_CLUSTER_ONLY = schema.Schema(schema.table("cluster", CLUSTER))


@dataclass(frozen=True)
class ClusterSpec:
    gpu: GPUSpec
    gpus_per_node: int
    nodes: int

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes


def cluster_from_dict(obj: dict, source: str) -> ClusterSpec:
    """Parse the ``[cluster]`` table of a parsed environment spec (other tables are not looked at).

    Raises:
        InputError: naming ``source`` and the ``cluster.<key>`` that is missing or wrong.
    """
    return cluster_from_values(_CLUSTER_ONLY.parse({"cluster": obj["cluster"]} if "cluster" in obj else {},
                                                   source)["cluster"], source)


def cluster_from_values(values: dict, source: str) -> ClusterSpec:
    """The :class:`ClusterSpec` of ``[cluster]`` values checked by :data:`CLUSTER`.

    A GPU outside the catalog is described by the spec itself: it must give every key of
    :data:`GPU_KEYS`; its NVLink and PCIe defaults are its architecture's.

    Raises:
        InputError: a GPU outside the catalog without all of :data:`GPU_KEYS` (naming ``source``,
            ``cluster.gpu`` and the missing keys).
    """
    spec = find_gpu(values["gpu"])
    if spec is None:
        missing = [f"cluster.{key}" for key in GPU_KEYS if key not in values]
        if missing:
            raise InputError(source, "cluster.gpu",
                             f"unknown GPU {values['gpu']!r} (catalog: {', '.join(GPUS)}); describe it "
                             f"with {', '.join('cluster.' + k for k in GPU_KEYS)} (missing: {', '.join(missing)})")
        spec = GPUSpec(values["gpu"], **{key: values[key] for key in GPU_KEYS})
    changes = {key: values[key] for key in GPU_KEYS if key in values}
    if "arch" in changes and changes["arch"] != spec.arch:
        changes["cc"] = None  # another architecture: its compute capability, not the part's
    if "compute_capability" in values:
        changes["cc"] = values["compute_capability"]
    return ClusterSpec(gpu=replace(spec, **changes), gpus_per_node=values["gpus_per_node"], nodes=values["nodes"])


def read_spec_toml(path: str | os.PathLike) -> tuple[dict, str]:
    """Parse an environment spec file; returns (document, source name).

    Raises:
        InputError: the file cannot be read, is not UTF-8 or is not TOML.
    """
    return schema.read_toml(path, "environment spec"), os.fspath(path)


def load_cluster(path: str | os.PathLike) -> ClusterSpec:
    """Read the ``[cluster]`` table of an environment spec file; raises ``InputError``."""
    return cluster_from_dict(*read_spec_toml(path))
