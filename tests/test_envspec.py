"""Tests of dynamiccl.envspec: the shipped environment specs, the defaults of the contract, and the
errors a bad spec gives (each naming the file and the exact ``section.key``).

Expected hardware figures are datasheet values (see each spec's header comment), not the parser's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dynamiccl.envspec import (DynamicsSpec, env_dir, env_from_dict, load_env, resolve_env)
from dynamiccl.errors import InputError

SHIPPED = {
    # name: (gpu, nodes, gpus_per_node, fabric, transport)
    "dgx-h100": ("H100-SXM", 1, 8, "nvswitch", "ib"),
    "h100-ib-2x8": ("H100-SXM", 2, 8, "nvswitch", "ib"),
    "h100-ib-4x8": ("H100-SXM", 4, 8, "nvswitch", "ib"),
    "h100-ib-16x8": ("H100-SXM", 16, 8, "nvswitch", "ib"),
    "h100-ib-1024x8": ("H100-SXM", 1024, 8, "nvswitch", "ib"),
    "h100-ib-4x8-congested": ("H100-SXM", 4, 8, "nvswitch", "ib"),
    "h100-ib-2x8-heavy-compute": ("H100-SXM", 2, 8, "nvswitch", "ib"),
    "h100-roce-4x8": ("H100-SXM", 4, 8, "nvswitch", "roce"),
    "pcie-h100-1x8": ("H100-PCIe", 1, 8, "pcie", "roce"),
    "hgx-h200": ("H200-SXM", 1, 8, "nvswitch", "ib"),
    "dgx-a100": ("A100-SXM", 1, 8, "nvswitch", "ib"),
    "a100-hdr-2x8": ("A100-SXM", 2, 8, "nvswitch", "ib"),
    "gh200-4x4": ("GH200", 4, 4, "nvlink", "slingshot"),
    "gb200-nvl4": ("GB200", 1, 4, "nvswitch", "ib"),
    "l40s-pcie-1x2": ("L40S", 1, 2, "pcie", "roce"),
    "aws-g5-2x1": ("A10G", 2, 1, "pcie", "tcp"),
    "gb200-nvl8-ib-3x8": ("GB200", 3, 8, "nvswitch", "ib"),
    "l40s-roce-2x8": ("L40S", 2, 8, "pcie", "roce"),
    "a40-ib-2x8": ("A40", 2, 8, "pcie", "ib"),
    "aws-p4d-2x8": ("A100-SXM", 2, 8, "nvswitch", "efa"),
    "aws-p5-2x8": ("H100-SXM", 2, 8, "nvswitch", "efa"),
    "h100-roce-8x8": ("H100-SXM", 8, 8, "nvswitch", "roce"),
}

CONTRACT_KEYS = {
    "cluster": {"gpu", "arch", "sm_count", "hbm_gbytes_per_s", "gpus_per_node", "nodes", "peak_bf16_tflops"},
    "intra": {"fabric", "nvlink_links", "nvlink_link_gbytes_per_s", "nvls", "pcie_gen", "pcie_lanes",
              "gpus_per_pcie_switch", "nvlink_bridges"},
    "inter": {"nics_per_node", "nic_gbits_per_s", "transport", "nic_latency_us", "gpudirect"},
    "host": {"cpu_vendor", "sockets"},
    "nccl": {"version", "collnet"},
    "dynamics": {"congestion", "congested_share", "congested_fraction", "mean_period_ms", "overlap_fraction",
                 "compute_hbm_share", "noise_cv"},
}

MINIMAL = '[cluster]\ngpu = "H100-SXM"\ngpus_per_node = 8\nnodes = 2\n'


def write_spec(tmp_path: Path, text: str, name: str = "env.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def minimal(gpu: str = "H100-SXM", gpus_per_node: int = 8, nodes: int = 2, **sections) -> dict:
    """A parsed spec with only [cluster], plus ``sections`` (each a dict of keys)."""
    obj = {"cluster": {"gpu": gpu, "gpus_per_node": gpus_per_node, "nodes": nodes}}
    for section, table in sections.items():
        if isinstance(table, dict):
            obj.setdefault(section, {}).update(table)
        else:
            obj[section] = table
    return obj


# --- shipped specs -------------------------------------------------------------------------------

def test_every_shipped_spec_is_listed_here():
    assert {p.stem for p in env_dir().glob("*.toml")} == set(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_spec_loads(name):
    gpu, nodes, gpus_per_node, fabric, transport = SHIPPED[name]
    env = load_env(env_dir() / f"{name}.toml")
    assert env.name == name
    assert env.cluster.gpu.name == gpu
    assert (env.nodes, env.gpus_per_node, env.world_size) == (nodes, gpus_per_node, nodes * gpus_per_node)
    assert env.intra.fabric == fabric
    assert env.inter.transport == transport
    assert name in env.describe() and gpu in env.describe()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_spec_writes_every_key_and_says_where_its_numbers_come_from(name):
    import tomllib
    path = env_dir() / f"{name}.toml"
    text = path.read_text(encoding="utf-8")
    obj = tomllib.loads(text)
    assert {section: set(table) for section, table in obj.items()} == CONTRACT_KEYS
    header = text.split("[cluster]", 1)[0]
    assert header.startswith("# ") and "Sources:" in header


def test_shipped_hardware_figures():
    h100 = resolve_env("h100-ib-4x8")
    assert h100.intra.nvlink_gbytes_per_s == 450.0  # 18 x 25 GB/s per direction
    assert h100.intra.nvls and h100.inter.nic_gbytes_per_s == 50.0  # NDR 400 Gb/s
    assert h100.cpu_vendor == "intel" and h100.compute_capability == 90

    a100 = resolve_env("dgx-a100")
    assert (a100.intra.nvlink_links, a100.intra.nvlink_link_gbytes_per_s) == (12, 25.0)
    assert a100.intra.nvlink_gbytes_per_s == 300.0 and not a100.intra.nvls
    assert (a100.inter.nics_per_node, a100.inter.nic_gbits_per_s) == (8, 200.0)
    assert a100.intra.pcie_gen == 4

    a100x2 = resolve_env("a100-hdr-2x8")
    assert a100x2.cpu_vendor == "amd" and a100x2.inter.nic_gbytes_per_s == 25.0  # HDR 200 Gb/s

    h200 = resolve_env("hgx-h200")
    assert h200.cluster.gpu.hbm_gbytes_per_s == 4800.0 and h200.intra.nvls

    gb200 = resolve_env("gb200-nvl4")
    assert gb200.arch == "blackwell" and gb200.compute_capability == 100
    assert gb200.intra.nvlink_gbytes_per_s == 900.0 and gb200.intra.nvls  # 18 x 50 GB/s
    assert gb200.cpu_vendor == "arm" and gb200.nccl_version == "2.25.1"

    gh200 = resolve_env("gh200-4x4")
    assert (gh200.intra.nvlink_links, gh200.intra.nvls) == (18, False)
    assert (gh200.inter.nics_per_node, gh200.inter.nic_gbits_per_s) == (4, 200.0)
    assert gh200.cpu_vendor == "arm"

    roce = resolve_env("h100-roce-4x8")
    assert roce.cpu_vendor == "amd" and roce.inter.nics_per_node == 8

    pcie = resolve_env("pcie-h100-1x8")
    assert pcie.intra.nvlink_links == 0 and pcie.intra.nvlink_gbytes_per_s == 0.0 and not pcie.intra.nvls
    assert (pcie.intra.pcie_gen, pcie.intra.pcie_lanes) == (5, 16)
    assert pcie.intra.pcie_gbytes_per_s == pytest.approx(63.0, abs=0.1)
    assert (pcie.inter.nics_per_node, pcie.inter.nic_gbits_per_s, pcie.inter.transport) == (2, 200.0, "roce")
    assert pcie.cluster.gpu.sm_count == 114


# Specs of a measured system carry the NCCL of the measurement (their header comment says which).
MEASURED_NCCL = {"gb200-nvl4": "2.25.1", "l40s-pcie-1x2": "2.29.2", "gb200-nvl8-ib-3x8": "2.27.3"}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_nccl_version_is_the_default_or_the_measured_one(name):
    assert resolve_env(name).nccl_version == MEASURED_NCCL.get(name, "2.23.4")


def test_shipped_dynamics():
    assert resolve_env("h100-ib-4x8").dynamics == DynamicsSpec()
    congested = resolve_env("h100-ib-4x8-congested")
    assert congested.dynamics == DynamicsSpec(congestion="markov", congested_share=0.6, congested_fraction=0.4,
                                              mean_period_ms=10.0)
    heavy = resolve_env("h100-ib-2x8-heavy-compute")
    assert heavy.dynamics == DynamicsSpec(overlap_fraction=0.8, compute_hbm_share=0.85)


@pytest.mark.parametrize("variant, base", [("h100-ib-4x8-congested", "h100-ib-4x8"),
                                           ("h100-ib-2x8-heavy-compute", "h100-ib-2x8")])
def test_variants_differ_from_their_base_only_in_dynamics(variant, base):
    a, b = resolve_env(variant), resolve_env(base)
    for attribute in ("cluster", "intra", "inter", "cpu_vendor", "nccl_version", "collnet"):
        assert getattr(a, attribute) == getattr(b, attribute)
    assert a.dynamics != b.dynamics


# --- resolve_env ---------------------------------------------------------------------------------

def test_resolve_env_finds_shipped_spec():
    env = resolve_env("dgx-h100")
    assert env.name == "dgx-h100"
    assert Path(env.source) == env_dir() / "dgx-h100.toml"
    assert (env.nodes, env.gpus_per_node) == (1, 8)


def test_resolve_env_loads_a_path(tmp_path):
    path = write_spec(tmp_path, MINIMAL, "mine.toml")
    assert resolve_env(str(path)).name == "mine"


def test_resolve_env_unknown_name_lists_shipped_names():
    with pytest.raises(InputError) as info:
        resolve_env("no-such-cluster")
    message = str(info.value)
    assert "no-such-cluster" in message
    for name in SHIPPED:
        assert name in message


def test_resolve_env_missing_toml_path_names_the_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(InputError) as info:
        resolve_env(str(path))
    assert str(info.value).startswith(f"{path}: ") and "cannot read" in str(info.value)


# --- defaults ------------------------------------------------------------------------------------

def test_defaults_of_a_cluster_only_spec(tmp_path):
    env = load_env(write_spec(tmp_path, MINIMAL))
    assert env.name == "env"
    assert env.cluster.gpu.name == "H100-SXM" and env.world_size == 16
    assert env.intra.fabric == "nvswitch"
    assert (env.intra.nvlink_links, env.intra.nvlink_link_gbytes_per_s) == (18, 25.0)
    assert env.intra.nvls is True
    assert (env.intra.pcie_gen, env.intra.pcie_lanes) == (5, 16)
    assert env.inter.nics_per_node == 8  # one per GPU
    assert (env.inter.nic_gbits_per_s, env.inter.transport) == (400.0, "ib")
    assert (env.inter.nic_latency_us, env.inter.gpudirect) == (0.0, True)
    assert env.cpu_vendor == "intel"
    assert env.nccl_version == "2.23.4" and env.nccl_version_tuple == (2, 23, 4)
    assert env.collnet is False
    assert env.dynamics == DynamicsSpec()
    assert env.dynamics == DynamicsSpec(congestion="none", congested_share=0.5, congested_fraction=0.3,
                                        mean_period_ms=20.0, overlap_fraction=0.0, compute_hbm_share=0.3,
                                        noise_cv=0.02)


@pytest.mark.parametrize("gpu, arch, links, link_gbytes_per_s, nvls, pcie_gen", [
    ("H100-SXM", "hopper", 18, 25.0, True, 5),
    ("H200-SXM", "hopper", 18, 25.0, True, 5),
    ("GH200", "hopper", 18, 25.0, True, 5),
    ("A100-SXM", "ampere", 12, 25.0, False, 4),
    ("A100-PCIe", "ampere", 12, 25.0, False, 4),
    ("B200", "blackwell", 18, 50.0, True, 5),
    ("GB200", "blackwell", 18, 50.0, True, 5),
])
def test_arch_defaults(gpu, arch, links, link_gbytes_per_s, nvls, pcie_gen):
    env = env_from_dict(minimal(gpu), "env.toml")
    assert env.arch == arch
    assert (env.intra.nvlink_links, env.intra.nvlink_link_gbytes_per_s) == (links, link_gbytes_per_s)
    assert env.intra.nvls is nvls
    assert env.intra.pcie_gen == pcie_gen


def test_volta_defaults():
    env = env_from_dict(minimal(cluster={"arch": "volta"}), "env.toml")
    assert (env.intra.nvlink_links, env.intra.nvlink_link_gbytes_per_s, env.intra.nvls) == (6, 25.0, False)
    assert env.intra.pcie_gen == 3 and env.compute_capability == 70


@pytest.mark.parametrize("fabric", ["nvlink", "pcie"])
def test_nvls_defaults_off_without_nvswitch(fabric):
    env = env_from_dict(minimal("H100-SXM", gpus_per_node=4, intra={"fabric": fabric}), "env.toml")
    assert env.intra.nvls is False


def test_pcie_fabric_has_no_nvlink_bandwidth():
    env = env_from_dict(minimal(intra={"fabric": "pcie"}), "env.toml")
    assert env.intra.nvlink_gbytes_per_s == 0.0
    env = env_from_dict(minimal(intra={"fabric": "pcie", "nvlink_links": 0}), "env.toml")
    assert env.intra.nvlink_links == 0


def test_nics_per_node_defaults_to_gpus_per_node():
    assert env_from_dict(minimal(gpus_per_node=4), "env.toml").inter.nics_per_node == 4


@pytest.mark.parametrize("text, expected", [("2.23.4", "2.23.4"), ("2.23", "2.23.0"), ("v2.21.5", "2.21.5"),
                                            ("2.18.0", "2.18.0"), ("2.30.3", "2.30.3"), ("2.19.3-1", "2.19.3")])
def test_nccl_version_spellings(text, expected):
    assert env_from_dict(minimal(nccl={"version": text}), "env.toml").nccl_version == expected


def test_integers_accepted_for_float_keys():
    env = env_from_dict(minimal(inter={"nic_latency_us": 2}, dynamics={"mean_period_ms": 5}), "env.toml")
    assert env.inter.nic_latency_us == 2.0 and isinstance(env.inter.nic_latency_us, float)
    assert env.dynamics.mean_period_ms == 5.0


def test_boundary_values_accepted():
    env = env_from_dict(minimal(inter={"nic_latency_us": 0.0},
                                dynamics={"congested_share": 0.95, "congested_fraction": 1.0, "noise_cv": 0.0,
                                          "overlap_fraction": 1.0, "compute_hbm_share": 0.0}), "env.toml")
    assert env.dynamics.congested_share == 0.95 and env.dynamics.noise_cv == 0.0


def test_direct_nvlink_with_one_link_per_peer_is_enough():
    env = env_from_dict(minimal("GH200", gpus_per_node=4, intra={"fabric": "nvlink", "nvlink_links": 3}),
                        "env.toml")
    assert env.intra.nvlink_links == 3


# --- errors --------------------------------------------------------------------------------------

BAD = [
    # (id, sections to merge into a minimal H100 2x8 spec, field named, words in the message)
    ("unknown-section", {"network": {"nic_gbits": 400}}, "network", "unknown section"),
    ("unknown-key-cluster", {"cluster": {"gpus": 8}}, "cluster.gpus", "unknown key"),
    ("unknown-key-intra", {"intra": {"nvswitch_count": 4}}, "intra.nvswitch_count", "unknown key"),
    ("unknown-key-inter", {"inter": {"nic_speed": 400}}, "inter.nic_speed", "unknown key"),
    ("unknown-key-host", {"host": {"cpu": "intel"}}, "host.cpu", "unknown key"),
    ("unknown-key-nccl", {"nccl": {"algo": "ring"}}, "nccl.algo", "unknown key"),
    ("unknown-key-dynamics", {"dynamics": {"jitter": 0.1}}, "dynamics.jitter", "unknown key"),
    ("section-not-a-table", {"intra": "nvswitch"}, "intra", "table"),
    # wrong types: string for a number
    ("string-nic-gbits", {"inter": {"nic_gbits_per_s": "400"}}, "inter.nic_gbits_per_s", "a number"),
    ("string-nvlink-links", {"intra": {"nvlink_links": "18"}}, "intra.nvlink_links", "an integer"),
    ("string-noise", {"dynamics": {"noise_cv": "low"}}, "dynamics.noise_cv", "a number"),
    ("string-latency", {"inter": {"nic_latency_us": "2us"}}, "inter.nic_latency_us", "a number"),
    ("string-sm-count", {"cluster": {"sm_count": "132"}}, "cluster.sm_count", "positive integer"),
    # wrong types: bool for a number
    ("bool-nics", {"inter": {"nics_per_node": True}}, "inter.nics_per_node", "an integer"),
    ("bool-link-speed", {"intra": {"nvlink_link_gbytes_per_s": True}}, "intra.nvlink_link_gbytes_per_s",
     "a number"),
    ("bool-period", {"dynamics": {"mean_period_ms": False}}, "dynamics.mean_period_ms", "a number"),
    ("bool-hbm", {"cluster": {"hbm_gbytes_per_s": True}}, "cluster.hbm_gbytes_per_s", "positive number"),
    # wrong types: number for a bool
    ("number-nvls", {"intra": {"nvls": 1}}, "intra.nvls", "true or false"),
    ("number-gpudirect", {"inter": {"gpudirect": 0}}, "inter.gpudirect", "true or false"),
    ("string-collnet", {"nccl": {"collnet": "yes"}}, "nccl.collnet", "true or false"),
    # wrong types: float for an integer, list for a choice, nan
    ("float-nics", {"inter": {"nics_per_node": 8.0}}, "inter.nics_per_node", "an integer"),
    ("float-pcie-gen", {"intra": {"pcie_gen": 5.0}}, "intra.pcie_gen", "an integer"),
    ("list-fabric", {"intra": {"fabric": ["nvswitch"]}}, "intra.fabric", "one of"),
    ("nan-noise", {"dynamics": {"noise_cv": float("nan")}}, "dynamics.noise_cv", "a number"),
    ("nan-hbm", {"cluster": {"hbm_gbytes_per_s": float("nan")}}, "cluster.hbm_gbytes_per_s", "positive number"),
    ("inf-link-speed", {"intra": {"nvlink_link_gbytes_per_s": float("inf")}}, "intra.nvlink_link_gbytes_per_s",
     "<= 200"),
    # out of range
    ("negative-nic-latency", {"inter": {"nic_latency_us": -1.0}}, "inter.nic_latency_us", ">= 0"),
    ("noise-cv-0.9", {"dynamics": {"noise_cv": 0.9}}, "dynamics.noise_cv", "<= 0.5"),
    ("congested-share-1", {"dynamics": {"congested_share": 1.0}}, "dynamics.congested_share", "<= 0.95"),
    ("negative-congested-share", {"dynamics": {"congested_share": -0.1}}, "dynamics.congested_share", ">= 0"),
    ("congested-fraction-1.5", {"dynamics": {"congested_fraction": 1.5}}, "dynamics.congested_fraction", "<= 1"),
    ("zero-period", {"dynamics": {"mean_period_ms": 0}}, "dynamics.mean_period_ms", "> 0"),
    ("overlap-2", {"dynamics": {"overlap_fraction": 2.0}}, "dynamics.overlap_fraction", "<= 1"),
    ("hbm-share-negative", {"dynamics": {"compute_hbm_share": -0.5}}, "dynamics.compute_hbm_share", ">= 0"),
    ("zero-nics", {"inter": {"nics_per_node": 0}}, "inter.nics_per_node", "> 0"),
    ("zero-nic-gbits", {"inter": {"nic_gbits_per_s": 0}}, "inter.nic_gbits_per_s", "> 0"),
    ("huge-nic-gbits", {"inter": {"nic_gbits_per_s": 6400}}, "inter.nic_gbits_per_s", "<= 3200"),
    ("zero-links-on-nvswitch", {"intra": {"nvlink_links": 0}}, "intra.nvlink_links", "> 0"),
    ("too-many-links", {"intra": {"nvlink_links": 40}}, "intra.nvlink_links", "<= 36"),
    ("pcie-gen-1", {"intra": {"pcie_gen": 1}}, "intra.pcie_gen", ">= 2"),
    ("pcie-gen-7", {"intra": {"pcie_gen": 7}}, "intra.pcie_gen", "<= 6"),
    ("pcie-lanes-32", {"intra": {"pcie_lanes": 32}}, "intra.pcie_lanes", "<= 16"),
    ("negative-nodes", {"cluster": {"nodes": -1}}, "cluster.nodes", "positive integer"),
    # bad choices
    ("fabric-infinityfabric", {"intra": {"fabric": "infinityfabric"}}, "intra.fabric", "nvswitch, nvlink, pcie"),
    ("transport-myrinet", {"inter": {"transport": "myrinet"}}, "inter.transport", "ib, roce, efa, slingshot, tcp"),
    ("cpu-vendor-ibm", {"host": {"cpu_vendor": "ibm"}}, "host.cpu_vendor", "intel, amd, arm"),
    ("congestion-poisson", {"dynamics": {"congestion": "poisson"}}, "dynamics.congestion", "none, markov"),
    ("arch-pascal", {"cluster": {"arch": "pascal"}}, "cluster.arch", "volta, ampere, ada, hopper, blackwell"),
    ("gpu-z100", {"cluster": {"gpu": "Z100"}}, "cluster.gpu", "unknown GPU"),
    # NVLS where there is none
    ("nvls-on-pcie", {"intra": {"fabric": "pcie", "nvls": True}}, "intra.nvls", "NVSwitch"),
    ("nvls-on-direct-nvlink", {"intra": {"fabric": "nvlink", "nvls": True}}, "intra.nvls", "NVSwitch"),
    # NCCL versions
    ("nccl-2.17.1", {"nccl": {"version": "2.17.1"}}, "nccl.version", "between 2.18 and 2.30"),
    ("nccl-3.0", {"nccl": {"version": "3.0"}}, "nccl.version", "between 2.18 and 2.30"),
    ("nccl-2.31.0", {"nccl": {"version": "2.31.0"}}, "nccl.version", "between 2.18 and 2.30"),
    ("nccl-number", {"nccl": {"version": 2.23}}, "nccl.version", "as a string"),
    ("nccl-abc", {"nccl": {"version": "abc"}}, "nccl.version", "'abc'"),
    ("nccl-empty", {"nccl": {"version": ""}}, "nccl.version", "2.18"),
    ("nccl-four-parts", {"nccl": {"version": "2.23.4.1"}}, "nccl.version", "2.18"),
]


@pytest.mark.parametrize("sections, key, words", [pytest.param(s, k, w, id=i) for i, s, k, w in BAD])
def test_bad_spec_names_section_and_key(sections, key, words):
    with pytest.raises(InputError) as info:
        env_from_dict(minimal(**sections), "envs/bad.toml")
    err = info.value
    assert err.source == "envs/bad.toml" and err.field == key
    assert str(err).startswith(f"envs/bad.toml: {key}: ")
    assert words in str(err)


@pytest.mark.parametrize("gpu", ["A100-SXM", "A100-PCIe"])
def test_nvls_on_an_a100_is_an_error(gpu):
    with pytest.raises(InputError) as info:
        env_from_dict(minimal(gpu, intra={"nvls": True}), "a100.toml")
    assert str(info.value).startswith("a100.toml: intra.nvls: ")
    assert "ampere" in str(info.value)


def test_nvls_on_volta_by_arch_override_is_an_error():
    with pytest.raises(InputError) as info:
        env_from_dict(minimal(cluster={"arch": "volta"}, intra={"nvls": True}), "v.toml")
    assert info.value.field == "intra.nvls"


@pytest.mark.parametrize("gpus_per_node, links", [(4, 2), (8, 6), (8, 1)])
def test_direct_nvlink_with_fewer_links_than_peers_is_an_error(gpus_per_node, links):
    with pytest.raises(InputError) as info:
        env_from_dict(minimal("H100-SXM", gpus_per_node=gpus_per_node,
                              intra={"fabric": "nvlink", "nvlink_links": links, "nvls": False}), "direct.toml")
    err = info.value
    assert str(err).startswith("direct.toml: intra.nvlink_links: ")
    assert str(gpus_per_node - 1) in str(err) and str(links) in str(err)


@pytest.mark.parametrize("missing", ["gpu", "gpus_per_node", "nodes"])
def test_missing_required_cluster_key(missing):
    obj = minimal()
    del obj["cluster"][missing]
    with pytest.raises(InputError) as info:
        env_from_dict(obj, "env.toml")
    assert info.value.field == f"cluster.{missing}" and "missing" in str(info.value)


def test_missing_cluster_table():
    with pytest.raises(InputError) as info:
        env_from_dict({"intra": {"fabric": "nvswitch"}}, "env.toml")
    assert str(info.value).startswith("env.toml: cluster: ")


# The same errors through a file: the message names the path on disk.

@pytest.mark.parametrize("extra, key", [
    ('[intra]\nfabric = "infinityfabric"\n', "intra.fabric"),
    ('[inter]\nnic_gbits_per_s = "400"\n', "inter.nic_gbits_per_s"),
    ("[inter]\nnic_latency_us = -3\n", "inter.nic_latency_us"),
    ("[dynamics]\nnoise_cv = nan\n", "dynamics.noise_cv"),
    ("[nccl]\nversion = 2.23\n", "nccl.version"),
    ('[nccl]\nversion = "2.17.1"\n', "nccl.version"),
    ("[intra]\nnvls = 1\n", "intra.nvls"),
    ("[extra]\nx = 1\n", "extra"),
    ("nodes_total = 16\n", "nodes_total"),  # a top-level key (written first) is an unknown section
])
def test_bad_spec_file_names_path_and_key(tmp_path, extra, key):
    text = extra + MINIMAL if not extra.startswith("[") else MINIMAL + extra
    path = write_spec(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_env(path)
    assert str(info.value).startswith(f"{path}: {key}: ")


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(InputError) as info:
        load_env(path)
    assert str(info.value).startswith(f"{path}: ") and "cannot read" in str(info.value)


def test_directory_names_the_file(tmp_path):
    with pytest.raises(InputError) as info:
        load_env(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: ") and "cannot read" in str(info.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_file_without_read_permission_names_the_file(tmp_path):
    path = write_spec(tmp_path, MINIMAL)
    path.chmod(0)
    try:
        with pytest.raises(InputError) as info:
            load_env(path)
    finally:
        path.chmod(0o644)
    assert str(info.value).startswith(f"{path}: ") and "cannot read" in str(info.value)


@pytest.mark.parametrize("text", [
    MINIMAL.replace("nodes = 2", "nodes = = 2"),
    MINIMAL + "[cluster]\nnodes = 3\n",  # a table defined twice
    "[cluster\ngpu = 'H100'\n",
])
def test_invalid_toml_names_the_file(tmp_path, text):
    path = write_spec(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_env(path)
    assert str(info.value).startswith(f"{path}: ") and "not valid TOML" in str(info.value)


def test_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    with pytest.raises(InputError) as info:
        load_env(path)
    assert str(info.value).startswith(f"{path}: ") and "UTF-8" in str(info.value)


def test_cluster_loader_not_utf8_names_the_file(tmp_path):
    from dynamiccl.cluster import load_cluster
    path = tmp_path / "latin1.toml"
    path.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    with pytest.raises(InputError) as info:
        load_cluster(path)
    assert str(info.value).startswith(f"{path}: ") and "UTF-8" in str(info.value)
