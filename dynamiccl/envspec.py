"""Environment specs (``envs/*.toml``): a cluster described from its datasheet, the NCCL version whose
model is the baseline, and the dynamics the world simulator plays out on it.

The keys are a contract that users and external checks write files against. Every key but
``cluster.gpu``, ``cluster.gpus_per_node`` and ``cluster.nodes`` has a default derived from the GPU;
unknown keys and bad values are errors that name the file and the ``section.key``::

    [cluster]   gpu = "H100-SXM"  arch = "hopper"  sm_count = 132  hbm_gbytes_per_s = 3350
                gpus_per_node = 8  nodes = 2  (peak_bf16_tflops: optional)
    [intra]     fabric = "nvswitch" | "nvlink" | "pcie"    # nvlink: GPUs wired to each other directly
                nvlink_links = 18                          # NVLinks per GPU (0 allowed with fabric pcie)
                nvlink_link_gbytes_per_s = 25              # per link, per direction (datasheet)
                nvls = true                                # NVLink SHARP (needs nvswitch, hopper+)
                pcie_gen = 5     pcie_lanes = 16
    [inter]     nics_per_node = 8  nic_gbits_per_s = 400
                transport = "ib" | "roce" | "efa" | "slingshot" | "tcp"
                nic_latency_us = 0                         # extra NIC latency (NCCL's topo-XML `latency`)
                gpudirect = true                           # GPUDirect RDMA between GPU and NIC
    [host]      cpu_vendor = "intel" | "amd" | "arm"
    [nccl]      version = "2.23.4"                         # 2.18 .. 2.30
                collnet = false                            # a SHARP (CollNet) network plugin is loaded
    [dynamics]  congestion = "none" | "markov"             # background traffic on the network
                congested_share = 0.5     # share of NIC bandwidth background traffic takes when congested
                congested_fraction = 0.3  # long-run share of time the network is congested
                mean_period_ms = 20.0     # mean length of one congested (or quiet) period
                overlap_fraction = 0.0    # share of a collective's time with compute beside it, when a
                                          # caller does not say (the tuning environment always says)
                compute_hbm_share = 0.3   # share of HBM bandwidth that overlapped compute consumes
                noise_cv = 0.02           # run-to-run coefficient of variation of collective time
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dynamiccl.cluster import ClusterSpec, cluster_from_dict, read_spec_toml
from dynamiccl.errors import InputError
from dynamiccl.nccl import parse_version

FABRICS = ("nvswitch", "nvlink", "pcie")
TRANSPORTS = ("ib", "roce", "efa", "slingshot", "tcp")
CPU_VENDORS = ("intel", "amd", "arm")
CONGESTION_PROCESSES = ("none", "markov")
OLDEST_NCCL, NEWEST_NCCL = (2, 18, 0), (2, 30, 99)
DEFAULT_NCCL_VERSION = "2.23.4"

# Datasheet NVLink per GPU: links and GB/s per link per direction (hwloc#574: NVLink2-4 are 25 GB/s
# per direction per link; NVLink5 50). Volta V100: 6 links, Ampere A100: 12, Hopper: 18, Blackwell: 18.
_NVLINK_DEFAULTS = {"volta": (6, 25.0), "ampere": (12, 25.0), "hopper": (18, 25.0), "blackwell": (18, 50.0)}
_PCIE_GEN_DEFAULT = {"volta": 3, "ampere": 4, "hopper": 5, "blackwell": 5}
COMPUTE_CAPABILITY = {"volta": 70, "ampere": 80, "hopper": 90, "blackwell": 100}


@dataclass(frozen=True)
class IntraSpec:
    fabric: str
    nvlink_links: int
    nvlink_link_gbytes_per_s: float
    nvls: bool
    pcie_gen: int
    pcie_lanes: int

    @property
    def nvlink_gbytes_per_s(self) -> float:
        """Datasheet NVLink bandwidth per GPU per direction (0 on a PCIe-only node)."""
        return 0.0 if self.fabric == "pcie" else self.nvlink_links * self.nvlink_link_gbytes_per_s

    @property
    def pcie_gbytes_per_s(self) -> float:
        """Raw PCIe bandwidth per direction: 8 GT/s per lane at gen 3, doubling each generation,
        128b/130b coding (gen 5 x16 ≈ 63 GB/s)."""
        return 8.0 * 2 ** (self.pcie_gen - 3) * self.pcie_lanes * 128 / 130 / 8


@dataclass(frozen=True)
class InterSpec:
    nics_per_node: int
    nic_gbits_per_s: float
    transport: str
    nic_latency_us: float
    gpudirect: bool

    @property
    def nic_gbytes_per_s(self) -> float:
        return self.nic_gbits_per_s / 8.0


@dataclass(frozen=True)
class DynamicsSpec:
    congestion: str = "none"
    congested_share: float = 0.5
    congested_fraction: float = 0.3
    mean_period_ms: float = 20.0
    overlap_fraction: float = 0.0
    compute_hbm_share: float = 0.3
    noise_cv: float = 0.02


@dataclass(frozen=True)
class EnvSpec:
    """A parsed environment spec. ``name`` is the file's stem (``dgx-h100``)."""

    name: str
    source: str
    cluster: ClusterSpec
    intra: IntraSpec
    inter: InterSpec
    cpu_vendor: str
    nccl_version: str
    collnet: bool
    dynamics: DynamicsSpec = field(default_factory=DynamicsSpec)

    @property
    def arch(self) -> str:
        return self.cluster.gpu.arch

    @property
    def compute_capability(self) -> int:
        return COMPUTE_CAPABILITY[self.arch]

    @property
    def gpus_per_node(self) -> int:
        return self.cluster.gpus_per_node

    @property
    def nodes(self) -> int:
        return self.cluster.nodes

    @property
    def world_size(self) -> int:
        return self.cluster.world_size

    @property
    def nccl_version_tuple(self) -> tuple[int, int, int]:
        return parse_version(self.nccl_version)

    def describe(self) -> str:
        """One line: what the spec says, for CLI headers and reports."""
        gpu = self.cluster.gpu
        intra = (f"{self.intra.fabric} {self.intra.nvlink_links}x{self.intra.nvlink_link_gbytes_per_s:g} GB/s"
                 if self.intra.fabric != "pcie" else f"PCIe gen{self.intra.pcie_gen} x{self.intra.pcie_lanes}")
        inter = (f", {self.inter.nics_per_node}x{self.inter.nic_gbits_per_s:g}G {self.inter.transport}"
                 if self.nodes > 1 else "")
        return (f"{self.name}: {self.nodes}x{self.gpus_per_node} {gpu.name} ({gpu.arch}), {intra}{inter}, "
                f"NCCL {self.nccl_version}")


class _Table:
    """One TOML table being parsed: typed getters that name ``section.key`` in every error."""

    def __init__(self, obj: dict, section: str, source: str, known: set[str]):
        table = obj.get(section, {})
        if not isinstance(table, dict):
            raise InputError(source, section, f"expected a [{section}] table")
        for key in table:
            if key not in known:
                raise InputError(source, f"{section}.{key}",
                                 f"unknown key; expected some of {', '.join(sorted(known))}")
        self.table, self.section, self.source = table, section, source

    def _fail(self, key: str, expected: str, value) -> InputError:
        return InputError(self.source, f"{self.section}.{key}", f"expected {expected}, got {value!r}")

    def number(self, key: str, default: float, *, integer: bool = False, low: float = 0.0,
               high: float | None = None, low_inclusive: bool = False) -> float:
        value = self.table.get(key, default)
        numeric = (not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
                   and value == value)  # value == value: TOML's nan is not a number here
        too_low = numeric and (value < low if low_inclusive else value <= low)
        if not numeric or too_low or (high is not None and value > high):
            kind = "an integer" if integer else "a number"
            bounds = (f"{'>=' if low_inclusive else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else ""))
            raise self._fail(key, f"{kind} {bounds}", value)
        return int(value) if integer else float(value)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.table.get(key, default)
        if value not in choices:
            raise self._fail(key, f"one of {', '.join(choices)}", value)
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false", value)
        return value


def env_from_dict(obj: dict, source: str, name: str | None = None) -> EnvSpec:
    """Build an :class:`EnvSpec` from a parsed TOML document.

    Raises:
        InputError: naming ``source`` and the ``section.key`` that is missing, unknown or wrong.
    """
    for section in obj:
        if section not in ("cluster", "intra", "inter", "host", "nccl", "dynamics"):
            raise InputError(source, section, "unknown section; expected [cluster], [intra], [inter], [host], "
                                              "[nccl] or [dynamics]")
    cluster = cluster_from_dict(obj, source)
    arch = cluster.gpu.arch

    t = _Table(obj, "intra", source, {"fabric", "nvlink_links", "nvlink_link_gbytes_per_s", "nvls", "pcie_gen",
                                      "pcie_lanes"})
    links, link_gbps = _NVLINK_DEFAULTS[arch]
    fabric = t.choice("fabric", "nvswitch", FABRICS)
    nvls_default = fabric == "nvswitch" and arch in ("hopper", "blackwell")
    intra = IntraSpec(fabric=fabric,
                      nvlink_links=int(t.number("nvlink_links", links, integer=True, high=36,
                                                low_inclusive=fabric == "pcie")),  # a PCIe box may have 0
                      nvlink_link_gbytes_per_s=t.number("nvlink_link_gbytes_per_s", link_gbps, high=200),
                      nvls=t.flag("nvls", nvls_default),
                      pcie_gen=int(t.number("pcie_gen", _PCIE_GEN_DEFAULT[arch], integer=True, low=2, high=6,
                                            low_inclusive=True)),
                      pcie_lanes=int(t.number("pcie_lanes", 16, integer=True, high=16)))
    if intra.nvls and not (fabric == "nvswitch" and arch in ("hopper", "blackwell")):
        raise InputError(source, "intra.nvls", f"NVLS needs an NVSwitch fabric and a Hopper or newer GPU "
                                               f"(this spec has fabric={fabric!r}, arch={arch!r}); set nvls = false")
    if fabric == "nvlink" and cluster.gpus_per_node > 1 and intra.nvlink_links < cluster.gpus_per_node - 1:
        raise InputError(source, "intra.nvlink_links",
                         f"a direct NVLink fabric needs at least one link to each of the other "
                         f"{cluster.gpus_per_node - 1} GPUs of a node, got {intra.nvlink_links}")

    t = _Table(obj, "inter", source, {"nics_per_node", "nic_gbits_per_s", "transport", "nic_latency_us",
                                      "gpudirect"})
    inter = InterSpec(nics_per_node=int(t.number("nics_per_node", cluster.gpus_per_node, integer=True)),
                      nic_gbits_per_s=t.number("nic_gbits_per_s", 400.0, high=3200),
                      transport=t.choice("transport", "ib", TRANSPORTS),
                      nic_latency_us=t.number("nic_latency_us", 0.0, low_inclusive=True, high=1e4),
                      gpudirect=t.flag("gpudirect", True))

    t = _Table(obj, "host", source, {"cpu_vendor"})
    cpu_vendor = t.choice("cpu_vendor", "intel", CPU_VENDORS)

    t = _Table(obj, "nccl", source, {"version", "collnet"})
    version = t.table.get("version", DEFAULT_NCCL_VERSION)
    try:
        version_tuple = parse_version(version) if isinstance(version, str) else None
    except ValueError:
        version_tuple = None
    if version_tuple is None or not OLDEST_NCCL <= version_tuple <= NEWEST_NCCL:
        raise InputError(source, "nccl.version", f"expected an NCCL version between 2.18 and 2.30 as a string "
                                                 f"like \"2.23.4\", got {version!r}")
    collnet = t.flag("collnet", False)

    t = _Table(obj, "dynamics", source, set(DynamicsSpec.__dataclass_fields__))
    d = DynamicsSpec()
    dynamics = DynamicsSpec(
        congestion=t.choice("congestion", d.congestion, CONGESTION_PROCESSES),
        congested_share=t.number("congested_share", d.congested_share, low_inclusive=True, high=0.95),
        congested_fraction=t.number("congested_fraction", d.congested_fraction, low_inclusive=True, high=1.0),
        mean_period_ms=t.number("mean_period_ms", d.mean_period_ms, high=1e6),
        overlap_fraction=t.number("overlap_fraction", d.overlap_fraction, low_inclusive=True, high=1.0),
        compute_hbm_share=t.number("compute_hbm_share", d.compute_hbm_share, low_inclusive=True, high=1.0),
        noise_cv=t.number("noise_cv", d.noise_cv, low_inclusive=True, high=0.5))
    return EnvSpec(name=name or Path(source).stem, source=source, cluster=cluster, intra=intra, inter=inter,
                   cpu_vendor=cpu_vendor, nccl_version=".".join(map(str, version_tuple)), collnet=collnet,
                   dynamics=dynamics)


def load_env(path: str | os.PathLike) -> EnvSpec:
    """Read and validate an environment spec file.

    Raises:
        InputError: the file cannot be read, is not TOML, or a key is missing, unknown or wrong.
    """
    return env_from_dict(*read_spec_toml(path))


def env_dir() -> Path:
    """The repository's ``envs/`` directory (shipped specs)."""
    return Path(__file__).resolve().parent.parent / "envs"


def resolve_env(name_or_path: str) -> EnvSpec:
    """Load ``name_or_path`` as a file, or as the name of a shipped spec (``dgx-h100``).

    Raises:
        InputError: neither a readable file nor a shipped spec name.
    """
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return load_env(path)
    shipped = env_dir() / f"{name_or_path}.toml"
    if shipped.exists():
        return load_env(shipped)
    known = ", ".join(sorted(p.stem for p in env_dir().glob("*.toml")))
    raise InputError("--env", None, f"no file or shipped environment spec named {name_or_path!r}; shipped: {known}")
