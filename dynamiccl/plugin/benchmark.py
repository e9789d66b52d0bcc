"""``dynamiccl plugin bench``: getCollInfo, and getCollInfo + getChunkSize, per call with a 1,000-rule
table, load time, binary size.

Recorded result: ``experiments/plugin/bench.json``; also ``dynamiccl bench plugin-getcollinfo`` and
``dynamiccl bench plugin-getcollinfo-chunk``::

    dynamiccl plugin bench --record experiments/plugin/bench.json
    dynamiccl plugin bench --json      # the record as JSON only

It builds the plugin as shipped (``build_plugin``: -O2, both variants), writes a realistic 1,000-rule
table (``realistic_table``: five collectives, four communicator shapes, power-of-two size buckets, a
block of position rules for the training communicator and its step line; half the rules with a
chunk size), compiles
``bench_getcollinfo.c`` and runs it (see its header for what is timed and how: getCollInfo on the
production library NCCL loads, the table's load times on the instrumented one, whose parser and
reset they need), and reports both libraries' file sizes (as built, and stripped). Targets:
getCollInfo median <= 100 ns per call with 1,000 rules, net of NCCL's own per-call cost-table copy;
and getCollInfo + getChunkSize (issue 17) median <= 100 ns per call, net of that copy and NCCL's
arg-min between the two.
"""

from __future__ import annotations

import datetime
import json
import random
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from dynamiccl.bench import _machine
from dynamiccl.knobs.chunk import CHUNK_CHOICES_BYTES, KEEP_CHUNK
from dynamiccl.nccl import KEEP, TUNABLE_FUNCS, Algorithm, Func, Protocol, supported_configs
from dynamiccl.plugin.build import SOURCE_DIR, build_plugin, compile_sources, instrumented_beside
from dynamiccl.table import DecisionTable, Rule, StepShape, save

TARGET_NS = 100.0
RULES = 1000
TRAINING_SHAPE = (16, 2)  # the communicator the benchmark's calls run on
SHAPES = ((8, 1), TRAINING_SHAPE, (64, 8), (256, 32))
STEP = StepShape(*TRAINING_SHAPE, calls_per_step=96, anchor_coll=Func.ALLREDUCE, anchor_bytes=1 << 20)
COLLS = TUNABLE_FUNCS


def _choice(rng: random.Random, coll: Func, log2_bytes: int) -> dict:
    """A plausible choice for a size: LL for small messages, LL128 in between, Simple for large; half
    of them with a chunk size."""
    protocol = Protocol.LL if log2_bytes < 16 else Protocol.LL128 if log2_bytes < 22 else Protocol.SIMPLE
    pairs = [(a, p) for a, p in supported_configs(coll) if a in (Algorithm.RING, Algorithm.TREE, Algorithm.PAT)]
    matching = [pair for pair in pairs if pair[1] == protocol] or pairs
    algorithm, protocol = rng.choice(matching)
    keep = rng.random()
    return {"algorithm": None if keep < 0.1 else algorithm, "protocol": None if 0.1 <= keep < 0.2 else protocol,
            "channels": rng.choice((KEEP, KEEP, KEEP, 2, 4, 8, 16, 32)),
            "chunk_bytes": rng.choice((KEEP_CHUNK,) * len(CHUNK_CHOICES_BYTES) + CHUNK_CHOICES_BYTES)}


def realistic_table(n_rules: int = RULES, seed: int = 0) -> DecisionTable:
    """A table shaped like an exported one, with exactly ``n_rules`` rules.

    First the position rules of the training communicator (calls of a 96-call step, by collective
    and size bucket), then per (collective, shape) rules over power-of-two size buckets (0 .. 1 KiB,
    then half-octaves up to 16 GiB, then everything above), then catch-all rules for any shape.
    """
    rng = random.Random(seed)
    rules: list[Rule] = []
    for position in range(STEP.calls_per_step):  # about 20 % of the table
        if len(rules) >= n_rules // 5:
            break
        coll = rng.choice(COLLS)
        k = rng.randrange(12, 30)
        rules.append(Rule(coll, 1 << k, (1 << (k + 1)) - 1, *TRAINING_SHAPE, position=position,
                          **_choice(rng, coll, k)))
    buckets = [(0, 1023, 9)]
    for k in range(10, 34):  # half-octaves
        buckets += [(1 << k, 3 << (k - 1), k), ((3 << (k - 1)) + 1, (1 << (k + 1)) - 1, k)]
    buckets.append((1 << 34, 2**64 - 1, 34))
    for coll in COLLS:
        for nranks, nnodes in SHAPES:
            for low, high, k in buckets:
                if rng.random() < 0.15:  # merged with the neighbouring bucket in a real export
                    continue
                rules.append(Rule(coll, low, high, nranks, nnodes, **_choice(rng, coll, k)))
    rules = rules[:n_rules - len(COLLS)]
    while len(rules) < n_rules - len(COLLS):  # pad with more position rules, as a longer step would have
        coll, k = rng.choice(COLLS), rng.randrange(12, 30)
        rules.insert(0, Rule(coll, 1 << k, (1 << (k + 1)) - 1, *TRAINING_SHAPE,
                             position=rng.randrange(STEP.calls_per_step), **_choice(rng, coll, k)))
    rules += [Rule(coll, 0, 2**64 - 1, channels=rng.choice((KEEP, 8)), **{"algorithm": None, "protocol": None})
              for coll in COLLS]
    return DecisionTable(tuple(rules), {"generator": "dynamiccl plugin bench", "seed": seed}, steps=(STEP,))


def _stripped_size(library: Path, work: Path) -> int | None:
    strip = shutil.which("strip")
    if strip is None:
        return None
    copy = work / "stripped.so"
    subprocess.run([strip, "--strip-all", "-o", str(copy), str(library)], check=True, capture_output=True)
    return copy.stat().st_size


def run(calls_per_batch: int = 100, batches: int = 20000, n_rules: int = RULES) -> dict:
    """Build, generate the table, run the benchmark; returns the measured numbers."""
    with tempfile.TemporaryDirectory(prefix="dynamiccl-bench-") as tmp:
        work = Path(tmp)
        library = build_plugin()
        instrumented = instrumented_beside(library)
        program = compile_sources(work / "bench_getcollinfo", [SOURCE_DIR / "bench_getcollinfo.c"],
                                  ("-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-Wl,--no-as-needed", "-ldl"))
        table = realistic_table(n_rules)
        table_path = work / "table.txt"
        save(table, table_path)
        command = [str(program), str(library), str(instrumented), str(table_path), *map(str, TRAINING_SHAPE),
                   str(int(STEP.anchor_coll)), str(STEP.anchor_bytes), str(calls_per_batch), str(batches)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"bench_getcollinfo failed ({done.returncode}):\n{done.stderr}")
        result = json.loads(done.stdout)
        result["plugin_bytes"] = library.stat().st_size
        result["plugin_stripped_bytes"] = _stripped_size(library, work)
        result["instrumented_plugin_bytes"] = instrumented.stat().st_size
        result["instrumented_plugin_stripped_bytes"] = _stripped_size(instrumented, work)
        return result


def _cpu_model() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def record(result: dict, argv: list[str]) -> dict:
    """The result with what the recorded JSON carries besides: command, target, verdict, machine."""
    net = result["mixed"]["net"]["median"]
    with_chunk = result["mixed_chunk"]["net"]["median"]
    return {
        "benchmark": "plugin-getcollinfo",
        "description": "dynamiccl tuner plugin, ABI v6: getCollInfo, and getCollInfo + getChunkSize, ns per call of "
                       "the production library with a 1,000-rule table with chunk sizes (net of NCCL's per-call "
                       "cost-table copy and arg-min), table load time, binary sizes",
        "command": "dynamiccl plugin bench " + shlex.join(argv),
        "getcollinfo_median_ns": net,
        "getcollinfo_calls_per_s": 1e9 / net if net > 0 else float("inf"),
        "getcollinfo_p99_ns": result["mixed"]["net"]["p99"],
        "getcollinfo_chunk_median_ns": with_chunk,
        "getcollinfo_chunk_calls_per_s": 1e9 / with_chunk if with_chunk > 0 else float("inf"),
        "getcollinfo_chunk_p99_ns": result["mixed_chunk"]["net"]["p99"],
        "target_median_ns": TARGET_NS,
        "within_target": net <= TARGET_NS and with_chunk <= TARGET_NS,
        **result,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**_machine(), "cpu_model": _cpu_model()},
    }


def print_table(rec: dict) -> None:
    """An nccl-tests-like summary."""
    print(f"# dynamiccl tuner plugin, ABI v6: getCollInfo with {rec['rules']} rules and {rec['step_lines']} step "
          f"line on {rec['nranks']} ranks / {rec['nnodes']} nodes; {rec['calls_per_batch']} calls per timed batch")
    print("# ns per call: 'with copy' = NCCL's fresh cost table + getCollInfo, 'copy' = the table alone, "
          "'net' = the plugin")
    print(f"# {'collective':>14} {'calls':>10} {'with copy':>10} {'copy':>7} {'net':>7} {'net p99':>8}")
    rows = [("mixed", rec["mixed"]), ("+getChunkSize", rec["mixed_chunk"])] + list(rec["per_collective"].items())
    for name, row in rows:
        print(f"  {name:>14} {row['calls']:>10} {row['measured']['median']:>10.1f} {row['overhead']['median']:>7.1f} "
              f"{row['net']['median']:>7.1f} {row['net']['p99']:>8.1f}")
    print(f"# calls decided by a rule: {100 * rec['ruled_fraction']:.1f} %; getChunkSize calls given a rule's chunk: "
          f"{100 * rec['chunked_fraction']:.1f} % ('+getChunkSize': each call followed by NCCL's arg-min, in 'copy', "
          "and getChunkSize)")
    print(f"# table load ({rec['table_bytes']} bytes): parse {rec['parse_us']:.0f} us, first init (read, parse, "
          f"index) {rec['first_init_us']:.0f} us, next init (index) {rec['next_init_us']:.0f} us")
    for name, key in (("plugin", "plugin"), ("instrumented plugin", "instrumented_plugin")):
        stripped = rec[f"{key}_stripped_bytes"]
        print(f"# {name}: {rec[f'{key}_bytes']} bytes" + (f" ({stripped} stripped)" if stripped else ""))
    for name, key in (("getCollInfo", "getcollinfo_median_ns"), ("getCollInfo + getChunkSize",
                                                                   "getcollinfo_chunk_median_ns")):
        print(f"# {name} median {rec[key]:.1f} ns (target <= {TARGET_NS:.0f} ns): "
              f"{'ok' if rec[key] <= TARGET_NS else 'MISSED'}")
