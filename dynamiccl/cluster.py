"""The ``[cluster]`` table of an environment spec (``envs/*.toml``): GPUs and how many per node.

This is the part of an environment spec the workload generator needs (GPU peak for compute time,
GPUs per node for the nodes each group spans). The cost model reads the rest of the spec.

Keys (contract)::

    [cluster]
    gpu = "H100-SXM"           # a name from dynamiccl.gpus (its peak FLOPS and HBM bandwidth)
    arch = "hopper"            # volta | ampere | hopper | blackwell
    sm_count = 132
    hbm_gbytes_per_s = 3350
    gpus_per_node = 8
    nodes = 2
    peak_bf16_tflops = 989.4   # optional: overrides the catalog's dense BF16 peak
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from dynamiccl.errors import InputError
from dynamiccl.gpus import GPUSpec, gpu_spec

ARCHS = ("volta", "ampere", "hopper", "blackwell")


@dataclass(frozen=True)
class ClusterSpec:
    gpu: GPUSpec
    gpus_per_node: int
    nodes: int

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes


def _number(table: dict, key: str, source: str, integer: bool) -> float:
    value = table[key]
    if (isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or value <= 0
            or not math.isfinite(value)):  # TOML allows nan and inf
        kind = "a positive integer" if integer else "a positive number"
        raise InputError(source, f"cluster.{key}", f"expected {kind}, got {value!r}")
    return value


def cluster_from_dict(obj: dict, source: str) -> ClusterSpec:
    """Parse the ``[cluster]`` table of a parsed environment spec.

    Raises:
        InputError: naming ``source`` and the ``cluster.<key>`` that is missing or wrong.
    """
    table = obj.get("cluster")
    if not isinstance(table, dict):
        raise InputError(source, "cluster", "missing [cluster] table")
    known = {"gpu", "arch", "sm_count", "hbm_gbytes_per_s", "gpus_per_node", "nodes", "peak_bf16_tflops"}
    for key in table:
        if key not in known:
            raise InputError(source, f"cluster.{key}", f"unknown key; expected some of {', '.join(sorted(known))}")
    for key in ("gpu", "gpus_per_node", "nodes"):
        if key not in table:
            raise InputError(source, f"cluster.{key}", "missing (required)")
    if not isinstance(table["gpu"], str):
        raise InputError(source, "cluster.gpu", f"expected a GPU name string, got {table['gpu']!r}")
    spec = gpu_spec(table["gpu"], source, "cluster.gpu")
    if "arch" in table and table["arch"] not in ARCHS:
        raise InputError(source, "cluster.arch", f"expected one of {', '.join(ARCHS)}, got {table['arch']!r}")
    changes = {}
    if "arch" in table:
        changes["arch"] = table["arch"]
    if "sm_count" in table:
        changes["sm_count"] = int(_number(table, "sm_count", source, integer=True))
    if "hbm_gbytes_per_s" in table:
        changes["hbm_gbytes_per_s"] = float(_number(table, "hbm_gbytes_per_s", source, integer=False))
    if "peak_bf16_tflops" in table:
        changes["peak_bf16_tflops"] = float(_number(table, "peak_bf16_tflops", source, integer=False))
    if changes:
        spec = GPUSpec(**{**spec.__dict__, **changes})
    return ClusterSpec(gpu=spec, gpus_per_node=int(_number(table, "gpus_per_node", source, integer=True)),
                       nodes=int(_number(table, "nodes", source, integer=True)))


def read_spec_toml(path: str | os.PathLike) -> tuple[dict, str]:
    """Parse an environment spec file; returns (document, source name).

    Raises:
        InputError: the file cannot be read, is not UTF-8 or is not TOML.
    """
    source = os.fspath(path)
    try:
        return tomllib.loads(Path(source).read_text(encoding="utf-8")), source
    except OSError as exc:
        raise InputError(source, None, f"cannot read environment spec ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise InputError(source, None, f"not UTF-8 text (byte {exc.start}); TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(source, None, f"not valid TOML ({exc})") from None


def load_cluster(path: str | os.PathLike) -> ClusterSpec:
    """Read the ``[cluster]`` table of an environment spec file; raises ``InputError``."""
    return cluster_from_dict(*read_spec_toml(path))
