"""``WorkloadSpec``: the one description of a training step to generate.

A workload is a model, its parallel layout (:class:`~dynamiccl.workload.layout.ParallelLayout`:
sizes, batch, sequence, data-parallel mode, dtypes) and how fast its compute runs. The compute rate
and the node size come from the cluster the step runs on -- the ``[cluster]`` of the environment
spec (its GPU, that GPU's dense BF16 peak and HBM bandwidth, GPUs per node) -- unless the workload
names them itself. ``dynamiccl generate``, the cases of an experiment config (``workload = {...}``),
``TuningEnv``'s default case and the demo all go through :meth:`WorkloadSpec.generate`, so a case on
an A100 cluster is replayed with A100 compute.

Keys of a ``workload`` table (and the flags of ``dynamiccl generate``; see :data:`WORKLOAD`)::

    model = "llama3-8b"      # built-in name or a model TOML file       (required)
    tp = 2  pp = 1  dp = 8  cp = 1  ep = 1  etp = 0  vpp = 1  sp = true
    micro_batch = 1  global_batch = 64  seq_len = 0            # 0: the model's
    dp_mode = "distopt"  dtype = "bf16"  grad_reduce_dtype = ""  # "": fp32
    overlap_grad_reduce = true  reshard_after_forward = true
    first_stage_layers = 0  last_stage_layers = 0
    gpu = ""                 # "": the environment's GPU (H100-SXM without an environment)
    gpus_per_node = 0        # 0: the environment's (8 without one)
    peak_tflops = 0          # 0: the GPU's dense BF16 peak (the environment's override, if any)
    efficiency = 0.45        # fraction of peak the GEMMs reach (a typical MFU)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dynamiccl import schema
from dynamiccl.cluster import ClusterSpec
from dynamiccl.errors import InputError
from dynamiccl.gpus import DEFAULT_GPU, gpu_spec
from dynamiccl.workload.layout import ACT_DTYPES, DP_MODES, GRAD_DTYPES, ParallelLayout

if TYPE_CHECKING:  # both pull in pandas; the command line imports this module for its defaults
    from dynamiccl.trace.store import Trace
    from dynamiccl.workload.context import ComputeRate

DEFAULT_GPUS_PER_NODE = 8
DEFAULT_EFFICIENCY = 0.45

_POSITIVE = dict(low=1)
WORKLOAD = schema.Schema(
    schema.string("model", non_empty=True, help="built-in model name (see `dynamiccl models`) or a model TOML file"),
    schema.integer("tp", 1, **_POSITIVE, help="tensor-parallel size"),
    schema.integer("pp", 1, **_POSITIVE, help="pipeline-parallel size"),
    schema.integer("dp", 1, **_POSITIVE, help="data-parallel size"),
    schema.integer("cp", 1, **_POSITIVE, help="context-parallel size (p2p ring)"),
    schema.integer("ep", 1, **_POSITIVE, help="expert-parallel size (MoE models)"),
    schema.integer("etp", 0, low=0, help="expert tensor-parallel size: 1 or TP (0: TP)"),
    schema.integer("vpp", 1, **_POSITIVE, help="virtual pipeline stages per rank (interleaved 1F1B)"),
    schema.flag("sp", False, help="sequence parallelism"),
    schema.integer("micro_batch", 1, **_POSITIVE, help="sequences per micro-batch"),
    schema.integer("global_batch", 0, low=0, help="sequences per step (0: the model's)"),
    schema.integer("seq_len", 0, low=0, help="tokens per sequence (0: the model's)"),
    schema.choice("dp_mode", DP_MODES, "distopt", help="data-parallel scheme (distopt: Megatron's distributed optimizer)"),
    schema.choice("dtype", ACT_DTYPES, "bf16", help="activation/parameter dtype"),
    schema.choice("grad_reduce_dtype", ("",) + GRAD_DTYPES, "", help="dtype of DP gradient reduction (\"\": fp32)"),
    schema.flag("overlap_grad_reduce", True, help="reduce gradients during the last backward"),
    schema.flag("reshard_after_forward", True, help="FSDP re-gathers parameters for backward"),
    schema.integer("first_stage_layers", 0, low=0, help="layers on the first pipeline stage (0: even split)"),
    schema.integer("last_stage_layers", 0, low=0, help="layers on the last pipeline stage (0: even split)"),
    schema.string("gpu", "", help="GPU name (\"\": the environment's, H100-SXM without one)"),
    schema.integer("gpus_per_node", 0, low=0, help="GPUs per node (0: the environment's, 8 without one)"),
    schema.number("peak_tflops", 0.0, low=0, help="dense BF16 peak TFLOPS (0: the GPU's)"),
    schema.number("efficiency", DEFAULT_EFFICIENCY, low=0, low_inclusive=False, high=1.0,
                  help="fraction of peak the GEMMs achieve"),
)
_HARDWARE_KEYS = ("model", "gpu", "gpus_per_node", "peak_tflops", "efficiency")


@dataclass(frozen=True)
class WorkloadSpec:
    """One training step to generate; see the module docstring for every key.

    ``layout.gpus_per_node`` 0, ``gpu`` "" and ``peak_tflops`` 0 mean "from the cluster".
    Build from a table with :meth:`from_dict` (which validates), or directly.
    """

    model: str
    layout: ParallelLayout = field(default_factory=lambda: ParallelLayout(gpus_per_node=0))
    gpu: str = ""
    peak_tflops: float = 0.0
    efficiency: float = DEFAULT_EFFICIENCY

    @classmethod
    def from_dict(cls, obj: dict, source: str | os.PathLike | None) -> "WorkloadSpec":
        """A workload from a table of :data:`WORKLOAD` keys.

        Raises:
            InputError: naming ``source`` and the key that is unknown, missing or wrong.
        """
        return cls.from_values(WORKLOAD.parse(obj, source), source)

    @classmethod
    def from_values(cls, values: dict, source: str | os.PathLike | None, prefix: str = "") -> "WorkloadSpec":
        """A workload from values already checked by :data:`WORKLOAD` (``WORKLOAD.parse``); the model
        and the GPU must be known (a built-in name or a model file; a catalogued GPU).

        Raises:
            InputError: an unknown model or GPU, naming ``source`` and ``<prefix>model`` / ``<prefix>gpu``.
        """
        from dynamiccl.workload.models import load_model

        load_model(values["model"], source, f"{prefix}model")  # a model file's own errors name that file
        if values["gpu"]:
            gpu_spec(values["gpu"], source, f"{prefix}gpu")
        layout = ParallelLayout(**{k: v for k, v in values.items() if k not in _HARDWARE_KEYS},
                                gpus_per_node=values["gpus_per_node"])
        return cls(values["model"], layout, values["gpu"], values["peak_tflops"], values["efficiency"])

    def to_dict(self) -> dict:
        """Every key of :data:`WORKLOAD` with its value (what :meth:`from_dict` reads back)."""
        layout = asdict(self.layout)
        out = {f.name: layout.get(f.name) for f in WORKLOAD.fields if f.name in layout}
        out.update(model=self.model, gpu=self.gpu, gpus_per_node=self.layout.gpus_per_node,
                   peak_tflops=self.peak_tflops, efficiency=self.efficiency)
        return out

    def compute_rate(self, cluster: ClusterSpec | None) -> "ComputeRate":
        """The GPU the step's compute runs on: this workload's ``gpu`` if set, else the cluster's
        (H100-SXM without a cluster); its peak unless ``peak_tflops`` is set.

        Raises:
            InputError: an unknown GPU name.
        """
        from dynamiccl.workload.context import ComputeRate

        if self.gpu:
            gpu = gpu_spec(self.gpu)
        else:
            gpu = cluster.gpu if cluster is not None else gpu_spec(DEFAULT_GPU)
        return ComputeRate(gpu.name, self.peak_tflops or gpu.peak_bf16_tflops, self.efficiency, gpu.hbm_gbytes_per_s)

    def placed_layout(self, cluster: ClusterSpec | None) -> ParallelLayout:
        """The layout with GPUs per node from the workload, else the cluster (8 without one)."""
        gpus_per_node = self.layout.gpus_per_node or (cluster.gpus_per_node if cluster else DEFAULT_GPUS_PER_NODE)
        return ParallelLayout(**{**asdict(self.layout), "gpus_per_node": gpus_per_node})

    def generate(self, cluster: ClusterSpec | None = None, *, all_ranks: bool = False, progress: bool = False,
                 command: str = "") -> "Trace":
        """Generate the step on ``cluster`` (see :meth:`compute_rate`, :meth:`placed_layout`).

        Raises:
            InputError: an unknown model or GPU; LayoutError: a layout the model cannot run.
        """
        from dynamiccl.workload.generator import generate
        from dynamiccl.workload.models import load_model

        rate = self.compute_rate(cluster)
        return generate(load_model(self.model), self.placed_layout(cluster), rate, all_ranks=all_ranks,
                        progress=progress, command=command or f"workload {json.dumps(self.to_dict(), sort_keys=True)}")

    def cached_trace(self, cache_dir: str | os.PathLike, cluster: ClusterSpec | None) -> Path:
        """Generate the step once into ``cache_dir`` and return its path. The file name holds a
        digest of the workload and of the hardware it was placed on, so the same workload on two
        clusters gives two traces.

        Raises:
            as :meth:`generate`.
        """
        rate = self.compute_rate(cluster)
        key = {"workload": self.to_dict(), "compute": asdict(rate),
               "gpus_per_node": self.placed_layout(cluster).gpus_per_node}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        path = Path(cache_dir) / f"{Path(self.model).stem}-{digest}.parquet"
        if not path.is_file():
            self.generate(cluster).write(path)
        return path


def generate_argv(spec: WorkloadSpec, env: str | None = None, *, all_ranks: bool = False) -> list[str]:
    """The ``dynamiccl generate`` arguments (without ``-o``) that make ``spec`` on ``env``: one flag per
    key that differs from its default (``--sp``, ``--no-overlap-grad-reduce``, ``--tp 2``)."""
    argv = ["generate", "--model", spec.model]
    for name, value in spec.to_dict().items():
        default = WORKLOAD[name].default
        flag = "--" + name.replace("_", "-")
        if name == "model":
            continue
        if name in ("tp", "pp", "dp"):  # generate requires them
            argv += [flag, str(value)]
        elif isinstance(value, bool):
            if value != default:
                argv.append(flag if value else f"--no-{name.replace('_', '-')}")
        elif value != default:
            argv += [flag, str(value)]
    if env:
        argv += ["--env", env]
    return argv + (["--all-ranks"] if all_ranks else [])


def workload_field_flag(error: InputError, source: str) -> InputError:
    """``error`` from :meth:`WorkloadSpec.from_dict` on command-line values read as ``source``,
    re-worded to name the flag (``efficiency`` -> ``--efficiency``); an error about another file (a
    model file's key) is returned as it is."""
    if error.source != source or not error.field:
        return error
    return InputError(f"--{error.field.replace('_', '-')}", None, error.problem)


__all__ = ["WORKLOAD", "WorkloadSpec", "generate_argv", "workload_field_flag", "DEFAULT_EFFICIENCY"]
