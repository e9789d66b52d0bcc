"""Per-communicator settings: the ``ncclConfig_t`` fields a communicator is created with.

NCCL fixes a communicator's CTA (channel) pool at init: ``minCTAs`` / ``maxCTAs`` bound it, ``nvlsCTAs``
bounds the NVLS pool, ``CTAPolicy`` picks default / efficiency (fewest CTAs that still perform) / zero
(copy-engine collectives that hold no SMs, on symmetric-registered buffers), ``cgaClusterSize`` the
CTA cluster (NVIDIA/nccl ``src/nccl.h.in``; docs "api/types" and "api/flags"). The tuner can then
only lower a call's channels below that pool, never raise it, so the budget is a communicator's, set
once at creation: through PyTorch's ``ProcessGroupNCCL.Options().config`` or Megatron-LM's
``--nccl-communicator-config-path`` YAML (``max_ctas``, ``min_ctas``, ``cga_cluster_size``).

:data:`COMM_CHOICES` is the small catalogue a policy or the search picks from, per communicator shape;
:func:`comm_choice_mask` says which a given NCCL and cluster can use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dynamiccl.knobs import Knob, register
from dynamiccl.nccl import MAX_CHANNELS, parse_version

KEEP = -1
CTA_POLICIES = ("default", "efficiency", "zero")  # NCCL_CTA_POLICY_DEFAULT/EFFICIENCY/ZERO = 0/1/2
CTA_POLICY_VALUE = {name: i for i, name in enumerate(CTA_POLICIES)}
# First NCCL with each setting (NVIDIA/nccl release notes; docs "api/flags"): ncclConfig_t's
# minCTAs/maxCTAs/cgaClusterSize since 2.17, nvlsCTAs since 2.27 with the CTA policy flags
# (EFFICIENCY; DEFAULT), ZERO with the copy-engine collectives of 2.28.
CTA_BOUNDS_MIN_NCCL = "2.17.1"
NVLS_CTAS_MIN_NCCL = "2.27.3"
CTA_POLICY_MIN_NCCL = {"default": "2.27.3", "efficiency": "2.27.3", "zero": "2.28.3"}
# Copy engines copy; they cannot reduce. So a zero-CTA communicator runs its copy collectives
# without SMs and still runs reductions on CTAs. NCCL 2.28 .. 2.30 implement AllGather and AlltoAll
# (and Gather/Scatter, which dynamiccl does not cost) on the copy engines, not Broadcast, and only on
# symmetric windows of a communicator whose ranks all share NVLink (NVIDIA/nccl ``src/ce_coll.cc``
# ``ncclCeImplemented``, ``ncclCeAvailable``).
ZERO_CTA_FUNCS = ("allgather", "alltoall")
EFFICIENCY_MASKED_WHY = ("no public measurement of how many CTAs NCCL's efficiency policy keeps, "
                         "nor of the time it costs")


@dataclass(frozen=True)
class CommConfig:
    """The ``ncclConfig_t`` fields one communicator is created with; -1 / None keep NCCL's.

    Raises:
        ValueError: a count outside 1..64 (NCCL's MAXCHANNELS), min above max, or an unknown policy.
    """

    min_ctas: int = KEEP
    max_ctas: int = KEEP
    nvls_ctas: int = KEEP
    cta_policy: str | None = None
    cga_cluster_size: int = KEEP

    def __post_init__(self) -> None:
        for name in ("min_ctas", "max_ctas", "nvls_ctas"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not (value == KEEP or 1 <= value <= MAX_CHANNELS):
                raise ValueError(f"{name}: expected -1 (keep NCCL's) or 1..{MAX_CHANNELS}, got {value!r}")
        if isinstance(self.cga_cluster_size, bool) or not isinstance(self.cga_cluster_size, int) \
                or not (self.cga_cluster_size == KEEP or 0 <= self.cga_cluster_size <= 8):
            raise ValueError(f"cga_cluster_size: expected -1 (keep NCCL's) or 0..8, got {self.cga_cluster_size!r}")
        if self.min_ctas > 0 and self.max_ctas > 0 and self.min_ctas > self.max_ctas:
            raise ValueError(f"min_ctas {self.min_ctas} is above max_ctas {self.max_ctas}")
        if self.cta_policy is not None and self.cta_policy not in CTA_POLICIES:
            raise ValueError(f"cta_policy: expected one of {', '.join(CTA_POLICIES)} or none, got {self.cta_policy!r}")

    @property
    def is_default(self) -> bool:
        """Whether every field keeps NCCL's value."""
        return self == CommConfig()

    def set_fields(self) -> dict:
        """The fields this config sets (those not kept), by name: what a table or YAML writes."""
        return {k: v for k, v in asdict(self).items() if v not in (KEEP, None)}

    @classmethod
    def from_dict(cls, values: dict, where: str = "communicator") -> "CommConfig":
        """A config from the fields it sets (``set_fields``'s form).

        Raises:
            ValueError: an unknown field or a bad value (the message names ``where`` and the field).
        """
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; expected "
                             f"{', '.join(cls.__dataclass_fields__)}")
        try:
            return cls(**values)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    def describe(self) -> str:
        """``max_ctas=8 cta_policy=zero`` or ``nccl-default``."""
        fields = self.set_fields()
        return " ".join(f"{k}={v}" for k, v in fields.items()) or "nccl-default"

    def min_nccl(self) -> str:
        """The oldest NCCL version that has every field this config sets."""
        needed = [CTA_BOUNDS_MIN_NCCL] if any(v > 0 for v in (self.min_ctas, self.max_ctas, self.cga_cluster_size)) \
            else []
        if self.nvls_ctas > 0:
            needed.append(NVLS_CTAS_MIN_NCCL)
        if self.cta_policy is not None:
            needed.append(CTA_POLICY_MIN_NCCL[self.cta_policy])
        return max(needed, key=parse_version, default="0.0.0")


# The catalogue searched and learned, per communicator shape: NCCL's default first (index 0), then
# caps on the pool (compute beside the calls gets SMs back; nccl#689: NCCL's CTAs never share an SM
# with compute), raised pools (MLPerf Training v4.0 configs set NCCL_MIN_CTAS), NVLS pool caps
# (nccl#1649: NVLSTree peaks with 16 SMs, 4 with registered buffers) and the zero-CTA policy.
COMM_CHOICES: tuple[CommConfig, ...] = (
    CommConfig(),
    CommConfig(max_ctas=2), CommConfig(max_ctas=4), CommConfig(max_ctas=8), CommConfig(max_ctas=16),
    CommConfig(min_ctas=16), CommConfig(min_ctas=32),
    CommConfig(nvls_ctas=4), CommConfig(nvls_ctas=8), CommConfig(nvls_ctas=16),
    CommConfig(cta_policy="zero"),
)
DEFAULT_COMM_CHOICE = 0
# A communicator setting is a change to the user's job: one that moves the step by less than this
# share is reported as having no effect and never chosen (a search takes no setting for nothing).
NO_EFFECT_SHARE = 1e-4


def comm_choice_mask(nccl_version: str, nvls: bool, one_nvlink_domain: bool, symmetric_memory: bool) -> list[bool]:
    """Which of :data:`COMM_CHOICES` a communicator can use (the default always can).

    Args:
        nccl_version: the NCCL the job runs.
        nvls: whether the communicator has NVLS (NVLS pools only matter there).
        one_nvlink_domain: whether all its ranks share one NVLink domain (copy engines reach peers
            over NVLink only).
        symmetric_memory: whether the job registers its collective buffers as NCCL symmetric windows
            (``NCCL_WIN_COLL_SYMMETRIC``): zero-CTA collectives run only on such buffers.
    """
    version = parse_version(nccl_version)
    mask = []
    for i, config in enumerate(COMM_CHOICES):
        ok = i == DEFAULT_COMM_CHOICE or version >= parse_version(config.min_nccl())
        if config.nvls_ctas > 0:
            ok = ok and nvls
        if config.cta_policy == "zero":
            ok = ok and one_nvlink_domain and symmetric_memory
        if config.cta_policy == "efficiency":
            ok = False  # EFFICIENCY_MASKED_WHY
        mask.append(bool(ok))
    return mask


def batch_columns(config: CommConfig, symmetric_memory: bool) -> dict:
    """The cost-batch columns (:func:`dynamiccl.costmodel.batch.make_batch` keywords) of calls on a
    communicator created with ``config``: ``max_ctas``, ``min_ctas``, ``nvls_ctas`` (0: NCCL's pool)
    and ``zero_cta`` (the zero-CTA policy takes effect only on buffers registered as symmetric windows,
    ``symmetric_memory``; NCCL otherwise runs the calls on CTAs as before).
    """
    return {"max_ctas": max(config.max_ctas, 0), "min_ctas": max(config.min_ctas, 0),
            "nvls_ctas": max(config.nvls_ctas, 0),
            "zero_cta": bool(config.cta_policy == "zero" and symmetric_memory)}


register(
    Knob("max_ctas", "communicator", "ncclConfig_t.maxCTAs", CTA_BOUNDS_MIN_NCCL,
         modelled="caps the channel pool (connect.cc): fewer channels per call, one SM back per channel "
                  "(nccl#689; GEMM wave tail, NVIDIA developer forum), less bandwidth where few channels "
                  "cannot fill the links (world section 4)"),
    Knob("min_ctas", "communicator", "ncclConfig_t.minCTAs", CTA_BOUNDS_MIN_NCCL,
         modelled="raises the channel pool (connect.cc): per-channel throughput against the links (world "
                  "section 4), one SM more held per channel (nccl#689)"),
    Knob("nvls_ctas", "communicator", "ncclConfig_t.nvlsCTAs", NVLS_CTAS_MIN_NCCL,
         modelled="sets the NVLS pool in place of NCCL's 16 (sm90) / 24-32 (sm100) (nvls.cc): NVLS and "
                  "NVLSTree reach their peak with 16 SMs (nccl#1649)"),
    Knob("cta_policy_zero", "communicator", "ncclConfig_t.CTAPolicy = NCCL_CTA_POLICY_ZERO",
         CTA_POLICY_MIN_NCCL["zero"],
         modelled="AllGather and AlltoAll of a communicator within one NVLink domain, on symmetric buffers, "
                  "run on copy engines (ce_coll.cc): no SMs held, HBM still shared (nccl#1428), the CTA "
                  "path's time kept (no public measurement of copy-engine bandwidth); compared with "
                  "FastVideo PR #1630's -3.07% GB200 FSDP2 step"),
    Knob("cta_policy_efficiency", "communicator", "ncclConfig_t.CTAPolicy = NCCL_CTA_POLICY_EFFICIENCY",
         CTA_POLICY_MIN_NCCL["efficiency"], masked_why=EFFICIENCY_MASKED_WHY),
    Knob("cga_cluster_size", "communicator", "ncclConfig_t.cgaClusterSize", CTA_BOUNDS_MIN_NCCL,
         masked_why="no public measurement of its effect on collective time; a table may carry it"),
)
