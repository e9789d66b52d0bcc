"""Tests of dynamiccl.table: lookup and choose semantics, the JSON, NCCL-CSV and plugin-text formats,
load/save, errors."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from dynamiccl.callkey import CallKey
from dynamiccl.errors import InputError
from dynamiccl.nccl import MAX_CHANNELS, Algorithm, Func, Protocol
from dynamiccl.table import FORMAT_VERSION, Choice, CommunicatorRule, DecisionTable, Rule, StepShape, json_format, load, \
    nvidia_csv, plugin_text, save

A, P = Algorithm, Protocol
MAX_BYTES = 2**64 - 1

# NVIDIA's plugins/tuner example README config, verbatim (line 11 asks for broadcast + tree).
NVIDIA_README_CONFIG = """\
# Single-node, small allreduce: use tree algorithm, registered buffers only
allreduce,0,65536,tree,simple,2,1,-1,-1,1

# 4-node, 32-rank setup: medium allreduce, single pipeline op, non-registered buffers
allreduce,65537,1048576,ring,simple,4,4,32,1,0

# Any topology: large allreduce with LL128, multiple pipeline ops, any buffer type
allreduce,1048577,4294967295,ring,ll128,-1,-1,-1,4,-1

# Single-node broadcast: prefer tree, any pipeOps, registered buffers (backward compatible)
broadcast,0,32768,tree,simple,-1,1,-1
"""


def rule(**kwargs) -> Rule:
    """A Rule with defaults: allreduce over all sizes, everything else 'any' / 'keep'."""
    base = dict(coll=Func.ALLREDUCE, min_bytes=0, max_bytes=MAX_BYTES)
    base.update(kwargs)
    return Rule(**base)


def costs(**cells: float) -> list[list[float]]:
    """A 7x3 cost table with every cell disabled (-1) except ``ring_ll=3.0`` style arguments."""
    table = [[-1.0] * 3 for _ in Algorithm]
    for name, value in cells.items():
        algo, proto = name.rsplit("_", 1)
        table[A[algo.upper()]][P[proto.upper()]] = value
    return table


def sample_table() -> DecisionTable:
    return DecisionTable(
        rules=(
            rule(max_bytes=65535, nranks=8, nnodes=1, algorithm=A.RING, protocol=P.LL),
            rule(min_bytes=65536, max_bytes=1 << 20, nranks=16, nnodes=2, num_pipe_ops=1,
                 reg_buff=0, algorithm=A.TREE, protocol=P.LL128, channels=8),
            rule(coll=Func.ALLGATHER, min_bytes=1 << 20, algorithm=A.PAT, protocol=P.SIMPLE,
                 channels=MAX_CHANNELS),
            rule(coll=Func.BROADCAST, max_bytes=4294967295, algorithm=A.RING, protocol=P.SIMPLE,
                 reg_buff=1),
        ),
        provenance={"policy": "ppo", "cost_model": "simulated", "nccl_version": "2.23.4",
                    "nested": {"seeds": [1, 2, 3]}},
    )



# --- Rule ------------------------------------------------------------------------------------------

def test_rule_normalises_integers_and_numpy_values():
    r = Rule(coll=4, min_bytes=np.int64(0), max_bytes=np.uint64(1024), algorithm=1, protocol=-1)
    assert r.coll is Func.ALLREDUCE and r.algorithm is A.RING and r.protocol is None
    assert type(r.max_bytes) is int and r.max_bytes == 1024


@pytest.mark.parametrize("kwargs, field", [
    (dict(min_bytes=True), "min_bytes"),
    (dict(nranks=2.0), "nranks"),
    (dict(coll=Func.SEND), "coll"),
    (dict(min_bytes=10, max_bytes=9), "min_bytes"),
    (dict(max_bytes=2**64), "max_bytes"),
    (dict(nranks=4, nnodes=8), "nnodes"),
    (dict(nranks=0), "nranks"),
    (dict(position=-2), "position"),
    (dict(num_pipe_ops=0), "num_pipe_ops"),
    (dict(reg_buff=2), "reg_buff"),
    (dict(channels=0), "channels"),
    (dict(channels=65), "channels"),
    (dict(coll=Func.ALLGATHER, algorithm=A.TREE), "algorithm"),
    (dict(algorithm=A.NVLS, protocol=P.LL), "protocol"),
    (dict(coll=Func.BROADCAST, algorithm=A.TREE, protocol=P.SIMPLE), "algorithm"),
])
def test_rule_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(InputError) as info:
        rule(**kwargs)
    assert info.value.field == field


# --- lookup ---------------------------------------------------------------------------------------

def test_lookup_first_match_wins_and_order_matters():
    small = rule(max_bytes=1000, algorithm=A.TREE, protocol=P.LL)
    everything = rule(algorithm=A.RING, protocol=P.SIMPLE)
    table = DecisionTable((small, everything))
    assert table.lookup(CallKey(Func.ALLREDUCE, 500, 8, 1)) is small
    assert table.lookup(CallKey(Func.ALLREDUCE, 1000, 8, 1)) is small  # inclusive upper bound
    assert table.lookup(CallKey(Func.ALLREDUCE, 1001, 8, 1)) is everything
    reversed_table = DecisionTable((everything, small))
    assert reversed_table.lookup(CallKey(Func.ALLREDUCE, 500, 8, 1)) is everything


def test_lookup_keys_and_wildcards():
    exact = rule(min_bytes=100, max_bytes=200, nranks=8, nnodes=1, algorithm=A.RING, protocol=P.LL)
    table = DecisionTable((exact,))
    assert table.lookup(CallKey(Func.ALLREDUCE, 100, 8, 1)) is exact  # inclusive lower bound
    assert table.lookup(CallKey(Func.ALLREDUCE, 99, 8, 1)) is None
    assert table.lookup(CallKey(Func.ALLREDUCE, 150, 16, 1)) is None
    assert table.lookup(CallKey(Func.ALLREDUCE, 150, 8, 2)) is None
    assert table.lookup(CallKey(Func.ALLGATHER, 150, 8, 1)) is None
    wildcard = DecisionTable((rule(algorithm=A.RING, protocol=P.LL),))
    for nranks, nnodes in ((1, 1), (8, 1), (512, 64)):
        assert wildcard.lookup(CallKey(Func.ALLREDUCE, 0, nranks, nnodes)) is not None
        assert wildcard.lookup(CallKey(Func.ALLREDUCE, MAX_BYTES, nranks, nnodes)) is not None


def test_lookup_position_semantics():
    at_two = rule(position=2, algorithm=A.TREE, protocol=P.SIMPLE)
    anywhere = rule(algorithm=A.RING, protocol=P.SIMPLE)
    table = DecisionTable((at_two, anywhere))
    assert table.lookup(CallKey(Func.ALLREDUCE, 10, 8, 1, position=2)) is at_two
    assert table.lookup(CallKey(Func.ALLREDUCE, 10, 8, 1, position=3)) is anywhere
    # An unknown position (-1) matches only rules whose position is -1.
    assert table.lookup(CallKey(Func.ALLREDUCE, 10, 8, 1, position=-1)) is anywhere
    assert table.lookup(CallKey(Func.ALLREDUCE, 10, 8, 1)) is anywhere
    assert DecisionTable((at_two,)).lookup(CallKey(Func.ALLREDUCE, 10, 8, 1)) is None


def test_lookup_num_pipe_ops_and_reg_buff():
    pipelined = rule(num_pipe_ops=4, algorithm=A.RING, protocol=P.LL128)
    registered = rule(reg_buff=1, algorithm=A.NVLS, protocol=P.SIMPLE)
    table = DecisionTable((pipelined, registered))
    assert table.lookup(CallKey(Func.ALLREDUCE, 10, 8, 1)) is None  # defaults: numPipeOps 1, regBuff 0
    assert table.lookup(CallKey(Func.ALLREDUCE, 10, 8, 1, num_pipe_ops=4)) is pipelined
    assert table.lookup(CallKey(Func.ALLREDUCE, 10, 8, 1, reg_buff=1)) is registered
    assert table.lookup(CallKey(Func.ALLREDUCE, 10, 8, 1, num_pipe_ops=4, reg_buff=1)) is pipelined
    assert table.lookup(CallKey(Func.ALLREDUCE, 10, 8, 1, num_pipe_ops=2, reg_buff=0)) is None


def test_overlaps_when_some_call_could_match_both_rules():
    small = Rule(Func.ALLREDUCE, 0, 1023, nranks=8)
    assert small.overlaps(Rule(Func.ALLREDUCE, 1023, 4096))  # one shared size; any nranks
    assert not small.overlaps(Rule(Func.ALLREDUCE, 1024, 4096))
    assert not small.overlaps(Rule(Func.ALLGATHER, 0, 1023))
    assert not small.overlaps(Rule(Func.ALLREDUCE, 0, 1023, nranks=16))
    assert small.overlaps(Rule(Func.ALLREDUCE, 0, 1023, reg_buff=1))  # small's reg_buff is -1: any
    at_two, at_three = Rule(Func.ALLREDUCE, 0, 1023, position=2), Rule(Func.ALLREDUCE, 0, 1023, position=3)
    assert not at_two.overlaps(at_three) and at_two.overlaps(at_three, position=False)
    assert at_two.overlaps(small) and small.overlaps(at_two)


# --- choose ---------------------------------------------------------------------------------------

def test_choose_skips_rule_whose_cell_nccl_disabled():
    table = DecisionTable((
        rule(algorithm=A.NVLS, protocol=P.SIMPLE, channels=4),  # NVLS disabled below
        rule(algorithm=A.TREE, protocol=P.LL, channels=2),
    ))
    cost_table = costs(ring_ll=5.0, ring_simple=3.0, tree_ll=9.0)
    assert table.choose(cost_table, CallKey(Func.ALLREDUCE, 1024, 8, 1)) == Choice(A.TREE, P.LL, 2, 1)
    # With NVLS enabled the first rule applies even though it is NCCL's most expensive cell.
    cost_table[A.NVLS][P.SIMPLE] = 50.0
    assert table.choose(cost_table, CallKey(Func.ALLREDUCE, 1024, 8, 1)) == Choice(A.NVLS, P.SIMPLE, 4, 0)


def test_choose_protocol_only_rule_picks_cheapest_enabled_candidate():
    table = DecisionTable((rule(protocol=P.SIMPLE),))
    cost_table = costs(tree_simple=7.0, ring_simple=4.0, nvls_simple=-1.0, ring_ll=1.0)
    assert table.choose(cost_table, CallKey(Func.ALLREDUCE, 1024, 8, 1)) == Choice(A.RING, P.SIMPLE, 0, 0)
    # Ties go to the lowest algorithm index (NCCL's scan order): tree (0) before ring (1).
    tie = costs(tree_simple=4.0, ring_simple=4.0, ring_ll=1.0)
    assert table.choose(tie, CallKey(Func.ALLREDUCE, 1024, 8, 1)) == Choice(A.TREE, P.SIMPLE, 0, 0)


def test_choose_algorithm_only_rule_picks_cheapest_enabled_protocol():
    table = DecisionTable((rule(algorithm=A.RING, channels=16),))
    cost_table = costs(ring_ll=6.0, ring_ll128=2.5, ring_simple=-1.0, tree_ll=0.5)
    assert table.choose(cost_table, CallKey(Func.ALLREDUCE, 1024, 8, 1)) == Choice(A.RING, P.LL128, 16, 0)
    tie = costs(ring_ll=2.0, ring_ll128=2.0, tree_ll=0.5)
    assert table.choose(tie, CallKey(Func.ALLREDUCE, 1024, 8, 1)) == Choice(A.RING, P.LL, 16, 0)


def test_choose_algorithm_only_rule_with_no_enabled_cell_is_skipped():
    table = DecisionTable((rule(algorithm=A.COLLNET_DIRECT), rule(protocol=P.LL)))
    cost_table = costs(ring_ll=6.0, tree_ll=8.0, ring_simple=1.0)
    assert table.choose(cost_table, CallKey(Func.ALLREDUCE, 1024, 8, 1)) == Choice(A.RING, P.LL, 0, 1)


def test_choose_channels_only_rule_applies_to_nccl_argmin():
    table = DecisionTable((rule(channels=2),))
    cost_table = costs(tree_ll=9.0, ring_ll128=3.0, ring_simple=4.0)
    assert table.choose(cost_table, CallKey(Func.ALLREDUCE, 1024, 8, 1)) == Choice(A.RING, P.LL128, 2, 0)


def test_choose_without_matching_rule_is_nccl_argmin_with_channels_zero():
    table = DecisionTable((rule(coll=Func.ALLGATHER, algorithm=A.RING, protocol=P.LL, channels=4),))
    cost_table = costs(tree_ll=2.0, ring_ll=2.0, ring_simple=7.0)
    # Tie between tree/ll and ring/ll: the lowest algorithm index wins, as in NCCL.
    assert table.choose(cost_table, CallKey(Func.ALLREDUCE, 1024, 8, 1)) == Choice(A.TREE, P.LL, 0, None)
    assert DecisionTable().choose(np.array(cost_table), CallKey(Func.BROADCAST, 1, 2, 1)) == \
        Choice(A.TREE, P.LL, 0, None)


def test_choose_uses_the_call_keys():
    table = DecisionTable((rule(position=1, algorithm=A.TREE, protocol=P.SIMPLE, channels=3),))
    cost_table = costs(tree_simple=9.0, ring_simple=1.0)
    assert table.choose(cost_table, CallKey(Func.ALLREDUCE, 8, 4, 1, position=1)).rule_index == 0
    assert table.choose(cost_table, CallKey(Func.ALLREDUCE, 8, 4, 1, position=0)) == \
        Choice(A.RING, P.SIMPLE, 0, None)


def test_choose_with_every_cell_disabled_raises():
    table = DecisionTable((rule(algorithm=A.RING, protocol=P.LL),))
    with pytest.raises(ValueError, match="disabled"):
        table.choose(costs(), CallKey(Func.ALLREDUCE, 1024, 8, 1))


def test_choose_rejects_misshaped_cost_table():
    with pytest.raises(ValueError, match="7x3"):
        DecisionTable().choose([[1.0, 2.0, 3.0]] * 6, CallKey(Func.ALLREDUCE, 1, 2, 1))


# --- JSON -----------------------------------------------------------------------------------------

def test_json_round_trip_through_a_file(tmp_path):
    table = sample_table()
    path = tmp_path / "table.json"
    save(table, path)
    loaded = load(path)
    assert loaded == table
    assert loaded.version == FORMAT_VERSION
    assert json_format.write(loaded) == path.read_text(encoding="utf-8")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "dynamiccl-decision-table" and data["version"] == FORMAT_VERSION
    assert data["rules"][0] == {
        "coll": "allreduce", "min_bytes": 0, "max_bytes": 65535, "nranks": 8, "nnodes": 1,
        "position": -1, "num_pipe_ops": -1, "reg_buff": -1, "algorithm": "ring",
        "protocol": "ll", "channels": -1}


def test_json_keep_values_and_optional_keys_default():
    text = json.dumps({
        "format": "dynamiccl-decision-table", "version": 1, "provenance": {},
        "rules": [{"coll": "reducescatter", "min_bytes": 0, "max_bytes": 10,
                   "algorithm": -1, "protocol": "simple", "position": 3}]})
    table = json_format.read(text, source="t.json")
    assert table.rules == (Rule(Func.REDUCESCATTER, 0, 10, position=3, protocol=P.SIMPLE),)
    again = json_format.read(json_format.write(table))
    assert again == table and json_format.write(again) == json_format.write(table)


def valid_json_doc() -> dict:
    return {"format": "dynamiccl-decision-table", "version": 1, "provenance": {"policy": "x"},
            "rules": [{"coll": "allreduce", "min_bytes": 0, "max_bytes": 65535, "nranks": 8,
                       "nnodes": 1, "algorithm": "ring", "protocol": "ll", "channels": 4}]}


def _set_rule(key, value):
    def mutate(doc):
        doc["rules"][0][key] = value
    return mutate


def _set_top(key, value):
    def mutate(doc):
        doc[key] = value
    return mutate


def _del_rule(key):
    def mutate(doc):
        del doc["rules"][0][key]
    return mutate


@pytest.mark.parametrize("mutate, field, problem", [
    (_set_top("format", "nccl-tuner"), "format", "dynamiccl-decision-table"),
    (_del_rule("algorithm"), "rules[0].algorithm", "missing"),
    (_set_top("version", FORMAT_VERSION + 1), "version", "newer"),
    (_set_top("version", True), "version", "format version"),
    (_set_top("version", "1"), "version", "format version"),
    (_set_top("provenance", [1]), "provenance", "object"),
    (_set_top("rules", {}), "rules", "list"),
    (_set_top("extra", 1), "extra", "unknown key"),
    (_set_rule("min_bytes", "0"), "rules[0].min_bytes", "integer"),
    (_set_rule("nranks", True), "rules[0].nranks", "integer"),
    (_set_rule("channels", 4.0), "rules[0].channels", "integer"),
    (_set_rule("min_bytes", 70000), "rules[0].min_bytes", "max_bytes"),
    (_set_rule("max_bytes", 2**64), "rules[0].max_bytes", "range"),
    (_set_rule("channels", 65), "rules[0].channels", "1 .. 64"),
    (_set_rule("channels", 0), "rules[0].channels", "1 .. 64"),
    (_set_rule("nnodes", 9), "rules[0].nnodes", "nranks"),
    (_set_rule("reg_buff", 2), "rules[0].reg_buff", "0 or 1"),
    (_set_rule("colour", "red"), "rules[0].colour", "unknown key"),
    (_set_rule("algorithm", "Ring"), "rules[0].algorithm", "expected one of"),
    (_set_rule("protocol", "LL"), "rules[0].protocol", "expected one of"),
    (_set_rule("coll", "send"), "rules[0].coll", "expected one of"),
    (_set_rule("algorithm", None), "rules[0].algorithm", "null"),
])
def test_bad_json_names_file_and_field(tmp_path, mutate, field, problem):
    doc = valid_json_doc()
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(InputError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message
    assert info.value.field == field
    assert problem in info.value.problem


@pytest.mark.parametrize("coll, algorithm, protocol, field", [
    ("allgather", "tree", "simple", "algorithm"),
    ("allreduce", "nvls", "ll", "protocol"),
    ("broadcast", "tree", "simple", "algorithm"),
    ("allreduce", "collnet_chain", "ll128", "protocol"),
])
def test_json_unsupported_combination(tmp_path, coll, algorithm, protocol, field):
    doc = valid_json_doc()
    doc["rules"].append({"coll": coll, "min_bytes": 0, "max_bytes": 1, "algorithm": algorithm,
                         "protocol": protocol})
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(InputError) as info:
        load(path)
    assert str(path) in str(info.value)
    assert info.value.field == f"rules[1].{field}"
    assert "cannot run" in info.value.problem


@pytest.mark.parametrize("text, field, problem", [
    ('{"format": "dynamiccl-decision-table", "version": 1,', "line 1 column", "not valid JSON"),
    ('[1, 2]', None, "JSON object"),
    ('{"format": "dynamiccl-decision-table", "format": "x", "version": 1, "rules": []}', None,
     "duplicate key"),
    ('{"format": "dynamiccl-decision-table", "version": 1, "provenance": {"x": NaN}, "rules": []}',
     None, "NaN"),
])
def test_malformed_json_names_file(tmp_path, text, field, problem):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as info:
        load(path)
    assert info.value.source == str(path)
    if field is None:
        assert info.value.field is None
    else:
        assert info.value.field.startswith(field)
    assert problem in info.value.problem


# --- CSV ------------------------------------------------------------------------------------------

def test_json_to_csv_to_json_round_trip(tmp_path):
    # Ending with NVIDIA's plugin default (1 channel for unmatched calls): the CSV can say it all.
    table = DecisionTable(sample_table().rules + nvidia_csv.example_default_rules())
    json_path, csv_path = tmp_path / "t.json", tmp_path / "nccl_tuner.conf"
    save(table, json_path)
    save(load(json_path), csv_path)
    from_csv = load(csv_path)
    assert from_csv.rules == table.rules
    back = tmp_path / "back.json"
    save(from_csv, back)
    assert load(back).rules == table.rules
    assert from_csv.provenance["source"] == str(csv_path)


def test_csv_field_order_is_nnodes_then_nranks():
    text = nvidia_csv.write(DecisionTable((rule(max_bytes=65535, nranks=8, nnodes=1, algorithm=A.RING,
                                                protocol=P.LL),)), lossy=True)
    data = [line for line in text.splitlines() if not line.startswith("#")]
    assert data == ["allreduce,0,65535,ring,ll,0,1,8,-1,-1"]
    parsed = nvidia_csv.read("allreduce,0,65535,ring,ll,-1,1,8").rules[0]
    assert (parsed.nnodes, parsed.nranks, parsed.num_pipe_ops, parsed.reg_buff) == (1, 8, -1, -1)


def test_csv_keep_channels_is_written_as_zero_and_read_from_zero_and_minus_one_is_one_channel():
    # NVIDIA's example plugin forces 1 channel for -1; 0 hands the choice back to NCCL.
    assert nvidia_csv.read("allreduce,0,1024,ring,ll,0,1,8").rules[0].channels == -1
    minus_one = nvidia_csv.read("allreduce,0,1024,ring,ll,-1,1,8")
    assert minus_one.rules[0].channels == 1
    assert minus_one.provenance["warnings"][0].startswith("line 1: channels -1 keeps NVIDIA's example plugin's default")
    assert nvidia_csv.read("allreduce,0,1024,ring,ll,3,1,8").rules[0].channels == 3


def test_csv_header_has_provenance_and_channels_warning_within_line_limit():
    long_provenance = {"policy": "ppo", "notes": "x" * 700, "list": list(range(200))}
    text = nvidia_csv.write(DecisionTable((rule(algorithm=A.RING, protocol=P.SIMPLE),)
                                          + nvidia_csv.example_default_rules(), long_provenance))
    lines = text.splitlines()
    assert all(len(line.encode()) <= 255 for line in lines)
    header = "\n".join(line for line in lines if line.startswith("#"))
    assert "dynamiccl" in header and "provenance" in header and '"policy": "ppo"' in header
    assert "sets nChannels to 1 before matching" in header and "-1" in header
    # The wrapped header reads back as comments only: exactly the one rule, then the plugin's default.
    assert nvidia_csv.read(text).rules[0] == rule(algorithm=A.RING, protocol=P.SIMPLE)
    assert nvidia_csv.read(text).rules[1:] == nvidia_csv.example_default_rules()


def test_nvidia_readme_config_valid_lines_parse():
    valid = NVIDIA_README_CONFIG.split("\n# Single-node broadcast")[0]
    table = nvidia_csv.read(valid, source="nccl_tuner.conf")
    assert table.rules == (
        Rule(Func.ALLREDUCE, 0, 65536, nranks=-1, nnodes=1, num_pipe_ops=-1, reg_buff=1,
             algorithm=A.TREE, protocol=P.SIMPLE, channels=2),
        Rule(Func.ALLREDUCE, 65537, 1048576, nranks=32, nnodes=4, num_pipe_ops=1, reg_buff=0,
             algorithm=A.RING, protocol=P.SIMPLE, channels=4),
        Rule(Func.ALLREDUCE, 1048577, 4294967295, nranks=-1, nnodes=-1, num_pipe_ops=4,
             reg_buff=-1, algorithm=A.RING, protocol=P.LL128, channels=1),  # -1: the plugin's 1 channel
    ) + nvidia_csv.example_default_rules()
    # Registered small allreduce on one node gets tree/simple; unregistered matches no line: NCCL's
    # algorithm and protocol on 1 channel, as NVIDIA's plugin runs it.
    assert table.lookup(CallKey(Func.ALLREDUCE, 4096, 8, 1, reg_buff=1)) is table.rules[0]
    assert table.lookup(CallKey(Func.ALLREDUCE, 4096, 8, 1, reg_buff=0)) is table.rules[-1]


def test_nvidia_readme_config_broadcast_tree_is_read_with_a_warning(tmp_path):
    # NCCL never runs broadcast with tree: NVIDIA's plugin passes over the line; so does the table.
    path = tmp_path / "nccl_tuner.conf"
    path.write_text(NVIDIA_README_CONFIG, encoding="utf-8")
    table = load(path)
    assert len(table.rules) == 3 + 5
    assert [w for w in table.provenance["warnings"] if "never applies" in w] == [
        "line 11: never applies under NVIDIA's example plugin: NCCL never runs broadcast with tree/simple: it "
        "marks that cell IGNORE and the plugin passes over the line; skipped"]


GOOD_LINE = "allreduce,0,1024,ring,ll,4,1,8,-1,-1"


@pytest.mark.parametrize("bad_line, field, problem", [
    # Lines NVIDIA's plugin would apply but read differently from what they say.
    ("allreduce,0,1024,Tree,ll,4,1,8", "field algorithm", "unknown algorithm"),
    ("allreduce,0,1024,ring,LL,4,1,8", "field protocol", "unknown protocol"),
    ("all_reduce,0,1024,ring,ll,4,1,8", "field collective_type", "unknown collective_type"),
    ("allreduce,0,1024,-1,ll,4,1,8", "field algorithm", "-1"),
    ("allreduce,0,1024,ring,-1,4,1,8", "field protocol", "-1"),
    ("allreduce,0,64K,ring,ll,4,1,8", "field max_bytes", "integer"),
    ("allreduce,0,1024,ring,ll,1.5,1,8", "field channels", "integer"),
    ("allreduce,0,1024,ring,ll,4,1,8,1,0,9", None, "11 fields"),
    ("allreduce,0,1024,ring,,4,1,8,-1,-1", "field protocol", "empty"),
    ("allreduce,0,1024,ring,ll,-2,1,8", "field channels", "1 .. 64"),
    ("allreduce,0,1024,ring,ll,65,1,8", "field channels", "1 .. 64"),
    ("allreduce,0,18446744073709551616,ring,ll,4,1,8", "field max_bytes", "range"),
    ("allreduce,0,1024,ring,ll,4,1,8,-1,-1" + " " * 220, None, "bytes long"),
    ("# " + "c" * 254, None, "bytes long"),
    ("  #x,0,1024,ring,ll,4,1,8", "field collective_type", "unknown collective_type '#x'"),  # not a comment there
])
def test_bad_csv_names_file_line_and_field(tmp_path, bad_line, field, problem):
    path = tmp_path / "bad.csv"
    path.write_text(f"# header\n{GOOD_LINE}\n{bad_line}\n{GOOD_LINE}\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message
    expected_field = "line 3" + (f", {field}" if field else "")
    assert info.value.field == expected_field
    assert problem in info.value.problem


@pytest.mark.parametrize("never_line, problem", [
    # Lines NVIDIA's plugin can never apply: it skips them, and so does the table, with a warning.
    ("allreduce,-1,1024,ring,ll,4,1,8", "min_bytes 18446744073709551615 > max_bytes 1024"),
    ("allreduce,0,1024,ring,ll,4,1,x", "nRanks reads as 0 ('x')"),
    ("allreduce,0,1024,ring,ll,4,1", "7 field(s)"),
    ("allreduce,0,1024,ring,,4,1,8", "7 field(s)"),
    ("allreduce,2048,1024,ring,ll,4,1,8", "min_bytes 2048 > max_bytes 1024"),
    ("allreduce,0,1024,ring,ll,4,4,2", "nNodes 4 > nRanks 2"),
    ("allreduce,0,1024,ring,ll,4,1,8,0", "numPipeOps reads as 0"),
    ("allreduce,0,1024,ring,ll,4,1,8,1,2", "regBuff reads as 2"),
    ("broadcast,0,1024,tree,simple,4,1,8", "NCCL never runs broadcast with tree/simple"),
    ("allgather,0,1024,tree,simple,4,1,8", "NCCL never runs allgather with tree/simple"),
    ("allreduce,0,1024,nvls,ll,4,1,8", "NCCL never runs allreduce with nvls/ll"),
])
def test_csv_lines_that_never_apply_are_skipped_with_a_warning(tmp_path, never_line, problem):
    path = tmp_path / "never.csv"
    path.write_text(f"# header\n{GOOD_LINE}\n  # indented comment\n{never_line}\n{GOOD_LINE}\n", encoding="utf-8")
    table = load(path)
    assert len(table.rules) == 2 + 5
    [warning] = table.provenance["warnings"]
    assert warning.startswith("line 4: never applies under NVIDIA's example plugin: ")
    assert problem in warning


def test_csv_line_length_limit_is_255_bytes():
    line = "allreduce,0,1024,ring,ll,4,1,8,-1,-1"
    assert len(nvidia_csv.read(line + " " * (255 - len(line))).rules) == 1 + 5  # and the plugin's default
    with pytest.raises(InputError, match="256 bytes long"):
        nvidia_csv.read(line + " " * (256 - len(line)))


def test_csv_trims_spaces_and_tabs_and_accepts_crlf():
    text = "# comment\r\n\r\n allreduce ,\t0, 1024 ,ring,ll , 4,1,8,-1,1\r\nallgather,0,1,ring,ll,0,1,8,\n"
    table = nvidia_csv.read(text)
    assert table.rules == (Rule(Func.ALLREDUCE, 0, 1024, nranks=8, nnodes=1, reg_buff=1,
                                algorithm=A.RING, protocol=P.LL, channels=4),
                           Rule(Func.ALLGATHER, 0, 1, nranks=8, nnodes=1, algorithm=A.RING, protocol=P.LL),
                           ) + nvidia_csv.example_default_rules()


def test_to_csv_refuses_inexpressible_rules_unless_lossy():
    table = DecisionTable((
        rule(max_bytes=100, algorithm=A.RING, protocol=P.LL),
        rule(position=2, algorithm=A.TREE, protocol=P.SIMPLE),
        rule(algorithm=A.RING, protocol=P.SIMPLE),
        rule(protocol=P.SIMPLE),
        rule(channels=4),
    ))
    with pytest.raises(InputError) as info:
        nvidia_csv.write(table)
    problem = info.value.problem
    assert "rules[1] (position 2)" in problem and "rules[3] (keeps NCCL's algorithm)" in problem
    assert "rules[4] (takes every remaining allreduce call with NCCL's algorithm and protocol on 4 channels)" in problem
    assert "rules[0]" not in problem and "rules[2]" not in problem
    assert "broadcast/reduce/allgather/reducescatter calls that match no rule" in problem
    assert "pass --lossy" in problem
    text = nvidia_csv.write(table, lossy=True)
    assert "Dropped 3 of 5 rules" in text and "rules 1, 3, 4" in text
    assert nvidia_csv.read(text).rules == (table.rules[0], table.rules[2]) + nvidia_csv.example_default_rules()


def test_failed_save_leaves_existing_file_untouched(tmp_path):
    path = tmp_path / "nccl_tuner.conf"
    old = b"allreduce,0,1024,ring,ll,4,1,8\n"
    path.write_bytes(old)
    table = DecisionTable((rule(position=0, algorithm=A.RING, protocol=P.LL),))
    with pytest.raises(InputError) as info:
        save(table, path)
    assert info.value.source == str(path)
    assert "rules[0] (position 0)" in info.value.problem
    assert path.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["nccl_tuner.conf"]  # no temporary file left behind
    save(table, path, lossy=True)
    assert load(path).rules == nvidia_csv.example_default_rules()


# --- files ----------------------------------------------------------------------------------------

def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(InputError) as info:
        load(missing)
    assert info.value.source == str(missing) and "cannot read" in info.value.problem
    wrong_ext = tmp_path / "table.yaml"
    wrong_ext.write_text("{}", encoding="utf-8")
    with pytest.raises(InputError, match=r"table\.yaml.*unknown extension"):
        load(wrong_ext)
    with pytest.raises(InputError, match=r"table\.yaml.*unknown extension '\.yaml'; expected .*\.txt"):
        save(sample_table(), wrong_ext)
    assert wrong_ext.read_text(encoding="utf-8") == "{}"
    with pytest.raises(InputError, match=r"table: unknown extension '\(none\)'"):
        load(tmp_path / "table")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"allreduce,\xff\xfe\n")
    with pytest.raises(InputError, match="not UTF-8"):
        load(binary)


def test_plugin_text_round_trip_through_a_file(tmp_path):
    table = DecisionTable(sample_table().rules, {"policy": "ppo"},
                          steps=(StepShape(16, 2, 96, Func.ALLREDUCE, 1 << 20),))
    path = tmp_path / "table.txt"
    save(table, path)
    assert path.read_text(encoding="utf-8") == plugin_text.write(table)
    loaded = load(path)
    assert loaded.rules == table.rules and loaded.steps == table.steps
    assert loaded.provenance == {"imported_from": "dynamiccl-plugin-table", "source": str(path)}
    upper = tmp_path / "TABLE.TXT"  # extensions are matched case-insensitively
    save(loaded, upper)
    assert load(upper).rules == table.rules


def test_plugin_text_refuses_job_env_unless_lossy(tmp_path):
    table = DecisionTable(sample_table().rules, job_env={"NCCL_P2P_NET_CHUNKSIZE": 524288})
    path = tmp_path / "table.txt"
    with pytest.raises(InputError) as info:
        save(table, path)
    assert info.value.source == str(path) and info.value.field == "job_env"
    assert "NCCL_P2P_NET_CHUNKSIZE" in info.value.problem and not path.exists()
    save(table, path, lossy=True)
    assert load(path).rules == table.rules and load(path).job_env == {}


def test_bad_plugin_text_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("dynamiccl-tuner-table 1\nrule allreduce 0 10 -1 -1 -1 -1 -1 ring ll 99\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load(path)
    assert info.value.source == str(path) and info.value.field == "line 2, field channels"


def test_save_replaces_existing_file(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("old", encoding="utf-8")
    save(sample_table(), path)
    assert load(path) == sample_table()


def test_table_rejects_bad_construction():
    with pytest.raises(TypeError):
        DecisionTable(("not a rule",))
    with pytest.raises(TypeError):
        DecisionTable((), provenance={"x": float("nan")})
    with pytest.raises(ValueError):
        DecisionTable((), version=FORMAT_VERSION + 1)


# --- describe -------------------------------------------------------------------------------------

def test_describe_is_a_readable_fixed_width_table():
    text = sample_table().describe()
    lines = text.splitlines()
    assert lines[0].split() == ["#", "coll", "bytes", "nranks", "nnodes", "position", "pipe_ops",
                                "reg_buff", "algorithm", "protocol", "channels", "chunk"]
    assert lines[1].split() == ["0", "allreduce", "0..64K-1", "8", "1", "any", "any", "any",
                                "ring", "ll", "nccl", "nccl"]
    assert lines[2].split()[2] == "64K..1M"
    assert lines[3].split()[2] == "1M..max"
    assert lines[4].split()[2] == "0..4G-1"
    # Fixed width: the byte column starts at the same offset on every line.
    offsets = {line.index(line.split()[2]) for line in lines}
    assert len(offsets) == 1
    keep = DecisionTable((rule(protocol=P.LL),)).describe().splitlines()[1].split()
    assert keep[-4:] == ["nccl", "ll", "nccl", "nccl"]
    assert "no rules" in DecisionTable().describe()


# --- format 3: chunk sizes, communicators, job_env ---------------------------------------------------

def knobs_table() -> DecisionTable:
    from dynamiccl.knobs.comm_config import CommConfig

    return DecisionTable(
        (Rule(Func.ALLREDUCE, 0, 65535, 8, 1, algorithm=A.RING, protocol=P.LL, chunk_bytes=65536),
         Rule(Func.ALLGATHER, 0, MAX_BYTES, channels=4)),
        {"policy": "ppo"}, steps=(StepShape(8, 1, 12, Func.ALLREDUCE, 1024),),
        communicators=(CommunicatorRule("dp", 8, 1, CommConfig(max_ctas=8, cta_policy="zero")),
                       CommunicatorRule("tp", config={"min_ctas": 16}),
                       CommunicatorRule(None, nnodes=2, config=CommConfig(nvls_ctas=4))),
        job_env={"NCCL_P2P_NET_CHUNKSIZE": 524288, "NCCL_BUFFSIZE": 1 << 22})


def test_format_3_round_trips_through_json_and_the_plugin_text(tmp_path):
    table = knobs_table()
    path = tmp_path / "t.json"
    save(table, path)
    assert load(path) == table and load(path).version == 3
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["rules"][0]["chunk_bytes"] == 65536 and "chunk_bytes" not in data["rules"][1]  # only when set
    assert data["communicators"][0] == {"kind": "dp", "nranks": 8, "nnodes": 1,
                                        "config": {"max_ctas": 8, "cta_policy": "zero"}}
    assert "kind" not in data["communicators"][2]  # any kind
    assert data["job_env"] == {"NCCL_BUFFSIZE": 4194304, "NCCL_P2P_NET_CHUNKSIZE": 524288}
    text = tmp_path / "t.txt"
    save(table, text, lossy=True)  # the plugin's text has chunk sizes, not communicators or job_env
    assert load(text).rules == table.rules and load(text).steps == table.steps
    assert text.read_text().splitlines()[0] == "dynamiccl-tuner-table 2"
    with pytest.raises(InputError) as info:
        save(dataclasses.replace(table, job_env={}), tmp_path / "u.txt")
    assert info.value.field == "communicators" and "--lossy" in info.value.problem


def test_communicator_config_first_match_wins_and_defaults_to_nccls():
    from dynamiccl.knobs.comm_config import CommConfig

    table = knobs_table()
    assert table.communicator_config("dp", 8, 1) == CommConfig(max_ctas=8, cta_policy="zero")
    assert table.communicator_config("dp", 16, 2) == CommConfig(nvls_ctas=4)  # the any-kind rule, 2 nodes
    assert table.communicator_config("tp", 16, 2) == CommConfig(min_ctas=16)  # before the 2-node rule
    assert table.communicator_config("pp", 8, 1) == CommConfig()
    assert DecisionTable().communicator_config("dp", 8, 1).is_default


def test_choose_returns_the_rules_chunk_and_chunk_memory_gives_it_to_parts_of_that_call():
    from dynamiccl.table import ChunkMemory

    table = knobs_table()
    costs = [[5.0] * 3 for _ in range(7)]
    call = CallKey(Func.ALLREDUCE, 4096, 8, 1)
    choice = table.choose(costs, call)
    assert (choice.algorithm, choice.protocol, choice.rule_index, choice.chunk_bytes) == (A.RING, P.LL, 0, 65536)
    assert table.choose(costs, CallKey(Func.ALLGATHER, 4096, 8, 1)).chunk_bytes == -1
    memory = ChunkMemory()
    memory.remember(Func.ALLREDUCE, 4096, choice)
    assert memory.chunk(Func.ALLREDUCE, 1024, A.RING, P.LL, 131072) == 65536
    assert memory.chunk(Func.ALLREDUCE, 4097, A.RING, P.LL, 131072) == 131072  # not a part of it
    assert memory.chunk(Func.ALLREDUCE, 1024, A.RING, P.SIMPLE, 131072) == 131072  # NCCL runs another cell
    assert memory.chunk(Func.ALLGATHER, 1024, A.RING, P.LL, 131072) == 131072
    off = ChunkMemory(no_chunk=True)
    off.remember(Func.ALLREDUCE, 4096, choice)
    assert off.chunk(Func.ALLREDUCE, 1024, A.RING, P.LL, 131072) == 131072


def test_versions_1_and_2_are_still_read_and_written_in_their_version():
    v2 = {"format": "dynamiccl-decision-table", "version": 2, "provenance": {},
          "rules": [{"coll": "allreduce", "min_bytes": 0, "max_bytes": 10, "algorithm": "ring", "protocol": "ll"}],
          "nccl_env": {"NCCL_P2P_LL_THRESHOLD": 8192}}
    table = json_format.read(json.dumps(v2), "v2.json")
    assert table.version == 2 and table.job_env == {"NCCL_P2P_LL_THRESHOLD": 8192}
    assert json.loads(json_format.write(table))["nccl_env"] == {"NCCL_P2P_LL_THRESHOLD": 8192}
    assert json_format.read(json_format.write(table)) == table
    v1 = {**v2, "version": 1}
    del v1["nccl_env"]
    assert json_format.read(json.dumps(v1)).version == 1
    with pytest.raises(ValueError, match="version 3"):
        DecisionTable(table.rules, version=2, communicators=knobs_table().communicators)


def _v3_doc() -> dict:
    return json.loads(json_format.write(knobs_table()))


def _mutate(path: tuple, value):
    def mutate(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return mutate


_DELETE = object()


@pytest.mark.parametrize("mutate, field, problem", [
    (_mutate(("communicators", 2, "config", "max_ctas"), 65), "communicators[2].config.max_ctas", "1..64"),
    (_mutate(("communicators", 2, "config", "max_ctas"), "8"), "communicators[2].config.max_ctas", "integer"),
    (_mutate(("communicators", 0, "config", "min_ctas"), 16), "communicators[0].config.min_ctas", "above max_ctas"),
    (_mutate(("communicators", 1, "config", "cta_policy"), "fast"), "communicators[1].config.cta_policy", "zero"),
    (_mutate(("communicators", 1, "config", "ctas"), 4), "communicators[1].config.ctas", "unknown key"),
    (_mutate(("communicators", 1, "config"), _DELETE), "communicators[1].config", "missing"),
    (_mutate(("communicators", 1, "kind"), "data"), "communicators[1].kind", "unknown group kind"),
    (_mutate(("communicators", 0, "nnodes"), 16), "communicators[0].nnodes", "nranks"),
    (_mutate(("communicators", 0, "nranks"), 0), "communicators[0].nranks", "out of range"),
    (_mutate(("rules", 0, "chunk_bytes"), 100000), "rules[0].chunk_bytes", "power of two"),
    (_mutate(("rules", 0, "chunk_bytes"), 128 << 20), "rules[0].chunk_bytes", "67108864"),
    (_mutate(("job_env", "NCCL_ALGO"), 1), "job_env.NCCL_ALGO", "not a setting a table may carry"),
    (_mutate(("job_env", "NCCL_BUFFSIZE"), 1000), "job_env.NCCL_BUFFSIZE", "power of two"),
    (_mutate(("nccl_env",), {}), "nccl_env", "job_env"),
    (_mutate(("version",), 2), "job_env", "version 3"),  # v2 calls it nccl_env
])
def test_bad_format_3_fields_are_named(mutate, field, problem):
    doc = _v3_doc()
    mutate(doc)
    with pytest.raises(InputError) as info:
        json_format.read(json.dumps(doc), "t.json")
    assert (info.value.source, info.value.field) == ("t.json", field), info.value
    assert problem in info.value.problem


def test_a_version_2_file_with_a_chunk_size_names_the_rule():
    doc = {"format": "dynamiccl-decision-table", "version": 2, "provenance": {},
           "rules": [{"coll": "allreduce", "min_bytes": 0, "max_bytes": 10, "algorithm": -1, "protocol": -1,
                      "chunk_bytes": 65536}]}
    with pytest.raises(InputError) as info:
        json_format.read(json.dumps(doc), "t.json")
    assert info.value.field == "rules[0].chunk_bytes" and "version 3" in info.value.problem
