"""Fuzz the tuner plugin's table parser, and check the Python mirror against it.

Run from the repository root (recorded result: ``experiments/plugin/fuzz.json``)::

    .venv/bin/python experiments/plugin/fuzz.py --seconds 300 --record experiments/plugin/fuzz.json

1. Seeds: plugin-table texts written by ``dynamiccl.table.plugin_text.write`` from random
   ``DecisionTable``s, plus edge cases (long lines at the 511-byte limit, NUL bytes, huge numbers,
   CRLF, no header, 16 and 17 fields, unsupported algorithm/protocol pairs, duplicate step
   shapes, ...).
2. ``tests/c/fuzz_table.c``, compiled with AddressSanitizer and UBSan together with the instrumented
   plugin's C files, mutates them for a bounded time with a fixed seed and calls ``dynamiccl_tuner_parse`` on each
   input. A memory error or undefined behaviour aborts it, so a zero exit status means no crash.
3. Differential check: every seed and every N-th fuzzed input is kept with the C parser's verdict;
   ``dynamiccl.table.plugin_text.read`` must accept exactly those the C parser accepts, with the
   same rule and step counts, and reject the others at the same line. The same for tables past the
   plugin's size limits (4,097 step lines; with ``--limit-rules`` 1,000,001 rules), parsed by the
   built instrumented plugin through ctypes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

from dynamiccl.bench import _machine
from dynamiccl.errors import InputError
from dynamiccl.nccl import KEEP, MAX_CHANNELS, TUNABLE_FUNCS, supported_configs
from dynamiccl.plugin.binding import InstrumentedTunerLibrary
from dynamiccl.plugin.build import INSTRUMENTED, build_plugin, compile_sources, instrumented_beside
from dynamiccl.table import DecisionTable, Rule, StepShape, plugin_text

ROOT = Path(__file__).resolve().parents[2]
C_TESTS = ROOT / "tests" / "c"
# gcc's AddressSanitizer + UBSan, every finding fatal (a run that exits 0 had none).
SANITIZE_FLAGS = ("-O1", "-g", "-std=c11", "-D_GNU_SOURCE", "-fsanitize=address,undefined",
                  "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-Wall", "-Wextra", "-Werror")
SANITIZER_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=86",
                 "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
SIZES = (0, 1, 1024, 4096, 65536, 1 << 20, 1 << 24, 1 << 30)


def sanitizer_env() -> dict:
    """The environment for a sanitized program: ours, with the sanitizer options added."""
    return {**os.environ, **SANITIZER_ENV}


def build_fuzzer(output: Path) -> Path:
    """Compile fuzz_table.c with the instrumented plugin's C files under ASan + UBSan into ``output``."""
    return compile_sources(output, [C_TESTS / "fuzz_table.c", *INSTRUMENTED.source_paths()],
                           SANITIZE_FLAGS + INSTRUMENTED.defines)


# --- seeds -----------------------------------------------------------------------------------------

def random_rule(rng: random.Random) -> Rule:
    """A valid rule with random keys and an (algorithm, protocol) NCCL can run for its collective."""
    coll = rng.choice(TUNABLE_FUNCS)
    low = rng.choice(SIZES) + rng.choice((0, 0, 1, rng.randrange(1 << 16)))
    high = rng.choice((low, low + rng.randrange(1 << 20), 2**64 - 1, 2**32 - 1))
    nranks = rng.choice((KEEP, 1, 8, 16, 2**31 - 1))
    nnodes = KEEP if nranks == KEEP or rng.random() < 0.3 else rng.randint(1, min(nranks, 4))
    algorithm, protocol = rng.choice(supported_configs(coll))
    return Rule(coll, low, high, nranks, nnodes,
                position=rng.choice((KEEP, KEEP, 0, 3, 2**31 - 1)),
                num_pipe_ops=rng.choice((KEEP, KEEP, 1, 2)), reg_buff=rng.choice((KEEP, 0, 1)),
                algorithm=algorithm if rng.random() < 0.8 else None,
                protocol=protocol if rng.random() < 0.7 else None,
                channels=rng.choice((KEEP, 1, 8, MAX_CHANNELS)),
                chunk_bytes=rng.choice((KEEP, KEEP, 4096, 131072, 64 << 20)))


def random_table(rng: random.Random, max_rules: int = 60) -> DecisionTable:
    rules = tuple(random_rule(rng) for _ in range(rng.randint(0, max_rules)))
    steps, shapes = [], set()
    for _ in range(rng.randint(0, 3)):
        nranks = rng.choice((8, 16, 64))
        nnodes = rng.choice((1, 2, 8))
        if (nranks, nnodes) not in shapes:
            shapes.add((nranks, nnodes))
            steps.append(StepShape(nranks, nnodes, rng.randint(1, 200), rng.choice(TUNABLE_FUNCS),
                                   rng.choice(SIZES)))
    return DecisionTable(rules, steps=tuple(steps))


HEADER = b"dynamiccl-tuner-table 1\n"  # most edge cases are format 1; the v2- ones test version 2's field
RULE = b"rule allreduce 0 65535 16 2 -1 -1 -1 ring ll128 8"
HEADER_2 = b"dynamiccl-tuner-table 2\n"


def edge_cases() -> dict[str, bytes]:
    """Hand-written inputs at the edges of the format (valid and invalid)."""
    padded = RULE.replace(b" 0 ", b" " + b"0" * (511 - len(RULE) + 1) + b" ", 1)  # 511 bytes
    return {
        "empty": b"",
        "newline": b"\n",
        "header-only": HEADER,
        "header-no-newline": HEADER.rstrip(b"\n"),
        "header-tab": b"dynamiccl-tuner-table\t1\n",
        "header-extra-field": b"dynamiccl-tuner-table 1 x\n" + RULE + b"\n",
        "header-version-2": b"dynamiccl-tuner-table 2\n",
        "header-after-comment": b"# comment\n" + HEADER,
        "no-header": RULE + b"\n",
        "comments-blank": HEADER + b"\n   \n\t\n# c\n  # c\n#\n" + RULE + b"\n",
        "crlf": (HEADER + RULE + b"\nstep 16 2 96 allreduce 1048576\n").replace(b"\n", b"\r\n"),
        "cr-cr": HEADER + RULE + b"\r\r\n",
        "lone-cr-line": HEADER + b"\r\n\r\r\n",
        "no-final-newline": HEADER + RULE,
        "line-511": HEADER + padded + b"\n",
        "line-512": HEADER + padded.replace(b" 0", b" 00", 1) + b"\n",
        "comment-511": HEADER + b"#" + b"x" * 510 + b"\n",
        "comment-512": HEADER + b"#" + b"x" * 511 + b"\n",
        "line-511-crlf": HEADER + padded + b"\r\n",
        "nul-in-rule": HEADER + RULE.replace(b"ring", b"ri\0ng") + b"\n",
        "nul-in-comment": HEADER + b"# \0\n",
        "nul-after-newline": HEADER + b"\0",
        "max-bytes": HEADER + b"rule allgather 18446744073709551615 18446744073709551615 -1 -1 -1 -1 -1 ring simple -1\n",
        "max-bytes-plus-1": HEADER + b"rule allgather 0 18446744073709551616 -1 -1 -1 -1 -1 ring simple -1\n",
        "huge-number": HEADER + b"rule allgather 0 " + b"9" * 400 + b" -1 -1 -1 -1 -1 ring simple -1\n",
        "leading-zeros": HEADER + b"rule allgather 000 0018446744073709551615 -01 -1 -0 -1 -1 ring simple 064\n",
        "int-max": HEADER + b"rule reduce 0 1 2147483647 2147483647 2147483647 2147483647 1 ring ll 64\n",
        "int-max-plus-1": HEADER + b"rule reduce 0 1 2147483648 1 -1 -1 -1 ring ll 1\n",
        "int-min": HEADER + b"rule reduce 0 1 -2147483648 1 -1 -1 -1 ring ll 1\n",
        "nnodes-gt-nranks": HEADER + b"rule reduce 0 1 4 8 -1 -1 -1 ring ll 1\n",
        "zero-channels": HEADER + b"rule reduce 0 1 -1 -1 -1 -1 -1 ring ll 0\n",
        "channels-65": HEADER + b"rule reduce 0 1 -1 -1 -1 -1 -1 ring ll 65\n",
        "reg-buff-2": HEADER + b"rule reduce 0 1 -1 -1 -1 -1 2 ring ll 1\n",
        "min-gt-max": HEADER + b"rule reduce 2 1 -1 -1 -1 -1 -1 ring ll 1\n",
        "unsupported-algo": HEADER + b"rule broadcast 0 1 -1 -1 -1 -1 -1 tree -1 -1\n",
        "unsupported-pair": HEADER + b"rule allreduce 0 1 -1 -1 -1 -1 -1 nvls ll -1\n",
        "protocol-only": HEADER + b"rule allgather 0 1 -1 -1 -1 -1 -1 -1 ll -1\n",
        "all-keep": HEADER + b"rule allgather 0 1 -1 -1 -1 -1 -1 -1 -1 -1\n",
        "fields-11": HEADER + RULE.rsplit(b" ", 1)[0] + b"\n",
        "fields-13": HEADER + RULE + b" 1\n",
        "fields-16": HEADER + RULE + b" 1 2 3 4\n",
        "fields-17": HEADER + RULE + b" 1 2 3 4 5\n",
        "fields-17-comment": HEADER + b"# " + b"x " * 20 + b"\n",
        "tabs": HEADER + RULE.replace(b" ", b"\t") + b"\t\n",
        "many-spaces": HEADER + RULE.replace(b" ", b"    ") + b"   \n",
        "other-whitespace": HEADER + RULE.replace(b" 16 ", b"\x0b16 ") + b"\n",
        "nbsp": HEADER + RULE.replace(b" 16 ", b" 16\xa0") + b"\n",
        "superscript": HEADER + RULE.replace(b" 16 ", b" 1\xb2 ") + b"\n",
        "plus-sign": HEADER + RULE.replace(b" 16 ", b" +16 ") + b"\n",
        "upper-case": HEADER + RULE.replace(b"ring", b"Ring") + b"\n",
        "unknown-kind": HEADER + b"rules allreduce\n",
        "step": HEADER + b"step 16 2 96 allreduce 1048576\n",
        "step-duplicate": HEADER + b"step 16 2 96 allreduce 1048576\nstep 16 2 5 reduce 1\n",
        "step-nnodes-gt-nranks": HEADER + b"step 2 16 96 allreduce 1048576\n",
        "step-zero-calls": HEADER + b"step 16 2 0 allreduce 1048576\n",
        "step-any": HEADER + b"step -1 -1 1 allreduce 1\n",
        "step-fields-5": HEADER + b"step 16 2 96 allreduce\n",
        "binary": HEADER + bytes(range(256)) + b"\n",
        "header-version-3": b"dynamiccl-tuner-table 3\n" + RULE + b" -1\n",
        "v2-rule": HEADER_2 + RULE + b" 131072\n" + RULE + b" -1\n",
        "v2-fields-12": HEADER_2 + RULE + b"\n",
        "v2-fields-14": HEADER_2 + RULE + b" -1 1\n",
        "v2-chunk-0": HEADER_2 + RULE + b" 0\n",
        "v2-chunk-4095": HEADER_2 + RULE + b" 4095\n",
        "v2-chunk-4096": HEADER_2 + RULE + b" 4096\n",
        "v2-chunk-not-power-of-two": HEADER_2 + RULE + b" 196608\n",
        "v2-chunk-64MiB": HEADER_2 + RULE + b" 67108864\n",
        "v2-chunk-128MiB": HEADER_2 + RULE + b" 134217728\n",
        "v2-chunk-minus-2": HEADER_2 + RULE + b" -2\n",
        "v2-chunk-huge": HEADER_2 + RULE + b" 18446744073709551616\n",
        "v2-step": HEADER_2 + b"step 16 2 96 allreduce 1048576\n",
    }


def write_seeds(directory: Path, tables: int = 40, seed: int = 0) -> int:
    """Write the seed corpus into ``directory``; returns the number of files."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for index in range(tables):
        (directory / f"table-{index:03d}.txt").write_text(plugin_text.write(random_table(rng)))
    cases = edge_cases()
    for name, data in cases.items():
        (directory / f"edge-{name}.txt").write_bytes(data)
    return tables + len(cases)


# --- the fuzzer and the differential check ---------------------------------------------------------

def run_fuzzer(binary: Path, seed_dir: Path, seconds: float, rng_seed: int, sample_dir: Path,
               every: int, max_samples: int) -> dict:
    """Run the fuzzer; its JSON summary plus ``crashes`` (0, or 1 with the sanitizer's report)."""
    sample_dir.mkdir(parents=True, exist_ok=True)
    command = [str(binary), str(seed_dir), str(seconds), str(rng_seed), str(sample_dir), str(every),
               str(max_samples)]
    done = subprocess.run(command, capture_output=True, text=True, env=sanitizer_env(),
                          timeout=seconds + 120)
    if done.returncode != 0:
        return {"crashes": 1, "exit_status": done.returncode, "report": done.stderr[-6000:]}
    return {"crashes": 0, **json.loads(done.stdout)}


def _line_of(message: str) -> int:
    match = re.search(r"\bline (\d+)", message)
    return int(match.group(1)) if match else 0


def python_verdict(data: bytes) -> tuple[int, int, int, str]:
    """(rules, step lines, 0, "") if plugin_text.read accepts ``data``, else (-1, 0, error line, message)."""
    try:
        table = plugin_text.read(data)
    except InputError as err:
        return -1, 0, _line_of(err.field or ""), str(err)
    except Exception as exc:  # anything but InputError is a bug of the mirror: never agrees
        return -2, 0, 0, f"{type(exc).__name__}: {exc}"
    return len(table.rules), len(table.steps), 0, ""


def sampled_cases(sample_dir: Path) -> Iterator[tuple[str, bytes, tuple]]:
    """(name, input, the C parser's verdict) for each input the fuzzer kept in ``sample_dir``."""
    for row in (sample_dir / "manifest.tsv").read_text().rstrip("\n").split("\n"):
        name, rules, steps, line, error = (row.split("\t") + [""])[:5]
        yield name, (sample_dir / name).read_bytes(), (int(rules), int(steps), int(line), error)


def limit_cases(with_rules: bool, plugin: Path | None = None) -> Iterator[tuple[str, bytes, tuple]]:
    """Tables past the plugin's size limits (too big for the fuzzer), with the verdict of the
    instrumented plugin (``plugin``, default the one of ``build_plugin()``): 4,097 step lines, and
    with ``with_rules`` 1,000,001 rules (plugin_text.read needs minutes for it)."""
    library = InstrumentedTunerLibrary(plugin or instrumented_beside(build_plugin()))
    cases = {"limit-steps-4097": HEADER + b"".join(b"step 8 1 4 allreduce %d\n" % i for i in range(4097))}
    if with_rules:
        cases["limit-rules-1000001"] = HEADER + b"rule allreduce 0 1 -1 -1 -1 -1 -1 -1 -1 -1\n" * 1_000_001
    for name, data in cases.items():
        try:
            verdict = (*library.parse(data), 0, "")
        except InputError as err:
            verdict = (-1, 0, _line_of(err.problem), err.problem)
        yield name, data, verdict


def differential(cases: Iterable[tuple[str, bytes, tuple]], examples: int = 10) -> dict:
    """Compare the C parser's verdicts with ``plugin_text.read``'s: accept/reject with the same rule and
    step counts (a disagreement), and for a rejection the same line (an error-line disagreement)."""
    checked = accepted = 0
    disagreements, line_disagreements = [], []
    for name, data, (c_rules, c_steps, c_line, c_error) in cases:
        py_rules, py_steps, py_line, py_error = python_verdict(data)
        checked += 1
        accepted += c_rules >= 0
        finding = {"sample": name, "bytes": len(data), "c": {"rules": c_rules, "steps": c_steps, "error": c_error},
                   "python": {"rules": py_rules, "steps": py_steps, "error": py_error}}
        if (c_rules, c_steps) != (py_rules, py_steps):
            disagreements.append(finding)
        elif c_rules < 0 and c_line != py_line:
            line_disagreements.append(finding)
    return {"differential_samples": checked, "differential_accepted": accepted,
            "disagreements": len(disagreements), "error_line_disagreements": len(line_disagreements),
            "disagreement_examples": (disagreements + line_disagreements)[:examples]}


def fuzz(seconds: float, rng_seed: int = 1, every: int = 2000, max_samples: int = 4000,
         work_dir: Path | None = None, tables: int = 40, limit_rules: bool = False,
         plugin: Path | None = None) -> dict:
    """Build, seed, fuzz for ``seconds`` and check the samples and the limit cases (on the instrumented
    ``plugin``, default the one of ``build_plugin()``); returns the combined record."""
    with tempfile.TemporaryDirectory(prefix="dynamiccl-fuzz-") as tmp:
        work = Path(work_dir or tmp)
        binary = build_fuzzer(work / "fuzz_table")
        seeds = write_seeds(work / "seeds", tables=tables, seed=rng_seed)
        result = run_fuzzer(binary, work / "seeds", seconds, rng_seed, work / "samples", every, max_samples)
        result["seed_files"] = seeds
        if result["crashes"] == 0:
            cases = chain(sampled_cases(work / "samples"), limit_cases(limit_rules, plugin))
            result.update(differential(cases))
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1, help="RNG seed of the seeds and the mutations")
    parser.add_argument("--every", type=int, default=2000, help="keep every N-th input for the differential check")
    parser.add_argument("--max-samples", type=int, default=4000)
    parser.add_argument("--work-dir", type=Path, help="keep the fuzzer, seeds and samples here")
    parser.add_argument("--limit-rules", action="store_true",
                        help="also check a 1,000,001-rule table (plugin_text.read takes minutes on it)")
    parser.add_argument("--record", type=Path, help="write the result JSON here")
    args = parser.parse_args(argv)
    result = fuzz(args.seconds, args.seed, args.every, args.max_samples, args.work_dir, limit_rules=args.limit_rules)
    executions = result.get("executions", 0)
    record = {
        "benchmark": "plugin-table-fuzz",
        "description": "mutation fuzzing of dynamiccl_tuner_parse under ASan+UBSan (tests/c/fuzz_table.c) "
                       "and a differential check of dynamiccl.table.plugin_text.read against it",
        "command": "python experiments/plugin/fuzz.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        **{k: result[k] for k in ("crashes", "seconds", "executions", "execs_per_second") if k in result},
        "accepted_fraction": result["accepted"] / executions if executions else None,
        **{k: v for k, v in result.items() if k not in ("crashes", "seconds", "executions", "execs_per_second")},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
    }
    text = json.dumps(record, indent=2)
    if args.record:
        args.record.write_text(text + "\n")
    print(text if len(text) < 4000 else json.dumps({k: v for k, v in record.items() if k != "errors"}, indent=2))
    return 0 if result["crashes"] == 0 and result.get("disagreements") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
