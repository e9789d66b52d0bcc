"""dynamiccl's CSV against NVIDIA's example tuner plugin (NVIDIA/nccl plugins/tuner/example/plugin.c,
v2.27.5-1 .. v2.30.7-1), mirrored here from that source: what it reads, which line it applies, and
the channel count NCCL then uses (src/enqueue.cc, ncclGetAlgoInfo)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from dynamiccl.callkey import CallKey
from dynamiccl.cli import main
from dynamiccl.errors import InputError
from dynamiccl.nccl import TUNABLE_FUNCS, Algorithm, Func, Protocol, is_supported
from dynamiccl.table import MAX_BYTES, DecisionTable, Rule, load, nvidia_csv, save

A, P = Algorithm, Protocol
FIXTURE = Path(__file__).parent / "fixtures" / "nvidia_example_tuner" / "nccl_tuner.conf"
FIXTURE_BLOB = "13eb2f08118d965650020197e2bd97f4bd7712d0"  # NVIDIA/nccl v2.27.5-1 ext-tuner/example/nccl_tuner.conf

# NVIDIA's plugins/tuner/example/README.md "Example Configuration", verbatim.
README_EXAMPLE = """\
# Single-node, small allreduce: use tree algorithm, registered buffers only
allreduce,0,65536,tree,simple,2,1,-1,-1,1

# 4-node, 32-rank setup: medium allreduce, single pipeline op, non-registered buffers
allreduce,65537,1048576,ring,simple,4,4,32,1,0

# Any topology: large allreduce with LL128, multiple pipeline ops, any buffer type
allreduce,1048577,4294967295,ring,ll128,-1,-1,-1,4,-1

# Single-node broadcast: prefer tree, any pipeOps, registered buffers (backward compatible)
broadcast,0,32768,tree,simple,-1,1,-1

# Multi-node broadcast: optimized for non-registered buffers, single pipeline op
broadcast,32769,4294967295,ring,simple,2,-1,-1,1,0
"""
# The column headers NVIDIA's README suggests for spreadsheets ("Spreadsheet Tips").
HEADER_ROW = "collective_type,min_bytes,max_bytes,algorithm,protocol,channels,nNodes,nRanks,numPipeOps,regBuff"
IGNORE = -1.0  # NCCL_ALGO_PROTO_IGNORE


# --- NVIDIA's plugin, mirrored from plugin.c for these tests ----------------------------------------

@dataclass
class Config:
    coll: int
    min_bytes: int
    max_bytes: int
    algorithm: int
    protocol: int
    channels: int
    nnodes: int
    nranks: int
    num_pipe_ops: int
    reg_buff: int


def _c_atoi(raw: bytes) -> int:
    text = raw.lstrip(b" \t\n\v\f\r")
    sign, digits = 1, b""
    if text[:1] in (b"+", b"-"):
        sign, text = (-1 if text[:1] == b"-" else 1), text[1:]
    while text[:1].isdigit():
        digits, text = digits + text[:1], text[1:]
    value = sign * int(digits) if digits else 0
    value = max(-2**63, min(value, 2**63 - 1))
    return (value + 2**31) % 2**32 - 2**31


def _c_strtoull(raw: bytes) -> int:
    text = raw.lstrip(b" \t\n\v\f\r")
    negative = text[:1] == b"-"
    if text[:1] in (b"+", b"-"):
        text = text[1:]
    digits = b""
    while text[:1].isdigit():
        digits, text = digits + text[:1], text[1:]
    value = min(int(digits), 2**64 - 1) if digits else 0
    return (-value) % 2**64 if negative else value


COLLS = {b"broadcast": 0, b"reduce": 1, b"allgather": 2, b"reducescatter": 3, b"allreduce": 4}
ALGOS = {b"tree": 0, b"ring": 1, b"collnet_direct": 2, b"collnet_chain": 3, b"nvls": 4, b"nvls_tree": 5, b"pat": 6}
PROTOS = {b"ll": 0, b"ll128": 1, b"simple": 2}


def nvidia_load(text: str) -> list[Config]:
    """loadConfig: fgets into 256 bytes, skip '#' and '\\n' lines, strtok(","), trim, 8..10 fields."""
    data, pos, configs = text.encode("utf-8"), 0, []
    while pos < len(data):
        newline = data.find(b"\n", pos)
        end = min(len(data) if newline < 0 else newline + 1, pos + 255)
        line, pos = data[pos:end], end
        if line[:1] in (b"#", b"\n"):
            continue
        line = line.split(b"\n")[0]
        tokens = [t.strip(b" \t") for t in line.split(b",") if t][:10]
        if not 8 <= len(tokens) <= 10:
            continue
        configs.append(Config(
            COLLS.get(tokens[0], 4), _c_strtoull(tokens[1]), _c_strtoull(tokens[2]), ALGOS.get(tokens[3], 1),
            PROTOS.get(tokens[4], 2), _c_atoi(tokens[5]), _c_atoi(tokens[6]), _c_atoi(tokens[7]),
            _c_atoi(tokens[8]) if len(tokens) > 8 else -1, _c_atoi(tokens[9]) if len(tokens) > 9 else -1))
    return configs


def nvidia_decides(configs: list[Config], call: CallKey, costs: list[list[float]]) -> tuple[int, int, int]:
    """pluginGetCollInfo, then NCCL's pick (topoGetAlgoInfo) and its channel rule (ncclGetAlgoInfo):
    (algorithm, protocol, channels) with channels 0 = NCCL's own count."""
    table = [row[:] for row in costs]
    channels = 1
    for c in configs:
        if (c.coll == call.coll and c.min_bytes <= call.nbytes <= c.max_bytes
                and c.nnodes in (-1, call.nnodes) and c.nranks in (-1, call.nranks)
                and c.num_pipe_ops in (-1, call.num_pipe_ops) and c.reg_buff in (-1, call.reg_buff)):
            if table[c.algorithm][c.protocol] != IGNORE:
                table[c.algorithm][c.protocol] = 0.0
                if c.channels != -1:
                    channels = c.channels
                break
    best, best_time = None, None
    for a in range(len(Algorithm)):
        for p in range(len(Protocol)):
            if table[a][p] == IGNORE:
                continue
            if best_time is None or table[a][p] < best_time:
                best, best_time = (a, p), table[a][p]
    return best[0], best[1], channels


def dynamiccl_decides(table: DecisionTable, call: CallKey, costs) -> tuple[int, int, int]:
    choice = table.choose(costs, call)
    return int(choice.algorithm), int(choice.protocol), choice.channels


def random_costs(rng: random.Random, coll: Func) -> list[list[float]]:
    """NCCL's cost table for a call: IGNORE where NCCL never runs the pair, and now and then where
    it disables one at run time (no NVLS here, say); distinct positive times elsewhere."""
    costs = [[IGNORE if not is_supported(coll, a, p) or rng.random() < 0.15 else rng.uniform(1, 1000)
              for p in Protocol] for a in Algorithm]
    if all(cost == IGNORE for row in costs for cost in row):
        costs[A.RING][P.SIMPLE] = 10.0
    return costs


SIZES = (0, 1, 32768, 32769, 65536, 65537, 131072, 131073, 1048576, 1048577, 4294967295, 4294967296, MAX_BYTES)


def calls(rng: random.Random, count: int):
    for _ in range(count):
        nnodes = rng.choice([1, 2, 4])
        yield CallKey(rng.choice(TUNABLE_FUNCS), rng.choice(SIZES) if rng.random() < 0.5 else rng.randrange(2**33),
                      rng.choice([nnodes, 8 * nnodes, 32]), nnodes,
                      num_pipe_ops=rng.choice([1, 2, 4]), reg_buff=rng.choice([0, 1]))


def same_under_nvidia(text_a: str, text_b: str, seed: int, count: int = 1500) -> None:
    rng = random.Random(seed)
    a, b = nvidia_load(text_a), nvidia_load(text_b)
    for call in calls(rng, count):
        costs = random_costs(rng, call.coll)
        assert nvidia_decides(a, call, costs) == nvidia_decides(b, call, costs), call


def table_means_what_nvidia_does(table: DecisionTable, text: str, seed: int, count: int = 1500) -> None:
    rng = random.Random(seed)
    configs = nvidia_load(text)
    for call in calls(rng, count):
        costs = random_costs(rng, call.coll)
        assert dynamiccl_decides(table, call, costs) == nvidia_decides(configs, call, costs), call


# --- NVIDIA's own files ----------------------------------------------------------------------------

def test_fixture_is_nvidias_file_verbatim():
    data = FIXTURE.read_bytes()
    assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == FIXTURE_BLOB


def test_nvidias_shipped_conf_is_read_with_a_warning_per_line_that_never_applies():
    table = load(FIXTURE)
    warnings = table.provenance["warnings"]
    never = [w for w in warnings if "never applies" in w]
    assert [w.split(":")[0] for w in never] == ["line 30", "line 40", "line 45"]
    assert "broadcast with tree/simple" in never[0] and "reducescatter" in never[1] and "reduce with" in never[2]
    assert [w.split(":")[0] for w in warnings if "channels -1" in w] == ["line 26", "line 42"]
    assert table.rules[-5:] == nvidia_csv.example_default_rules()
    assert len(table.rules) == 6 + 5
    # What dynamiccl applies from the table is what NVIDIA's plugin does with the file.
    table_means_what_nvidia_does(table, FIXTURE.read_text(encoding="utf-8"), seed=1)


@pytest.mark.parametrize("text", [README_EXAMPLE, HEADER_ROW + "\n" + README_EXAMPLE,
                                  HEADER_ROW.replace(",", ", ") + "\r\nallgather,0,100,ring,ll,0,2,16,\r\n"])
def test_nvidias_readme_example_and_header_row_are_read_as_nvidias_plugin_reads_them(text):
    table = nvidia_csv.read(text, source="nccl_tuner.conf")
    warnings = table.provenance["warnings"]
    if text.startswith("collective_type"):
        assert warnings[0].startswith("line 1: never applies") and "nNodes reads as 0" in warnings[0]
    table_means_what_nvidia_does(table, text, seed=2)


def test_the_plugins_default_is_one_channel_for_unmatched_calls_and_for_minus_one():
    table = nvidia_csv.read("allreduce,0,1024,ring,ll,-1,1,8\nallreduce,0,1024,tree,ll,0,2,16\n")
    assert table.rules[0].channels == 1 and table.rules[1].channels == -1
    costs = [[1.0] * 3 for _ in Algorithm]
    assert table.choose(costs, CallKey(Func.ALLREDUCE, 100, 8, 1)).channels == 1
    assert table.choose(costs, CallKey(Func.ALLREDUCE, 100, 16, 2)).channels == 0  # NCCL's count
    unmatched = table.choose(costs, CallKey(Func.ALLGATHER, 100, 8, 1))
    assert (unmatched.algorithm, unmatched.protocol, unmatched.channels) == (A.TREE, P.LL, 1)


# --- round trips ---------------------------------------------------------------------------------------

def random_csv(rng: random.Random, lines: int) -> str:
    """Lines NVIDIA's plugin reads, some of them lines it can never apply."""
    out = ["# generated"]
    for _ in range(lines):
        coll = rng.choice(list(COLLS)).decode()
        low = rng.choice(SIZES[:-1])
        high = rng.choice([s for s in SIZES if s >= low] + [max(low - 1, 0)])
        fields = [coll, str(low), str(high), rng.choice(list(ALGOS)).decode(), rng.choice(list(PROTOS)).decode(),
                  str(rng.choice([-1, 0, 1, 2, 8, 32])), str(rng.choice([-1, 1, 2, 4, 0])),
                  str(rng.choice([-1, 8, 16, 32, 0]))]
        fields += [str(rng.choice([-1, 1, 2, 4, 0]))] * (rng.random() < 0.6)
        if len(fields) == 9:
            fields += [str(rng.choice([-1, 0, 1, 2]))] * (rng.random() < 0.6)
        out.append(",".join(fields))
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("seed", range(8))
def test_csv_to_table_to_csv_keeps_what_nvidias_plugin_does(seed):
    rng = random.Random(seed)
    text = FIXTURE.read_text(encoding="utf-8") if seed == 0 else random_csv(rng, rng.randint(0, 30))
    table = nvidia_csv.read(text)
    written = nvidia_csv.write(table)  # no --lossy needed: the table is what the plugin does
    same_under_nvidia(text, written, seed=seed)
    again = nvidia_csv.read(written)
    assert again.rules == table.rules
    table_means_what_nvidia_does(table, text, seed=seed + 100, count=800)


def test_minus_one_channels_survive_a_round_trip_as_one_channel(tmp_path):
    path = tmp_path / "nccl_tuner.conf"
    path.write_text("allreduce,0,1024,ring,ll,-1,1,8\n", encoding="utf-8")
    back = tmp_path / "back.conf"
    save(load(path), back)
    data = [line for line in back.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    assert data == ["allreduce,0,1024,ring,ll,1,1,8,-1,-1"]


# --- writing what the table means ------------------------------------------------------------------

def test_writing_refuses_a_table_that_leaves_calls_to_nccl_and_names_the_flag():
    with pytest.raises(InputError) as info:
        nvidia_csv.write(DecisionTable(()))
    problem = info.value.problem
    assert "--lossy" in problem and "lossy=True" not in problem
    assert "broadcast/reduce/allgather/reducescatter/allreduce calls that match no rule" in problem
    assert "1 channel" in problem
    # Rules for every call (the plugin's own default included) write without --lossy.
    text = nvidia_csv.write(DecisionTable(nvidia_csv.example_default_rules()))
    assert [line for line in text.splitlines() if not line.startswith("#")] == []
    lossy = nvidia_csv.write(DecisionTable(()), lossy=True)
    assert "WARNING: broadcast/reduce/allgather/reducescatter/allreduce calls that match no line run on 1" in lossy


def test_writing_refuses_to_drop_chunk_sizes_communicators_and_job_env(tmp_path, capsys):
    from dynamiccl.knobs.comm_config import CommConfig
    from dynamiccl.table import CommunicatorRule

    ruled = (Rule(Func.ALLREDUCE, 0, 100, algorithm=A.RING, protocol=P.LL, chunk_bytes=131072),
             Rule(Func.ALLREDUCE, 101, 200, algorithm=A.RING, protocol=P.SIMPLE))
    table = DecisionTable(ruled + nvidia_csv.example_default_rules(),
                          communicators=(CommunicatorRule("dp", 8, 1, CommConfig(max_ctas=8)),),
                          job_env={"NCCL_BUFFSIZE": 1 << 22})
    with pytest.raises(InputError) as info:
        nvidia_csv.write(table)
    assert info.value.field == "rules[0].chunk_bytes"
    for lost in ("the chunk sizes of 1 rule(s) (rules 0;", "1 communicator rule(s)", "job_env NCCL_BUFFSIZE=4194304",
                 "--lossy"):
        assert lost in info.value.problem
    for kept, field in (({"job_env": {}}, "communicators"), ({"communicators": ()}, "job_env")):
        no_chunk = DecisionTable((ruled[1],) + nvidia_csv.example_default_rules(),
                                 **{"communicators": table.communicators, "job_env": table.job_env, **kept})
        with pytest.raises(InputError) as info:
            nvidia_csv.write(no_chunk)
        assert info.value.field == field
    # --lossy writes the rule's cell and channels, and says what it dropped
    text = nvidia_csv.write(table, lossy=True)
    assert "# Dropped what this format has no place for: the chunk sizes of 1 rule(s)" in text
    assert "allreduce,0,100,ring,ll,0,-1,-1,-1,-1" in text.splitlines()
    # table convert: refused, nothing written; --lossy writes it
    source, csv = tmp_path / "t.json", tmp_path / "t.csv"
    save(table, source)
    assert main(["table", "convert", str(source), "-o", str(csv)]) == 2
    assert f"{csv}: rules[0].chunk_bytes: That CSV has no place for" in capsys.readouterr().err
    assert not csv.exists()
    assert main(["table", "convert", str(source), "-o", str(csv), "--lossy"]) == 0
    assert load(csv).rules[0] == Rule(Func.ALLREDUCE, 0, 100, algorithm=A.RING, protocol=P.LL, channels=-1)


def test_a_keep_nccl_catch_all_cannot_be_written():
    table = DecisionTable((Rule(Func.ALLREDUCE, 0, 100, algorithm=A.RING, protocol=P.LL),
                           *(Rule(coll, 0, MAX_BYTES) for coll in TUNABLE_FUNCS)))
    with pytest.raises(InputError, match=r"rules\[1\] \(takes every remaining broadcast call with NCCL's algorithm "
                                         r"and protocol on NCCL's channel count\)"):
        nvidia_csv.write(table)


def random_writable_table(rng: random.Random) -> DecisionTable:
    rules = []
    for _ in range(rng.randint(0, 12)):
        coll = rng.choice(TUNABLE_FUNCS)
        algorithm, protocol = rng.choice([(a, p) for a in Algorithm for p in Protocol if is_supported(coll, a, p)])
        low = rng.choice(SIZES[:-1])
        rules.append(Rule(coll, low, rng.choice([s for s in SIZES if s >= low]), nranks=rng.choice([-1, 8, 32]),
                          nnodes=rng.choice([-1, 1, 4]), num_pipe_ops=rng.choice([-1, 1, 4]),
                          reg_buff=rng.choice([-1, 0, 1]), algorithm=algorithm, protocol=protocol,
                          channels=rng.choice([-1, 1, 4, 64])))
    rules = [r for r in rules if r.nranks == -1 or r.nnodes == -1 or r.nnodes <= r.nranks]
    if rng.random() < 0.5:  # a channels-only rule on 1 channel that nothing later overlaps
        rules.append(Rule(Func.ALLREDUCE, 0, 10, nranks=2, nnodes=2, channels=1))
    return DecisionTable(tuple(rules) + nvidia_csv.example_default_rules())


@pytest.mark.parametrize("seed", range(6))
def test_a_written_csv_makes_nvidias_plugin_do_what_the_table_means(seed):
    rng = random.Random(seed)
    table = random_writable_table(rng)
    table_means_what_nvidia_does(table, nvidia_csv.write(table), seed=seed)


# --- table lookup --as nvidia-example ----------------------------------------------------------------

def test_lookup_as_nvidia_example_shows_first_match_and_channels(tmp_path, capsys):
    conf = tmp_path / "nccl_tuner.conf"
    conf.write_bytes(FIXTURE.read_bytes())
    args = ["table", "lookup", str(conf), "--as", "nvidia-example", "--nranks", "8", "--nnodes", "1"]
    assert main(args + ["--coll", "broadcast", "--bytes", "1000", "--reg-buff", "1"]) == 0
    captured = capsys.readouterr()
    assert "line 30: never applies" in captured.err
    out = captured.out.splitlines()
    assert out[0] == "dynamiccl: rule 6: algorithm nccl's, protocol nccl's, channels 1"
    assert out[1].startswith("nvidia-example: no line applies: NCCL's algorithm and protocol on 1 channel")
    assert "passes over line 30" in out[1]
    assert main(args + ["--coll", "allreduce", "--bytes", "2000000", "--num-pipe-ops", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == ("nvidia-example: line 26 (allreduce,1048577,4294967295,ring,ll128,-1,-1,-1,4,-1): algorithm "
                      "ring, protocol ll128, channels 1 (channels -1 keeps the plugin's default of 1)")
    # A JSON table is shown as its CSV; one that CSV cannot hold as `convert --lossy` writes it.
    table = tmp_path / "t.json"
    save(DecisionTable((Rule(Func.ALLREDUCE, 0, 100, algorithm=A.RING, protocol=P.LL),)), table)
    assert main(["table", "lookup", str(table), "--as", "nvidia-example", "--nranks", "8", "--nnodes", "1",
                 "--coll", "allreduce", "--bytes", "50"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "dynamiccl: rule 0: algorithm ring, protocol ll, channels nccl's"
    assert out[1].startswith("nvidia-example (as `dynamiccl table convert --lossy` writes it: the CSV cannot hold "
                             "this table exactly, `table convert` without --lossy says why): ")
    assert out[1].endswith("line 11 (allreduce,0,100,ring,ll,0,-1,-1,-1,-1): algorithm ring, protocol ll, "
                           "channels nccl's (0)")
    assert main(["table", "lookup", str(table), "--as", "nvidia-example", "--nranks", "8", "--nnodes", "1",
                 "--coll", "allreduce", "--bytes", "500"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "dynamiccl: no rule matches: NCCL's own choice"
    assert out[1].endswith("no line applies: NCCL's algorithm and protocol on 1 channel (the plugin sets "
                           "*nChannels = 1 before matching)")


def test_module_mirror_agrees_with_this_tests_mirror():
    # nvidia_csv.parse_example / example_choice (what `lookup --as nvidia-example` shows) against the
    # mirror above, on files with misread names and numbers too.
    rng = random.Random(7)
    for _ in range(15):
        text = random_csv(rng, rng.randint(0, 20))
        text += "Allreduce,0,1e6,Tree,LL,4x,1,8\nallreduce,,0,100,ring,ll,2,1,8\n" + "x," * 140 + "\n"
        lines, _ = nvidia_csv.parse_example(text)
        configs = nvidia_load(text)
        for call in calls(rng, 300):
            costs = [[IGNORE if not is_supported(call.coll, a, p) else 1.0 + a + p for p in Protocol]
                     for a in Algorithm]
            choice = nvidia_csv.example_choice(lines, call)
            algo, proto, channels = nvidia_decides(configs, call, costs)
            assert choice.channels == channels
            if choice.line is not None:
                assert (choice.algorithm, choice.protocol) == (algo, proto)


# --- a policy's table as NVIDIA's CSV (table export --nccl-csv) -------------------------------------

def _dgx_h100_costs():
    from dynamiccl.costmodel.batch import make_batch
    from dynamiccl.costmodel.nccl_model import NcclModel
    from dynamiccl.envspec import resolve_env

    model = NcclModel(resolve_env("dgx-h100"))

    def costs(call: CallKey) -> list[list[float]]:
        batch = make_batch(int(call.coll), float(call.nbytes), call.nranks, call.nnodes, num_pipe_ops=call.num_pipe_ops)
        return model.cost_table(batch)[0].tolist()

    return model, costs


def _shape_calls(shapes, rng: random.Random, per_shape: int = 120):
    for coll, nranks, nnodes, num_pipe_ops in shapes:
        for _ in range(per_shape):
            nbytes = rng.choice(SIZES) if rng.random() < 0.2 else int(2 ** rng.uniform(0, 40))
            yield CallKey(coll, nbytes, nranks, nnodes, num_pipe_ops=num_pipe_ops, reg_buff=rng.choice([0, 1]))


def test_a_keep_nccl_table_becomes_nccls_choice_not_one_channel():
    # The demo's case: a table whose rules all keep NCCL's choice. Under NVIDIA's plugin an empty CSV
    # runs every call on 1 channel; written out, each call of the table's shapes gets NCCL's cell and
    # NCCL's channel count (0).
    from dynamiccl.table.evidence import catch_all_rules
    from dynamiccl.table.policy_export import csv_compatible

    model, costs = _dgx_h100_costs()
    shapes = [(Func.ALLREDUCE, 8, 1, 1), (Func.ALLREDUCE, 32, 4, 1), (Func.ALLGATHER, 16, 2, 2),
              (Func.REDUCESCATTER, 16, 2, 1)]
    table = DecisionTable(catch_all_rules())
    text = nvidia_csv.write(csv_compatible(table, {shape: model for shape in shapes}))
    configs = nvidia_load(text)
    assert configs
    for call in _shape_calls(shapes, random.Random(3)):
        cost = costs(call)
        decided = nvidia_decides(configs, call, cost)
        assert decided == dynamiccl_decides(table, call, cost), call
        assert decided[2] == 0
    # Another shape: the plugin's 1 channel, as the table written says.
    other = CallKey(Func.ALLREDUCE, 1 << 20, 16, 2)
    assert nvidia_decides(configs, other, costs(other))[2] == 1


def test_a_policy_table_written_for_nvidias_plugin_does_what_the_json_table_does_on_its_shapes():
    from test_policy_export import PROVENANCE, random_calls, threshold_policy

    from dynamiccl.table.policy_export import csv_compatible, table_from_policy

    model, costs = _dgx_h100_costs()
    calls = random_calls(11)
    table = table_from_policy(threshold_policy, calls, provenance=PROVENANCE)
    groups = calls[["coll", "nranks", "nnodes", "num_pipe_ops", "reg_buff"]].drop_duplicates()
    shapes = {(Func(int(c)), int(r), int(n), int(p)): model for c, r, n, p, _ in groups.itertuples(index=False)}
    compatible = csv_compatible(table, shapes)
    assert compatible.provenance["csv_compatible"]["keep_rules_written_as_nccl_choice"] > 0
    configs = nvidia_load(nvidia_csv.write(compatible))
    rng = random.Random(4)
    for coll, nranks, nnodes, num_pipe_ops, reg_buff in groups.itertuples(index=False):
        seen = calls[(calls.coll == coll) & (calls.nranks == nranks) & (calls.nnodes == nnodes)
                     & (calls.num_pipe_ops == num_pipe_ops)].nbytes.unique().tolist()
        for nbytes in seen + [int(2 ** rng.uniform(0, 40)) for _ in range(200)]:
            call = CallKey(Func(int(coll)), int(nbytes), int(nranks), int(nnodes), num_pipe_ops=int(num_pipe_ops),
                           reg_buff=int(reg_buff))
            cost = costs(call)
            assert nvidia_decides(configs, call, cost) == dynamiccl_decides(table, call, cost), call
