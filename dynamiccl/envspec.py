"""Environment specs (``envs/*.toml``): a cluster described from its datasheet, the NCCL version whose
model is the baseline, and the dynamics the world simulator plays out on it.

The keys are a contract that users and external checks write files against. Every key but
``cluster.gpu``, ``cluster.gpus_per_node`` and ``cluster.nodes`` has a default derived from the GPU;
unknown keys and bad values are errors that name the file and the ``section.key``::

    [cluster]   gpu = "H100-SXM"  arch = "hopper"  sm_count = 132  hbm_gbytes_per_s = 3350
                gpus_per_node = 8  nodes = 2  (peak_bf16_tflops, compute_capability: optional)
                # any GPU name when arch, sm_count, hbm_gbytes_per_s and peak_bf16_tflops are given
    [intra]     fabric = "nvswitch" | "nvlink" | "pcie"    # nvlink: GPUs wired to each other directly
                nvlink_links = 18                          # NVLinks per GPU (0 allowed with fabric pcie)
                nvlink_link_gbytes_per_s = 25              # per link, per direction (datasheet)
                nvls = true                                # NVLink SHARP (needs nvswitch, hopper+)
                pcie_gen = 5     pcie_lanes = 16
                gpus_per_pcie_switch = 4                   # GPUs whose P2P stays below the CPU (PIX/PXB);
                                                           # default: all GPUs of a socket
                nvlink_bridges = false                     # PCIe node whose GPUs 2k, 2k+1 share an NVLink
                                                           # bridge of nvlink_links links (A40, H100 NVL)
    [inter]     nics_per_node = 8  nic_gbits_per_s = 400
                transport = "ib" | "roce" | "efa" | "slingshot" | "tcp"
                nic_latency_us = 0                         # extra NIC latency (NCCL's topo-XML `latency`)
                gpudirect = true                           # GPUDirect RDMA between GPU and NIC
    [host]      cpu_vendor = "intel" | "amd" | "arm"
                sockets = 2                                # CPU sockets; GPUs (and NICs) spread evenly
                                                           # over them; default 2 above 4 GPUs, else 1
    [nccl]      version = "2.23.4"                         # 2.18 .. 2.30
                collnet = false                            # a SHARP (CollNet) network plugin is loaded
                symmetric_memory = false                   # collective buffers registered as NCCL
                                                           # symmetric windows (NCCL_WIN_COLL_SYMMETRIC);
                                                           # zero-CTA collectives need it
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
from dataclasses import dataclass, field, replace
from pathlib import Path

from dynamiccl import schema
from dynamiccl.cluster import CLUSTER, ClusterSpec, cluster_from_values, read_spec_toml
from dynamiccl.errors import InputError
from dynamiccl.nccl import parse_version

FABRICS = ("nvswitch", "nvlink", "pcie")
TRANSPORTS = ("ib", "roce", "efa", "slingshot", "tcp")
CPU_VENDORS = ("intel", "amd", "arm")
CONGESTION_PROCESSES = ("none", "markov")
OLDEST_NCCL, NEWEST_NCCL = (2, 18, 0), (2, 30, 99)
DEFAULT_NCCL_VERSION = "2.23.4"

# Datasheet NVLink per GPU: links and GB/s per link per direction (hwloc#574: NVLink2-4 are 25 GB/s
# per direction per link; NVLink5 50). Volta V100: 6 links, Ampere A100: 12, Hopper: 18, Blackwell: 18;
# Ada has no NVLink (NVIDIA Ada GPU architecture whitepaper; L40S/L40/L4 datasheets: PCIe only). A
# catalog part overrides these where it differs (dynamiccl.gpus: A40's bridge, the GA10x parts without).
_NVLINK_DEFAULTS = {"volta": (6, 25.0), "ampere": (12, 25.0), "ada": (0, 25.0), "hopper": (18, 25.0),
                    "blackwell": (18, 50.0)}
_PCIE_GEN_DEFAULT = {"volta": 3, "ampere": 4, "ada": 4, "hopper": 5, "blackwell": 5}


@dataclass(frozen=True)
class IntraSpec:
    fabric: str
    nvlink_links: int
    nvlink_link_gbytes_per_s: float
    nvls: bool
    pcie_gen: int
    pcie_lanes: int
    gpus_per_pcie_switch: int = 1  # GPUs below one PCIe switch tree (their P2P path avoids the CPU)
    nvlink_bridges: bool = False   # GPUs 2k and 2k+1 joined by an NVLink bridge (PCIe between pairs)

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
    sockets: int = 1  # CPU sockets of a node; the GPUs and NICs are spread evenly over them
    symmetric_memory: bool = False  # collective buffers are NCCL symmetric windows (zero-CTA needs it)

    @property
    def gpus_per_socket(self) -> int:
        """GPUs on one CPU socket (the node's GPUs spread evenly, rounded up)."""
        return -(-self.gpus_per_node // self.sockets)

    def crosses_sockets(self, ranks_per_node: int) -> bool:
        """Whether a communicator with ``ranks_per_node`` local ranks spans CPU sockets: ranks fill the
        GPUs in order, one socket after the other (CUDA's PCI-bus order)."""
        return ranks_per_node > self.gpus_per_socket

    def crosses_pcie_switches(self, ranks_per_node: int) -> bool:
        """Whether a communicator's GPUs of one socket sit below different PCIe switches, so P2P between
        them goes through the CPU's root complex (NCCL's PHB path)."""
        return min(ranks_per_node, self.gpus_per_socket) > self.intra.gpus_per_pcie_switch

    def nics_near(self, ranks_per_node: int) -> int:
        """NICs a communicator with ``ranks_per_node`` local ranks uses on each node: the NICs near its
        GPUs. NICs are spread evenly over the node's GPUs (rail-aligned), so k of g GPUs reach
        ceil(k x nics / g) of them, at least one: NCCL's search picks each GPU's closest NICs and leaves
        NICs across the CPU to other GPUs (NVIDIA/nccl src/graph/search.cc ncclTopoSelectNets)."""
        nics = self.inter.nics_per_node
        return max(1, min(nics, -(-int(ranks_per_node) * nics // self.gpus_per_node)))

    @property
    def arch(self) -> str:
        return self.cluster.gpu.arch

    @property
    def compute_capability(self) -> int:
        """Compute capability x10 of the GPU (86 for an A40, 89 for an L40S)."""
        return self.cluster.gpu.compute_capability

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
        if self.intra.nvlink_bridges:
            intra += f" + NVLink bridge pairs {self.intra.nvlink_links}x{self.intra.nvlink_link_gbytes_per_s:g} GB/s"
        inter = (f", {self.inter.nics_per_node}x{self.inter.nic_gbits_per_s:g}G {self.inter.transport}"
                 if self.nodes > 1 else "")
        return (f"{self.name}: {self.nodes}x{self.gpus_per_node} {gpu.name} ({gpu.arch}), {intra}{inter}, "
                f"NCCL {self.nccl_version}")


_D = DynamicsSpec()

# None defaults are derived when the spec is read (from the GPU's architecture, the node size or
# the fabric); see env_from_dict.
INTRA = schema.Schema(
    schema.choice("fabric", FABRICS, None, help="nvlink: GPUs wired to each other directly (default: nvswitch, "
                                                "pcie for a GPU without NVLink or with an NVLink bridge)"),
    schema.integer("nvlink_links", None, low=0, high=36, help="NVLinks per GPU (default: the architecture's)"),
    schema.number("nvlink_link_gbytes_per_s", None, low=0, low_inclusive=False, high=200,
                  help="per link, per direction (datasheet)"),
    schema.flag("nvls", None, help="NVLink SHARP (needs nvswitch, hopper+; default on there)"),
    schema.integer("pcie_gen", None, low=2, high=6, help="default: the architecture's"),
    schema.integer("pcie_lanes", 16, low=0, low_inclusive=False, high=16),
    schema.integer("gpus_per_pcie_switch", None, low=0, low_inclusive=False, high=64,
                   help="GPUs below one PCIe switch tree, whose P2P stays below the CPU (default: a socket's)"),
    schema.flag("nvlink_bridges", False, help="GPUs 2k and 2k+1 share an NVLink bridge (fabric pcie only)"),
)
INTER = schema.Schema(
    schema.integer("nics_per_node", None, low=0, low_inclusive=False, help="default: one per GPU"),
    schema.number("nic_gbits_per_s", 400.0, low=0, low_inclusive=False, high=3200),
    schema.choice("transport", TRANSPORTS, "ib"),
    schema.number("nic_latency_us", 0.0, low=0, high=1e4, help="extra NIC latency (NCCL's topo-XML `latency`)"),
    schema.flag("gpudirect", True, help="GPUDirect RDMA between GPU and NIC"),
)
HOST = schema.Schema(
    schema.choice("cpu_vendor", CPU_VENDORS, "intel"),
    schema.integer("sockets", None, low=0, low_inclusive=False, high=8,
                   help="CPU sockets per node (default: 2 with more than 4 GPUs, else 1)"),
)
NCCL = schema.Schema(
    schema.string("version", DEFAULT_NCCL_VERSION,
                  expect='an NCCL version between 2.18 and 2.30 as a string like "2.23.4"',
                  help="the NCCL whose model is the baseline"),
    schema.flag("collnet", False, help="a SHARP (CollNet) network plugin is loaded"),
    schema.flag("symmetric_memory", False,
                help="the job registers its collective buffers as NCCL symmetric windows "
                     "(NCCL_WIN_COLL_SYMMETRIC); zero-CTA collectives need it"),
)
DYNAMICS = schema.Schema(
    schema.choice("congestion", CONGESTION_PROCESSES, _D.congestion, help="background traffic on the network"),
    schema.number("congested_share", _D.congested_share, low=0, high=0.95,
                  help="share of NIC bandwidth background traffic takes when congested"),
    schema.number("congested_fraction", _D.congested_fraction, low=0, high=1.0,
                  help="long-run share of time the network is congested"),
    schema.number("mean_period_ms", _D.mean_period_ms, low=0, low_inclusive=False, high=1e6,
                  help="mean length of one congested (or quiet) period"),
    schema.number("overlap_fraction", _D.overlap_fraction, low=0, high=1.0,
                  help="share of a collective's time with compute beside it, when a caller does not say"),
    schema.number("compute_hbm_share", _D.compute_hbm_share, low=0, high=1.0,
                  help="share of HBM bandwidth that overlapped compute consumes"),
    schema.number("noise_cv", _D.noise_cv, low=0, high=0.5, help="run-to-run coefficient of variation"),
)
ENV_SPEC = schema.Schema(
    schema.table("cluster", CLUSTER), schema.table("intra", INTRA, {}), schema.table("inter", INTER, {}),
    schema.table("host", HOST, {}), schema.table("nccl", NCCL, {}), schema.table("dynamics", DYNAMICS, {}),
    sections=True,
)


def env_from_dict(obj: dict, source: str, name: str | None = None) -> EnvSpec:
    """Build an :class:`EnvSpec` from a parsed TOML document.

    Raises:
        InputError: naming ``source`` and the ``section.key`` that is missing, unknown or wrong.
    """
    doc = ENV_SPEC.parse(obj, source)
    cluster = cluster_from_values(doc["cluster"], source)
    arch = cluster.gpu.arch

    values = doc["intra"]
    gpu = cluster.gpu
    links, link_gbytes_per_s = _NVLINK_DEFAULTS[arch]
    links = links if gpu.nvlink_links is None else gpu.nvlink_links
    link_gbytes_per_s = link_gbytes_per_s if gpu.nvlink_link_gbytes_per_s is None else gpu.nvlink_link_gbytes_per_s
    fabric = values.get("fabric", "pcie" if links == 0 or gpu.nvlink_bridge else "nvswitch")
    nvls_possible = fabric == "nvswitch" and arch in ("hopper", "blackwell")
    intra = IntraSpec(fabric=fabric, nvlink_links=values.get("nvlink_links", links),
                      nvlink_link_gbytes_per_s=values.get("nvlink_link_gbytes_per_s", link_gbytes_per_s),
                      nvls=values.get("nvls", nvls_possible), pcie_gen=values.get("pcie_gen", gpu.pcie_gen or _PCIE_GEN_DEFAULT[arch]),
                      pcie_lanes=values["pcie_lanes"])
    if fabric != "pcie" and intra.nvlink_links == 0:  # only a PCIe box may have no NVLink
        raise schema.expected(source, "intra.nvlink_links", "an integer > 0 and <= 36 (0 only with fabric pcie)", 0)
    if intra.nvls and not nvls_possible:
        raise InputError(source, "intra.nvls", f"NVLS needs an NVSwitch fabric and a Hopper or newer GPU "
                                               f"(this spec has fabric={fabric!r}, arch={arch!r}); set nvls = false")
    if fabric == "nvlink" and cluster.gpus_per_node > 1 and intra.nvlink_links < cluster.gpus_per_node - 1:
        raise InputError(source, "intra.nvlink_links",
                         f"a direct NVLink fabric needs at least one link to each of the other "
                         f"{cluster.gpus_per_node - 1} GPUs of a node, got {intra.nvlink_links}")

    sockets = doc["host"].get("sockets", 2 if cluster.gpus_per_node > 4 else 1)
    if sockets > cluster.gpus_per_node and "sockets" in doc["host"]:
        raise InputError(source, "host.sockets", f"expected at most one socket per GPU (<= {cluster.gpus_per_node}), "
                                                 f"got {sockets}")
    sockets = min(sockets, cluster.gpus_per_node)
    per_socket = -(-cluster.gpus_per_node // sockets)
    switch = values.get("gpus_per_pcie_switch", per_socket)
    if switch > per_socket:
        raise InputError(source, "intra.gpus_per_pcie_switch",
                         f"expected at most the GPUs of one socket ({per_socket}: {cluster.gpus_per_node} GPUs "
                         f"over {sockets} socket(s)), got {switch}")
    if values["nvlink_bridges"] and not (fabric == "pcie" and intra.nvlink_links > 0
                                         and cluster.gpus_per_node % 2 == 0):
        raise InputError(source, "intra.nvlink_bridges",
                         "NVLink bridge pairs need fabric = \"pcie\", nvlink_links > 0 (the links of one bridge) "
                         f"and an even gpus_per_node (this spec has fabric={fabric!r}, nvlink_links="
                         f"{intra.nvlink_links}, gpus_per_node={cluster.gpus_per_node})")
    intra = replace(intra, gpus_per_pcie_switch=switch, nvlink_bridges=values["nvlink_bridges"])

    values = doc["inter"]
    inter = InterSpec(nics_per_node=values.get("nics_per_node", cluster.gpus_per_node),
                      nic_gbits_per_s=values["nic_gbits_per_s"], transport=values["transport"],
                      nic_latency_us=values["nic_latency_us"], gpudirect=values["gpudirect"])

    version = doc["nccl"]["version"]
    try:
        version_tuple = parse_version(version)
    except ValueError:
        version_tuple = None
    if version_tuple is None or not OLDEST_NCCL <= version_tuple <= NEWEST_NCCL:
        raise schema.expected(source, "nccl.version", NCCL["version"].expectation(), version)
    return EnvSpec(name=name or Path(source).stem, source=source, cluster=cluster, intra=intra, inter=inter,
                   cpu_vendor=doc["host"]["cpu_vendor"], nccl_version=".".join(map(str, version_tuple)),
                   collnet=doc["nccl"]["collnet"], dynamics=DynamicsSpec(**doc["dynamics"]), sockets=sockets,
                   symmetric_memory=doc["nccl"]["symmetric_memory"])


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
