"""The knobs package: its registry, communicator configs and their masks, job settings, the safety list."""

from __future__ import annotations

import pytest

from dynamiccl.envspec import env_from_dict
from dynamiccl.errors import InputError
from dynamiccl.knobs import KNOBS, SCOPES, Knob, register
from dynamiccl.knobs.chunk import CHUNK_CHOICES_BYTES, KEEP_CHUNK, check_chunk_bytes
from dynamiccl.knobs.comm_config import (
    COMM_CHOICES, DEFAULT_COMM_CHOICE, ZERO_CTA_FUNCS, CommConfig, batch_columns, comm_choice_mask,
)
from dynamiccl.knobs.job_env import JOB_ENV_SETTINGS, check_job_env_value
from dynamiccl.knobs.safety import PER_CALL_CHUNK, refusals
from dynamiccl.nccl import Func

MiB = 1 << 20


# --- the registry ----------------------------------------------------------------------------------

def test_every_knob_is_registered_once_with_its_scope_and_what_the_world_knows():
    for name in ("chunk_size", "max_ctas", "min_ctas", "nvls_ctas", "cta_policy_zero", "cta_policy_efficiency",
                 "cga_cluster_size", *(setting.lower() for setting in JOB_ENV_SETTINGS)):
        assert name in KNOBS, name
    for knob in KNOBS.values():
        assert knob.scope in SCOPES
        assert bool(knob.modelled) != bool(knob.masked_why)
    # What the world models names its public source; chunk sizes and job settings stay masked.
    assert "nccl#689" in KNOBS["max_ctas"].modelled and "nccl#1649" in KNOBS["nvls_ctas"].modelled
    assert KNOBS["chunk_size"].masked_why and KNOBS["nccl_p2p_net_chunksize"].masked_why
    assert KNOBS["cta_policy_zero"].available("2.28.3") and not KNOBS["cta_policy_zero"].available("2.27.3")
    assert KNOBS["max_ctas"].available((2, 17, 1)) and not KNOBS["max_ctas"].available("2.16.5")


def test_a_knob_is_declared_whole_and_only_once():
    with pytest.raises(ValueError, match="scope"):
        Knob("x", "rank", "env", "2.18.0", modelled="m")
    with pytest.raises(ValueError, match="exactly one"):
        Knob("x", "job", "env", "2.18.0", modelled="m", masked_why="w")
    with pytest.raises(ValueError, match="exactly one"):
        Knob("x", "job", "env", "2.18.0")
    with pytest.raises(ValueError, match="NCCL version"):
        Knob("x", "job", "env", "two", modelled="m")
    with pytest.raises(ValueError, match="registered twice"):
        register(Knob("max_ctas", "communicator", "again", "2.17.1", modelled="m"))


# --- per-call chunk size -----------------------------------------------------------------------------

def test_chunk_bytes_is_keep_or_a_power_of_two_in_range():
    assert check_chunk_bytes(KEEP_CHUNK) == -1
    for value in CHUNK_CHOICES_BYTES:
        assert check_chunk_bytes(value) == value
    for bad in (0, 3000, 4095, 3 * 65536, 128 * MiB, 1.0, True, "65536"):
        with pytest.raises(ValueError, match="rules\\[2\\].chunk_bytes"):
            check_chunk_bytes(bad, "rules[2].chunk_bytes")


# --- communicator configs ----------------------------------------------------------------------------

@pytest.mark.parametrize("values, field", [
    ({"max_ctas": 0}, "max_ctas"), ({"min_ctas": 65}, "min_ctas"), ({"nvls_ctas": True}, "nvls_ctas"),
    ({"max_ctas": 2.0}, "max_ctas"), ({"cga_cluster_size": 9}, "cga_cluster_size"),
    ({"cta_policy": "fast"}, "cta_policy"), ({"min_ctas": 16, "max_ctas": 8}, "min_ctas 16 is above max_ctas"),
])
def test_a_bad_communicator_config_names_its_field(values, field):
    with pytest.raises(ValueError, match=field):
        CommConfig(**values)
    with pytest.raises(ValueError, match=f"communicators\\[0\\].config: .*{field}"):
        CommConfig.from_dict(values, "communicators[0].config")


def test_a_communicator_config_round_trips_through_its_set_fields():
    config = CommConfig(max_ctas=8, cta_policy="zero")
    assert config.set_fields() == {"max_ctas": 8, "cta_policy": "zero"}
    assert CommConfig.from_dict(config.set_fields()) == config
    assert config.describe() == "max_ctas=8 cta_policy=zero"
    assert CommConfig().describe() == "nccl-default" and CommConfig().is_default
    assert config.min_nccl() == "2.28.3"
    assert CommConfig(nvls_ctas=4).min_nccl() == "2.27.3"
    assert CommConfig(min_ctas=4).min_nccl() == "2.17.1"
    with pytest.raises(ValueError, match="unknown field.*max_channels"):
        CommConfig.from_dict({"max_channels": 8}, "comm.yaml")


def test_batch_columns_apply_zero_cta_only_on_symmetric_buffers():
    assert batch_columns(CommConfig(), False) == {"max_ctas": 0, "min_ctas": 0, "nvls_ctas": 0, "zero_cta": False}
    assert batch_columns(CommConfig(max_ctas=8, min_ctas=2, nvls_ctas=4), False) == \
        {"max_ctas": 8, "min_ctas": 2, "nvls_ctas": 4, "zero_cta": False}
    assert batch_columns(CommConfig(cta_policy="zero"), True)["zero_cta"] is True
    assert batch_columns(CommConfig(cta_policy="zero"), False)["zero_cta"] is False
    assert batch_columns(CommConfig(cta_policy="efficiency"), True)["zero_cta"] is False
    # Copy engines copy: the functions NCCL runs on them are copies (NVIDIA/nccl src/ce_coll.cc).
    assert {Func[name.upper()] for name in ZERO_CTA_FUNCS} == {Func.ALLGATHER, Func.ALLTOALL}


def _allowed(**kwargs) -> set[CommConfig]:
    return {config for config, ok in zip(COMM_CHOICES, comm_choice_mask(**kwargs)) if ok}


def test_comm_choice_mask_follows_the_nccl_version_and_the_cluster():
    everything = dict(nvls=True, one_nvlink_domain=True, symmetric_memory=True)
    assert COMM_CHOICES[DEFAULT_COMM_CHOICE].is_default
    assert _allowed(nccl_version="2.16.5", **everything) == {CommConfig()}
    bounds = {c for c in COMM_CHOICES if c.max_ctas > 0 or c.min_ctas > 0}
    nvls = {c for c in COMM_CHOICES if c.nvls_ctas > 0}
    zero = {CommConfig(cta_policy="zero")}
    assert _allowed(nccl_version="2.17.1", **everything) == {CommConfig()} | bounds
    assert _allowed(nccl_version="2.27.3", **everything) == {CommConfig()} | bounds | nvls
    assert _allowed(nccl_version="2.28.3", **everything) == {CommConfig()} | bounds | nvls | zero
    # NVLS pools only where the communicator has NVLS; zero-CTA only inside one NVLink domain, on
    # symmetric buffers.
    assert not _allowed(nccl_version="2.28.3", nvls=False, one_nvlink_domain=True, symmetric_memory=True) & nvls
    assert not _allowed(nccl_version="2.28.3", nvls=True, one_nvlink_domain=False, symmetric_memory=True) & zero
    assert not _allowed(nccl_version="2.28.3", nvls=True, one_nvlink_domain=True, symmetric_memory=False) & zero
    assert all(c.cta_policy != "efficiency" for c in _allowed(nccl_version="2.30.3", **everything))


# --- job settings and the safety list ----------------------------------------------------------------

def test_job_env_values_are_checked_against_each_settings_range():
    assert check_job_env_value("NCCL_P2P_NET_CHUNKSIZE", 2 * MiB) == 2 * MiB
    assert check_job_env_value("NCCL_NCHANNELS_PER_NET_PEER", 3) == 3
    for name, value, expected in (("NCCL_P2P_NET_CHUNKSIZE", 3 * MiB, "power of two"),
                                  ("NCCL_BUFFSIZE", 4096, "from 65536"),
                                  ("NCCL_NCHANNELS_PER_NET_PEER", 65, "an integer from 1 to 64"),
                                  ("NCCL_P2P_LL_THRESHOLD", "16384", "an integer"),
                                  ("NCCL_ALGO", 1, "not a setting a table may carry")):
        with pytest.raises(ValueError, match=expected) as err:
            check_job_env_value(name, value)
        assert name in str(err.value)


def test_refusals_follow_nccl_2408_on_version_and_transport():
    """nccl#2408: p2p chunks >= 1 MiB returned wrong results with Xid 31 on NCCL 2.31.2 over RoCE."""
    big = {"NCCL_P2P_NET_CHUNKSIZE": MiB, PER_CALL_CHUNK: 2 * MiB}
    assert {r.setting for r in refusals(big, "2.31.2", "roce")} == set(big)
    assert all("nccl#2408" in r.why and "refused" in str(r) for r in refusals(big, "2.31.2", "roce"))
    assert refusals({"NCCL_P2P_NET_CHUNKSIZE": 512 * 1024}, "2.31.2", "roce") == []
    assert refusals(big, "2.30.3", "roce") == []
    assert refusals(big, "2.31.2", "ib") == []
    # In doubt, refuse: an unknown version or transport counts as affected.
    assert len(refusals(big, None, "roce")) == 2 and len(refusals(big, "2.31.2", None)) == 2
    assert refusals({"NCCL_BUFFSIZE": 8 * MiB}, None, None) == []


@pytest.mark.parametrize("version, transport", [("2.18.1", "ib"), ("2.31.2", "roce"), (None, None)])
def test_nccl_chunk_size_is_always_refused(version, transport):
    """Undocumented NCCL_CHUNK_SIZE overruns NCCL's buffers above the p2p step size (nccl#1496, #2408)."""
    got = refusals({"NCCL_CHUNK_SIZE": 65536}, version, transport)
    assert [r.setting for r in got] == ["NCCL_CHUNK_SIZE"] and "nccl#1496" in got[0].why


# --- the environment spec's symmetric memory -----------------------------------------------------------

def test_symmetric_memory_is_read_from_the_nccl_section():
    base = {"cluster": {"gpu": "H100-SXM", "gpus_per_node": 8, "nodes": 1}}
    assert env_from_dict(base, "env.toml").symmetric_memory is False
    assert env_from_dict({**base, "nccl": {"symmetric_memory": True}}, "env.toml").symmetric_memory is True
    with pytest.raises(InputError, match="nccl.symmetric_memory"):
        env_from_dict({**base, "nccl": {"symmetric_memory": "yes"}}, "env.toml")
