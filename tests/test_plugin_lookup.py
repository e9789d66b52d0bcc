"""The C plugin and the Python DecisionTable decide identically: thousands of random tables and calls.

For every call the plugin's effect on NCCL's cost table (which cell NCCL then picks, and
``*nChannels``) must equal ``DecisionTable.choose`` given the position that ``PositionCounter``
computes over the same sequence of calls; the rule that applied must be the same rule; and the
plugin may only ever turn the chosen, enabled cell to 0. On ABI v6 each call is followed by a
getChunkSize as NCCL's scheduler makes it (a part of that call or of an earlier one, sometimes
larger, sometimes in another cell), and the chunk must be the one ``ChunkMemory`` gives.
"""

from __future__ import annotations

import random

import pytest
from plugin_harness import use_table

from dynamiccl.plugin import NO_CHUNK_ENV
from dynamiccl.callkey import CallKey
from dynamiccl.nccl import TUNABLE_FUNCS, Algorithm, Func, Protocol, supported_configs
from dynamiccl.knobs.chunk import CHUNK_CHOICES_BYTES
from dynamiccl.table import ChunkMemory, DecisionTable, PositionCounter, Rule, StepShape

MAX = 2**64 - 1
BOUNDS = (0, 1, 63, 64, 65, 4095, 4096, 4097, 65535, 65536, 1 << 20, (1 << 20) + 1, 1 << 30, 1 << 40, MAX - 1, MAX)
SHAPES = ((8, 1), (16, 2), (4, 4))


def random_rule(rng: random.Random) -> Rule:
    coll = rng.choice(TUNABLE_FUNCS)
    low, high = sorted((rng.choice(BOUNDS), rng.choice(BOUNDS)))
    if rng.random() < 0.3:
        high = low  # an exact-size rule, as the exporter writes for positions
    nranks, nnodes = rng.choice(SHAPES + ((-1, -1), (-1, -1), (8, -1), (-1, 2)))
    pairs = supported_configs(coll)
    algo, proto = rng.choice(pairs)
    kind = rng.random()
    if kind < 0.15:
        algo = None
    elif kind < 0.3:
        proto = None
    elif kind < 0.38:
        algo = proto = None
    return Rule(coll, low, high, nranks=nranks, nnodes=nnodes,
                position=rng.choice((-1, -1, -1, 0, 1, 2, 3)),
                num_pipe_ops=rng.choice((-1, -1, -1, 1, 2)), reg_buff=rng.choice((-1, -1, 0, 1)),
                algorithm=algo, protocol=proto, channels=rng.choice((-1, -1, 1, 2, 8, 32, 64)),
                chunk_bytes=rng.choice((-1, -1, 4096, 64 << 20) + CHUNK_CHOICES_BYTES))


def random_costs(rng: random.Random) -> list[list[float]]:
    # Small integers: exact in float32 (the plugin's type) and often tied, to test NCCL's order.
    while True:
        table = [[float(rng.randint(1, 6)) if rng.random() < 0.55 else -1.0 for _ in Protocol]
                 for _ in Algorithm]
        if any(c >= 0 for row in table for c in row):
            return table


def random_calls(rng: random.Random, n: int, anchors: list[tuple[Func, int]]):
    for _ in range(n):
        if rng.random() < 0.25:
            coll, nbytes = rng.choice(anchors)
        else:
            coll = rng.choice(TUNABLE_FUNCS)
            nbytes = min(MAX, max(0, rng.choice(BOUNDS) + rng.choice((-1, 0, 0, 1))))
        yield coll, nbytes, rng.choice((1, 1, 2)), rng.choice((0, 0, 1)), random_costs(rng)


NCCL_CHUNK = 131072


def check_chunk(comm, memory: ChunkMemory, coll, got, rng: random.Random) -> None:
    """One getChunkSize as NCCL's scheduler makes it, against ``memory``."""
    asked = coll if rng.random() < 0.75 else rng.choice(TUNABLE_FUNCS)
    nbytes, choice = memory.last.get(asked, (0, None))
    part = rng.choice((nbytes, nbytes // rng.randint(1, 64), min(MAX, nbytes + 1)))
    cell = (got.algorithm, got.protocol) if asked == coll else \
        ((choice.algorithm, choice.protocol) if choice else (0, 0))
    if rng.random() < 0.1:
        cell = (rng.randrange(7), rng.randrange(3))
    expected = memory.chunk(asked, part, *cell, NCCL_CHUNK)
    assert comm.chunk_size(asked, part, *cell, 1, NCCL_CHUNK) == (0, expected), (asked, part, cell, choice)


def check_agreement(tuner, table: DecisionTable, calls_per_shape: int, rng: random.Random, abi: int = 5) -> int:
    checked = 0
    for nranks, nnodes in SHAPES:
        lines = table.steps_for(nranks, nnodes)
        counter = PositionCounter(lines)
        memory = ChunkMemory()
        anchors = [(line.anchor_coll, line.anchor_bytes) for line in lines] or [(Func.ALLREDUCE, 4096)]
        with tuner.open(abi, nranks, nnodes) as comm:
            for coll, nbytes, pipe_ops, reg_buff, costs in random_calls(rng, calls_per_shape, anchors):
                position = counter.advance(coll, nbytes)
                reg_buff = 0 if abi == 3 else reg_buff  # v3 has no regBuff argument: NCCL means 0
                expected = table.choose(costs, CallKey(coll, nbytes, nranks, nnodes, position=position, num_pipe_ops=pipe_ops,
                                                         reg_buff=reg_buff))
                got = comm.coll_info(coll, nbytes, costs, num_pipe_ops=pipe_ops, reg_buff=reg_buff)
                last = tuner.stats()["last"]
                context = (coll, nbytes, nranks, nnodes, position, pipe_ops, reg_buff, costs)
                assert got.return_code == 0
                assert last["position"] == position, context
                assert (got.algorithm, got.protocol) == (expected.algorithm, expected.protocol), context
                assert got.n_channels == expected.channels, context
                assert last["rule"] == (-1 if expected.rule_index is None else expected.rule_index), context
                changed = {(a, p) for a in range(7) for p in range(3) if got.cost_table[a][p] != costs[a][p]}
                assert changed <= {(expected.algorithm, expected.protocol)}, context
                for a, p in changed:
                    assert costs[a][p] >= 0 and got.cost_table[a][p] == 0.0, context
                assert last["chunk_bytes"] == expected.chunk_bytes, context
                memory.remember(coll, nbytes, expected)
                if abi == 6:
                    check_chunk(comm, memory, coll, got, rng)
                checked += 1
    return checked


def random_table(rng: random.Random, n_rules: int) -> DecisionTable:
    rules = tuple(random_rule(rng) for _ in range(n_rules))
    steps = {}
    for nranks, nnodes in SHAPES[:2]:
        for _ in range(rng.choice((0, 1, 1, 2, 3))):  # several communicators of one shape
            anchor = (rng.choice(TUNABLE_FUNCS), rng.choice(BOUNDS))
            steps[(nranks, nnodes) + anchor] = StepShape(nranks, nnodes, rng.randint(1, 5), *anchor)
    return DecisionTable(rules, {"test": "random"}, steps=tuple(steps.values()))


def test_small_random_tables_agree(tuner, tmp_path, monkeypatch):
    monkeypatch.delenv(NO_CHUNK_ENV, raising=False)
    rng = random.Random(20261122)
    checked = 0
    for index in range(250):
        table = random_table(rng, rng.randint(0, 30))
        use_table(tuner, table, tmp_path, monkeypatch)
        checked += check_agreement(tuner, table, 12, rng, abi=(3, 4, 5, 6)[index % 4])
    assert checked == 250 * 12 * len(SHAPES)


def test_large_indexed_table_agrees(tuner, tmp_path, monkeypatch):
    rng = random.Random(7)
    # 3,000 rules over many distinct sizes: the plugin answers from its byte-segment index.
    rules = []
    for _ in range(3000):
        coll = rng.choice(TUNABLE_FUNCS)
        low = rng.randrange(0, 1 << 24)
        high = low + rng.choice((0, 0, 1, 4096, 1 << 20))
        algo, proto = rng.choice(supported_configs(coll))
        rules.append(Rule(coll, low, high, position=rng.choice((-1, -1, 0, 1)), algorithm=algo,
                          protocol=proto, channels=rng.choice((-1, 4))))
    table = DecisionTable(tuple(rules), steps=(StepShape(8, 1, 3, Func.ALLREDUCE, rules[0].min_bytes),))
    use_table(tuner, table, tmp_path, monkeypatch)
    seen = [r.min_bytes for r in rules] + [r.max_bytes + 1 for r in rules]
    calls = 0
    with tuner.open(6, 8, 1) as comm:
        counter = PositionCounter(table.steps_for(8, 1))
        for _ in range(1500):
            coll = rng.choice(TUNABLE_FUNCS)
            nbytes = rng.choice(seen) + rng.choice((-1, 0, 0))
            costs = random_costs(rng)
            position = counter.advance(coll, nbytes)
            expected = table.choose(costs, CallKey(coll, nbytes, 8, 1, position=position))
            got = comm.coll_info(coll, nbytes, costs)
            assert (got.algorithm, got.protocol, got.n_channels) == (
                expected.algorithm, expected.protocol, expected.channels), (coll, nbytes, position)
            calls += 1
    assert calls == 1500


def test_overlapping_table_falls_back_to_a_scan_and_agrees(tuner, tmp_path, monkeypatch):
    rng = random.Random(11)
    # 6,000 nested ranges on one collective: an index would need ~18M entries (over the plugin's
    # 16M budget), so the plugin scans this communicator's rules instead -- same answers.
    rules = tuple(Rule(Func.ALLREDUCE, i, MAX - i, position=-1,
                       num_pipe_ops=rng.choice((2, 3)) if i < 5999 else -1,
                       algorithm=Algorithm.RING, protocol=rng.choice(list(Protocol)), channels=(i % 64) + 1)
                  for i in range(6000))
    table = DecisionTable(rules)
    use_table(tuner, table, tmp_path, monkeypatch)
    with tuner.open(5, 16, 2) as comm:
        for _ in range(200):
            nbytes = rng.choice((rng.randrange(0, 7000), rng.randrange(0, MAX)))
            pipe_ops = rng.choice((1, 2, 3))
            costs = random_costs(rng)
            expected = table.choose(costs, CallKey(Func.ALLREDUCE, nbytes, 16, 2, position=-1, num_pipe_ops=pipe_ops))
            got = comm.coll_info(Func.ALLREDUCE, nbytes, costs, num_pipe_ops=pipe_ops)
            assert (got.algorithm, got.protocol, got.n_channels) == (
                expected.algorithm, expected.protocol, expected.channels), (nbytes, pipe_ops)


def test_chunk_memory_is_what_the_plugin_keeps_with_the_no_chunk_switch(tuner, tmp_path, monkeypatch):
    rng = random.Random(5)
    table = random_table(rng, 40)
    use_table(tuner, table, tmp_path, monkeypatch)
    monkeypatch.setenv(NO_CHUNK_ENV, "1")
    with tuner.open(6, 8, 1) as comm:
        memory, counter = ChunkMemory(no_chunk=True), PositionCounter(table.steps_for(8, 1))
        for coll, nbytes, pipe_ops, reg_buff, costs in random_calls(rng, 300, [(Func.ALLREDUCE, 4096)]):
            position = counter.advance(coll, nbytes)
            got = comm.coll_info(coll, nbytes, costs, num_pipe_ops=pipe_ops, reg_buff=reg_buff)
            memory.remember(coll, nbytes, table.choose(costs, CallKey(coll, nbytes, 8, 1, position=position,
                                                                      num_pipe_ops=pipe_ops, reg_buff=reg_buff)))
            check_chunk(comm, memory, coll, got, rng)
    assert tuner.stats()["chunk_set"] == 0 and tuner.stats()["chunk_calls"] == 300


def test_version_1_text_is_still_read_by_both_parsers(tuner):
    from dynamiccl.errors import InputError
    from dynamiccl.table import plugin_text

    rules = [Rule(Func.ALLREDUCE, 0, 65535, 16, 2, algorithm=Algorithm.RING, protocol=Protocol.LL128, channels=8),
             Rule(Func.ALLGATHER, 65536, MAX, protocol=Protocol.SIMPLE)]
    v1 = ("dynamiccl-tuner-table 1\nrule allreduce 0 65535 16 2 -1 -1 -1 ring ll128 8\n"
          f"rule allgather 65536 {MAX} -1 -1 -1 -1 -1 -1 simple -1\nstep 16 2 96 allreduce 1048576\n").encode()
    assert tuner.parse(v1) == (2, 1)
    assert list(plugin_text.read(v1).rules) == rules
    # each version's rule lines have their own field count: 12 in version 1, 13 in version 2
    for text in (v1.replace(b"ring ll128 8", b"ring ll128 8 65536"), v1.replace(b"table 1", b"table 2")):
        with pytest.raises(InputError, match="line 2"):
            tuner.parse(text)
        with pytest.raises(InputError, match="line 2"):
            plugin_text.read(text)
    assert plugin_text.write(DecisionTable(tuple(rules))).startswith("dynamiccl-tuner-table 2\n")


@pytest.mark.parametrize("seed", range(3))
def test_text_format_round_trips_through_both_parsers(tuner, seed):
    from dynamiccl.table import plugin_text

    rng = random.Random(seed)
    for _ in range(100):
        table = random_table(rng, rng.randint(0, 40))
        text = plugin_text.write(table).encode()
        assert tuner.parse(text) == (len(table.rules), len(table.steps))
        back = plugin_text.read(text)
        assert back.rules == table.rules and back.steps == table.steps


def test_exported_step_lines_make_the_plugin_count_the_traces_positions(tuner, tmp_path, monkeypatch):
    from dynamiccl.table.policy_export import step_shapes
    from dynamiccl.trace.store import Trace
    from dynamiccl.tuning.program import StepProgram

    program = StepProgram.from_trace(Trace.read("traces/ref-tp2-pp2-sp.parquet"))
    steps, left_out = step_shapes([program])
    assert len(steps) == 4 and not left_out  # TP (AllGather-first and AllReduce-first), DP, world
    use_table(tuner, DecisionTable((), steps=steps), tmp_path, monkeypatch)
    groups: dict[str, list[int]] = {}
    for call in program.tunable_calls:
        groups.setdefault(program.call_group[call], []).append(call)
    checked = 0
    for calls in groups.values():
        keys = sorted((program.call_key[c] for c in calls), key=lambda key: key.position)
        with tuner.open(5, keys[0].nranks, keys[0].nnodes) as comm:
            comm.coll_info(Func.BROADCAST, 12345, random_costs(random.Random(0)))  # setup: not in the step
            assert tuner.stats()["last"]["position"] == -1
            for _ in range(3):  # three training steps
                for key in keys:
                    comm.coll_info(key.coll, key.nbytes, [[1.0] * 3] * 7)
                    assert tuner.stats()["last"]["position"] == key.position
                    checked += 1
    assert checked == 3 * len(program.tunable_calls)
