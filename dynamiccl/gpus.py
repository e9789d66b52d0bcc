"""GPU catalog: what the workload generator needs to turn FLOPs and bytes into time, and what the
cost models need to know about the part (architecture, compute capability, NVLink, PCIe).

Peak numbers are NVIDIA's datasheet figures for dense BF16 tensor-core math (half the "with
sparsity" figure; FP32 accumulate where a datasheet gives both) and memory bandwidth of the named
part. SM counts are from the datasheet or the architecture whitepaper where the datasheet gives
only cores (SMs = CUDA cores / 128 on Ada, Hopper and Blackwell; / 128 on GA10x).

- H100 SXM5: 989.4 TFLOPS, 3.35 TB/s, 132 SMs; H100 PCIe: 756 TFLOPS, 2.0 TB/s, 114 SMs; H100 NVL:
  835.5 TFLOPS (1,671 with sparsity), 3.9 TB/s, 132 SMs, NVLink bridge 600 GB/s bidirectional
  (NVIDIA H100 Tensor Core GPU datasheet).
- H800 SXM5: 989.4 TFLOPS, 3.35 TB/s, 132 SMs; H800 PCIe: 756 TFLOPS, 2.0 TB/s, 114 SMs (NVIDIA H800
  datasheet; the H100 die with NVLink cut to 400 GB/s bidirectional, i.e. 8 NVLink4 links).
- H20: 148 TFLOPS dense FP16/BF16, 4.0 TB/s HBM3, NVLink 900 GB/s (NVIDIA H20 product brief); 78 SMs
  (as the CUDA device query reports it; NVIDIA publishes no SM count).
- H200 SXM: 989.4 TFLOPS, 4.8 TB/s (NVIDIA H200 datasheet). GH200 (96 GB HBM3): 989.4 TFLOPS, 4.0 TB/s
  (NVIDIA GH200 Grace Hopper Superchip datasheet).
- A100 SXM4 80 GB: 312 TFLOPS, 2.039 TB/s, 108 SMs; A100 PCIe 80 GB: 312 TFLOPS, 1.935 TB/s
  (NVIDIA A100 datasheet).
- A40: 149.7 TFLOPS (299.4 with sparsity), 696 GB/s, 84 SMs (10,752 CUDA cores), PCIe Gen4, NVLink
  bridge 112.5 GB/s bidirectional = 4 NVLink3 links x 14.0625 GB/s per direction (NVIDIA A40 datasheet).
- A10: 125 TFLOPS (250 with sparsity), 600 GB/s, 72 SMs (9,216 CUDA cores), PCIe Gen4 (NVIDIA A10
  datasheet). A10G (AWS G5 only, no NVIDIA datasheet): 80 SMs (AWS: 80 RT cores, 320 Tensor Cores per
  GPU, "Amazon EC2 G5 instances"), 600 GB/s, 70 TFLOPS dense BF16 (GA10x half-rate FP32 accumulate;
  Baseten, "NVIDIA A10 vs A10G for ML model inference").
- L40S: 362.05 TFLOPS (733 with sparsity), 864 GB/s, 142 SMs (18,176 CUDA cores); L40: 181.05
  TFLOPS (362.1 with sparsity), 864 GB/s, 142 SMs; both PCIe Gen4 x16, no NVLink (NVIDIA L40S and L40
  datasheets). L4: 121 TFLOPS (242 with sparsity), 300 GB/s, 58 SMs (7,424 CUDA cores), PCIe Gen4
  (NVIDIA L4 datasheet).
- RTX 4090: 165.2 TFLOPS BF16 with FP32 accumulate (330.4 with sparsity), 1,008 GB/s, 128 SMs;
  RTX 6000 Ada: 364.2 TFLOPS (728.5 with sparsity; the datasheet's 1,457 TFLOPS is FP8 with
  sparsity), 960 GB/s, 142 SMs. Both from the NVIDIA Ada GPU architecture whitepaper (appendix
  tables); PCIe Gen4, no NVLink.
- B200 (HGX B200): 2.25 PFLOPS, 8 TB/s, 148 SMs; GB200 (NVL72, per GPU): 2.5 PFLOPS, 8 TB/s
  (NVIDIA Blackwell datasheets). B300 (HGX B300): 2.25 PFLOPS (36 PFLOPS with sparsity per 8 GPUs),
  8 TB/s; GB300 (NVL72, per GPU): 2.5 PFLOPS (360 PFLOPS with sparsity per 72 GPUs), 8 TB/s (NVIDIA
  HGX B300 and GB300 NVL72 datasheets); Blackwell Ultra has 160 SMs (NVIDIA technical blog "Inside
  NVIDIA Blackwell Ultra", 2025), compute capability 10.3, PCIe Gen6 host interface (same blog).

Architectures: ``ada`` is compute capability 8.9 (Ada Lovelace: L40S, L40, L4, RTX 4090, RTX 6000
Ada); the GA10x parts (A40, A10, A10G) are ``ampere`` with compute capability 8.6. NCCL's tuning
tables have rows only for Volta, Ampere, Hopper and Blackwell: its ``compCapIndex`` (NVIDIA/nccl
``src/graph/tuning.cc``) distinguishes only < 9.0, 9.0 and 10.0+, so cc 8.6 and 8.9 use Ampere's rows
(:data:`dynamiccl.costmodel.nccl_constants.ARCH_INDEX`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamiccl.errors import InputError

ARCHS = ("volta", "ampere", "ada", "hopper", "blackwell")
# Compute capability of an architecture's first part (A100 8.0, L40S 8.9, H100 9.0, B200 10.0); a
# catalog entry overrides it where its part differs (GA10x 8.6, Blackwell Ultra 10.3).
ARCH_COMPUTE_CAPABILITY = {"volta": 70, "ampere": 80, "ada": 89, "hopper": 90, "blackwell": 100}
# The compute capabilities an env spec may give (Volta .. Blackwell Ultra and the sm_120 Blackwell parts).
COMPUTE_CAPABILITIES = (70, 80, 86, 87, 89, 90, 100, 103, 120)


@dataclass(frozen=True)
class GPUSpec:
    """One GPU part. ``None`` fields take the architecture's default (see ``dynamiccl.envspec``)."""

    name: str
    arch: str  # volta | ampere | ada | hopper | blackwell
    sm_count: int
    peak_bf16_tflops: float  # dense
    hbm_gbytes_per_s: float  # device memory bandwidth (HBM or GDDR)
    cc: int | None = None    # compute capability x10 when the part differs from its architecture's
    nvlink_links: int | None = None  # NVLinks per GPU (0: none); None: the architecture's default
    nvlink_link_gbytes_per_s: float | None = None  # per link, per direction
    pcie_gen: int | None = None      # None: the architecture's default
    nvlink_bridge: bool = False      # a PCIe card whose NVLinks are a bridge to one partner card

    @property
    def compute_capability(self) -> int:
        """Compute capability x10 (89 for 8.9)."""
        return self.cc if self.cc is not None else ARCH_COMPUTE_CAPABILITY[self.arch]


GPUS: dict[str, GPUSpec] = {g.name: g for g in (
    GPUSpec("H100-SXM", "hopper", 132, 989.4, 3350.0),
    GPUSpec("H100-PCIe", "hopper", 114, 756.0, 2000.0),
    GPUSpec("H100-NVL", "hopper", 132, 835.5, 3900.0, nvlink_links=12, nvlink_bridge=True),  # 600 GB/s bridge
    GPUSpec("H800-SXM", "hopper", 132, 989.4, 3350.0, nvlink_links=8),  # 400 GB/s NVLink
    GPUSpec("H800-PCIe", "hopper", 114, 756.0, 2000.0, nvlink_links=8, nvlink_bridge=True),  # 400 GB/s bridge
    GPUSpec("H20", "hopper", 78, 148.0, 4000.0),
    GPUSpec("H200-SXM", "hopper", 132, 989.4, 4800.0),
    GPUSpec("GH200", "hopper", 132, 989.4, 4000.0),
    GPUSpec("A100-SXM", "ampere", 108, 312.0, 2039.0),
    GPUSpec("A100-PCIe", "ampere", 108, 312.0, 1935.0),
    GPUSpec("A40", "ampere", 84, 149.7, 696.0, cc=86, nvlink_links=4, nvlink_link_gbytes_per_s=14.0625,
            nvlink_bridge=True),
    GPUSpec("A10G", "ampere", 80, 70.0, 600.0, cc=86, nvlink_links=0),
    GPUSpec("A10", "ampere", 72, 125.0, 600.0, cc=86, nvlink_links=0),
    GPUSpec("L40S", "ada", 142, 362.05, 864.0),
    GPUSpec("L40", "ada", 142, 181.05, 864.0),
    GPUSpec("L4", "ada", 58, 121.0, 300.0),
    GPUSpec("RTX 4090", "ada", 128, 165.2, 1008.0),
    GPUSpec("RTX 6000 Ada", "ada", 142, 364.2, 960.0),
    GPUSpec("B200", "blackwell", 148, 2250.0, 8000.0),
    GPUSpec("GB200", "blackwell", 148, 2500.0, 8000.0),
    GPUSpec("B300", "blackwell", 160, 2250.0, 8000.0, cc=103, pcie_gen=6),
    GPUSpec("GB300", "blackwell", 160, 2500.0, 8000.0, cc=103, pcie_gen=6),
)}

DEFAULT_GPU = "H100-SXM"


def _normal(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def find_gpu(name: str) -> GPUSpec | None:
    """The catalog entry for ``name`` (case and punctuation ignored; "H100" means the SXM part), or None."""
    wanted = _normal(name)
    for spec in GPUS.values():
        if _normal(spec.name) == wanted:
            return spec
    for spec in GPUS.values():  # the family name alone means its first (SXM) part
        if "-" in spec.name and _normal(spec.name.split("-")[0]) == wanted:
            return spec
    return None


def gpu_spec(name: str, source: str = "--gpu", field: str | None = None) -> GPUSpec:
    """Look up a GPU by name (case and punctuation ignored; "H100" means the SXM part).

    Raises:
        InputError: for an unknown GPU, listing the known ones.
    """
    spec = find_gpu(name)
    if spec is None:
        raise InputError(source, field, f"unknown GPU {name!r}; known: {', '.join(GPUS)} "
                                        "(or give the peak with --peak-tflops)")
    return spec
