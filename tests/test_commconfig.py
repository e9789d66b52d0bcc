"""Per-communicator settings applied to unmodified jobs: the zero-code hook in a real 2-process gloo job
started by ``dynamiccl launch`` under torchrun, the hook's options against PyTorch's real
``ProcessGroupNCCL.Options`` (where this torch has it) and against a stand-in with its attribute
surface, Megatron-LM's YAML read back with a YAML parser, and the job settings safety refuses."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
import yaml

from dynamiccl.commconfig_hook import ENV_FILE, PREFIX as HOOK_PREFIX, CommConfigHook, build_options, \
    nccl_options_class
from dynamiccl.knobs.comm_config import CommConfig
from dynamiccl.launcher import NO_CHUNK_ENV, PREFIX, plan_launch
from dynamiccl.megatron_yaml import MEGATRON_GROUPS, megatron_yaml
from dynamiccl.nccl import Algorithm as A, Func, Protocol as P
from dynamiccl.nccl_libraries import NcclLibrary
from dynamiccl.plugin import TABLE_ENV
from dynamiccl.plugin.build import compile_sources, find_compiler
from dynamiccl.table import MAX_BYTES, CommunicatorRule, DecisionTable, Rule, load, save

OUR_VARIABLES = ("NCCL_TUNER_PLUGIN", TABLE_ENV, "NCCL_ALGO", "NCCL_PROTO", "DYNAMICCL_PROFILE_DIR", ENV_FILE,
                 NO_CHUNK_ENV, "NCCL_P2P_NET_CHUNKSIZE", "NCCL_BUFFSIZE", "NCCL_CHUNK_SIZE", "LD_LIBRARY_PATH")
# The keys Megatron-LM's get_nccl_options reads from a group's entry (NVIDIA/Megatron-LM
# megatron/core/parallel_state.py): the only ones a YAML for it may hold.
MEGATRON_ACCEPTED_KEYS = {"cga_cluster_size", "max_ctas", "min_ctas", "net_name", "is_high_priority_stream"}
# ncclConfig_t fields PyTorch's NCCLConfig binds (torch/csrc/distributed/c10d/init.cpp); no
# nvls_ctas and no cta_policy, as in the torch builds that predate NCCL 2.27's fields.
NCCL_CONFIG_SURFACE = ("blocking", "cga_cluster_size", "min_ctas", "max_ctas", "net_name")


def communicators_table() -> DecisionTable:
    return DecisionTable(communicators=(
        CommunicatorRule("tp", 2, 1, CommConfig(max_ctas=4, cga_cluster_size=2)),
        CommunicatorRule("world", config=CommConfig(min_ctas=2, nvls_ctas=8)),
        CommunicatorRule("dp", config=CommConfig(max_ctas=8)),
        CommunicatorRule("pp", config=CommConfig(max_ctas=2, cta_policy="zero")),
        CommunicatorRule("cp", 1, 1, CommConfig(max_ctas=1)),
    ), rules=(Rule(coll=Func.ALLREDUCE, min_bytes=0, max_bytes=MAX_BYTES, algorithm=A.RING, protocol=P.SIMPLE),))


def clean_env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
    return {**env, "DYNAMICCL_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", **extra}


def launch(*args: str, cache: Path, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynamiccl", "launch", *args], capture_output=True, text=True,
                          cwd=cwd, env=clean_env(cache, **extra), timeout=240)


def said(stderr: str, prefix: str = PREFIX) -> list[str]:
    return [line[len(prefix):] for line in stderr.splitlines() if line.startswith(prefix)]


# --- the hook in a real job -------------------------------------------------------------------------------

JOB = textwrap.dedent("""\
    # An unmodified training job's group set-up: no dynamiccl import until the records are dumped.
    import gc, json, os, sys
    from dataclasses import asdict
    import torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    class UsersOptions:  # what the user's own code passes as pg_options (gloo ignores it)
        pass

    def main():
        dist.init_process_group("gloo")
        tp = dist.new_group([0, 1], group_desc="TENSOR_MODEL_PARALLEL_GROUP")
        nameless = dist.new_group([0, 1])
        users = dist.new_group([0, 1], group_desc="DATA_PARALLEL_GROUP", pg_options=UsersOptions())
        mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=("pp", "tp"))  # pp: new_group(group_desc="mesh_pp")
        cp, _ = dist.new_subgroups(group_size=1, group_desc="CONTEXT_PARALLEL_GROUP")  # new_group inside torch
        value = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(value, group=tp)
        dist.all_reduce(value, group=users)
        from dynamiccl.commconfig_hook import active
        with open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.json"), "w") as f:
            json.dump({"sum": value.item(), "records": [asdict(r) for r in active().records]}, f)
        dist.destroy_process_group()

    # The groups are locals of main(), freed before the interpreter shuts down: a gloo group still
    # alive then can abort the process from its worker threads (pytorch/pytorch PR #179291); seen
    # once in CI with this job's module-level groups ("terminate called without an active exception").
    main()
    gc.collect()
    sys.stdout.flush()
    os._exit(0)  # the result is in the files above; torch's gloo teardown at exit is not under test
""")


def test_launch_gives_each_group_of_a_gloo_job_its_communicator_settings(tmp_path, cache):
    table_path = tmp_path / "table.json"
    table = communicators_table()
    save(table, table_path)
    job, out = tmp_path / "job.py", tmp_path / "out"
    job.write_text(JOB)
    out.mkdir()
    done = launch("--table", str(table_path), "--", sys.executable, "-m", "torch.distributed.run", "--standalone",
                  "--nproc-per-node=2", str(job), str(out), cache=cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = said(done.stderr)
    comm_line = next(line for line in lines if line.startswith(f"{ENV_FILE}="))
    comm_file = Path(comm_line.split("=", 1)[1].split(" ", 1)[0])
    assert comm_file.parent == cache / "tables" and load(comm_file).communicators == table.communicators
    assert not load(comm_file).rules  # the hook's file carries the communicators only
    yaml_line = next(line for line in lines if line.startswith("Megatron-LM:"))
    assert "add --nccl-communicator-config-path " in yaml_line

    expected_api = {"default_pg": "init_process_group", "TENSOR_MODEL_PARALLEL_GROUP": "new_group",
                    "": "new_group", "DATA_PARALLEL_GROUP": "new_group", "mesh_pp": "new_group",
                    "CONTEXT_PARALLEL_GROUP": "new_group"}
    has_options = nccl_options_class() is not None
    for rank in (0, 1):
        dumped = json.loads((out / f"rank{rank}.json").read_text())
        assert dumped["sum"] == 2 * (1 + 2)  # the groups work: (1 + 2) summed over tp, then over users' group
        records = {r["desc"]: r for r in dumped["records"]}
        # init, 3 new_group calls, and two 1-rank groups each (both created on every rank) for the mesh's pp
        # dimension and for new_subgroups
        assert len(dumped["records"]) == 8 and set(records) == set(expected_api)
        for record in dumped["records"]:
            assert record["api"] == expected_api[record["desc"]]
            assert record["backend"].endswith("gloo") and record["nnodes"] == 1
            # what the hook built is exactly the table's rule for the group's kind and shape
            config = table.communicator_config(record["kind"], record["nranks"], record["nnodes"])
            assert record["config"] == config.set_fields() and not config.is_default
        assert [records[d]["kind"] for d in ("default_pg", "TENSOR_MODEL_PARALLEL_GROUP", "", "mesh_pp",
                                             "CONTEXT_PARALLEL_GROUP")] == ["world", "tp", "world", "pp", "cp"]
        assert records["TENSOR_MODEL_PARALLEL_GROUP"]["config"] == {"max_ctas": 4, "cga_cluster_size": 2}
        assert records["DATA_PARALLEL_GROUP"]["outcome"] == "user-options"  # the user's pg_options win
        others = [r for r in dumped["records"] if r["desc"] != "DATA_PARALLEL_GROUP"]
        # never passed to gloo: built (real Options where torch has them) or recorded only
        assert {r["outcome"] for r in others} == {"not-nccl" if has_options else "no-options-class"}
        pp = records["mesh_pp"]  # cta_policy as NCCL_CTA_POLICY_ZERO, unless this torch's binding lacks it
        assert set(pp["fields"]) | set(pp["lacking"]) == {"max_ctas", "cta_policy"}
        assert pp["fields"].get("cta_policy") == 2 or "cta_policy" in pp["lacking"]
    hook_lines = said(done.stderr, HOOK_PREFIX)
    assert any("kept the pg_options your code passes" in line for line in hook_lines)
    assert sum("kept the pg_options" in line for line in hook_lines) == 1  # rank 0 only, said once
    assert any(line.startswith("group TENSOR_MODEL_PARALLEL_GROUP (tp, 2 rank(s) on 1 node(s), backend gloo)")
               for line in hook_lines)


# --- the options object ---------------------------------------------------------------------------------------

@pytest.mark.skipif(nccl_options_class() is None,
                    reason=f"torch {torch.__version__} has no ProcessGroupNCCL.Options (torch.distributed."
                           f"is_nccl_available() is {dist.is_nccl_available()}: a build without NCCL); "
                           "test_a_stand_in_... builds the options through the same code path")
def test_the_hook_builds_pytorchs_real_nccl_options():
    options_class = nccl_options_class()
    options, fields, lacking = build_options(CommConfig(min_ctas=2, max_ctas=8, cga_cluster_size=2, nvls_ctas=4,
                                                        cta_policy="zero"), options_class)
    assert isinstance(options, dist.ProcessGroupNCCL.Options)
    assert (options.config.min_ctas, options.config.max_ctas, options.config.cga_cluster_size) == (2, 8, 2)
    config = options_class().config
    assert set(fields) | set(lacking) == {"min_ctas", "max_ctas", "cga_cluster_size", "nvls_ctas", "cta_policy"}
    assert lacking == [name for name in ("nvls_ctas", "cta_policy") if not hasattr(config, name)]
    if "cta_policy" in fields:
        assert options.config.cta_policy == fields["cta_policy"] == dist.ProcessGroupNCCL.NCCL_CTA_POLICY_ZERO


class NCCLConfigStandIn:
    """PyTorch's NCCLConfig attribute surface: setting anything else fails, as on the pybind class."""

    __slots__ = NCCL_CONFIG_SURFACE

    def __init__(self):
        self.blocking, self.cga_cluster_size, self.min_ctas, self.max_ctas, self.net_name = 1, -1, -1, -1, ""


class OptionsStandIn:
    """ProcessGroupNCCL.Options' attribute surface."""

    __slots__ = ("config", "is_high_priority_stream", "_timeout")

    def __init__(self, is_high_priority_stream: bool = False):
        self.config, self.is_high_priority_stream = NCCLConfigStandIn(), is_high_priority_stream


@pytest.fixture
def gloo_world(tmp_path, monkeypatch):
    """A one-process gloo world in this process, and a spy on the new_group the hook wraps."""
    seen = []
    original = c10d.new_group

    @functools.wraps(original)
    def spy(*args, **kwargs):
        seen.append(kwargs.get("pg_options", args[3] if len(args) > 3 else None))
        return original(*args, **kwargs)

    for module in (dist, c10d):
        monkeypatch.setattr(module, "new_group", spy)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield seen
    finally:
        dist.destroy_process_group()


def test_a_stand_in_with_pytorchs_options_surface_is_built_and_never_passed_to_gloo(gloo_world, capsys):
    table = DecisionTable(communicators=(CommunicatorRule("tp", config=CommConfig(max_ctas=4, nvls_ctas=8)),))
    hook = CommConfigHook(table, options_class=OptionsStandIn).install()
    try:
        dist.new_group([0], group_desc="TENSOR_MODEL_PARALLEL_GROUP")
        dist.new_group([0], group_desc="mesh_tp")
        dist.new_group([0], group_desc="PIPELINE_MODEL_PARALLEL_GROUP")  # no rule: NCCL's defaults
    finally:
        hook.uninstall()
    assert gloo_world == [None, None, None]  # gloo got no NCCL options
    tp = hook.records[0]
    assert (tp.kind, tp.nranks, tp.nnodes, tp.outcome) == ("tp", 1, 1, "not-nccl")
    assert tp.options_type.endswith("OptionsStandIn") and tp.fields == {"max_ctas": 4} and tp.lacking == ["nvls_ctas"]
    assert [r.outcome for r in hook.records] == ["not-nccl", "not-nccl", "nccl-default"]
    lines = said(capsys.readouterr().err, HOOK_PREFIX)
    assert sum("has no nvls_ctas" in line for line in lines) == 1  # the binding's gap, said once
    assert any("would pass ProcessGroupNCCL.Options with config.max_ctas=4" in line and "not passed" in line
               for line in lines)
    # An NCCL group gets the stand-in as pg_options, carrying the table's fields.
    arguments = {"ranks": [0], "backend": "nccl", "group_desc": "TENSOR_MODEL_PARALLEL_GROUP", "pg_options": None}
    record = hook.decide("new_group", arguments)
    assert record.outcome == "passed" and isinstance(arguments["pg_options"], OptionsStandIn)
    assert arguments["pg_options"].config.max_ctas == 4 and arguments["pg_options"].config.min_ctas == -1
    # split_group (DeviceMesh on an eagerly initialised NCCL group): this rank's part of split_ranks
    split = {"parent_pg": None, "split_ranks": [[0]], "group_desc": "mesh_tp", "pg_options": None}
    record = hook.decide("split_group", split)
    assert (record.kind, record.nranks, record.nnodes, record.backend) == ("tp", 1, 1, "gloo")
    assert record.outcome == "not-nccl" and split["pg_options"] is None


def test_a_broken_hook_fails_open_and_the_group_is_created_as_asked(gloo_world, capsys):
    class Broken:
        communicators = ()

        def communicator_config(self, kind, nranks, nnodes):
            raise RuntimeError("table unreadable")

    hook = CommConfigHook(Broken(), options_class=OptionsStandIn).install()
    try:
        group = dist.new_group([0], group_desc="TENSOR_MODEL_PARALLEL_GROUP")
    finally:
        hook.uninstall()
    assert group is not None and gloo_world == [None] and hook.records[0].outcome == "hook-error"
    assert said(capsys.readouterr().err, HOOK_PREFIX) == [
        "new_group: per-communicator settings not applied (RuntimeError: table unreadable); the group is created "
        "as your code asked"]
    # uninstalled: what was there before (the spy, wrapping torch's own) is back
    assert c10d.new_group.__wrapped__.__module__ == "torch.distributed.distributed_c10d"


# --- Megatron-LM's YAML -----------------------------------------------------------------------------------------

def test_megatron_yaml_reads_back_with_megatrons_group_names_and_keys():
    table = DecisionTable(communicators=(
        CommunicatorRule("tp", config=CommConfig(max_ctas=8, min_ctas=2, cga_cluster_size=4)),
        CommunicatorRule("dp", nranks=8, config=CommConfig(max_ctas=4, nvls_ctas=8)),
        CommunicatorRule("dp", config=CommConfig(max_ctas=16)),  # an earlier dp rule wins in the YAML
        CommunicatorRule("ep", config=CommConfig(cta_policy="zero")),  # nothing Megatron can carry
    ))
    text, notes = megatron_yaml(table, "t.json")
    groups = yaml.safe_load(text)
    assert set(groups) <= set(MEGATRON_GROUPS)
    assert all(set(values) <= MEGATRON_ACCEPTED_KEYS for values in groups.values())
    assert groups["tp"] == {"max_ctas": 8, "min_ctas": 2, "cga_cluster_size": 4}
    dp_groups = {"dp", "dp_cp", "intra_dp_cp", "tp_dp", "tp_dp_cp"}  # their group_desc reads as data parallel
    assert {name for name, values in groups.items() if values == {"max_ctas": 4}} == dp_groups
    assert set(groups) == {"tp"} | dp_groups  # ep's rule sets only cta_policy
    assert any("communicators[1]" in n and "nvls_ctas has no key" in n for n in notes)
    assert any("communicators[1]" in n and "names groups, not shapes" in n for n in notes)
    assert any("communicators[2]" in n and "not in the YAML" in n for n in notes)
    assert any("communicators[3]" in n and "cta_policy has no key" in n for n in notes)
    assert yaml.safe_load(megatron_yaml(DecisionTable(), "")[0]) == {}  # a mapping, never None


# --- job settings and safety ----------------------------------------------------------------------------------

FAKE_NCCL = "int ncclGetVersion(int* v) { *v = %d; return 0; }\n"


def refusable_table(path: Path) -> Path:
    save(DecisionTable(rules=(Rule(coll=Func.ALLREDUCE, min_bytes=0, max_bytes=MAX_BYTES, algorithm=A.RING,
                                   protocol=P.SIMPLE, chunk_bytes=1 << 21),),
                       job_env={"NCCL_P2P_NET_CHUNKSIZE": 1 << 21, "NCCL_BUFFSIZE": 1 << 22}), path)
    return path


def test_settings_known_to_corrupt_data_on_nccl_2_31_2_over_roce_are_not_exported(tmp_path, cache):
    lib_dir = tmp_path / "nccl"
    lib_dir.mkdir()
    source = lib_dir / "fake_nccl.c"
    source.write_text(FAKE_NCCL % 23102)  # NCCL 2.31.2 (nccl#2408)
    compile_sources(lib_dir / "libnccl.so.2", [source], ("-shared", "-fPIC", "-O0"), find_compiler())
    table = refusable_table(tmp_path / "table.json")
    done = launch("--table", str(table), "--env", "h100-roce-4x8", "--", sys.executable, "-c",
                  "import json, os; print(json.dumps(dict(os.environ)))", cache=cache, cwd=tmp_path,
                  LD_LIBRARY_PATH=str(lib_dir))
    assert done.returncode == 0, done.stderr  # the job still runs
    child = json.loads(done.stdout)
    assert "NCCL_P2P_NET_CHUNKSIZE" not in child and child["NCCL_BUFFSIZE"] == str(1 << 22)
    assert child[NO_CHUNK_ENV] == "1"
    lines = said(done.stderr)
    refused = [line for line in lines if line.startswith("not exported: NCCL_P2P_NET_CHUNKSIZE=2097152 refused")]
    assert len(refused) == 1 and "nccl#2408" in refused[0]
    assert "NCCL 2.31.2, transport roce (from --env h100-roce-4x8)" in refused[0]
    assert any(line.startswith(f"{NO_CHUNK_ENV}=1 (the table's per-call chunk sizes (up to 2097152 bytes) are not "
                               "used") for line in lines)


@pytest.mark.parametrize("version, spec, refused", [
    ((2, 30, 3), "h100-roce-4x8", False),  # another version: safe
    ((2, 31, 2), "h100-ib-2x8", False),  # another transport: safe
    (None, None, True),  # nothing known here (no NCCL, a given --env nowhere): refused
])
def test_refusal_needs_the_unsafe_version_and_transport(tmp_path, in_cache, version, spec, refused, monkeypatch):
    monkeypatch.setattr("dynamiccl.launcher.INFINIBAND_SYSFS", str(tmp_path / "no-rdma"))
    found = [NcclLibrary("/x/libnccl.so.2", "test", version=version)] if version else []
    plan = plan_launch(refusable_table(tmp_path / "table.json"), base_env=clean_env(in_cache), env_spec=spec,
                       nccl_found=found)
    assert plan.tuned, plan.reason
    assert ("NCCL_P2P_NET_CHUNKSIZE" not in plan.env) == refused and (NO_CHUNK_ENV in plan.env) == refused
    assert plan.env["NCCL_BUFFSIZE"] == str(1 << 22)
    # the user's own unsafe setting is kept (theirs), with a warning where it is unsafe
    plan = plan_launch(refusable_table(tmp_path / "table.json"), env_spec=spec, nccl_found=found,
                       base_env=clean_env(in_cache, NCCL_CHUNK_SIZE="2097152"))
    assert plan.env["NCCL_CHUNK_SIZE"] == "2097152"
    assert any(line.startswith("warning: NCCL_CHUNK_SIZE=2097152 from your environment is known to be unsafe")
               for line in plan.lines)  # refused at every version and transport (nccl#1496)


@pytest.fixture
def in_cache(cache, monkeypatch) -> Path:
    monkeypatch.setenv("DYNAMICCL_CACHE_DIR", str(cache))
    return cache
