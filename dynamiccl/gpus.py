"""GPU catalog: what the workload generator needs to turn FLOPs and bytes into time.

Peak numbers are NVIDIA's datasheet figures for dense BF16 tensor-core math (half the "with
sparsity" figure) and HBM bandwidth of the named part:

- H100 SXM5 / H800 SXM5: 989.4 TFLOPS, 3.35 TB/s, 132 SMs; H100 PCIe: 756 TFLOPS, 2.0 TB/s, 114 SMs
  (NVIDIA H100 Tensor Core GPU datasheet).
- H200 SXM: 989.4 TFLOPS, 4.8 TB/s (NVIDIA H200 datasheet). GH200 (96 GB HBM3): 989.4 TFLOPS, 4.0 TB/s
  (NVIDIA GH200 Grace Hopper Superchip datasheet).
- A100 SXM4 80 GB: 312 TFLOPS, 2.039 TB/s, 108 SMs; A100 PCIe 80 GB: 312 TFLOPS, 1.935 TB/s
  (NVIDIA A100 datasheet).
- B200 (HGX B200): 2.25 PFLOPS, 8 TB/s, 148 SMs; GB200 (NVL72, per GPU): 2.5 PFLOPS, 8 TB/s
  (NVIDIA Blackwell datasheets).
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamiccl.errors import InputError


@dataclass(frozen=True)
class GPUSpec:
    name: str
    arch: str  # volta | ampere | hopper | blackwell
    sm_count: int
    peak_bf16_tflops: float  # dense
    hbm_gbytes_per_s: float


GPUS: dict[str, GPUSpec] = {g.name: g for g in (
    GPUSpec("H100-SXM", "hopper", 132, 989.4, 3350.0),
    GPUSpec("H100-PCIe", "hopper", 114, 756.0, 2000.0),
    GPUSpec("H800-SXM", "hopper", 132, 989.4, 3350.0),
    GPUSpec("H200-SXM", "hopper", 132, 989.4, 4800.0),
    GPUSpec("GH200", "hopper", 132, 989.4, 4000.0),
    GPUSpec("A100-SXM", "ampere", 108, 312.0, 2039.0),
    GPUSpec("A100-PCIe", "ampere", 108, 312.0, 1935.0),
    GPUSpec("B200", "blackwell", 148, 2250.0, 8000.0),
    GPUSpec("GB200", "blackwell", 148, 2500.0, 8000.0),
)}

DEFAULT_GPU = "H100-SXM"


def _normal(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def gpu_spec(name: str, source: str = "--gpu", field: str | None = None) -> GPUSpec:
    """Look up a GPU by name (case and punctuation ignored; "H100" means the SXM part).

    Raises:
        InputError: for an unknown GPU, listing the known ones.
    """
    wanted = _normal(name)
    for spec in GPUS.values():
        if _normal(spec.name) == wanted or _normal(spec.name.split("-")[0]) == wanted:
            return spec
    raise InputError(source, field, f"unknown GPU {name!r}; known: {', '.join(GPUS)} "
                                    "(or give the peak with --peak-tflops)")
